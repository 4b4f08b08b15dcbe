"""`label auto --mode rankings` keeps rankings with tied scores: a tied group at T = 0, a random order at T > 0,
counted; only records whose responses all tie are dropped. Repeated texts are repeats, not ties."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

from rlhfkit import cli
from rlhfkit.data import ranking_to_pairs, read_records, validate
from rlhfkit.labeling import auto, gold


def length_score(prompts, responses):
    """Longer is better (used through the 'module:function' spec as well)."""
    return [float(len(r)) for r in responses]


def test_tied_ranking_groups_equal_scores():
    assert auto.tied_ranking([1.0, 3.0, 1.0, 0.0]) == [1, [0, 2], 3]
    assert auto.tied_ranking([1.0, 3.0, 2.0]) == [1, 2, 0]  # no ties: a plain permutation, as before
    assert auto.tied_ranking([0.0, 5.0, 0.0, 5.0]) == [[1, 3], [0, 2]]


def test_rankings_with_ties_are_kept_as_tied_groups_and_counted():
    cands = [
        {"prompt": "p1", "responses": ["a", "abc", "ab"], "policy": "sft"},  # lengths 1, 3, 2: no tie
        {"prompt": "p2", "responses": ["xy", "zw", "xyz", "q"], "policy": "sft"},  # "xy" ties "zw"
        {"prompt": "p3", "responses": ["aa", "bb"], "policy": "sft"},  # all tied: nothing to learn
    ]
    records, counts = auto.label_candidates(cands, length_score, mode="rankings")
    assert [r["ranking"] for r in records] == [[1, 2, 0], [2, [0, 1], 3]]
    assert records[1]["label"]["scores"] == [2.0, 2.0, 3.0, 1.0]
    assert counts["rankings_with_ties"] == 1 and counts["ties_dropped"] == 1 and counts["records"] == 2
    for r in records:
        validate(r, "rankings", ("test", None))
    pairs = ranking_to_pairs(records[1])
    assert len(pairs) == 5 and ("xy", "zw") not in {(p["chosen"], p["rejected"]) for p in pairs}


def test_repeated_texts_are_dropped_as_repeats_not_counted_as_ties():
    cands = [{"prompt": "p", "responses": ["ab", "c", "ab", "", "def"]}]
    records, counts = auto.label_candidates(cands, length_score, mode="rankings")
    assert records[0]["responses"] == ["ab", "c", "def"] and records[0]["ranking"] == [2, 0, 1]
    assert records[0]["label"]["scores"] == [2.0, 1.0, 3.0]
    assert counts["identical_dropped"] == 1 and counts["empty_dropped"] == 1 and counts["rankings_with_ties"] == 0


def test_noisy_rankings_order_tied_responses_at_random():
    """T > 0: equal scores get independent Gumbel noise, so each order of a tie is equally likely; an all-tied
    record is still dropped (its ranking would be noise only)."""
    n = 4000
    cands = [{"prompt": f"p{i}", "responses": ["xy", "zw", "abcdefgh"]} for i in range(n)]
    cands.append({"prompt": "tied", "responses": ["aa", "bb"]})
    records, counts = auto.label_candidates(cands, length_score, mode="rankings", temperature=0.5, seed=2)
    assert counts["rankings_with_ties"] == n and counts["ties_dropped"] == 1 and len(records) == n
    for r in records[:50]:
        validate(r, "rankings", ("test", None))
        assert all(isinstance(i, int) for i in r["ranking"])  # a sampled ranking has no tied groups
    first = sum(r["ranking"].index(0) < r["ranking"].index(1) for r in records) / n
    assert abs(first - 0.5) < 4 * math.sqrt(0.25 / n)  # 4 sigma: ~0.032


def test_pairs_mode_counts_ties_per_pair_at_any_temperature():
    cands = [{"prompt": "p", "responses": ["xy", "zw", "xyz", "xy"]}]
    for temperature in (0.0, 1.0):
        records, counts = auto.label_candidates(cands, length_score, temperature=temperature)
        # pairs: (xy, zw) tie, (xy, xy) identical, (zw, xy#2) tie; 3 ordered by score
        assert counts["ties_dropped"] == 2 and counts["identical_dropped"] == 1 and len(records) == 3


def test_vader_zero_scores_tie_and_the_ranking_is_kept():
    """VADER gives exactly 0.0 to text without sentiment words: the demo's most common tie."""
    cands = [{"prompt": "The movie", "responses": [" is blue.", " was wonderful, I loved it.", " is long.",
                                                   " was awful, I hated it."]}]
    records, counts = auto.label_candidates(cands, gold.vader_score, mode="rankings", labeler_name="vader")
    assert records[0]["ranking"] == [1, [0, 2], 3] and counts["rankings_with_ties"] == 1


def test_cli_label_auto_rankings_keeps_ties(tmp_path, capsys):
    cands = tmp_path / "candidates.jsonl"
    lines = [{"prompt": "p1", "responses": ["a", "abc", "ab"]}, {"prompt": "p2", "responses": ["xy", "zw", "xyz"]},
             {"prompt": "p3", "responses": ["aa", "bb"]}]
    cands.write_text("".join(json.dumps(c) + "\n" for c in lines), encoding="utf-8")
    out = tmp_path / "rankings.jsonl"
    code = cli.main(["label", "auto", "--candidates", str(cands), "--out", str(out), "--judge",
                     f"{__name__}:length_score", "--mode", "rankings"])
    assert code == 0
    counts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert counts["rankings_with_ties"] == 1 and counts["ties_dropped"] == 1 and counts["records"] == 2
    assert [r["ranking"] for r in read_records(out, "rankings")] == [[1, 2, 0], [2, [0, 1]]]


def test_many_tied_candidates_keep_most_records():
    """The reported case: most records hold some tie; only the all-tied ones go."""
    rng = random.Random(0)
    cands = [{"prompt": f"p{i}", "responses": ["a" * rng.randint(1, 3) + f"{k}" for k in range(4)]}
             for i in range(200)]
    records, counts = auto.label_candidates(cands, length_score, mode="rankings")
    lengths = [Counter(len(r) for r in c["responses"]) for c in cands]
    all_tied = sum(len(c) == 1 for c in lengths)
    with_ties = sum(1 < len(c) < 4 for c in lengths)
    assert counts["ties_dropped"] == all_tied and counts["rankings_with_ties"] == with_ties
    assert len(records) == 200 - all_tied and with_ties > 150
