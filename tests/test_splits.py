"""Held-out splits are cut by prompt: every record of one prompt lands on one side, so no held-out completion
was also trained on (with K completions per prompt and all C(K, 2) pairs as records, a split by record puts
almost every held-out completion into some training pair as well)."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from rlhfkit.config import DataConfig
from rlhfkit.data import load_train_eval, split_key, split_summary, split_train_eval, write_jsonl


def all_pairs(n_prompts: int, k: int = 4) -> list[dict]:
    """n_prompts x all C(k, 2) preference pairs of k completions, interleaved across prompts as a labeler's
    output would be after shuffling."""
    recs = [{"prompt": f"prompt {p}", "chosen": f" answer {p}.{i}", "rejected": f" answer {p}.{j}"}
            for p in range(n_prompts) for i, j in itertools.combinations(range(k), 2)]
    random.Random(0).shuffle(recs)
    return recs


def rankings(n_prompts: int, k: int = 3, per_prompt: int = 2) -> list[dict]:
    """Several rankings of k completions per prompt (e.g. from different labelers)."""
    return [{"prompt": f"prompt {p}", "responses": [f" r{p}.{i}.{r}" for i in range(k)],
             "ranking": random.Random(p * 10 + r).sample(range(k), k)}
            for r in range(per_prompt) for p in range(n_prompts)]


def prompts_of(records: list) -> set:
    return {split_key(r) for r in records}


def completions_of(records: list[dict]) -> set:
    return {(r["prompt"], x) for r in records for x in r.get("responses", [r.get("chosen"), r.get("rejected")])}


@pytest.mark.parametrize("make", [all_pairs, rankings])
@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25, 0.5])
def test_no_prompt_is_on_both_sides_and_the_share_is_counted_in_prompts(make, seed, fraction):
    records = make(40)
    train, held = split_train_eval(records, fraction, seed)
    assert not prompts_of(train) & prompts_of(held)
    assert not completions_of(train) & completions_of(held)  # what a split by record leaked
    assert len(prompts_of(held)) == max(1, round(40 * fraction))
    # every record lands on exactly one side, each side in input order
    assert sorted(map(json.dumps, train + held)) == sorted(map(json.dumps, records))
    assert train == [r for r in records if split_key(r) in prompts_of(train)]
    assert held == [r for r in records if split_key(r) in prompts_of(held)]


def test_split_is_deterministic_for_a_seed_and_independent_of_record_order():
    records = all_pairs(40)
    train, held = split_train_eval(records, 0.2, seed=3)
    assert split_train_eval(records, 0.2, seed=3) == (train, held)
    assert prompts_of(split_train_eval(records, 0.2, seed=4)[1]) != prompts_of(held)
    # a prompt's side depends on the prompt and the seed, not on where its records sit in the file
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    assert prompts_of(split_train_eval(shuffled, 0.2, seed=3)[1]) == prompts_of(held)


def test_at_least_one_prompt_held_out_and_one_trained():
    two = all_pairs(2)
    train, held = split_train_eval(two, 0.01, 0)
    assert len(prompts_of(train)) == 1 and len(prompts_of(held)) == 1
    train, held = split_train_eval(two, 0.99, 0)
    assert len(prompts_of(train)) == 1 and len(prompts_of(held)) == 1
    assert split_train_eval(two, 0.0, 0) == (two, [])


def test_one_prompt_only_holds_nothing_out_and_says_so(capsys):
    records = [{"prompt": "p", "chosen": f" a{i}", "rejected": f" b{i}"} for i in range(6)]
    assert split_train_eval(records, 0.5, 0) == (records, [])
    assert "share one prompt" in capsys.readouterr().err


def test_prompts_compare_by_exact_string():
    records = [{"prompt": p, "chosen": " a", "rejected": " b"} for p in ["the film", "the film ", "The film"]]
    assert len(prompts_of(records)) == 3


def test_sft_records_group_by_prompt_or_first_user_turn_and_corpus_by_record():
    assert split_key({"prompt": "x", "response": " y"}) == split_key({"prompt": "x", "chosen": " a", "rejected": " b"})
    branch = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hi"},
              {"role": "assistant", "content": "hello"}, {"role": "user", "content": "and?"}]
    a = {"messages": branch + [{"role": "assistant", "content": "fine"}]}
    b = {"messages": branch[:3] + [{"role": "user", "content": "why?"}, {"role": "assistant", "content": "so"}]}
    assert split_key(a) == split_key(b) == "hi"  # branches of one conversation share trained turns
    assert split_key({"text": "a review"}) is None  # a corpus record is a group of its own
    corpus = [{"text": "same"}] * 10  # even identical texts are split as records
    train, held = split_train_eval(corpus, 0.3, 0)
    assert len(held) == 3 and len(train) == 7
    assert split_key("a bare prompt") == "a bare prompt"  # online DPO splits its list of prompt strings


def test_load_train_eval_splits_by_prompt_and_warns_about_an_overlapping_eval_file(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", all_pairs(30))
    train, held = load_train_eval(DataConfig(train=str(tmp_path / "train.jsonl"), eval_fraction=0.2),
                                  "preferences", seed=0)
    assert split_summary(train, held) == {"train_prompts": 24, "eval_prompts": 6, "shared_prompts": 0}
    assert "warning" not in capsys.readouterr().err
    write_jsonl(tmp_path / "eval.jsonl", all_pairs(30)[:20] + [{"prompt": "new", "chosen": " a", "rejected": " b"}])
    cfg = DataConfig(train=str(tmp_path / "train.jsonl"), eval=str(tmp_path / "eval.jsonl"))
    train, held = load_train_eval(cfg, "preferences", seed=0)
    n_shared = split_summary(train, held)["shared_prompts"]
    assert 0 < n_shared < split_summary(train, held)["eval_prompts"]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning:") and f"{n_shared} of" in err[0]
