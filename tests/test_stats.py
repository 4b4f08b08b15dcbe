"""rlhfkit.stats against numbers worked out by hand (z_0.975 = 1.959964, z^2 = 3.841459)."""

import itertools
import math

import numpy as np
import pytest
import torch

from rlhfkit.stats import (
    BetaKLFit,
    FrontierComparison,
    calibration_table,
    compare_frontiers,
    fit_beta_kl,
    fit_frontier,
    frontier,
    length_slope,
    mean_ci,
    paired_gain,
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


# ---- compare_frontiers: hand-checkable cases ------------------------------------------------------------------


def _checkpoint(rewards, kls):
    return {"rewards": np.asarray(rewards, dtype=float), "kls": np.asarray(kls, dtype=float)}


def _hand_method(rng, kls, prompts=16):
    """Checkpoints at the given mean KLs with arbitrary per-prompt values (rewards and KLs vary by prompt)."""
    return [_checkpoint(rng.normal(0.1 * math.sqrt(k), 0.2, prompts), k + rng.normal(0.0, 0.5, prompts))
            for k in kls]


def test_compare_frontiers_identical_methods_have_gap_exactly_zero():
    rng = np.random.default_rng(1)
    method = _hand_method(rng, [1.0, 3.0, 6.0])
    ref = {"rewards": rng.normal(0.0, 0.2, 16)}
    result = compare_frontiers(method, [dict(c) for c in method], ref, n_boot=200)
    assert isinstance(result, FrontierComparison)
    assert (result.gap, result.low, result.high, result.se, result.winner) == (0.0, 0.0, 0.0, 0.0, None)
    assert (result.n_prompts, result.n_boot, result.confidence) == (16, 200, 0.95)
    assert result.kl_max == pytest.approx(max(float(np.mean(c["kls"])) for c in method))


def test_compare_frontiers_recovers_a_shift_inside_the_model_exactly():
    # The fit is anchored at the reference (KL 0), so a constant reward offset c is not in the model's span
    # (r_ref + alpha*sqrt(KL) + beta*KL); an offset c * sqrt(KL_c) at each checkpoint is: it moves a's alpha by
    # exactly c, so gap = c * mean(sqrt(grid)) over the 64-point grid of [0, kl_max], to rounding.
    rng = np.random.default_rng(2)
    b = _hand_method(rng, [0.5, 2.0, 4.0, 8.0])
    c = 0.3
    a = [_checkpoint(ck["rewards"] + c * math.sqrt(np.mean(ck["kls"])), ck["kls"]) for ck in b]
    ref = {"rewards": rng.normal(0.0, 0.2, 16), "kls": np.zeros(16)}  # the reference's kls are allowed
    result = compare_frontiers(a, b, ref, n_boot=300)
    kl_max = float(np.mean(b[-1]["kls"]))
    assert result.kl_max == pytest.approx(kl_max)
    assert result.gap == pytest.approx(c * np.sqrt(np.linspace(0.0, kl_max, 64)).mean(), abs=1e-9)
    assert result.winner == "a" and result.low > 0  # 0.3 * ~1.8 against prompt noise of sd 0.2 / sqrt(16)
    swapped = compare_frontiers(b, a, ref, n_boot=300)
    assert swapped.gap == pytest.approx(-result.gap, abs=1e-12) and swapped.winner == "b"


def test_compare_frontiers_on_checkpoints_exactly_on_a_gao_curve():
    # Every prompt of a checkpoint at KL k gets reward 1 + 0.2 sqrt(k) - 0.01 k (a) or 1 + 0.1 sqrt(k) (b, one
    # checkpoint: alpha only); the reference gets 1. gap = 0.1 mean(sqrt g) - 0.01 mean(g) over g in [0, 4].
    ones = np.ones(4)
    a = [_checkpoint((1 + 0.2 * math.sqrt(k) - 0.01 * k) * ones, k * ones) for k in (1.0, 4.0, 9.0)]
    b = [_checkpoint((1 + 0.1 * math.sqrt(4.0)) * ones, 4.0 * ones)]
    result = compare_frontiers(a, b, {"rewards": ones}, n_boot=50)
    grid = np.linspace(0.0, 4.0, 64)
    assert result.kl_max == 4.0
    assert result.gap == pytest.approx(0.1 * np.sqrt(grid).mean() - 0.01 * grid.mean(), abs=1e-12)
    assert result.se == pytest.approx(0.0, abs=1e-12)  # no prompt-to-prompt variation: nothing to resample


def test_compare_frontiers_accepts_objects_tensors_and_reports_plain_values():
    class Checkpoint:
        def __init__(self, rewards, kls):
            self.rewards, self.kls = rewards, kls

    rng = np.random.default_rng(3)
    b = _hand_method(rng, [1.0, 4.0])
    a = [Checkpoint(torch.tensor(c["rewards"] + 0.5), torch.tensor(c["kls"])) for c in b]
    ref = Checkpoint(list(rng.normal(0.0, 0.2, 16)), None)
    result = compare_frontiers(a, b, ref, n_boot=100, confidence=0.9)
    assert result.winner == "a" and result.confidence == 0.9
    z = 1.6448536 + 0.8416212  # z_0.95 (two-sided 90%) + z_0.80
    assert result.mde == pytest.approx(z * result.se, rel=1e-6)
    d = result.to_dict()
    assert set(d) == {"gap", "low", "high", "se", "winner", "kl_max", "mde", "confidence", "n_prompts", "n_boot"}
    assert all(type(v) in (float, int, str) for k, v in d.items()), d
    assert compare_frontiers(a, b, ref, n_boot=100, seed=7) == compare_frontiers(a, b, ref, n_boot=100, seed=7)


def test_compare_frontiers_rejects_bad_inputs_clearly():
    rng = np.random.default_rng(4)
    a = _hand_method(rng, [1.0, 2.0])
    ref = {"rewards": np.zeros(16)}
    with pytest.raises(ValueError, match="a is empty"):
        compare_frontiers([], a, ref)
    short = a + [_checkpoint(np.zeros(15), np.ones(15))]
    with pytest.raises(ValueError, match=r"b\[2\]\.rewards has 15 values .* 16"):
        compare_frontiers(a, short, ref)
    with pytest.raises(ValueError, match=r"a\[1\]\.kls has 3 values"):
        compare_frontiers([a[0], _checkpoint(np.zeros(16), np.ones(3))], a, ref)
    with pytest.raises(ValueError, match=r"a\[0\] has no 'kls'"):
        compare_frontiers([{"rewards": np.zeros(16)}], a, ref)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        compare_frontiers([_checkpoint([1.0], [1.0])], [_checkpoint([1.0], [1.0])], {"rewards": [0.0]})
    unmoved = [_checkpoint(np.ones(16), np.zeros(16)), _checkpoint(np.ones(16), -np.ones(16))]
    with pytest.raises(ValueError, match="never moved away from the reference"):
        compare_frontiers(unmoved, a, ref)


# ---- compare_frontiers: the verdict procedure against a known truth ------------------------------------------
# P = 128 prompts. A prompt effect (sd 0.3) is shared by the reference and every checkpoint of both methods, so
# pairing matters; independent noise has sd 0.45, so a checkpoint's reward has SE 0.45 / sqrt(128) = 0.040
# beyond the prompt effect; per-prompt KLs have sd 3 (KL SE 0.27). True frontier (Gao et al. 2022 form):
# R(KL) = 0.1 sqrt(KL) - 0.005 KL. n checkpoints lie at KL 12 * (1..n) / n, like snapshots of one run whose
# last one is at KL 12 (so n = 1 is the final model only). The simulations use n_boot = 200 for speed.

PROMPTS, REWARD_SE = 128, 0.45 / math.sqrt(128)


def _truth(kl, shift=0.0):
    return 0.1 * np.sqrt(kl) - 0.005 * kl + shift


def _sim_method(rng, prompt_effect, kls, truth):
    return [_checkpoint(truth(k) + prompt_effect + rng.normal(0.0, 0.45, PROMPTS),
                        k + rng.normal(0.0, 3.0, PROMPTS)) for k in kls]


def _simulate(rng, n_a, n_b, truth_a=_truth, truth_b=_truth, extra_a=(), extra_b=()):
    """(a, b, reference): a with n_a checkpoints (plus ones at KLs `extra_a`), b with n_b (plus `extra_b`)."""
    prompt_effect = rng.normal(0.0, 0.3, PROMPTS)
    ref = {"rewards": _truth(0.0) + prompt_effect + rng.normal(0.0, 0.45, PROMPTS)}
    kls_a = [*extra_a, *(12.0 * np.arange(1, n_a + 1) / n_a)]
    kls_b = [*extra_b, *(12.0 * np.arange(1, n_b + 1) / n_b)]
    return _sim_method(rng, prompt_effect, kls_a, truth_a), _sim_method(rng, prompt_effect, kls_b, truth_b), ref


def _verdicts(reps, seed, **setting):
    rng = np.random.default_rng(seed)
    return [compare_frontiers(*_simulate(rng, **setting), n_boot=200, seed=i) for i in range(reps)]


@pytest.mark.parametrize("n_a", [1, 7, 28])
def test_equal_frontiers_rarely_get_a_verdict_whatever_the_checkpoint_counts(n_a):
    # Nominal false-verdict rate is 5% (two-sided 95% interval). Over 200 reps its binomial SD is
    # sqrt(0.05 * 0.95 / 200) = 1.5%, so 12% is 4.5 SD above nominal: a failure means a real excess, e.g. the
    # winner following the checkpoint count (a running maximum over 28 vs 1 checkpoints loses ~always here).
    # Known residual bias, n_a = 1: one checkpoint fits alpha alone, the chord (in sqrt(KL)) of the concave
    # truth, which lies below it inside [0, 12] by 0.005 * 12 / 6 = 0.01 on average (~0.35 SE of the gap), so
    # "b" (more checkpoints) comes out ~8% of the time instead of 2.5% (measured over 400 reps); hence the bound
    # on each direction is 0.10 rather than ~0.06.
    results = _verdicts(200, seed=10 + n_a, n_a=n_a, n_b=28)
    false_rate = np.mean([r.winner is not None for r in results])
    assert false_rate <= 0.12, false_rate
    assert np.mean([r.winner == "a" for r in results]) <= 0.10
    assert np.mean([r.winner == "b" for r in results]) <= 0.10


@pytest.mark.parametrize("n_a, power", [(1, 0.55), (7, 0.80), (28, 0.80)])
def test_a_frontier_better_by_three_standard_errors_is_found(n_a, power):
    # a's checkpoints are 3 SE (0.119) above b's curve at every KL > 0. The fitted curve starts at the shared
    # reference (KL 0), so the averaged gap is smaller than 0.119: ~0.112 with 7 or 28 checkpoints (found
    # 100% of the time over 400 reps), but ~0.069 with a's single checkpoint at KL 12 (alpha alone, then the
    # chord bias above), found ~68% of the time. The comparison says so itself: its mde (~0.083) exceeds 0.069.
    results = _verdicts(200, seed=20 + n_a, n_a=n_a, n_b=28,
                        truth_a=lambda kl: _truth(kl, 3 * REWARD_SE))
    assert np.mean([r.winner == "a" for r in results]) >= power
    assert not any(r.winner == "b" for r in results)
    if n_a == 1:
        assert np.median([r.mde for r in results]) > np.median([r.gap for r in results])


@pytest.mark.parametrize("early", ["a", "b"])
def test_one_early_checkpoint_below_the_other_methods_range_does_not_flip_the_verdict(early):
    # a is better by 3 SE, 7 checkpoints each (smallest KL 12 / 7 = 1.7). One more checkpoint at KL 0.3 for
    # `early`, where point-matching rules compared, is one point among eight for the fitted curve: on the same
    # data with and without it the verdict is "a" and the gap moves by well under its standard error.
    rng = np.random.default_rng(30)
    shifted = lambda kl: _truth(kl, 3 * REWARD_SE)  # noqa: E731
    same, moves, ses = [], [], []
    for i in range(100):
        a, b, ref = _simulate(rng, 7, 7, truth_a=shifted, **{f"extra_{early}": (0.3,)})
        with_early = compare_frontiers(a, b, ref, n_boot=200, seed=i)
        without = compare_frontiers(*((a[1:], b) if early == "a" else (a, b[1:])), ref, n_boot=200, seed=i)
        same.append(with_early.winner == without.winner == "a")
        moves.append(abs(with_early.gap - without.gap))
        ses.append(without.se)
    assert np.mean(same) >= 0.95
    assert np.mean(moves) < 0.5 * np.mean(ses)


def test_bootstrap_interval_covers_the_true_gap_at_its_nominal_rate():
    # a: 0.13 sqrt(KL) - 0.005 KL, b: 0.1 sqrt(KL) - 0.005 KL, so the true gap over [0, kl_max] is
    # 0.03 * mean(sqrt(grid)) (~0.07 at kl_max = 12). 200 reps: nominal 95%, binomial SD 1.5%.
    rng = np.random.default_rng(40)
    covered = []
    for i in range(200):
        a, b, ref = _simulate(rng, 7, 28, truth_a=lambda kl: _truth(kl) + 0.03 * np.sqrt(kl))
        result = compare_frontiers(a, b, ref, n_boot=200, seed=i)
        true_gap = 0.03 * np.sqrt(np.linspace(0.0, result.kl_max, 64)).mean()
        covered.append(result.low <= true_gap <= result.high)
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)


# ---- length control ------------------------------------------------------------------------------------------


def test_length_slope_by_hand():
    # rewards = 0.1 * length + a per-checkpoint offset: the within-checkpoint slope is exactly 0.1
    first = {"rewards": [0.1 * n + 1.0 for n in (10, 20, 30)], "lengths": [10, 20, 30], "kls": [1.0, 2.0, 3.0]}
    second = {"rewards": [0.1 * n - 2.0 for n in (5, 40)], "lengths": [5, 40]}
    assert length_slope([first, second]) == pytest.approx(0.1)
    # pooling: x = [-1, 1] (y = [0, 2]) and x = [-2, 2] (y = [-2, 2]): sum(xy) / sum(xx) = (2 + 8) / (2 + 8) = 1
    assert length_slope([{"rewards": [0.0, 2.0], "lengths": [1, 3]},
                         {"rewards": [-2.0, 2.0], "lengths": [0, 4]}]) == pytest.approx(1.0)
    assert length_slope([{"rewards": [1.0, 5.0], "lengths": [7, 7]}]) == 0.0  # lengths never vary
    with pytest.raises(ValueError, match=r"checkpoints\[0\]\.lengths has 1 values"):
        length_slope([{"rewards": [1.0, 2.0], "lengths": [3]}])
    with pytest.raises(ValueError, match="no checkpoints"):
        length_slope([])


def test_paired_gain_raw_and_length_controlled_by_hand():
    # reference: reward = 0.1 * length; the checkpoint writes 10 tokens longer on every prompt and gains exactly
    # that: raw gain 1.0 in every resample, and 0 once moved to the reference's length (slope 0.1 in both)
    ref = {"rewards": [0.1 * n for n in (10, 12, 14, 16)], "lengths": [10, 12, 14, 16]}
    longer = {"rewards": [0.1 * n for n in (20, 22, 24, 26)], "lengths": [20, 22, 24, 26]}
    raw = paired_gain(longer, ref, n_boot=50)
    assert (raw.mean, raw.low, raw.high, raw.n) == (pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0), 4)
    controlled = paired_gain(longer, ref, control_length=True, n_boot=50)
    assert controlled.mean == pytest.approx(0.0, abs=1e-12) and abs(controlled.low) < 1e-9 > abs(controlled.high)


def test_frontier_gain_bought_with_length_disappears_under_control():
    rng = np.random.default_rng(3)
    P = 200

    def ckpt(kl, base):  # reward depends on length only: 0.02 per token + noise
        lengths = base + rng.integers(0, 10, P).astype(float)
        return {"rewards": 0.02 * lengths + rng.normal(0, 0.3, P), "kls": kl + rng.normal(0, 0.5, P),
                "lengths": lengths}

    ref = ckpt(0.0, 10.0)
    long_a = [ckpt(k, 30.0) for k in (1.0, 2.0, 3.0)]
    short_b = [ckpt(k, 10.0) for k in (1.0, 2.0, 3.0)]
    raw = compare_frontiers(long_a, short_b, ref, n_boot=300)
    assert raw.winner == "a" and raw.gap > 0.2
    controlled = compare_frontiers(long_a, short_b, ref, n_boot=300, control_length=True)
    assert controlled.winner is None and controlled.low < 0 < controlled.high
    assert controlled.se > raw.se  # the slope's own uncertainty is in the interval
    with pytest.raises(ValueError, match="lengths"):
        compare_frontiers([{"rewards": ref["rewards"], "kls": ref["rewards"]}], short_b, ref, control_length=True)


def test_fit_frontier_recovers_a_curve_through_its_points():
    kls = [1.0, 4.0, 9.0]  # sqrt: 1, 2, 3
    rewards = [0.5 + 0.1 * d - 0.01 * d * d for d in (1.0, 2.0, 3.0)]
    assert fit_frontier(kls, rewards, 0.5) == (pytest.approx(0.1), pytest.approx(-0.01))
    assert fit_frontier([4.0], [0.9], 0.5) == (pytest.approx(0.2), 0.0)  # one point: alpha alone, 0.4 / 2
