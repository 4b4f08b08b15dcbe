"""Language-model judges wherever a labeler or judge is accepted: label auto, eval win-rate, eval reward-kl,
online DPO and best-of-N sampling, driven through the command line with local judge models whose answers are
fixed by construction (tests/fixed_judge.py)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from fixed_judge import build_fixed_judge

from rlhfkit import cli
from rlhfkit.data import iter_records, write_jsonl
from rlhfkit.judges import Completion, JudgeOptions, make_judge
from rlhfkit.labeling.auto import judge_candidates

def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


CANDIDATES = [
    {"prompt": "the movie", "responses": [" was great", " was boring", " was great"], "policy": "sft"},
    {"prompt": [{"role": "user", "content": "a bad plot?"}], "responses": [" yes", " no", ""], "policy": "sft"},
]


@pytest.fixture(scope="module")
def judges(tmp_path_factory):
    """{"A": a judge that always answers A (P(A) : P(B) = 3 : 1), "5": one that always scores 5 (P(5) : P(6) =
    3 : 1, so its expected score is 5.25)}."""
    root = tmp_path_factory.mktemp("judges")
    return {"A": str(build_fixed_judge(root / "always-a", "A", "B", 3.0)),
            "5": str(build_fixed_judge(root / "always-5", "5", "6", 3.0))}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_tokenizer, tiny_arch):
    from rlhfkit.models import build_tiny, save_model

    return str(save_model(build_tiny(tiny_tokenizer, tiny_arch, seed=0), tiny_tokenizer,
                          tmp_path_factory.mktemp("policy") / "model"))


@pytest.fixture
def candidates(tmp_path):
    path = tmp_path / "candidates.jsonl"
    write_jsonl(path, CANDIDATES)
    return path


def _label(candidates, out, judge, *extra):
    return cli.main(["label", "auto", "--candidates", str(candidates), "--out", str(out), "--judge", judge,
                     "--judge-cache", "none", *extra])


# ------------------------------------------------------------------------------------------------ label auto
def test_label_auto_drops_a_position_biased_judges_ties(judges, candidates, tmp_path, capsys):
    assert _label(candidates, tmp_path / "p.jsonl", f"hf:{judges['A']}") == 0
    counts = json.loads(capsys.readouterr().out)
    # 3 + 3 pairs: one repeats a text, two have an empty side; the 3 asked are order-inconsistent ties, asked as
    # 4 distinct questions (the first record's two pairs are one pair in both orders)
    assert (counts["identical_dropped"], counts["empty_dropped"], counts["ties_dropped"]) == (1, 2, 3)
    assert counts["order_inconsistent"] == 3 and counts["records"] == 0 and counts["judge_backend_calls"] == 4


def test_kept_ties_say_so_and_training_reads_them_as_no_preference(judges, candidates, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert _label(candidates, out, f"hf:{judges['A']}", "--ties", "keep") == 0
    records = read_jsonl(out)
    assert len(records) == 3 and all(r["label"]["tie"] is True for r in records)
    label = records[0]["label"]
    assert (label["source"], label["labeler"], label["answers"], label["consistent"]) == (
        "ai", f"hf:{judges['A']}", ["A", "A"], False)
    assert label["judge"].startswith(f"hf:{judges['A']}@") and label["template"].startswith("pairwise@")
    assert label["prob_chosen"] == pytest.approx(0.5, abs=1e-4)
    capsys.readouterr()
    assert list(iter_records(out, "preferences")) == []
    assert "3 records hold no preference (a tie," in capsys.readouterr().err


def test_one_order_follows_the_judge_with_its_probability(judges, candidates, tmp_path):
    out = tmp_path / "p.jsonl"
    assert _label(candidates, out, f"hf:{judges['A']}", "--no-judge-both-orders") == 0
    records = read_jsonl(out)
    assert [(r["chosen"], r["rejected"]) for r in records] == [(" was great", " was boring"),
                                                                (" was boring", " was great"), (" yes", " no")]
    assert records[2]["prompt"] == [{"role": "user", "content": "a bad plot?"}]  # kept as it came
    assert all(r["label"]["prob_chosen"] == pytest.approx(0.75, abs=1e-4) for r in records)
    assert all(r["label"]["consistent"] is None and "tie" not in r["label"] for r in records)


def test_rankings_use_the_judges_expected_score(judges, candidates, tmp_path, capsys):
    assert _label(candidates, tmp_path / "r.jsonl", f"hf:{judges['5']}", "--mode", "rankings") == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["ties_dropped"] == 2  # every response scores 5.25: nothing to rank
    scorer = make_judge(f"hf:{judges['5']}", JudgeOptions(judge_cache="none"), "pointwise").scorer()
    assert scorer(["p"], ["r"]) == [pytest.approx(5.25, abs=1e-4)]


def test_a_content_judge_orders_every_pair():
    class Backend:
        identity = "fake:good"

        def complete(self, calls, max_tokens):
            for i, call in enumerate(calls):
                first = call.messages[-1][1].split("[Response A]\n", 1)[1].split("\n\n[Response B]")[0]
                yield i, Completion("A" if "great" in first else "B")

    judge = make_judge("fake:good", JudgeOptions(judge_cache="none"), backend=Backend())
    records, counts = judge_candidates(CANDIDATES[:1], judge, labeler_name="fake:good")
    assert [(r["chosen"], r["rejected"]) for r in records] == [(" was great", " was boring"),
                                                                (" was great", " was boring")]
    assert counts["order_inconsistent"] == 0 and counts["identical_dropped"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--judge", "hf:JUDGE", "--temperature", "0.5"], "--temperature is the noise model of a scorer's labels"),
    (["--judge", "hf:JUDGE", "--judge-template", "nope.txt"], "judge template nope.txt: no such file"),
    (["--judge", "hf:JUDGE", "--judge-template", "pointwise"], "judge template pointwise is pointwise, but a "
                                                               "pairwise judge is needed here"),
    (["--judge", "hf:./no-such-judge"], "model directory not found: ./no-such-judge"),
    (["--judge", "openai:gpt-4o-mini"], "judge 'openai:gpt-4o-mini' needs --judge-url URL"),
    (["--judge", "llm:whatever"], "cannot import module 'llm'"),
])
def test_bad_judge_options_are_one_line(judges, candidates, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    argv = [a.replace("JUDGE", judges["A"]) for a in argv]
    out = tmp_path / "p.jsonl"
    assert cli.main(["label", "auto", "--candidates", str(candidates), "--out", str(out), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlhfkit: error: ") and message in err[0], err
    assert not out.exists()


# ---------------------------------------------------------------------------------------- eval commands
@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_jsonl(path, [{"prompt": p} for p in ("the movie", "a bad plot", "i loved")])
    return path


def test_win_rate_with_a_language_model_judge(judges, model_dir, prompts, capsys):
    common = ["eval", "win-rate", "--a", model_dir, "--b", model_dir, "--prompts", str(prompts),
              "--judge", f"hf:{judges['A']}", "--judge-cache", "none", "--sampling.max-new-tokens", "4"]
    assert cli.main(common) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert (result["ties"], result["n"], result["rate"], result["order_inconsistent"]) == (3, 3, 0.5, 3)
    assert result["unparseable"] == 0 and result["mean_prob_a"] == pytest.approx(0.5, abs=1e-4)
    assert result["mean_length_a"] == result["mean_length_b"] > 0  # the same model and seed
    assert result["judge"].startswith(f"hf:{judges['A']}@") and result["template"].startswith("pairwise@")
    assert "3 order-inconsistent (ties)" in captured.err and "mean length" in captured.err
    assert cli.main([*common, "--no-judge-both-orders"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["wins"], result["rate"], result["order_inconsistent"]) == (3, 1.0, 0)
    assert result["rate_ci95"][0] < 1.0  # three wins: the Wilson interval is wide


def test_reward_kl_with_a_language_model_score(judges, model_dir, prompts, capsys):
    assert cli.main(["eval", "reward-kl", "--policy", model_dir, "--reference", model_dir, "--prompts", str(prompts),
                     "--judge", f"hf:{judges['5']}", "--judge-cache", "none", "--sampling.max-new-tokens", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["reward"] == pytest.approx(5.25, abs=1e-4)


def test_best_of_n_with_a_language_model_score(judges, model_dir, prompts, tmp_path):
    out = tmp_path / "c.jsonl"
    assert cli.main(["sample", "--model", model_dir, "--prompts", str(prompts), "--out", str(out), "--best-of", "2",
                     "--reward", f"hf:{judges['5']}", "--judge-cache", "none", "--num-samples", "1",
                     "--max-new-tokens", "4"]) == 0
    records = read_jsonl(out)
    assert records and all(r["policy"].endswith(f"best-of-2 by hf:{judges['5']}") for r in records)


def test_online_dpo_labels_each_round_with_a_language_model(judges, model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    write_jsonl(prompts, [{"prompt": f"{s} was"} for s in ("the movie", "the plot", "the acting", "the film",
                                                          "the story", "the cast", "the ending", "the score")])
    out = tmp_path / "online"
    assert cli.main(["dpo", "--online", "--rounds", "1", "--prompts", str(prompts), "--judge", f"hf:{judges['A']}",
                     "--no-judge-both-orders", "--judge-cache", str(tmp_path / "cache.sqlite"),
                     "--model.name", model_dir, "--samples-per-prompt", "2", "--max-new-tokens", "4",
                     "--train.max-steps", "1", "--train.batch-size", "2", "--train.progress", "False",
                     "--data.eval-fraction", "0.25", "--kl-prompts", "1", "--kl-samples", "1", "--out", str(out)]) == 0
    prefs = read_jsonl(out / "round-1" / "preferences.jsonl")
    assert prefs and Counter(p["label"]["source"] for p in prefs) == {"ai": len(prefs)}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["judge"] == f"hf:{judges['A']}" and summary["rounds"][0]["labeling"]["judge_backend_calls"] > 0
