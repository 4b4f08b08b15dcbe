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

Factuality claims (FactTune, Tian et al. 2023, "Fine-tuning Language Models for Factuality";
`factuality_findings`). Inputs: the factuality evaluation's entries {method: "sft" | "facttune_fs" |
"facttune_mc" | "detailed", label, seed, per_prompt: {correct, incorrect, ...}}, every per_prompt array over the
same held-out prompts in the same order; correct / incorrect = supported / contradicted claims per response (the
mean over a prompt's samples). Several entries of one method (seeds 0..S-1) are pooled by averaging each
prompt's value over them before resampling, so a prompt stays the unit the bootstrap draws. Every interval is a
95% paired bootstrap over prompts (`stats.bootstrap_statistic`, 1000 resamples): all methods' means are
recomputed on the same resampled prompts. "Detectable" is (z_0.975 + z_0.80) * se, the smallest true effect the
run finds with 80% power, in the statistic's unit. With v = FactTune-FS and FactTune-MC, separately:

- (a) "FactTune-v cuts incorrect facts per response": d = mean(incorrect_v) - mean(incorrect_sft). Reproduced
  when d's interval lies below 0, did not reproduce when it lies above 0, inconclusive otherwise.
- (b) "FactTune-v cuts correct facts by a smaller share than incorrect ones": s = mean(correct_v) /
  mean(correct_sft) - mean(incorrect_v) / mean(incorrect_sft), the share of SFT's correct facts kept minus the
  share of its incorrect ones kept. Reproduced when s's interval lies above 0, did not reproduce when below;
  inconclusive otherwise, when SFT states no correct or no incorrect fact at all (nothing to cut a share of),
  or when some resample has none (the ratio has no interval).
- (c) "Reference-free scoring (MC) gets most of the reference-based (FS) gain": with g_v = mean(incorrect_sft) -
  mean(incorrect_v), the statistic g_MC - 0.5 g_FS. Reproduced when its interval lies above 0 and g_FS's does
  too (half of a gain that may be zero is no bar); did not reproduce when its interval lies below 0;
  inconclusive otherwise, saying which condition failed.
- (d) "The generic-preference baseline (detailed) does not reduce incorrect facts": d = mean(incorrect_detailed)
  - mean(incorrect_sft). Did not reproduce when d's interval lies below 0 (it does reduce them); reproduced when
  it lies at or above 0, or when g_FS's interval lies above 0 and the interval of d + 0.5 g_FS lies above 0 (it
  does not cut errors by even half of what FactTune-FS cuts; the bar's own uncertainty is in that interval, as
  both come from the same resamples); inconclusive otherwise.

A method missing from the evaluation (a run without FactTune-MC), or per-prompt arrays that cannot be paired,
make the findings that need them inconclusive, with the reason as their evidence.
"""

from __future__ import annotations

import re
from dataclasses import asdict
from statistics import NormalDist
from typing import Callable, Mapping, Sequence

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



# ---- factuality (FactTune) ------------------------------------------------------------------------------------

FS, MC, DETAILED = "facttune_fs", "facttune_mc", "detailed"
FACT_NAMES = {SFT: "SFT", FS: "FactTune-FS", MC: "FactTune-MC", DETAILED: "the detailed-preference baseline"}
POWER_FACTOR = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)
"""z_0.975 + z_0.80 = 2.8016: an effect this many standard errors from 0 is found 80% of the time at 95%."""


def _pool_values(rows: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per prompt, the mean over entries of the values that are not None (None where every entry has None)."""
    pooled = []
    for values in zip(*rows):
        present = [float(v) for v in values if v is not None]
        pooled.append(sum(present) / len(present) if present else None)
    return pooled


def pooled_entry(methods: Sequence[dict], name: str) -> dict | None:
    """Every entry of method `name` (one per seed) merged into one, or None without any.

    Each per_prompt array is averaged prompt by prompt over the entries (a null share_correct counts only where
    an entry has a value); the label is the first entry's without its " (seed N)" suffix. ValueError when the
    entries' arrays differ in length (not the same prompts).
    """
    entries = [m for m in methods if m["method"] == name]
    if not entries:
        return None
    per_prompt = {}
    for key in entries[0].get("per_prompt", {}):
        rows = [e.get("per_prompt", {}).get(key) for e in entries]
        if any(r is None for r in rows):
            continue
        if len({len(r) for r in rows}) > 1:
            raise ValueError(f"the {len(entries)} entries of {name} have per-prompt '{key}' of different lengths "
                             f"{sorted({len(r) for r in rows})}; seeds must be evaluated on the same prompts")
        per_prompt[key] = _pool_values(rows)
    label = entries[0].get("label") or name
    if len(entries) > 1:
        label = re.sub(r" \(seed \d+\)$", "", label)
    return {"method": name, "label": label, "seeds": [e.get("seed", 0) for e in entries],
            "pairs": [e.get("pairs") for e in entries], "per_prompt": per_prompt}


def _fact_arrays(methods: Sequence[dict], needed: Mapping[str, tuple[str, str]]) -> dict[str, list] | str:
    """alias -> per-prompt values of (method, metric), pooled over seeds; a string saying why when one is missing."""
    arrays = {}
    for alias, (name, key) in needed.items():
        try:
            entry = pooled_entry(methods, name)
        except ValueError as err:
            return str(err)
        if entry is None:
            return f"no {FACT_NAMES.get(name, name)} entry in the evaluation"
        values = entry["per_prompt"].get(key)
        if values is None or any(v is None for v in values):
            return f"{FACT_NAMES.get(name, name)} has no per-prompt '{key}' values"
        arrays[alias] = values
    return arrays


def _fact_estimates(methods: Sequence[dict], needed: Mapping[str, tuple[str, str]],
                    statistics: Mapping[str, Callable[[Mapping], object]], *, seed: int, n_boot: int
                    ) -> dict[str, stats.Estimate] | str:
    """name -> bootstrap_statistic of the arrays `needed` names, all on the same resamples; a reason string when
    they cannot be computed (a missing method, arrays that do not pair, a ratio without an interval)."""
    arrays = _fact_arrays(methods, needed)
    if isinstance(arrays, str):
        return arrays
    try:
        return {name: stats.bootstrap_statistic(arrays, fn, n_boot=n_boot, seed=seed)
                for name, fn in statistics.items()}
    except ValueError as err:
        return str(err)


def _ci(e: stats.Estimate, spec: str = "+.3f") -> str:
    return f"{e.mean:{spec}} [{e.low:{spec}}, {e.high:{spec}}]"


def _seeds_note(methods: Sequence[dict], names: Sequence[str]) -> str:
    counts = {n: sum(m["method"] == n for m in methods) for n in names}
    several = [f"{FACT_NAMES.get(n, n)} {c}" for n, c in counts.items() if c > 1]
    return f"; seeds pooled per prompt ({', '.join(several)} entries)" if several else ""


def _fact_finding(claim: str, reproduced: bool | None, evidence: str, detectable: stats.Estimate | None,
                  estimates: Mapping[str, stats.Estimate]) -> dict:
    return {"claim": claim, "reproduced": reproduced, "evidence": evidence,
            "detectable": None if detectable is None else POWER_FACTOR * detectable.se,
            "estimates": {k: e.to_dict() for k, e in estimates.items()}}


def finding_cuts_incorrect(methods: Sequence[dict], variant: str, *, seed: int = 0, n_boot: int = 1000) -> dict:
    """(a) FactTune-v has fewer incorrect facts per response than SFT (rule in the module docstring)."""
    name = FACT_NAMES[variant]
    claim = f"{name} cuts incorrect facts per response vs SFT (FactTune, Tian et al. 2023)"
    est = _fact_estimates(methods, {"v": (variant, "incorrect"), "sft": (SFT, "incorrect")},
                          {"d": lambda m: m["v"] - m["sft"], "v": lambda m: m["v"], "sft": lambda m: m["sft"]},
                          seed=seed, n_boot=n_boot)
    if isinstance(est, str):
        return _fact_finding(claim, None, est, None, {})
    d = est["d"]
    reproduced = True if d.high < 0 else False if d.low > 0 else None
    evidence = (f"{name} − SFT = {_ci(d)} incorrect facts per response (95% paired bootstrap over {d.n} prompts; "
                f"SFT {est['sft'].mean:.3f}, {name} {est['v'].mean:.3f}){_seeds_note(methods, (SFT, variant))}")
    return _fact_finding(claim, reproduced, evidence, d, est)


def finding_keeps_correct(methods: Sequence[dict], variant: str, *, seed: int = 0, n_boot: int = 1000) -> dict:
    """(b) FactTune-v keeps a larger share of SFT's correct facts than of its incorrect ones."""
    name = FACT_NAMES[variant]
    claim = f"{name} cuts correct facts by a smaller share than incorrect ones (FactTune, Tian et al. 2023)"
    needed = {"vc": (variant, "correct"), "sc": (SFT, "correct"), "vi": (variant, "incorrect"),
              "si": (SFT, "incorrect")}
    arrays = _fact_arrays(methods, needed)
    if isinstance(arrays, str):
        return _fact_finding(claim, None, arrays, None, {})
    empty = [kind for kind, key in (("correct", "sc"), ("incorrect", "si")) if not any(v > 0 for v in arrays[key])]
    if empty:
        return _fact_finding(claim, None, f"SFT states no {' and no '.join(empty)} fact on these prompts: there is "
                             "no share to cut", None, {})
    est = _fact_estimates(methods, needed, {
        "s": lambda m: m["vc"] / m["sc"] - m["vi"] / m["si"],
        "correct_kept": lambda m: m["vc"] / m["sc"], "incorrect_kept": lambda m: m["vi"] / m["si"]},
        seed=seed, n_boot=n_boot)
    if isinstance(est, str):
        return _fact_finding(claim, None, est, None, {})
    s = est["s"]
    reproduced = True if s.low > 0 else False if s.high < 0 else None
    evidence = (f"{name} keeps {_ci(est['correct_kept'], '.3f')} of SFT's correct facts and "
                f"{_ci(est['incorrect_kept'], '.3f')} of its incorrect ones; difference {_ci(s)} (95% paired "
                f"bootstrap over {s.n} prompts){_seeds_note(methods, (SFT, variant))}")
    return _fact_finding(claim, reproduced, evidence, s, est)


def finding_mc_matches_fs(methods: Sequence[dict], *, seed: int = 0, n_boot: int = 1000) -> dict:
    """(c) FactTune-MC's cut in incorrect facts is more than half of FactTune-FS's."""
    claim = ("Reference-free scoring (FactTune-MC) gets most of the reference-based (FactTune-FS) gain in "
             "incorrect facts (FactTune, Tian et al. 2023)")
    est = _fact_estimates(methods, {"sft": (SFT, "incorrect"), "fs": (FS, "incorrect"), "mc": (MC, "incorrect")}, {
        "margin": lambda m: (m["sft"] - m["mc"]) - 0.5 * (m["sft"] - m["fs"]),
        "gain_fs": lambda m: m["sft"] - m["fs"], "gain_mc": lambda m: m["sft"] - m["mc"]},
        seed=seed, n_boot=n_boot)
    if isinstance(est, str):
        return _fact_finding(claim, None, est, None, {})
    margin, gain_fs, gain_mc = est["margin"], est["gain_fs"], est["gain_mc"]
    if margin.high < 0:
        reproduced, why = False, ""
    elif margin.low > 0 and gain_fs.low > 0:
        reproduced, why = True, ""
    else:
        reproduced = None
        why = ("; FS gain not significant, so half of it is no bar" if margin.low > 0
               else "; the margin's interval includes 0")
    share = f" ({gain_mc.mean / gain_fs.mean:.0%} of it)" if gain_fs.mean > 0 else ""
    evidence = (f"cut in incorrect facts per response: FactTune-FS {_ci(gain_fs)}, FactTune-MC {_ci(gain_mc)}{share}; "
                f"MC − half of FS = {_ci(margin)} (95% paired bootstrap over {margin.n} prompts)"
                f"{_seeds_note(methods, (SFT, FS, MC))}{why}")
    return _fact_finding(claim, reproduced, evidence, margin, est)


def finding_detailed_no_gain(methods: Sequence[dict], *, seed: int = 0, n_boot: int = 1000) -> dict:
    """(d) The detailed-preference baseline does not cut incorrect facts (not even half of FactTune-FS's cut)."""
    claim = ("The generic-preference baseline (detailed) does not reduce incorrect facts (FactTune, Tian et al. "
             "2023)")
    est = _fact_estimates(methods, {"sft": (SFT, "incorrect"), "det": (DETAILED, "incorrect")},
                          {"d": lambda m: m["det"] - m["sft"]}, seed=seed, n_boot=n_boot)
    if isinstance(est, str):
        return _fact_finding(claim, None, est, None, {})
    d = est["d"]
    evidence = (f"detailed − SFT = {_ci(d)} incorrect facts per response (95% paired bootstrap over {d.n} prompts)"
                f"{_seeds_note(methods, (SFT, DETAILED, FS))}")
    if d.high < 0:
        return _fact_finding(claim, False, evidence + "; it reduces them", d, est)
    if d.low >= 0:
        return _fact_finding(claim, True, evidence, d, est)
    bar = _fact_estimates(methods, {"sft": (SFT, "incorrect"), "det": (DETAILED, "incorrect"), "fs": (FS, "incorrect")},
                          {"gain_fs": lambda m: m["sft"] - m["fs"],
                           "margin": lambda m: (m["det"] - m["sft"]) + 0.5 * (m["sft"] - m["fs"])},
                          seed=seed, n_boot=n_boot)
    if isinstance(bar, str):
        return _fact_finding(claim, None, f"{evidence}; no bar from FactTune-FS: {bar}", d, est)
    est = {**est, **bar}
    evidence += (f"; FactTune-FS cuts {_ci(bar['gain_fs'])}; detailed − SFT + half of that = {_ci(bar['margin'])}")
    if bar["gain_fs"].low > 0 and bar["margin"].low > 0:
        return _fact_finding(claim, True, evidence + " (less than half of FactTune-FS's cut)", d, est)
    why = "FS gain not significant" if bar["gain_fs"].low <= 0 else "it may cut half of what FactTune-FS cuts"
    return _fact_finding(claim, None, f"{evidence}; {why}", d, est)


def factuality_findings(methods: Sequence[dict], *, seed: int = 0, n_boot: int = 1000) -> list[dict]:
    """The FactTune claims (a) and (b) for FactTune-FS and FactTune-MC, then (c) and (d), as the report lists them
    (rules in the module docstring). Never raises for a missing method: its findings are inconclusive."""
    kw = {"seed": seed, "n_boot": n_boot}
    return [finding_cuts_incorrect(methods, FS, **kw), finding_cuts_incorrect(methods, MC, **kw),
            finding_keeps_correct(methods, FS, **kw), finding_keeps_correct(methods, MC, **kw),
            finding_mc_matches_fs(methods, **kw), finding_detailed_no_gain(methods, **kw)]
