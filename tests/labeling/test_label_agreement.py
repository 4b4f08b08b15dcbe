"""Agreement metrics against numbers worked out by hand and a published example."""

import pytest

from rlhfkit.labeling.webapp.agreement import (
    item_disagreement,
    krippendorff_alpha_interval,
    pairwise_agreement,
    preferred_pairs,
    ranking_agreement,
)


def test_preferred_pairs_of_a_ranking_of_three():
    assert preferred_pairs([2, 0, 1]) == {(2, 0), (2, 1), (0, 1)}


def test_ranking_agreement_counts_shared_preferences():
    # A: 0 > 1 > 2, B: 1 > 0 > 2 -> they differ on (0, 1) only: 2 of 3 pairs agree.
    assert ranking_agreement([0, 1, 2], [1, 0, 2]) == (2, 3)
    assert ranking_agreement([0, 1, 2], [2, 1, 0]) == (0, 3)


def test_pairwise_agreement_over_items_and_labeler_pairs():
    rankings = {
        "x": {"a": [0, 1, 2], "b": [1, 0, 2], "c": [0, 1, 2]},  # pairs ab 2/3, ac 3/3, bc 2/3 -> 7/9
        "y": {"a": [0, 1], "b": [1, 0]},  # 0/1
        "z": {"a": [1, 0]},  # one labeler: nothing to compare
    }
    assert pairwise_agreement(rankings) == (7, 10)
    assert item_disagreement(rankings["x"]) == pytest.approx(2 / 9)
    assert item_disagreement(rankings["z"]) is None


def test_krippendorff_alpha_by_hand():
    # units [1,2],[3,4]: n=4, D_o = (1/4)(2 + 2) = 1; all ordered-pair squared diffs = 2*20 = 40,
    # D_e = 40 / (4*3) = 10/3; alpha = 1 - 3/10 = 0.7.
    assert krippendorff_alpha_interval([[1, 2], [3, 4]]) == pytest.approx(0.7)
    assert krippendorff_alpha_interval([[1, 1], [5, 5], [7]]) == pytest.approx(1.0)  # [7] is not pairable
    assert krippendorff_alpha_interval([[3, 3], [3, 3]]) is None  # no variation: undefined
    assert krippendorff_alpha_interval([[4]]) is None


def test_krippendorff_alpha_published_example():
    # Krippendorff (2011) "Computing Krippendorff's alpha-reliability", 4 coders x 12 units with missing
    # values; interval alpha = 0.849 (nominal 0.743).
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[c[u] for c in coders if c[u] is not None] for u in range(12)]
    assert krippendorff_alpha_interval(units) == pytest.approx(0.849, abs=5e-4)
