"""Gold scorers and automatic labelers: VADER, scorer specs, ties, provenance, rankings, Bradley-Terry noise."""

from __future__ import annotations

import json
import math
import random
import sys
import types

import pytest

from rlhfkit.data import read_records, validate
from rlhfkit.errors import RlhfkitError
from rlhfkit.labeling import auto, gold


def length_score(prompts, responses):
    """A scorer defined here, used through the 'module:function' spec: longer is better."""
    return [float(len(r)) for r in responses]


def test_vader_prefers_positive_text():
    pos, neg = gold.vader_score(["The movie was"] * 2, ["wonderful, I loved it.", "awful, I hated it."])
    assert pos > 0.5 and neg < -0.5
    assert gold.vader_score(["The movie"], ["is blue."]) == [0.0]  # no sentiment words: exactly 0


def test_module_function_spec_and_bad_specs():
    scorer = gold.make_scorer(f"{__name__}:length_score")
    assert scorer(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]
    assert gold.make_scorer("vader") is gold.vader_score
    with pytest.raises(RlhfkitError, match="cannot import module 'no_such_module_xyz'"):
        gold.make_scorer("no_such_module_xyz:f")
    with pytest.raises(RlhfkitError, match="has no function 'missing'"):
        gold.make_scorer(f"{__name__}:missing")
    with pytest.raises(RlhfkitError, match="unknown judge 'sentiment'"):
        gold.make_scorer("sentiment")


def test_rm_spec_loads_lazily_through_reward_module(monkeypatch):
    fake = types.ModuleType("rlhfkit.reward")
    fake.load_reward_scorer = lambda path, norm_reference=None: (lambda prompts, responses: [float(path == "ckpt")] * len(responses))
    monkeypatch.setitem(sys.modules, "rlhfkit.reward", fake)
    assert gold.make_scorer("rm:ckpt")(["p"], ["r"]) == [1.0]
    assert gold.scorer_source("rm:ckpt") == "rm" and gold.scorer_source("vader") == "gold"
    assert gold.scorer_source("hf:") == gold.scorer_source("openai:gpt-4o-mini") == "ai"
    monkeypatch.setitem(sys.modules, "rlhfkit.reward", None)  # makes the import fail
    with pytest.raises(RlhfkitError, match="load_reward_scorer"):
        gold.make_scorer("rm:ckpt")


def test_scorer_returning_wrong_number_is_a_clear_error():
    with pytest.raises(RlhfkitError, match="returned 1 scores for 2 responses"):
        auto.label_candidates([{"prompt": "p", "responses": ["a", "b"]}], lambda p, r: [0.0], labeler_name="bad")


def _candidates():
    return [
        {"prompt": "p1", "responses": ["a", "abc", "ab"], "policy": "sft"},  # lengths 1, 3, 2: no ties
        {"prompt": "p2", "responses": ["xy", "zw", "xyz"], "policy": "sft"},  # "xy" ties "zw"
    ]


def test_pairs_order_by_score_and_drop_ties():
    records, counts = auto.label_candidates(_candidates(), length_score, labeler_name=f"{__name__}:length_score")
    assert counts["ties_dropped"] == 1 and counts["records"] == 5 and counts["candidates"] == 2
    assert {(r["chosen"], r["rejected"]) for r in records} == {
        ("abc", "a"), ("ab", "a"), ("abc", "ab"), ("xyz", "xy"), ("xyz", "zw")}
    for r in records:
        validate(r, "preferences", ("test", None))
        label = r["label"]
        assert label["source"] == "gold" and label["labeler"] == f"{__name__}:length_score"
        assert label["time"].endswith("+00:00") and label["temperature"] == 0.0 and label["seed"] == 0
        assert label["scores"] == [len(r["chosen"]), len(r["rejected"])] and label["policy"] == "sft"


def test_identical_responses_are_dropped():
    _, counts = auto.label_candidates([{"prompt": "p", "responses": ["a", "a", "bb"]}], length_score)
    assert counts["identical_dropped"] == 1 and counts["records"] == 2


def test_empty_responses_are_dropped_and_counted():
    cands = [{"prompt": "p", "responses": ["", "a", "bb"]}, {"prompt": "q", "responses": ["  ", "a"]}]
    records, counts = auto.label_candidates(cands, length_score)
    assert [(r["chosen"], r["rejected"]) for r in records] == [("bb", "a")]
    assert counts["empty_dropped"] == 3 and counts["records"] == 1
    ranked, counts = auto.label_candidates(cands, length_score, mode="rankings")
    assert len(ranked) == 1 and ranked[0]["responses"] == ["a", "bb"] and ranked[0]["ranking"] == [1, 0]
    assert ranked[0]["label"]["scores"] == [1.0, 2.0]
    assert counts["empty_dropped"] == 2 and counts["too_few_responses"] == 1
    validate(ranked[0], "rankings", ("test", None))


def test_rankings_are_permutations_and_ties_are_kept_as_tied_groups():
    records, counts = auto.label_candidates(_candidates(), length_score, mode="rankings")
    assert counts["ties_dropped"] == 0 and counts["rankings_with_ties"] == 1 and len(records) == 2
    assert records[1]["ranking"] == [2, [0, 1]]  # "xy" and "zw" tie
    assert records[0]["ranking"] == [1, 2, 0] and records[0]["label"]["scores"] == [1.0, 3.0, 2.0]
    many = [{"prompt": "p", "responses": ["a" * k for k in range(1, 6)]}] * 50
    noisy, _ = auto.label_candidates(many, length_score, mode="rankings", temperature=2.0, seed=3)
    for r in noisy:
        validate(r, "rankings", ("test", None))
    assert len({tuple(r["ranking"]) for r in noisy}) > 1  # the noise does reorder


def test_bradley_terry_noise_matches_sigmoid():
    rng = random.Random(0)
    n = 20000
    wins = sum(auto.noisy_preference(1.0, 0.0, 1.0, rng) for _ in range(n))
    p = 1 / (1 + math.exp(-1.0))  # 0.7311
    assert abs(wins / n - p) < 4 * math.sqrt(p * (1 - p) / n)
    assert auto.noisy_preference(0.2, 0.1, 0.0, rng) and not auto.noisy_preference(0.1, 0.2, 0.0, rng)
    # Plackett-Luce with K = 2 is the same Bradley-Terry probability
    first = sum(auto.noisy_ranking([1.0, 0.0], 1.0, rng)[0] == 0 for _ in range(n))
    assert abs(first / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_noisy_labeler_agreement_near_73_percent():
    rng = random.Random(1)
    candidates = [{"prompt": f"p{i}", "responses": [f"r{i}a", f"r{i}b"]} for i in range(4000)]
    scores = {f"r{i}{s}": rng.gauss(0, 1) for i in range(4000) for s in "ab"}
    scorer = lambda prompts, responses: [scores[r] for r in responses]  # noqa: E731
    gaps = [scores[c["responses"][0]] - scores[c["responses"][1]] for c in candidates]
    temperature = auto.temperature_for_agreement(gaps, 0.73)
    assert auto.expected_agreement(gaps, temperature) == pytest.approx(0.73, abs=1e-6)
    records, _ = auto.label_candidates(candidates, scorer, temperature=temperature, seed=5)
    agree = sum(scores[r["chosen"]] > scores[r["rejected"]] for r in records) / len(records)
    assert abs(agree - 0.73) < 4 * math.sqrt(0.73 * 0.27 / len(records))  # 4 sigma: ~0.028


def test_cli_labels_a_candidates_file(tmp_path, capsys):
    cands = tmp_path / "candidates.jsonl"
    cands.write_text("\n".join(json.dumps(c) for c in _candidates()), encoding="utf-8")
    out = tmp_path / "prefs.jsonl"
    argv = ["--candidates", str(cands), "--judge", f"{__name__}:length_score", "--out", str(out)]
    assert auto.main(argv) == 0
    assert len(read_records(out, "preferences")) == 5
    assert json.loads(capsys.readouterr().out) == {"candidates": 2, "ties_dropped": 1, "records": 5}
    assert auto.main(argv[:-1] + [str(out), "--mode", "rankings", "--temperature", "0.5", "--seed", "1"]) == 0
    assert len(read_records(out, "rankings")) == 2  # T > 0: the tie is ordered at random, the record kept
