"""Evaluation plots as PNG files: the reward-vs-KL frontier, log(beta) vs log(KL), per-method bars, correct vs
incorrect facts per method.

Uses matplotlib's object-oriented API with the Agg canvas and never pyplot, so it needs no display, keeps no
global figure state and leaves the process's backend alone. Import this module lazily (matplotlib is slow
to import); `rlhfkit.report` does.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from rlhfkit.stats import BetaKLFit, frontier

MARKERS = "osD^vP*Xh<>"
STYLE_ORDER = ("sft", "dpo", "ppo", "ppo_gt", "preferred_ft", "unlikelihood", "best_of_n", "detailed", "facttune_fs",
               "facttune_mc")
"""Methods with a fixed colour and marker, in this order; any other method gets the next free pair."""


def method_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """One (colour, marker) per method name, the same in every plot of a report: the known methods
    (STYLE_ORDER) always get the same pair, others follow in first-seen order."""
    names = list(STYLE_ORDER) + [m for m in dict.fromkeys(methods) if m not in STYLE_ORDER]
    return {name: (f"C{i % 10}", MARKERS[i % len(MARKERS)]) for i, name in enumerate(names)}


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.0, 4.8), dpi=110)
    FigureCanvasAgg(fig)  # attach the Agg canvas explicitly: rendering never depends on the default backend
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig: Figure, path: str | Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return str(path)


def _group(rows: Sequence[dict], key: str = "method") -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(str(row[key]), []).append(row)
    return groups


def plot_frontier(rows: Sequence[dict], path: str | Path, names: dict[str, str] | None = None,
                  curves: dict[str, tuple[float, float, float, float]] | None = None) -> str:
    """Mean gold reward against KL(pi || pi_ref) for every checkpoint, one colour and marker per method.

    rows: dicts {method, kl, reward, reward_se?, kl_se?, label?}. Error bars show the standard errors when
    given; `label` (e.g. "beta=0.1") is written next to the point. curves: per method (r_ref, alpha, beta,
    kl_max), the fitted curve r_ref + alpha sqrt(KL) + beta KL that the findings compare, drawn over
    [0, kl_max]; a method without one gets its Pareto frontier (lower KL, higher reward) as a thin line.
    Up-and-left is better. names: legend text per method.
    """
    fig, ax = _figure()
    groups = _group(rows)
    styles = method_styles(list(groups))
    for method, group in groups.items():
        colour, marker = styles[method]
        kl = [float(r["kl"]) for r in group]
        reward = [float(r["reward"]) for r in group]
        xerr = [float(r.get("kl_se") or 0.0) for r in group]
        yerr = [float(r.get("reward_se") or 0.0) for r in group]
        ax.errorbar(kl, reward, xerr=xerr, yerr=yerr, fmt=marker, color=colour, alpha=0.8, capsize=2,
                    label=(names or {}).get(method, method))
        if curves and method in curves:
            r_ref, alpha, beta, kl_max = curves[method]
            xs = [kl_max * i / 63 for i in range(64)]
            ax.plot(xs, [r_ref + alpha * math.sqrt(x) + beta * x for x in xs], "--", color=colour, alpha=0.8)
        elif len(best := frontier(list(zip(kl, reward)))) > 1:
            ax.plot([p[0] for p in best], [p[1] for p in best], "-", color=colour, alpha=0.6)
        for r in group:
            if r.get("label"):
                ax.annotate(str(r["label"]), (float(r["kl"]), float(r["reward"])), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("KL(π ‖ π_ref) to the SFT policy (nats per completion)")
    ax.set_ylabel("mean gold reward on held-out prompts")
    ax.set_title("Reward vs KL frontier (up and left is better)")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_beta_kl(betas: Sequence[float], kls: Sequence[float], fit: BetaKLFit | None, path: str | Path) -> str:
    """Log-log scatter of KL against beta with the fitted line log KL = slope * log beta + intercept."""
    fig, ax = _figure()
    colour, marker = method_styles(["dpo"])["dpo"]  # DPO's colour and marker in every plot
    ax.loglog(betas, kls, marker, color=colour, label="DPO runs (final checkpoint)")
    if fit is not None and len(betas) > 0:
        lo, hi = math.log(min(betas)), math.log(max(betas))
        xs = [math.exp(lo + (hi - lo) * i / 49) for i in range(50)]
        ax.loglog(xs, [math.exp(fit.intercept) * x**fit.slope for x in xs], "-", color=colour,
                  label=f"fit: slope {fit.slope:.2f}, r² {fit.r2:.2f}")
    for axis in (ax.xaxis, ax.yaxis):  # ticks at 1-2-5 steps, written 0.1, 0.2, 0.5 rather than 10^-1
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("β (DPO's KL weight)")
    ax.set_ylabel("KL(π ‖ π_ref) (nats per completion)")
    ax.set_title("How β sets the KL reached")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bars(rows: Sequence[dict], path: str | Path, value: str, title: str,
              reference: float | None = None, ylabel: str | None = None) -> str:
    """One bar per row (height = row[value], x label = row.get("label", row["method"])) coloured by
    row["method"] as in every other plot, with error bars from row["low"] / row["high"] when present;
    `reference` draws a dashed horizontal line (0.5 for win rates: no better than the baseline).
    """
    fig, ax = _figure()
    names = [str(r.get("label") or r["method"]) for r in rows]
    styles = method_styles([str(r["method"]) for r in rows])
    heights = [float(r[value]) for r in rows]
    below = [heights[i] - float(r["low"]) if r.get("low") is not None else 0.0 for i, r in enumerate(rows)]
    above = [float(r["high"]) - heights[i] if r.get("high") is not None else 0.0 for i, r in enumerate(rows)]
    ax.bar(range(len(rows)), heights, yerr=[below, above], capsize=4,
           color=[styles[str(r["method"])][0] for r in rows])
    ax.set_xticks(range(len(rows)), names, rotation=20, ha="right")
    if reference is not None:
        ax.axhline(reference, linestyle="--", color="grey", linewidth=1)
    ax.set_ylabel(ylabel or value)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def plot_fact_bars(rows: Sequence[dict], path: str | Path) -> str:
    """Correct and incorrect facts per response, two bars per method with 95% error bars.

    rows: dicts {method, label?, correct: {mean, low, high}, incorrect: {mean, low, high}} (low / high optional).
    Each method keeps its colour from `method_styles`; its correct-facts bar is solid and its incorrect-facts bar
    hatched and paler, explained by a two-entry legend. A factual method moves the hatched bar down and keeps
    the solid one.
    """
    fig, ax = _figure()
    styles = method_styles([str(r["method"]) for r in rows])
    width = 0.38
    for kind, offset, solid in (("correct", -width / 2, True), ("incorrect", width / 2, False)):
        cells = [r.get(kind) or {} for r in rows]
        heights = [float(c.get("mean", 0.0)) for c in cells]
        below = [h - float(c["low"]) if c.get("low") is not None else 0.0 for h, c in zip(heights, cells)]
        above = [float(c["high"]) - h if c.get("high") is not None else 0.0 for h, c in zip(heights, cells)]
        colours = [styles[str(r["method"])][0] for r in rows]
        ax.bar([i + offset for i in range(len(rows))], heights, width, yerr=[below, above], capsize=3,
               color=colours, edgecolor=colours if solid else "black", alpha=1.0 if solid else 0.45,
               hatch=None if solid else "//", linewidth=0.8)
    ax.set_xticks(range(len(rows)), [str(r.get("label") or r["method"]) for r in rows], rotation=15, ha="right")
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", label="solid: correct facts (supported claims)"),
                       Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="hatched: incorrect facts (contradicted claims)")], fontsize=8)
    ax.set_ylabel("facts per response (held-out entities)")
    ax.set_title("Correct and incorrect facts per response (95% CI)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
