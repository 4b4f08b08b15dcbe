"""How fast this machine is, so ETA lines scale to it instead of quoting the developers' machine.

`matmul_gflops` times fp32 `torch.mm` of square matrices (the operation that dominates every stage here) with
torch's current thread count: the median of a few repeats, a few tenths of a second in all. The median, not the
best: a machine shared with other work runs the stages slower too, and the ETA should say so. The experiments'
per-stage estimates were measured on the developers' 2-core machine at `REFERENCE_GFLOPS`; `scale_estimates`
multiplies them by REFERENCE_GFLOPS / the measured rate, so a machine half as fast sees twice the estimate.
Results never depend on this: no stage stops on wall time; only the ETA text does.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch

REFERENCE_GFLOPS = 200.0
"""`matmul_gflops()` on the machine the stage estimates were measured on (2-core AMD EPYC, Zen 2, torch's default
2 threads), quiet: 197-223 GFLOP/s over five measurements (2026-11-29). With other work on its two cores the same
machine measured 63-67, and its stages ran slower too: the factor covers both."""


def matmul_gflops(n: int = 1024, repeats: int = 9) -> float:
    """fp32 GFLOP/s of an (n x n) @ (n x n) matmul on the CPU with torch's current threads: the median of
    `repeats` timed multiplies after one warm-up."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool start, first-touch of the output
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def speed_factor(gflops: float, reference: float = REFERENCE_GFLOPS) -> float:
    """How many times longer a stage takes here than on the reference machine (reference / measured), kept within
    [0.1, 20] so one disturbed measurement cannot make the ETA absurd."""
    if not gflops > 0:
        return 1.0
    return min(max(reference / gflops, 0.1), 20.0)


def scale_estimates(estimates: Mapping[str, float], factor: float) -> dict[str, float]:
    """Seconds per stage scaled by `speed_factor`'s factor."""
    return {name: seconds * factor for name, seconds in estimates.items()}
