"""Rankings with ties: the record form `"ranking": [2, [0, 1], 3]`, its validation and pairs, and the reward model
(ranks through groups and batches, Bradley-Terry and the metrics skipping tied pairs, held-out reports, `rm train`
and `rm eval` on a file with ties)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from toy import WORDS

from rlhfkit import cli
from rlhfkit.config import DataConfig
from rlhfkit.data import ranking_to_pairs, read_records, validate, write_jsonl
from rlhfkit.data.records import ranking_tiers
from rlhfkit.errors import DataError
from rlhfkit.reward import Group, encode_groups, ranking_losses
from rlhfkit.reward.score import pair_report, pairs_from_groups

DATA = DataConfig(max_length=32, max_prompt_length=16)


def _ranked(ranking, k=4):
    return {"prompt": "p", "responses": [f" r{i}" for i in range(k)], "ranking": ranking}


# ------------------------------------------------------------------------------------------------ the format
def test_tiers_of_flat_and_tied_rankings():
    assert ranking_tiers([2, 0, 1]) == [[2], [0], [1]]
    assert ranking_tiers([2, [0, 1], 3]) == [[2], [0, 1], [3]]


@pytest.mark.parametrize("ranking", [[2, [0, 1], 3], [[0, 3], [1, 2]], [0, 1, 2, 3], [[3, 1, 2], 0]])
def test_tied_rankings_are_valid(ranking):
    assert validate(_ranked(ranking), "rankings", ("f.jsonl", 1)) == _ranked(ranking)


@pytest.mark.parametrize("ranking, message", [
    ([2, [0], 1, 3], "item 1: a tie lists at least 2 response indices, got [0]"),
    ([2, [0, 0], 1, 3], "must be a permutation of 0..3 (ties flattened)"),
    ([2, [0, 1], 1, 3], "must be a permutation of 0..3 (ties flattened)"),
    ([2, [0, 1]], "must be a permutation of 0..3 (ties flattened)"),
    ([2, [0, True], 1, 3], "item 1: a tie must list integers"),
    ([2, [0, [1]], 3], "item 1: a tie must list integers"),
    ([2, "0", 1, 3], "item 1: expected an integer or a list of tied integers"),
    ([[0, 1, 2, 3]], "every response is tied: the ranking carries no preference"),
    ({"0": 1}, "expected a list of response indices"),
])
def test_bad_tied_rankings_name_file_line_and_field(tmp_path, ranking, message):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(_ranked([0, 1, 2, 3])) + "\n" + json.dumps(_ranked(ranking)) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_records(path, "rankings")
    assert str(err.value).startswith(f"{path}:2: field 'ranking': ") and message in str(err.value)


def test_ranking_to_pairs_skips_tied_pairs():
    pairs = ranking_to_pairs(dict(_ranked([2, [0, 1], 3]), label={"source": "gold"}))
    # 2 over 0, 1, 3; 0 and 1 over 3; the tied pair (0, 1) is no preference: 5 of the C(4, 2) = 6 pairs
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (" r2", " r0"), (" r2", " r1"), (" r2", " r3"), (" r0", " r3"), (" r1", " r3")]
    assert all(p["label"] == {"source": "gold", "from_ranking": True} for p in pairs)
    for p in pairs:
        validate(p, "preferences", ("t", None))


def test_ranking_to_pairs_without_ties_is_every_pair_best_first():
    rec = _ranked([3, 1, 0, 2])
    expected = [(" r3", " r1"), (" r3", " r0"), (" r3", " r2"), (" r1", " r0"), (" r1", " r2"), (" r0", " r2")]
    assert [(p["chosen"], p["rejected"]) for p in ranking_to_pairs(rec)] == expected
    assert ranking_to_pairs(rec) == ranking_to_pairs(dict(rec, ranking=[3, 1, 0, 2]))


# --------------------------------------------------------------------------------------------- reward groups
def test_groups_carry_ranks_best_first_and_likert_in_the_same_order(tiny_tokenizer):
    rec = dict(_ranked([2, [0, 1], 3]), likert=[4, 5, 7, 1])
    (group,), stats = encode_groups(tiny_tokenizer, [rec], DATA)
    texts = [tiny_tokenizer.decode(e.input_ids, skip_special_tokens=True).strip() for e in group.examples]
    assert texts == ["p r2", "p r0", "p r1", "p r3"]
    assert group.ranks == [0, 1, 1, 2] and group.scores == [7.0, 4.0, 5.0, 1.0]
    assert stats.as_dict()["records_dropped_all_tied"] == 0
    assert Group(group.examples).ranks == [0, 1, 2, 3]  # without ranks: strictly best first


def test_dropped_duplicates_keep_ranks_dense_and_all_tied_groups_are_dropped(tiny_tokenizer):
    records = [
        # " r0" twice: the copy ranked 1 (tied) stays, the one ranked 2 goes; ranks [0, 1, 1] stay dense
        {"prompt": "p", "responses": [" r0", " r1", " r2", " r0"], "ranking": [2, [0, 1], 3]},
        # " a" in the top tie and again alone at the bottom: the bottom copy goes, rank 2 -> dense 1
        {"prompt": "p", "responses": [" a", " b", " c", " a"], "ranking": [[0, 1], 2, 3]},
        # after dropping the repeat, both remaining responses are tied: nothing to compare
        {"prompt": "p", "responses": [" x", " y", " x"], "ranking": [[0, 1], 2]},
    ]
    groups, stats = encode_groups(tiny_tokenizer, records, DATA)
    assert [g.ranks for g in groups] == [[0, 1, 1], [0, 0, 1]]
    assert stats.duplicates == 3 and stats.all_tied == 1 and stats.too_few == 0
    assert stats.as_dict()["records_dropped_all_tied"] == 1


# ------------------------------------------------------------------------------------------ losses, metrics
def test_bradley_terry_and_metrics_skip_tied_pairs():
    rewards = torch.tensor([[2.0, 1.0, 1.0, 0.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    ranks = torch.tensor([[0, 1, 1, 2]])
    bt, metrics = ranking_losses(rewards, mask, "bt", ranks=ranks)
    # pairs of different rank: (0,1) (0,2) (0,3) (1,3) (2,3), gaps 1, 1, 2, 1, 1; the tied pair (1,2) is out.
    # -log sigma(1) = 0.313262, -log sigma(2) = 0.126928: (4 * 0.313262 + 0.126928) / 5 = 0.275995
    assert bt.item() == pytest.approx(0.275995, abs=1e-5)
    # the tied pair's gap 0 would count half (accuracy 5.5 / 6) and pull the margin to 6 / 6
    assert metrics["rewards/accuracy"] == 1.0 and metrics["rewards/margin"] == pytest.approx(6 / 5)
    assert metrics["rewards/chosen"] == pytest.approx((2 + 2 + 2 + 1 + 1) / 5)
    assert metrics["rewards/rejected"] == pytest.approx((1 + 1 + 0 + 0 + 0) / 5)
    pl, _ = ranking_losses(rewards, mask, "pl", ranks=ranks)
    assert pl.item() == pytest.approx(2.350513, abs=1e-5)  # tests/test_losses.py works this one out


def test_without_ties_ranks_change_nothing():
    torch.manual_seed(0)
    rewards = torch.randn(5, 4)
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[3:, 2:] = False
    likert = torch.randint(1, 8, (5, 4)).float()
    for loss, margin in (("bt", 0.0), ("bt", 0.5), ("pl", 0.0)):
        plain, m_plain = ranking_losses(rewards, mask, loss, likert, margin)
        ranked, m_ranked = ranking_losses(rewards, mask, loss, likert, margin, torch.arange(4).expand(5, 4))
        torch.testing.assert_close(ranked, plain)
        assert m_ranked == m_plain


def test_tied_margin_pairs_are_skipped_not_given_a_margin():
    rewards, mask = torch.tensor([[2.0, 1.0, 1.0]]), torch.ones(1, 3, dtype=torch.bool)
    likert = torch.tensor([[7.0, 5.0, 1.0]])  # Likert 5 vs 1 inside the tie would give a margin of 2
    bt, _ = ranking_losses(rewards, mask, "bt", likert, 0.5, torch.tensor([[0, 1, 1]]))
    # pairs (0,1), (0,2), gap 1, margins 0.5 * (7 - 5) = 1 and 0.5 * (7 - 1) = 3: -log sigma(0) = 0.693147,
    # -log sigma(-2) = 2.126928; mean 1.410038
    assert bt.item() == pytest.approx(1.410038, abs=1e-5)


def test_pair_report_skips_tied_pairs():
    rewards = [[2.0, 1.0, 1.5, 0.0], [1.0, 3.0]]
    chosen, rejected = pairs_from_groups(rewards, [[0, 1, 1, 2], [0, 1]])
    assert list(zip(chosen, rejected)) == [(2.0, 1.0), (2.0, 1.5), (2.0, 0.0), (1.0, 0.0), (1.5, 0.0), (1.0, 3.0)]
    report = pair_report(rewards, 2, [[0, 1, 1, 2], [0, 1]])
    assert report["n"] == 6 and report["accuracy"] == pytest.approx(5 / 6)  # the tied (1.0, 1.5) would be wrong
    assert pair_report(rewards, 2)["n"] == 7  # no ranks: every pair


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, tiny_tokenizer, tiny_arch):
    from rlhfkit.models import build_tiny, save_model

    return save_model(build_tiny(tiny_tokenizer, tiny_arch, seed=0), tiny_tokenizer,
                      tmp_path_factory.mktemp("ties") / "sft")


# ------------------------------------------------------------------------------------ rm train / rm eval
def _tied_rankings(n_prompts: int, seed: int) -> list[dict]:
    """Two rankings of 4 responses per prompt, each with one tie (a pair or a triple) somewhere."""
    rng = random.Random(seed)
    recs = []
    for i in range(2 * n_prompts):
        responses = [" " + " ".join(rng.choice(WORDS) for _ in range(4)) + f" {k}" for k in range(4)]
        order = rng.sample(range(4), 4)
        tied_pair, tied_triple = [[order[0], order[1]], order[2], order[3]], [order[0], order[1:]]
        ranking = tied_pair if i < n_prompts else tied_triple  # each prompt: one of each
        recs.append({"prompt": f"p{i % n_prompts}", "responses": responses, "ranking": ranking,
                     "likert": [rng.randint(1, 7) for _ in range(4)]})
    return recs


@pytest.mark.parametrize("extra", [["--loss", "bt"], ["--loss", "pl"], ["--loss", "bt", "--margin", "0.5"]])
def test_rm_trains_and_evaluates_on_rankings_with_ties(tmp_path, sft_dir, capsys, extra):
    write_jsonl(tmp_path / "rank.jsonl", _tied_rankings(12, seed=0))
    out = tmp_path / "run"
    code = cli.main(["rm", "train", "--data.train", str(tmp_path / "rank.jsonl"), "--model.name", str(sft_dir),
                     "--data.eval-fraction", "0.25", "--train.max-steps", "1", "--train.batch-size", "4",
                     "--train.progress", "False", "--out", str(out), *extra])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["step"] == 1 and summary["data"]["kind"] == "rankings"
    assert summary["data"]["train"]["records_dropped_all_tied"] == 0
    assert summary["data"]["split"] == {"train_prompts": 9, "eval_prompts": 3, "shared_prompts": 0}
    # 3 held-out prompts x 2 rankings: a tied pair drops 1 of the 6 pairs, a tied triple 3 -> 3 * (5 + 3)
    assert summary["held_out"]["n"] == 3 * (5 + 3)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(v is not None for row in metrics for v in row.values())  # finite losses
    code = cli.main(["rm", "eval", "--model", str(out / "model"), "--data", str(tmp_path / "rank.jsonl"),
                     "--out", str(tmp_path / "eval.json")])
    assert code == 0
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 12 * (5 + 3)
