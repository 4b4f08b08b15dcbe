"""rlhfkit.stats against numbers worked out by hand (z_0.975 = 1.959964, z^2 = 3.841459)."""

import itertools
import math

import numpy as np
import pytest
import torch

from rlhfkit.stats import (
    BetaKLFit,
    calibration_table,
    fit_beta_kl,
    frontier,
    mean_ci,
    pairwise_accuracy,
    predict_beta,
    sequence_kl,
    win_rate,
)


def test_mean_ci_by_hand():
    # mean 2.5; sample std = sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3) = sqrt(5/3) = 1.290994; se = 1.290994 / 2
    # = 0.645497; half-width = 1.959964 * 0.645497 = 1.265151.
    est = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert est.mean == pytest.approx(2.5)
    assert est.se == pytest.approx(0.645497, abs=1e-6)
    assert (est.low, est.high) == pytest.approx((1.234849, 3.765151), abs=1e-6)
    assert est.to_dict() == {"mean": est.mean, "se": est.se, "low": est.low, "high": est.high, "n": 4}


def test_mean_ci_accepts_tensors_and_handles_small_n():
    assert mean_ci(torch.tensor([1.0, 3.0])).mean == pytest.approx(2.0)
    one = mean_ci([0.7])
    assert (one.mean, one.se, one.low, one.high, one.n) == (0.7, 0.0, 0.7, 0.7, 1)
    with pytest.raises(ValueError, match="at least one"):
        mean_ci([])
    with pytest.raises(ValueError, match="entry 1 is nan"):
        mean_ci([1.0, float("nan")])


def _two_token_model(first, second):
    """Autoregressive 2-token sequences over a 3-token vocabulary: p(y1) = first, p(y2 | y1) = second[y1]."""
    return np.array(first), np.array(second)


P = _two_token_model([0.5, 0.3, 0.2], [[0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]])
Q = _two_token_model([0.2, 0.4, 0.4], [[0.3, 0.3, 0.4], [0.2, 0.6, 0.2], [0.5, 0.25, 0.25]])


def _exact_kl(p, q):
    """KL(p || q) by enumerating all 9 sequences: sum_y p(y) log(p(y) / q(y)), p(y) = p(y1) p(y2 | y1)."""
    total = 0.0
    for y1, y2 in itertools.product(range(3), range(3)):
        py, qy = p[0][y1] * p[1][y1][y2], q[0][y1] * q[1][y1][y2]
        total += py * math.log(py / qy)
    return total


def _sample_logratios(p, q, n, seed=0):
    """Per-sample sums over the 2 response tokens of log p(y_t) - log q(y_t), for y ~ p."""
    rng = np.random.default_rng(seed)
    y1 = rng.choice(3, size=n, p=p[0])  # (N,)
    y2 = np.array([rng.choice(3, p=p[1][a]) for a in y1])  # (N,)
    return (np.log(p[0][y1]) - np.log(q[0][y1])) + (np.log(p[1][y1, y2]) - np.log(q[1][y1, y2]))


def test_sequence_kl_matches_exact_kl_of_known_distributions():
    exact = _exact_kl(P, Q)
    assert exact > 0.2  # a real difference, not a near-zero KL that any estimate would match
    est = sequence_kl(_sample_logratios(P, Q, 20000))
    assert est.n == 20000
    assert abs(est.mean - exact) < 4 * est.se


def test_sequence_kl_is_zero_when_policy_equals_reference():
    assert _exact_kl(P, P) == pytest.approx(0.0, abs=1e-12)
    est = sequence_kl(_sample_logratios(P, P, 500))
    assert (est.mean, est.se) == (0.0, 0.0)


def test_win_rate_hand_made_table_with_wilson_bounds():
    # 6 wins, 2 losses, 2 ties -> rate (6 + 1) / 10 = 0.7. Wilson, n = 10:
    # center = (0.7 + 3.841459 / 20) / (1 + 3.841459 / 10) = 0.892073 / 1.384146 = 0.644488
    # half = 1.959964 / 1.384146 * sqrt(0.7 * 0.3 / 10 + 3.841459 / 400) = 1.415999 * 0.174939 = 0.247713
    a = [1, 2, 3, 4, 5, 6, 0, 0, 7, 8]
    b = [0, 1, 2, 3, 4, 5, 1, 1, 7, 8]
    result = win_rate(a, b)
    assert (result.wins, result.losses, result.ties, result.n) == (6, 2, 2, 10)
    assert result.rate == pytest.approx(0.7)
    assert (result.low, result.high) == pytest.approx((0.396775, 0.892201), abs=1e-5)


def test_win_rate_all_wins_keeps_a_nonzero_width_and_tolerance_makes_ties():
    # rate 1, n = 5: center = (1 + 0.384146) / 1.768292 = 0.782760; half = 1.108394 * sqrt(3.841459 / 100)
    # = 0.217242 -> [0.565518, 1.0] (a normal interval would be [1, 1]).
    result = win_rate([1.0] * 5, [0.0] * 5)
    assert (result.low, result.high) == pytest.approx((0.565518, 1.0), abs=1e-5)
    close = win_rate([0.05, 0.0, 0.5], [0.0, 0.05, 0.3], tie_tolerance=0.1)
    assert (close.wins, close.losses, close.ties) == (1, 0, 2)
    with pytest.raises(ValueError, match="paired"):
        win_rate([1.0, 2.0], [1.0])


def test_pairwise_accuracy_counts_ties_as_half():
    # margins [1, 0, -1, 3]: (2 right + 0.5 tie) / 4 = 0.625; mean margin 3 / 4 = 0.75
    result = pairwise_accuracy([2.0, 1.0, 0.0, 3.0], [1.0, 1.0, 1.0, 0.0])
    assert result == {"accuracy": 0.625, "mean_margin": 0.75, "n": 4, "ties": 1}


def test_calibration_table_bins_confidence_by_hand():
    # margins [0.2, -0.2, 0, 3, 3, -3]; edges 0.5, 0.6, ..., 1.0. sigma(0.2) = 0.549834, sigma(0) = 0.5 fall in
    # bin [0.5, 0.6): predicted (2 * 0.549834 + 0.5) / 3 = 0.533223, observed (1 + 0 + 0.5) / 3 = 0.5.
    # sigma(3) = 0.952574 falls in [0.9, 1.0]: predicted 0.952574, observed 2 / 3. Other bins are empty.
    chosen = [0.2, 0.0, 1.0, 3.0, 4.0, 0.0]
    rejected = [0.0, 0.2, 1.0, 0.0, 1.0, 3.0]
    table = calibration_table(chosen, rejected, bins=5)
    assert len(table) == 2
    low, high = table
    assert (low["bin_low"], low["bin_high"], low["n"]) == (0.5, 0.6, 3)
    assert (low["predicted"], low["observed"]) == pytest.approx((0.533223, 0.5), abs=1e-6)
    assert (high["bin_low"], high["bin_high"], high["n"]) == pytest.approx((0.9, 1.0, 3))
    assert (high["predicted"], high["observed"]) == pytest.approx((0.952574, 2 / 3), abs=1e-6)


def test_fit_beta_kl_recovers_an_exact_power_law():
    betas = [0.05, 0.1, 0.5, 1.0, 2.0]
    fit = fit_beta_kl(betas, [3.0 / b for b in betas])  # KL = 3 * beta^-1
    assert fit.slope == pytest.approx(-1.0)
    assert fit.intercept == pytest.approx(math.log(3.0))
    assert fit.r2 == pytest.approx(1.0)
    assert fit.n == 5
    assert predict_beta(fit, 6.0) == pytest.approx(0.5)
    assert fit.to_dict()["slope"] == fit.slope


def test_fit_beta_kl_rejects_bad_inputs_clearly():
    with pytest.raises(ValueError, match="KL must be > 0"):
        fit_beta_kl([0.1, 0.5], [1.0, 0.0])
    with pytest.raises(ValueError, match="2 distinct betas"):
        fit_beta_kl([0.1, 0.1], [1.0, 2.0])
    assert fit_beta_kl([0.1, 0.5, 1.0], [2.0, 2.0, 2.0]).r2 == 0.0  # flat KL: beta explains nothing
    with pytest.raises(ValueError, match="slope is 0"):
        predict_beta(BetaKLFit(slope=0.0, intercept=1.0, r2=0.0, n=3), 2.0)


def test_frontier_keeps_only_pareto_optimal_points_sorted_by_kl():
    points = [(1.0, 0.5), (2.0, 0.4), (0.5, 0.2), (3.0, 0.9), (1.0, 0.3), (0.5, 0.2), (4.0, 0.9)]
    # (2, .4) is beaten by (1, .5); (1, .3) by (1, .5); (4, .9) by (3, .9); the duplicate (.5, .2) is kept once
    assert frontier(points) == [(0.5, 0.2), (1.0, 0.5), (3.0, 0.9)]
    assert frontier([]) == []
