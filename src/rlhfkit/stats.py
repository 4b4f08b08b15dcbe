"""Pure statistics for evaluation: means with confidence intervals, sequence KL, win rates, reward-model
accuracy and calibration, the log(beta)-log(KL) fit and the reward-vs-KL Pareto frontier.

Imports only numpy and the standard library (tensors are accepted and converted without importing torch).
Every function takes plain sequences / arrays and returns plain numbers, so the sampling code in
`rlhfkit.evaluate` and the report can both use them and the tests can check them against hand-computed values.

Intervals use the normal approximation (quantiles from `statistics.NormalDist`); win rates use the Wilson
score interval (see `win_rate` for why).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Sequence

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
    n = int(diff.size)
    ties = n - wins - losses
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
