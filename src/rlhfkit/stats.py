"""Pure statistics for evaluation: means with confidence intervals, sequence KL, win rates, reward-model
accuracy and calibration, the log(beta)-log(KL) fit and the reward-vs-KL Pareto frontier.

Imports only numpy and the standard library (tensors are accepted and converted without importing torch).
Every function takes plain sequences / arrays and returns plain numbers, so the sampling code in
`rlhfkit.evaluate` and the report can both use them and the tests can check them against hand-computed values.

Intervals use the normal approximation (quantiles from `statistics.NormalDist`); win rates use the Wilson
score interval (see `win_rate` for why).

Comparing two methods' reward-vs-KL frontiers (`compare_frontiers`): each method's mean reward is fitted as a
function of KL through all of its checkpoints, in the form of Gao et al. 2022 (r_ref + alpha sqrt(KL) +
beta KL, anchored at the reference policy), and the gap is the mean difference of the two curves over the KL
range both methods reach. A paired bootstrap over held-out prompts gives its percentile interval; the verdict
is "a" when the interval lies above zero, "b" when it lies below, and inconclusive otherwise. A running maximum
over checkpoints (`frontier`) is for drawing only: the maximum of many noisy points is biased upwards, so a
verdict built on it follows the number of checkpoints rather than the data. `length_slope` and
`paired_gain` / `compare_frontiers(control_length=True)` move rewards to a common completion length before comparing, for methods that gain reward
by writing longer text.

`bootstrap_statistic` is the same paired bootstrap over prompts for any statistic of several methods' mean
per-prompt values (differences, ratios of means), for findings that are not about reward and KL.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Callable, Mapping, Sequence

import numpy as np


def _as_array(values: Any, name: str) -> np.ndarray:
    """A finite float64 vector from a list, numpy array or torch tensor; a clear error otherwise."""
    if hasattr(values, "detach"):  # a torch tensor: convert without importing torch here
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64).reshape(-1)  # (N,)
    if not np.all(np.isfinite(array)):
        bad = int(np.flatnonzero(~np.isfinite(array))[0])
        raise ValueError(f"{name}: entry {bad} is {array[bad]}; every value must be finite")
    return array


def _paired(a: Any, b: Any, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_array(a, name_a), _as_array(b, name_b)
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has {a.size} values but {name_b} has {b.size}; they must be paired")
    if a.size == 0:
        raise ValueError(f"{name_a} and {name_b} are empty; need at least one pair")
    return a, b


def _z(confidence: float) -> float:
    """Two-sided standard-normal quantile: 1.959964 for 95%."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


@dataclass(frozen=True)
class Estimate:
    """A mean with its standard error and a normal-approximation confidence interval [low, high]."""

    mean: float
    se: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def mean_ci(values: Any, confidence: float = 0.95) -> Estimate:
    """Mean of `values` (N,) with se = sample std (ddof=1) / sqrt(N) and interval mean -/+ z * se.

    N = 0 raises ValueError. N = 1 has no spread to estimate: it returns se = 0 and low = high = mean (a
    zero-width interval that says "one sample", never NaN or inf, so reports and JSON stay well-formed).
    """
    x = _as_array(values, "values")  # (N,)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value, got none")
    mean = float(x.mean())
    se = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else 0.0
    half = _z(confidence) * se
    return Estimate(mean=mean, se=se, low=mean - half, high=mean + half, n=int(x.size))


def sequence_kl(logratios: Any, confidence: float = 0.95) -> Estimate:
    """Monte-Carlo estimate of the sequence-level KL(pi || pi_ref), in nats.

    logratios: (N,) per-sample sums over the response tokens of log pi(y_t) - log pi_ref(y_t), for
    responses y ~ pi. Since KL(pi || pi_ref) = E_{y~pi}[log pi(y) - log pi_ref(y)], the sample mean is an
    unbiased estimate (the "k1" estimator); its standard error is the usual one. Single samples can be
    negative; the mean converges to a non-negative number.
    """
    return mean_ci(logratios, confidence)


@dataclass(frozen=True)
class WinRate:
    """Paired comparison of A against B: counts, rate = (wins + ties / 2) / n, and its 95% interval."""

    wins: int
    losses: int
    ties: int
    n: int
    rate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def wilson_interval(rate: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion `rate` observed over `n` trials (Wilson 1927)."""
    z2 = _z(confidence) ** 2
    center = (rate + z2 / (2 * n)) / (1 + z2 / n)
    half = math.sqrt(z2) / (1 + z2 / n) * math.sqrt(rate * (1 - rate) / n + z2 / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def win_rate(scores_a: Any, scores_b: Any, tie_tolerance: float = 0.0) -> WinRate:
    """Win rate of A over B from paired judge scores (N,) each: A wins where a - b > tie_tolerance.

    The interval is the 95% Wilson score interval on rate with n = N. Why Wilson: it is closed-form and
    deterministic (no seed, no resampling cost), stays inside [0, 1], and keeps near-nominal coverage for
    small n and rates near 0 or 1, where the plain normal interval collapses (rate 1.0 -> width 0).
    Counting a tie as half a win gives a variance no larger than the binomial one, so with ties the
    interval is, if anything, conservative.
    """
    a, b = _paired(scores_a, scores_b, "scores_a", "scores_b")
    if tie_tolerance < 0:
        raise ValueError(f"tie_tolerance must be >= 0, got {tie_tolerance}")
    diff = a - b  # (N,)
    wins, losses = int((diff > tie_tolerance).sum()), int((diff < -tie_tolerance).sum())
    return win_rate_counts(wins, losses, int(diff.size) - wins - losses)


def win_rate_counts(wins: int, losses: int, ties: int) -> WinRate:
    """The WinRate of counted verdicts (a pairwise judge's): rate = (wins + ties / 2) / n with its 95% Wilson
    interval, n = wins + losses + ties (see `win_rate`)."""
    n = wins + losses + ties
    if n == 0:
        raise ValueError("no verdicts to compute a win rate from")
    rate = (wins + 0.5 * ties) / n
    low, high = wilson_interval(rate, n)
    return WinRate(wins=wins, losses=losses, ties=ties, n=n, rate=rate, low=low, high=high)


def pairwise_accuracy(chosen_rewards: Any, rejected_rewards: Any) -> dict[str, float | int]:
    """Reward-model accuracy on held-out pairs (N,): the fraction with r(chosen) > r(rejected).

    An exact tie counts as half right (the model is guessing). mean_margin is mean(r_chosen - r_rejected).
    """
    chosen, rejected = _paired(chosen_rewards, rejected_rewards, "chosen_rewards", "rejected_rewards")
    margin = chosen - rejected  # (N,)
    ties = int((margin == 0).sum())
    accuracy = (float((margin > 0).sum()) + 0.5 * ties) / margin.size
    return {"accuracy": accuracy, "mean_margin": float(margin.mean()), "n": int(margin.size), "ties": ties}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def calibration_table(chosen_rewards: Any, rejected_rewards: Any, bins: int = 5) -> list[dict[str, float | int]]:
    """Is the Bradley-Terry probability sigma(margin) honest? Reliability table over held-out pairs (N,).

    Each pair's confidence is sigma(|r_chosen - r_rejected|) in [0.5, 1]: the model's probability that the
    response it scores higher is the one people chose (this is the symmetrised form of a calibration plot:
    presenting each pair in both orders and binning P(first preferred) gives exactly these bins). The range
    [0.5, 1] is cut into `bins` equal-width bins (the last one closed); for each non-empty bin:
    predicted = mean confidence, observed = accuracy (ties count half). A calibrated model has
    predicted == observed in every bin. Empty bins are omitted.
    """
    chosen, rejected = _paired(chosen_rewards, rejected_rewards, "chosen_rewards", "rejected_rewards")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    margin = chosen - rejected  # (N,)
    confidence = _sigmoid(np.abs(margin))  # (N,)
    correct = np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))  # (N,)
    edges = np.linspace(0.5, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)  # (N,)
    table = []
    for k in range(bins):
        in_bin = index == k
        if in_bin.any():
            table.append({"bin_low": float(edges[k]), "bin_high": float(edges[k + 1]), "n": int(in_bin.sum()),
                          "predicted": float(confidence[in_bin].mean()), "observed": float(correct[in_bin].mean())})
    return table


@dataclass(frozen=True)
class BetaKLFit:
    """Least-squares line log(KL) = slope * log(beta) + intercept, its r^2 and the number of points."""

    slope: float
    intercept: float
    r2: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def fit_beta_kl(betas: Any, kls: Any) -> BetaKLFit:
    """Fit log(KL) against log(beta) for DPO runs that differ only in beta.

    DPO's optimum is pi ∝ pi_ref * exp(r / beta) (DPO paper, eq. 4), so a smaller beta moves further from the
    reference; on a log-log plot the relation is close to a line with negative slope, which `predict_beta`
    inverts to choose beta for a KL budget. Needs every beta and KL > 0 and at least 2 distinct betas.
    r^2 is 1 - SS_res / SS_tot; when every KL is equal SS_tot = 0 and r^2 is reported as 0 (beta explains
    nothing), never NaN.
    """
    beta, kl = _paired(betas, kls, "betas", "kls")
    if np.any(beta <= 0):
        raise ValueError(f"every beta must be > 0 to take its log, got {beta.tolist()}")
    if np.any(kl <= 0):
        raise ValueError(f"every KL must be > 0 to take its log, got {kl.tolist()}; a KL <= 0 means the "
                         "policy has not moved (or too few samples): drop that point or sample more")
    if np.unique(beta).size < 2:
        raise ValueError(f"need at least 2 distinct betas to fit a line, got {np.unique(beta).tolist()}")
    x, y = np.log(beta), np.log(kl)  # (N,), (N,)
    design = np.stack([x, np.ones_like(x)], axis=1)  # (N, 2)
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    ss_res = float(((y - (slope * x + intercept)) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
    return BetaKLFit(slope=float(slope), intercept=float(intercept), r2=r2, n=int(x.size))


def predict_beta(fit: BetaKLFit, target_kl: float) -> float:
    """The beta the fitted line predicts for `target_kl` nats: exp((log KL - intercept) / slope)."""
    if target_kl <= 0:
        raise ValueError(f"target_kl must be > 0 nats, got {target_kl}")
    if fit.slope == 0:
        raise ValueError("the fitted slope is 0: KL does not depend on beta, so no beta sets a KL")
    return math.exp((math.log(target_kl) - fit.intercept) / fit.slope)


def frontier(points: Sequence[Sequence[float]]) -> list:
    """The Pareto-optimal subset of (kl, reward) points, sorted by KL (up-and-left is better).

    A point is dominated when another has KL <= and reward >=, better in at least one. Returns the input
    items themselves (so a tuple may carry extra fields after kl and reward); exact duplicates keep one copy.
    Along the result KL and reward both strictly increase.
    """
    ordered = sorted(points, key=lambda p: (float(p[0]), -float(p[1])))
    kept, best = [], -math.inf
    for point in ordered:
        if float(point[1]) > best:
            kept.append(point)
            best = float(point[1])
    return kept


# ---- comparing reward-vs-KL frontiers -------------------------------------------------------------------------

_GRID_POINTS = 64  # KL grid over [0, kl_max] that the gap averages over
_POWER_Z = NormalDist().inv_cdf(0.80)  # z_0.80 = 0.841621, for the 80%-power detectable gap


@dataclass(frozen=True)
class FrontierComparison:
    """Method a's fitted reward-vs-KL frontier against method b's (see `compare_frontiers`).

    gap: mean over KL in [0, kl_max] of f_a(KL) - f_b(KL); [low, high]: its paired-bootstrap percentile
    interval at `confidence`; se: the bootstrap standard deviation of gap; winner: "a" if low > 0, "b" if
    high < 0, else None (inconclusive); mde: the smallest true |gap| this comparison detects with 80% power,
    (z_{1-alpha/2} + z_0.80) * se; n_prompts: P; n_boot: bootstrap resamples.
    """

    gap: float
    low: float
    high: float
    se: float
    winner: str | None
    kl_max: float
    mde: float
    confidence: float
    n_prompts: int
    n_boot: int

    def to_dict(self) -> dict[str, float | int | str | None]:
        return asdict(self)


def _field(item: Any, key: str) -> Any:
    """item[key] for a mapping, item.key otherwise; None when absent."""
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def _per_prompt(item: Any, key: str, where: str, n: int | None, paired: str = "reference.rewards") -> np.ndarray:
    """The (P,) vector `key` of checkpoint `where`, checked to hold n values (as many as `paired`) if n given."""
    values = _field(item, key)
    if values is None:
        raise ValueError(f"{where} has no '{key}'; every checkpoint needs per-prompt '{key}'")
    array = _as_array(values, f"{where}.{key}")
    if n is not None and array.size != n:
        raise ValueError(f"{where}.{key} has {array.size} values but {paired} has {n}; they must be per-prompt "
                         "values over the same held-out prompts in the same order")
    return array


def _stack_method(checkpoints: Sequence[Any], name: str, n: int, keys: tuple[str, ...] = ("rewards", "kls")
                  ) -> tuple[np.ndarray, ...]:
    """Per-prompt `keys` of one method's checkpoints, each (C, P); ValueError naming the bad one."""
    if len(checkpoints) == 0:
        raise ValueError(f"{name} is empty; each method needs at least one checkpoint")
    return tuple(np.stack([_per_prompt(c, key, f"{name}[{i}]", n) for i, c in enumerate(checkpoints)])
                 for key in keys)


def _fit_gao(rewards: np.ndarray, kls: np.ndarray, r_ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares f(KL) = r_ref + alpha d + beta d^2, d = sqrt(max(KL, 0)) (Gao et al. 2022, best-of-n form),
    through every checkpoint, for B data sets at once.

    rewards, kls: (B, C) mean reward and mean KL of C checkpoints; r_ref: (B,) mean reference reward.
    Returns alpha, beta, each (B,). The intercept is not fitted: every policy's curve starts at the reference
    (KL 0 by definition), which both methods share. Closed-form 2x2 normal equations, so the bootstrap costs a
    few array operations. One checkpoint (or KLs that cannot separate d from d^2, det = 0) fits alpha alone.
    """
    d = np.sqrt(np.maximum(kls, 0.0))  # (B, C); a negative estimate of a KL means ~0
    y = rewards - r_ref[:, None]  # (B, C)
    d2 = d * d
    s11, s12, s22 = d2.sum(1), (d2 * d).sum(1), (d2 * d2).sum(1)  # (B,) each
    t1, t2 = (d * y).sum(1), (d2 * y).sum(1)  # (B,) each
    alpha_only = np.divide(t1, s11, out=np.zeros_like(t1), where=s11 > 0)  # all KLs <= 0: a flat curve
    if kls.shape[1] == 1:
        return alpha_only, np.zeros_like(alpha_only)
    det = s11 * s22 - s12 * s12  # >= 0 by Cauchy-Schwarz; 0 when every d > 0 is the same
    ok = det > 1e-12 * s11 * s22
    safe = np.where(ok, det, 1.0)
    alpha = np.where(ok, (s22 * t1 - s12 * t2) / safe, alpha_only)
    beta = np.where(ok, (s11 * t2 - s12 * t1) / safe, 0.0)
    return alpha, beta


def fit_frontier(kls: Any, rewards: Any, reference_reward: float) -> tuple[float, float]:
    """(alpha, beta) of the curve `compare_frontiers` fits to one method's checkpoints: f(KL) = reference_reward
    + alpha sqrt(KL) + beta KL, least squares through the checkpoints' mean KLs (C,) and mean rewards (C,)."""
    kl, reward = _paired(kls, rewards, "kls", "rewards")
    alpha, beta = _fit_gao(reward[None], kl[None], np.array([float(reference_reward)]))
    return float(alpha[0]), float(beta[0])


def _bootstrap_counts(n_prompts: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, P) times each prompt is drawn in each resample of P prompts with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=n_boot)


def _pooled_slope(weights: np.ndarray, rewards: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Within-checkpoint slope of reward on length, pooled over C checkpoints, for each row of prompt weights.

    weights: (B, P), rows summing to 1; rewards, lengths: (C, P). Each checkpoint's weighted covariance and
    variance (its own level removed), summed over checkpoints: slope = sum cov / sum var, (B,); 0 without
    length variation. With weights 1/P this is `length_slope`.
    """
    mean_r, mean_l = weights @ rewards.T, weights @ lengths.T  # (B, C) each
    cov = (weights @ (rewards * lengths).T - mean_r * mean_l).sum(1)  # (B,)
    var = (weights @ (lengths * lengths).T - mean_l * mean_l).sum(1)  # (B,)
    return np.divide(cov, var, out=np.zeros_like(cov), where=var > 1e-12)


def _length_controlled_means(weights: np.ndarray, data: tuple[np.ndarray, ...], slope: np.ndarray,
                             length0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean rewards moved to length0, mean KLs), each (B, C), of one method's (rewards, kls, lengths)."""
    rewards, kls, lengths = data
    moved = weights @ rewards.T - slope[:, None] * (weights @ lengths.T - length0[:, None])  # (B, C)
    return moved, weights @ kls.T


def _gaps(weights: np.ndarray, a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...],
          ref: tuple[np.ndarray, ...], kl_max: float) -> np.ndarray:
    """Frontier gap for each row of prompt weights.

    weights: (B, P), each row summing to 1 (1/P everywhere: the data; counts / P: a bootstrap resample);
    a, b: each method's per-prompt (rewards, kls) or (rewards, kls, lengths), each (C, P); ref: the
    reference's (rewards,) or (rewards, lengths), each (P,). With lengths, every mean reward is first moved
    to the reference's mean length with the slope pooled within the checkpoints of a, b and the reference,
    re-estimated for each row (so the slope's own uncertainty is in the bootstrap). Returns (B,) gaps: the
    mean of f_a - f_b over a uniform grid of KL in [0, kl_max]. The curves are linear in (alpha, beta), so that
    mean is exactly d_alpha * mean(sqrt(grid)) + d_beta * mean(grid); r_ref cancels.
    """
    r_ref = weights @ ref[0]  # (B,)
    if len(ref) == 2:  # control for length
        rewards = np.concatenate([a[0], b[0], ref[0][None]])  # (Ca + Cb + 1, P)
        lengths = np.concatenate([a[2], b[2], ref[1][None]])  # (Ca + Cb + 1, P)
        slope, length0 = _pooled_slope(weights, rewards, lengths), weights @ ref[1]  # (B,), (B,)
        mean_a, mean_b = _length_controlled_means(weights, a, slope, length0), _length_controlled_means(
            weights, b, slope, length0)
    else:
        mean_a, mean_b = (weights @ a[0].T, weights @ a[1].T), (weights @ b[0].T, weights @ b[1].T)
    alpha_a, beta_a = _fit_gao(*mean_a, r_ref)
    alpha_b, beta_b = _fit_gao(*mean_b, r_ref)
    grid = np.linspace(0.0, kl_max, _GRID_POINTS)
    return (alpha_a - alpha_b) * np.sqrt(grid).mean() + (beta_a - beta_b) * grid.mean()


def compare_frontiers(a: Sequence[Any], b: Sequence[Any], reference: Any, *, confidence: float = 0.95,
                      n_boot: int = 1000, seed: int = 0, control_length: bool = False) -> FrontierComparison:
    """Is method a's reward-vs-KL frontier above method b's? A fitted gap with a paired bootstrap interval.

    a, b: non-empty sequences of checkpoints; a checkpoint is a mapping or an object with `rewards` (P,) and
    `kls` (P,): per-prompt reward and sequence KL to the reference, over the same P >= 2 held-out prompts in
    the same order everywhere. reference: the reference (SFT) policy with `rewards` (P,); its KL is 0 by
    definition (any `kls` is ignored).

    Each method's curve is fitted by least squares through ALL its checkpoints' (mean KL, mean reward) in the
    form of Gao et al. 2022, "Scaling laws for reward model overoptimization": f(KL) = r_ref + alpha sqrt(KL)
    + beta KL, anchored at the reference's mean reward r_ref (one checkpoint: beta = 0). gap = mean of
    f_a - f_b over a 64-point uniform grid of KL in [0, kl_max], kl_max = min(largest mean KL of a, of b), so
    neither curve is extrapolated. This departs from the Pareto-frontier reading ("which method reaches the
    higher reward at each KL", e.g. the DPO paper, Fig. 2): it compares mean reward at matched KL along a
    smoothed curve, not the best checkpoint, because the maximum of many noisy checkpoints is biased upwards and
    made the verdict follow the checkpoint count. Checkpoints count equally, whatever their KL.

    Uncertainty: a paired bootstrap over prompts (Efron & Tibshirani 1993): n_boot resamples of the P prompts
    with replacement (numpy Generator seeded by `seed`), each recomputing every checkpoint's mean reward and
    mean KL and the reference's mean, refitting both curves and the gap on the same grid. Resampling prompts
    jointly keeps the correlation between methods (same prompts), and the KL noise enters the interval too.
    [low, high] is the percentile interval at `confidence`; se the bootstrap standard deviation; winner "a"
    if low > 0, "b" if high < 0, None otherwise; mde = (z_{1-alpha/2} + z_0.80) * se, the smallest true gap
    detected with 80% power. kl_max <= 0 (a method never moved away from the reference) raises ValueError.

    control_length: every checkpoint and the reference also need `lengths` (P,); each mean reward is moved to
    the reference's mean length, reward - slope * (length - length_ref), with the within-checkpoint slope of
    reward on length pooled over a, b and the reference and re-estimated in every resample (a gain bought with
    longer completions then disappears, and the slope's uncertainty is in the interval).
    """
    z = _z(confidence)
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot}")
    ref_rewards = _per_prompt(reference, "rewards", "reference", None)  # (P,)
    n = int(ref_rewards.size)
    if n < 2:
        raise ValueError(f"reference.rewards has {n} values; need at least 2 prompts to resample")
    keys = ("rewards", "kls", "lengths") if control_length else ("rewards", "kls")
    data_a, data_b = _stack_method(a, "a", n, keys), _stack_method(b, "b", n, keys)
    ref = (ref_rewards, _per_prompt(reference, "lengths", "reference", n)) if control_length else (ref_rewards,)
    reach = {name: float(data[1].mean(1).max()) for name, data in (("a", data_a), ("b", data_b))}
    kl_max = min(reach.values())
    if kl_max <= 0:
        unmoved = [name for name, kl in reach.items() if kl <= 0]
        raise ValueError(f"method {' and '.join(unmoved)} never moved away from the reference (largest mean KL "
                         f"{min(reach.values()):.4g} <= 0), so there is no KL range to compare over")
    gap = float(_gaps(np.full((1, n), 1.0 / n), data_a, data_b, ref, kl_max)[0])
    boot = _gaps(_bootstrap_counts(n, int(n_boot), seed) / n, data_a, data_b, ref, kl_max)  # (n_boot,)
    low, high = (float(q) for q in np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2]))
    se = float(boot.std(ddof=1))
    winner = "a" if low > 0 else "b" if high < 0 else None
    return FrontierComparison(gap=gap, low=low, high=high, se=se, winner=winner, kl_max=kl_max,
                              mde=(z + _POWER_Z) * se, confidence=float(confidence), n_prompts=n,
                              n_boot=int(n_boot))


def length_slope(checkpoints: Sequence[Any]) -> float:
    """Pooled within-checkpoint least-squares slope of reward on completion length (reward per token).

    checkpoints: non-empty; each a mapping or object with `rewards` (P_i,) and `lengths` (P_i,). Rewards and
    lengths are demeaned within each checkpoint, then slope = sum(x y) / sum(x x) over all of them: demeaning
    removes each checkpoint's level, so the slope is how reward moves with length among one policy's answers,
    not the (confounded) trend that longer-writing checkpoints also trained longer. 0.0 when lengths never
    vary. Length bias in RLHF: Singhal et al. 2023, "A Long Way to Go: Investigating Length Correlations in RLHF".
    """
    if len(checkpoints) == 0:
        raise ValueError("length_slope got no checkpoints; need at least one with rewards and lengths")
    sxy = sxx = 0.0
    for i, checkpoint in enumerate(checkpoints):
        rewards = _per_prompt(checkpoint, "rewards", f"checkpoints[{i}]", None)  # (P_i,)
        lengths = _per_prompt(checkpoint, "lengths", f"checkpoints[{i}]", rewards.size,
                              f"checkpoints[{i}].rewards")  # (P_i,)
        x, y = lengths - lengths.mean(), rewards - rewards.mean()
        sxy, sxx = sxy + float(x @ y), sxx + float(x @ x)
    return sxy / sxx if sxx > 0 else 0.0


def paired_gain(checkpoint: Any, reference: Any, *, control_length: bool = False, confidence: float = 0.95,
                n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Mean reward gain of a checkpoint over the reference on the same prompts, with a paired bootstrap interval.

    checkpoint, reference: mappings or objects with `rewards` (P,) (and `lengths` (P,) with control_length).
    gain = mean(rewards) - mean(reference rewards); with control_length the checkpoint's mean reward is first
    moved to the reference's mean length with the within-checkpoint slope pooled over both, re-estimated in
    every resample. Returns an Estimate: the gain, the bootstrap standard deviation as se, the percentile
    interval [low, high] at `confidence`, and P.
    """
    _z(confidence)
    keys = ("rewards", "lengths") if control_length else ("rewards",)
    ref = [_per_prompt(reference, k, "reference", None) for k in keys]  # each (P,)
    n = int(ref[0].size)
    if n < 2:
        raise ValueError(f"reference.rewards has {n} values; need at least 2 prompts to resample")
    own = [_per_prompt(checkpoint, k, "checkpoint", n) for k in keys]  # each (P,)
    weights = np.concatenate([np.full((1, n), 1.0 / n), _bootstrap_counts(n, int(n_boot), seed) / n])  # (1+B, P)
    gains = weights @ (own[0] - ref[0])  # (1+B,)
    if control_length:
        slope = _pooled_slope(weights, np.stack([own[0], ref[0]]), np.stack([own[1], ref[1]]))  # (1+B,)
        gains = gains - slope * (weights @ (own[1] - ref[1]))
    low, high = (float(q) for q in np.quantile(gains[1:], [(1 - confidence) / 2, (1 + confidence) / 2]))
    return Estimate(mean=float(gains[0]), se=float(gains[1:].std(ddof=1)), low=low, high=high, n=n)


def bootstrap_statistic(arrays: Mapping[str, Any], statistic: Callable[[Mapping[str, np.ndarray]], Any], *,
                        confidence: float = 0.95, n_boot: int = 1000, seed: int = 0) -> Estimate:
    """Any statistic of the means of several per-prompt arrays, with a paired bootstrap interval over prompts.

    arrays: name -> (P,) finite values over the same P >= 2 prompts in the same order (one method's correct facts
    per response, another's, ...). statistic: called once with name -> (B,) means, one per row of prompt weights,
    and returns the statistic for each row, (B,): e.g. `lambda m: m["fs"] - m["sft"]` (a paired gain) or
    `lambda m: m["fs"] / m["sft"]` (a ratio of means). Row 0 weighs every prompt 1/P (the estimate); the other
    n_boot rows are resamples of the P prompts with replacement (`_bootstrap_counts`, seeded by `seed`), drawn once
    for every array, so the arrays stay paired and their correlation is in the interval.

    Returns an Estimate: the statistic on the full sample, the bootstrap standard deviation as se, the percentile
    interval [low, high] at `confidence`, and P. A statistic that is not finite on the data or in some resample (a
    ratio whose denominator's mean is 0) raises ValueError saying how often, rather than hiding those resamples.
    """
    _z(confidence)
    if int(n_boot) != n_boot or n_boot < 2:
        raise ValueError(f"n_boot must be an integer >= 2, got {n_boot}")
    if not arrays:
        raise ValueError("bootstrap_statistic got no arrays; pass name -> per-prompt values")
    values = {name: _as_array(a, name) for name, a in arrays.items()}  # each (P,)
    first = next(iter(values))
    n = int(values[first].size)
    for name, a in values.items():
        if a.size != n:
            raise ValueError(f"{name} has {a.size} values but {first} has {n}; they must be per-prompt values over "
                             "the same prompts in the same order")
    if n < 2:
        raise ValueError(f"{first} has {n} value(s); need at least 2 prompts to resample")
    weights = np.concatenate([np.full((1, n), 1.0 / n), _bootstrap_counts(n, int(n_boot), seed) / n])  # (1+B, P)
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero denominator is reported below, in words
        stat = np.asarray(statistic({name: weights @ a for name, a in values.items()}), dtype=np.float64)  # (1+B,)
    if stat.shape != (weights.shape[0],):
        raise ValueError(f"the statistic returned shape {stat.shape}; it must return one value per row of means, "
                         f"({weights.shape[0]},)")
    bad = int((~np.isfinite(stat)).sum())
    if bad:
        where = "on the data" if not np.isfinite(stat[0]) else f"in {bad} of {int(n_boot)} bootstrap resamples"
        raise ValueError(f"the statistic is not finite {where} (a ratio whose denominator's mean is 0?); it has no "
                         "interval on these prompts")
    low, high = (float(q) for q in np.quantile(stat[1:], [(1 - confidence) / 2, (1 + confidence) / 2]))
    return Estimate(mean=float(stat[0]), se=float(stat[1:].std(ddof=1)), low=low, high=high, n=n)
