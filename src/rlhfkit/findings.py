"""The findings an experiment reports, decided by statistics with intervals. Every verdict rule lives here.

A finding is a dict {claim, reproduced: True | False | None, evidence, ...} rendered only as
"reproduced" / "did not reproduce" / "inconclusive" (`verdict`), so an experiment cannot tune how its outcome
is worded. The rules:

- Frontier claims ("method A's reward-vs-KL frontier dominates B's"): `stats.compare_frontiers` fits each
  method's mean reward as a function of KL through all its checkpoints (anchored at the reference policy,
  KL 0), takes the mean gap over the KL range both methods cover, and puts a paired bootstrap interval over
  held-out prompts around it. Reproduced when the interval excludes zero in the claimed direction, did not
  reproduce when it excludes zero in the other, inconclusive otherwise. A fitted curve, not a running maximum:
  the maximum over many noisy checkpoints is biased upwards, so a method must not win by its checkpoint count.
  Every frontier finding states the smallest gap the run could have detected (80% power) and the same
  comparison after controlling for completion length (rewards moved to the reference's mean length with the
  pooled within-checkpoint slope of reward on length): a gain that vanishes there was bought with length.
- "beta sets KL": log(KL) of each DPO run's final checkpoint against log(beta); the slope's interval comes
  from the same paired bootstrap over prompts. Reproduced when the interval lies below zero and r^2 >= 0.8;
  did not reproduce when it lies above zero or r^2 < 0.5; inconclusive otherwise.

Inputs: `methods` is the report's list of entries {method, label, beta, checkpoints: [{step, kl, reward, ...,
rewards, kls, lengths}]}, where rewards / kls / lengths are per-prompt values over the same held-out prompts in
the same order for every checkpoint; the entry with method "sft" is the reference.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Sequence

import numpy as np

from rlhfkit import stats

DPO, PPO, PPO_GT, PREFERRED_FT, UNLIKELIHOOD, SFT = "dpo", "ppo", "ppo_gt", "preferred_ft", "unlikelihood", "sft"
NAMES = {DPO: "DPO", PPO: "PPO", PPO_GT: "PPO-GT", PREFERRED_FT: "preferred-FT", UNLIKELIHOOD: "unlikelihood"}
VERDICTS = {True: "reproduced", False: "did not reproduce", None: "inconclusive"}


def verdict(reproduced: bool | None) -> str:
    """The only three words a finding can be rendered with; anything but True / False / None is an error."""
    if reproduced is not True and reproduced is not False and reproduced is not None:
        raise ValueError(f"a finding's 'reproduced' must be true, false or null, got {reproduced!r}")
    return VERDICTS[reproduced]


def checkpoints_of(methods: Sequence[dict], name: str) -> list[dict]:
    """All checkpoints of every entry whose method is `name` (DPO at several betas, every seed), pooled."""
    return [c for m in methods if m["method"] == name for c in m.get("checkpoints", [])]


def reference_of(methods: Sequence[dict]) -> dict | None:
    """The reference policy's checkpoint (the SFT entry), or None."""
    ref = checkpoints_of(methods, SFT)
    return ref[0] if ref else None


def _has_arrays(checkpoints: Sequence[dict], keys: tuple[str, ...] = ("rewards", "kls")) -> bool:
    return bool(checkpoints) and all(all(c.get(k) is not None for k in keys) for c in checkpoints)


def length_control(methods: Sequence[dict]) -> tuple[float, float] | None:
    """(slope of reward on length within checkpoints, the reference's mean length), or None without lengths."""
    everything = [c for m in methods for c in m.get("checkpoints", []) if c.get("kls") is not None]
    ref = reference_of(methods)
    if ref is None or not _has_arrays(everything, ("rewards", "lengths")):
        return None
    return stats.length_slope(everything), float(np.mean(ref["lengths"]))


def compare(methods: Sequence[dict], a: str, b: str, *, seed: int = 0, n_boot: int = 1000,
            control_length: bool = False) -> stats.FrontierComparison | str:
    """compare_frontiers(a's checkpoints, b's, reference); a string saying why when it cannot be computed."""
    ca, cb, ref = checkpoints_of(methods, a), checkpoints_of(methods, b), reference_of(methods)
    if ref is None or not _has_arrays([ref], ("rewards",)):
        return "no reference (SFT) evaluation with per-prompt values"
    missing = [NAMES.get(n, n) for n, c in ((a, ca), (b, cb)) if not _has_arrays(c)]
    if missing:
        return f"no checkpoints with per-prompt values for {', '.join(missing)}"
    if control_length and not _has_arrays(ca + cb + [ref], ("rewards", "lengths")):
        return "no per-prompt lengths to control for"
    try:
        return stats.compare_frontiers(ca, cb, ref, n_boot=n_boot, seed=seed, control_length=control_length)
    except ValueError as err:
        return str(err)


def _describe(c: stats.FrontierComparison, a: str, b: str) -> str:
    return (f"{NAMES.get(a, a)} − {NAMES.get(b, b)} = {c.gap:+.3f} [{c.low:+.3f}, {c.high:+.3f}] mean reward at "
            f"matched KL over 0–{c.kl_max:.2f} nats ({c.confidence:.0%} paired bootstrap over {c.n_prompts} "
            f"prompts); smallest detectable gap {c.mde:.3f}")


def _outcome(c: stats.FrontierComparison) -> bool | None:
    return {"a": True, "b": False, None: None}[c.winner]


def frontier_finding(methods: Sequence[dict], a: str, b: str, claim: str, *, seed: int = 0,
                     n_boot: int = 1000) -> dict:
    """A's frontier dominates B's: the verdict from the gap's interval; the length-controlled gap beside it."""
    raw = compare(methods, a, b, seed=seed, n_boot=n_boot)
    if isinstance(raw, str):
        return {"claim": claim, "reproduced": None, "evidence": raw, "detectable": None}
    finding = {"claim": claim, "reproduced": _outcome(raw), "evidence": _describe(raw, a, b),
               "detectable": raw.mde, "comparisons": {f"{a} vs {b}": raw.to_dict()}}
    controlled = compare(methods, a, b, seed=seed, n_boot=n_boot, control_length=True)
    if not isinstance(controlled, str):
        finding["evidence"] += (f"; length-controlled {controlled.gap:+.3f} "
                                f"[{controlled.low:+.3f}, {controlled.high:+.3f}] ({verdict(_outcome(controlled))})")
        finding["comparisons"][f"{a} vs {b}, length-controlled"] = controlled.to_dict()
    return finding


def finding_dpo_dominates(methods: Sequence[dict], other: str = PPO, *, seed: int = 0, n_boot: int = 1000) -> dict:
    """DPO's reward-KL frontier dominates PPO's, or PPO-GT's (DPO paper, Figure 2 left)."""
    label = "PPO's (learned reward)" if other == PPO else "PPO-GT's (gold reward)"
    claim = f"DPO's reward-vs-KL frontier dominates {label} (DPO paper, Figure 2 left)"
    return frontier_finding(methods, DPO, other, claim, seed=seed, n_boot=n_boot)


def finding_baselines_fall_short(methods: Sequence[dict], *, seed: int = 0, n_boot: int = 1000) -> dict:
    """DPO's frontier lies above preferred-FT's and unlikelihood's: reproduced when both gaps are significantly
    positive, did not reproduce when either is significantly negative, inconclusive otherwise."""
    claim = "DPO's reward-vs-KL frontier lies above preferred-FT's and unlikelihood's (DPO paper, Figure 2 left)"
    parts = [frontier_finding(methods, DPO, b, claim, seed=seed, n_boot=n_boot) for b in (PREFERRED_FT, UNLIKELIHOOD)]
    outcomes = [p["reproduced"] for p in parts]
    reproduced = False if False in outcomes else (True if all(o is True for o in outcomes) else None)
    detectable = [p["detectable"] for p in parts if p["detectable"] is not None]
    return {"claim": claim, "reproduced": reproduced, "evidence": "; ".join(p["evidence"] for p in parts),
            "detectable": max(detectable) if detectable else None,
            "comparisons": {k: v for p in parts for k, v in p.get("comparisons", {}).items()}}


def beta_kl_points(methods: Sequence[dict]) -> tuple[list[float], list[float]]:
    """(betas, kls) for the beta fit: the final checkpoint (largest step) of each DPO entry with a beta.

    The experiment fits `stats.fit_beta_kl` on exactly these points so the plot shows what was fitted.
    """
    betas, kls = [], []
    for m in methods:
        if m["method"] == DPO and m.get("beta") is not None and m.get("checkpoints"):
            betas.append(float(m["beta"]))
            kls.append(float(_final(m)["kl"]))
    return betas, kls


def _final(entry: dict) -> dict:
    return max(entry["checkpoints"], key=lambda c: c["step"])


def beta_slope_interval(methods: Sequence[dict], *, confidence: float = 0.95, n_boot: int = 1000,
                        seed: int = 0) -> tuple[float, float] | None:
    """Paired bootstrap interval over prompts of the log(KL)-on-log(beta) slope (None without per-prompt KLs).
    A replicate whose resampled mean KL is <= 0 for some run has no log; such replicates count as slope 0."""
    finals = [(float(m["beta"]), _final(m)) for m in methods
              if m["method"] == DPO and m.get("beta") is not None and m.get("checkpoints")]
    if len({b for b, _ in finals}) < 2 or not _has_arrays([c for _, c in finals], ("kls",)):
        return None
    kls = np.array([c["kls"] for _, c in finals], dtype=np.float64)  # (R, P)
    x = np.log([b for b, _ in finals])  # (R,)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(kls.shape[1], np.full(kls.shape[1], 1.0 / kls.shape[1]), size=n_boot)  # (n_boot, P)
    means = counts @ kls.T / kls.shape[1]  # (n_boot, R)
    valid = (means > 0).all(axis=1)
    y = np.log(np.where(means > 0, means, 1.0))  # (n_boot, R)
    xc = x - x.mean()
    slopes = np.where(valid, (y - y.mean(axis=1, keepdims=True)) @ xc / (xc @ xc), 0.0)  # (n_boot,)
    tail = (1.0 - confidence) / 2.0
    return float(np.quantile(slopes, tail)), float(np.quantile(slopes, 1.0 - tail))


def finding_beta_sets_kl(beta_fit: stats.BetaKLFit | dict | None, interval: tuple[float, float] | None = None
                         ) -> dict:
    """Beta sets the KL DPO reaches: log(KL) falls linearly in log(beta) (rule in the module docstring).

    Without a bootstrap interval (no per-prompt KLs) the slope's sign is taken from the point estimate.
    Inconclusive with no fit or fewer than 3 runs (two points always lie on a line).
    """
    claim = "beta sets the KL DPO reaches: log(KL) falls linearly as log(beta) grows"
    if beta_fit is None:
        return {"claim": claim, "reproduced": None, "evidence": "no beta fit (needs DPO runs at >= 2 betas)",
                "detectable": None}
    fit = beta_fit if isinstance(beta_fit, stats.BetaKLFit) else stats.BetaKLFit(
        **{k: beta_fit[k] for k in ("slope", "intercept", "r2", "n")})
    low, high = interval if interval is not None else (fit.slope, fit.slope)
    evidence = (f"slope {fit.slope:.3f}" + (f" [{low:.3f}, {high:.3f}]" if interval is not None else "")
                + f", r^2 {fit.r2:.3f} over {fit.n} runs (criterion: >= 3 runs, slope interval below 0 and "
                "r^2 >= 0.8; above 0 or r^2 < 0.5 does not reproduce)")
    if fit.n < 3:
        reproduced = None
    elif low > 0 or fit.r2 < 0.5:
        reproduced = False
    else:
        reproduced = True if high < 0 and fit.r2 >= 0.8 else None
    return {"claim": claim, "reproduced": reproduced, "evidence": evidence, "detectable": None,
            "slope_interval": list(interval) if interval is not None else None, "fit": asdict(fit)}


def length_table(methods: Sequence[dict], *, n_boot: int = 1000, seed: int = 0) -> list[dict]:
    """Per entry, its final checkpoint's reward gain over the reference, paired over prompts, raw and with the
    reward moved to the reference's mean length (`stats.paired_gain`); an entry whose raw gain is significant
    but whose controlled gain is not bought its gain with length. Entries without per-prompt values are skipped.
    `slope` (pooled over every checkpoint) and `reference_length` describe the control for the report."""
    ref, control = reference_of(methods), length_control(methods)
    if ref is None or control is None:
        return []
    rows = []
    for m in methods:
        if m["method"] == SFT or not m.get("checkpoints") or not _has_arrays([_final(m)], ("rewards", "lengths")):
            continue
        final = _final(m)
        raw = stats.paired_gain(final, ref, n_boot=n_boot, seed=seed)
        controlled = stats.paired_gain(final, ref, control_length=True, n_boot=n_boot, seed=seed)
        rows.append({"label": m.get("label") or m["method"], "method": m["method"], "step": final["step"],
                     "length": float(np.mean(final["lengths"])), "gain": raw.to_dict(),
                     "controlled": controlled.to_dict(), "slope": control[0], "reference_length": control[1]})
    return rows


def sentiment_findings(methods: Sequence[dict], beta_fit: stats.BetaKLFit | None, *, seed: int = 0,
                       n_boot: int = 1000) -> list[dict]:
    """The DPO paper's Figure 2 (left) claims, in the order the report lists them."""
    return [finding_dpo_dominates(methods, PPO, seed=seed, n_boot=n_boot),
            finding_dpo_dominates(methods, PPO_GT, seed=seed, n_boot=n_boot),
            finding_beta_sets_kl(beta_fit, beta_slope_interval(methods, n_boot=n_boot, seed=seed)),
            finding_baselines_fall_short(methods, seed=seed, n_boot=n_boot)]

