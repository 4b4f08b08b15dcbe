"""Inter-labeler agreement: pure functions over plain lists, so every number can be checked by hand.

InstructGPT (Ouyang et al. 2022, sec. 5.1) reports that training labelers agree with each other on 72.6 +- 1.5%
of pairwise comparisons; `pairwise_agreement` computes that figure. Krippendorff's alpha (interval metric) measures
agreement on the 1-7 Likert scores; it handles any number of labelers per item and missing values.
"""

from __future__ import annotations

from itertools import combinations


def preferred_pairs(ranking: list[int]) -> set[tuple[int, int]]:
    """All (better, worse) response-index pairs implied by a best-first ranking: C(K, 2) of them."""
    return {(ranking[a], ranking[b]) for a, b in combinations(range(len(ranking)), 2)}


def ranking_agreement(first: list[int], second: list[int]) -> tuple[int, int]:
    """(agreeing, compared) response pairs between two labelers' rankings of the same K responses."""
    shared = preferred_pairs(first) & preferred_pairs(second)
    return len(shared), len(first) * (len(first) - 1) // 2


def pairwise_agreement(rankings_by_item: dict[str, dict[str, list[int]]]) -> tuple[int, int]:
    """(agreeing, compared) over every item, every pair of its labelers, every pair of its responses.

    rankings_by_item[item][labeler] is that labeler's best-first ranking. agreeing / compared is the
    InstructGPT inter-labeler agreement rate; items with a single labeler contribute nothing.
    """
    agree = total = 0
    for by_labeler in rankings_by_item.values():
        for first, second in combinations(sorted(by_labeler), 2):
            a, n = ranking_agreement(by_labeler[first], by_labeler[second])
            agree, total = agree + a, total + n
    return agree, total


def item_disagreement(by_labeler: dict[str, list[int]]) -> float | None:
    """Fraction of (labeler pair, response pair) comparisons on one item that disagree; None if < 2 labelers."""
    agree, total = pairwise_agreement({"item": by_labeler})
    return None if total == 0 else 1.0 - agree / total


def krippendorff_alpha_interval(units: list[list[float]]) -> float | None:
    """Krippendorff's alpha with the interval metric (v - v')^2.

    units: one list per unit (here: an (item, response) pair) of the values the labelers gave it; units with
    fewer than two values are not pairable and are dropped. alpha = 1 - D_o / D_e with
        D_o = 1/n * sum_u 1/(m_u - 1) * sum_{i != j in u} (v_i - v_j)^2
        D_e = 1/(n (n - 1)) * sum_{i != j over all pairable values} (v_i - v_j)^2
    (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"). Returns None when it is undefined:
    no pairable values, or every value identical (D_e = 0).
    """
    pairable = [u for u in units if len(u) >= 2]
    values = [v for u in pairable for v in u]
    n = len(values)
    if n < 2:
        return None
    observed = sum(_sum_sq_diffs(u) / (len(u) - 1) for u in pairable) / n
    expected = _sum_sq_diffs(values) / (n * (n - 1))
    return None if expected == 0 else 1.0 - observed / expected


def _sum_sq_diffs(values: list[float]) -> float:
    """sum over ordered pairs i != j of (v_i - v_j)^2 = 2 * (n * sum v^2 - (sum v)^2); O(n) not O(n^2)."""
    n, s, s2 = len(values), sum(values), sum(v * v for v in values)
    return 2.0 * (n * s2 - s * s)
