"""`rlhfkit dpo` (offline or online) and `rlhfkit eval beta-for-kl` (which reads finished DPO runs)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlhfkit import config as config_lib
from rlhfkit.dpo.config import DPOConfig
from rlhfkit.dpo.offline import run_dpo
from rlhfkit.dpo.online import run_online
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.tracking import say


def main(argv: list[str]) -> int:
    cfg = config_lib.parse(DPOConfig, argv, prog="rlhfkit dpo")
    summary = run_online(cfg) if cfg.online else run_dpo(cfg)
    ev = summary.get("eval", {})
    say(f"dpo ({cfg.loss}): held-out accuracy {ev.get('eval/rewards/accuracy')}, margin "
        f"{ev.get('eval/rewards/margin')}, KL {summary.get('kl')}; model saved to {summary['model']}")
    return 0


@dataclass(frozen=True)
class BetaForKLArgs:
    """rlhfkit eval beta-for-kl: fit log(KL) against log(beta) over DPO runs and predict beta for a KL."""

    target_kl: float
    """The KL budget in nats (sequence-level KL to the reference)."""
    runs: tuple[str, ...]
    """DPO run directories (each with a summary.json holding beta and the final sampled KL)."""


def read_beta_kl(run_dir: str) -> tuple[float, float]:
    """(beta, final KL) from a DPO run's summary.json."""
    from rlhfkit.data import read_text

    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise RlhfkitError(f"{path} not found: is {run_dir} a finished DPO run?")
    try:
        summary = json.loads(read_text(path))
    except json.JSONDecodeError as err:
        raise DataError(str(path), err.lineno, f"not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(summary, dict):
        raise DataError(str(path), None, "expected a JSON object (a DPO run's summary)")
    if summary.get("beta") is None or summary.get("kl") is None:
        raise RlhfkitError(f"{path} has no beta or kl (was the run's sampled KL turned off with --kl-prompts 0?)")
    try:
        beta, kl = float(summary["beta"]), float(summary["kl"])
    except (TypeError, ValueError):
        beta = kl = math.nan
    if not (math.isfinite(beta) and math.isfinite(kl)):
        raise DataError(str(path), None, f"beta and kl must be finite numbers, got {summary['beta']!r} and "
                        f"{summary['kl']!r}")
    return beta, kl


def beta_for_kl_main(argv: list[str]) -> int:
    """Print the fit (slope, intercept, r2, n) and the predicted beta as one JSON object on stdout."""
    from rlhfkit.stats import fit_beta_kl, predict_beta

    args = config_lib.parse(BetaForKLArgs, argv, prog="rlhfkit eval beta-for-kl")
    points = [read_beta_kl(d) for d in args.runs]
    try:
        fit = fit_beta_kl([b for b, _ in points], [k for _, k in points])
        beta = predict_beta(fit, args.target_kl)
    except ValueError as err:
        raise RlhfkitError(str(err)) from None
    extrapolated = warn_if_extrapolated(args.target_kl, [k for _, k in points])
    print(json.dumps({"fit": fit.to_dict(), "target_kl": args.target_kl, "beta": beta, "extrapolated": extrapolated,
                      "runs": [{"run": d, "beta": b, "kl": k} for d, (b, k) in zip(args.runs, points)]}))
    return 0


def warn_if_extrapolated(target_kl: float, kls: list[float]) -> bool:
    """Is `target_kl` outside [min, max] of the fitted runs' KLs? Then say so (one line on stderr): the line is
    fitted on log-log axes, and far from its points a small error in the slope moves beta a lot."""
    low, high = min(kls), max(kls)
    if low <= target_kl <= high:
        return False
    say(f"warning: target KL {target_kl:g} is outside the fitted runs' KL range [{low:g}, {high:g}]: "
        "the beta is extrapolated")
    return True
