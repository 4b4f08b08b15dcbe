"""The experiment report: decides each finding from the numbers, then renders HTML, Markdown, JSON, CSV, plots.

The findings are decided here by fixed, documented criteria (`finding_*`), and rendered only as
"reproduced" / "did not reproduce" / "inconclusive" from a True / False / None, so an experiment cannot
tune how its outcome is worded. Every piece of text in the report is escaped: completions are model output
and untrusted.

Method names the findings look for (the `method` field of each entry in `results["methods"]`):
"dpo", "ppo", "preferred_ft", "unlikelihood"; the win-rate baseline is the SFT policy.
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

from rlhfkit.stats import BetaKLFit

DPO, PPO, PREFERRED_FT, UNLIKELIHOOD = "dpo", "ppo", "preferred_ft", "unlikelihood"
VERDICTS = {True: "reproduced", False: "did not reproduce", None: "inconclusive"}
CSV_COLUMNS = ["method", "label", "beta", "step", "kl", "kl_se", "reward", "reward_se", "length"]


def verdict(reproduced: bool | None) -> str:
    """The only three words a finding can be rendered with; anything but True / False / None is an error."""
    if reproduced is not True and reproduced is not False and reproduced is not None:
        raise ValueError(f"a finding's 'reproduced' must be true, false or null, got {reproduced!r}")
    return VERDICTS[reproduced]


def _checkpoints(methods: Sequence[dict], name: str) -> list[dict]:
    """All checkpoints of every entry whose method is `name` (e.g. DPO at several betas)."""
    return [c for m in methods if m["method"] == name for c in m.get("checkpoints", [])]


def best_within_budget(checkpoints: Sequence[dict], budget: float) -> dict | None:
    """The checkpoint with the highest mean reward among those with kl <= budget (lower KL breaks ties)."""
    inside = [c for c in checkpoints if c["kl"] <= budget]
    return max(inside, key=lambda c: (c["reward"], -c["kl"])) if inside else None


def beta_kl_points(methods: Sequence[dict]) -> tuple[list[float], list[float]]:
    """(betas, kls) for the beta fit: the final checkpoint (largest step) of each DPO entry with a beta.

    The experiment should fit `stats.fit_beta_kl` on exactly these points so the plot shows what was fitted.
    """
    betas, kls = [], []
    for m in methods:
        if m["method"] == DPO and m.get("beta") is not None and m.get("checkpoints"):
            betas.append(float(m["beta"]))
            kls.append(float(max(m["checkpoints"], key=lambda c: c["step"])["kl"]))
    return betas, kls


def _point(c: dict) -> str:
    return f"step {c.get('step')} (KL {c['kl']:.3f}, reward {c['reward']:.3f})"


def finding_dpo_dominates_ppo(methods: Sequence[dict]) -> dict:
    """DPO's reward-KL frontier dominates PPO's (DPO paper, Fig. 2 left).

    Criterion: reproduced when EVERY PPO checkpoint is matched by some DPO checkpoint (any beta) with
    KL <= its KL and mean reward >= its reward, on point estimates; not reproduced when at least one PPO
    checkpoint is unmatched; inconclusive when either method has no checkpoints.
    """
    claim = "DPO's reward-vs-KL frontier dominates PPO's (DPO paper, Figure 2 left)"
    dpo, ppo = _checkpoints(methods, DPO), _checkpoints(methods, PPO)
    if not dpo or not ppo:
        return {"claim": claim, "reproduced": None,
                "evidence": f"needs checkpoints of both: {len(dpo)} DPO, {len(ppo)} PPO"}
    unmatched = [p for p in ppo if not any(d["kl"] <= p["kl"] and d["reward"] >= p["reward"] for d in dpo)]
    evidence = f"{len(ppo) - len(unmatched)} of {len(ppo)} PPO checkpoints have a DPO checkpoint with KL <= and reward >="
    if unmatched:
        evidence += f"; first unmatched PPO {_point(unmatched[0])}"
    return {"claim": claim, "reproduced": not unmatched, "evidence": evidence}


def finding_beta_sets_kl(beta_fit: BetaKLFit | dict | None) -> dict:
    """Beta sets the KL DPO reaches: log(KL) falls linearly in log(beta).

    Criterion: reproduced when the fit over >= 3 points has r^2 >= 0.8 and slope < 0; not reproduced
    otherwise; inconclusive with no fit or fewer than 3 points (two points always lie on a line).
    """
    claim = "beta sets the KL DPO reaches: log(KL) falls linearly as log(beta) grows"
    if beta_fit is None:
        return {"claim": claim, "reproduced": None, "evidence": "no beta fit (needs DPO runs at >= 2 betas)"}
    fit = beta_fit if isinstance(beta_fit, BetaKLFit) else BetaKLFit(**{k: beta_fit[k] for k in ("slope", "intercept", "r2", "n")})
    evidence = f"slope {fit.slope:.3f}, r^2 {fit.r2:.3f} over {fit.n} runs (criterion: >= 3 runs, r^2 >= 0.8, slope < 0)"
    if fit.n < 3:
        return {"claim": claim, "reproduced": None, "evidence": evidence}
    return {"claim": claim, "reproduced": fit.r2 >= 0.8 and fit.slope < 0, "evidence": evidence}


def finding_baselines_fall_short(methods: Sequence[dict], budget: float) -> dict:
    """At the KL budget, DPO beats the DPO paper's baselines (preferred-FT and unlikelihood).

    Criterion: with best(m) the highest mean reward among method m's checkpoints with KL <= budget,
    reproduced when best(dpo) > best(preferred_ft) and best(dpo) > best(unlikelihood); not reproduced when
    either baseline is >= DPO; inconclusive when any of the three has no checkpoint within the budget.
    """
    claim = f"at KL <= {budget:g} nats, DPO's best reward exceeds preferred-FT's and unlikelihood's"
    best = {name: best_within_budget(_checkpoints(methods, name), budget) for name in (DPO, PREFERRED_FT, UNLIKELIHOOD)}
    missing = [name for name, c in best.items() if c is None]
    if missing:
        return {"claim": claim, "reproduced": None,
                "evidence": f"no checkpoint within the budget for: {', '.join(missing)}"}
    evidence = "; ".join(f"{name} {best[name]['reward']:.3f} at KL {best[name]['kl']:.3f}" for name in best)
    reproduced = all(best[DPO]["reward"] > best[name]["reward"] for name in (PREFERRED_FT, UNLIKELIHOOD))
    return {"claim": claim, "reproduced": reproduced, "evidence": evidence}


def method_table(methods: Sequence[dict], budget: float) -> list[dict]:
    """One row per method entry: its best checkpoint within the KL budget (or None) and its win rate vs SFT."""
    rows = []
    for m in methods:
        best = best_within_budget(m.get("checkpoints", []), budget)
        rows.append({"method": m["method"], "label": m.get("label") or m["method"], "beta": m.get("beta"),
                     "best": best, "win_rate": m.get("win_rate_vs_sft")})
    return rows


# ---- rendering: sections are built once, then written as HTML and as Markdown ----------------------------


def _fmt(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def _pm(value: Any, se: Any, spec: str = ".3f") -> str:
    return _fmt(value, spec) if se is None else f"{_fmt(value, spec)} ± {_fmt(se, spec)}"


def _method_rows(table: Sequence[dict]) -> list[list[str]]:
    rows = []
    for r in table:
        b, w = r["best"] or {}, r["win_rate"] or {}
        win = f"{_fmt(w.get('rate'))} [{_fmt(w.get('low'))}, {_fmt(w.get('high'))}]" if w else "—"
        rows.append([r["label"], _fmt(r["beta"], "g"), _pm(b.get("reward"), b.get("reward_se")),
                     _pm(b.get("kl"), b.get("kl_se")), _fmt(b.get("step"), "d"), _fmt(b.get("length"), ".1f"), win])
    return rows


def _sections(results: dict, table: Sequence[dict], plots: dict[str, str]) -> list[dict]:
    budget = results.get("budget")
    sections = [{"heading": "Findings", "table": (["claim", "verdict", "evidence"], [
        [f["claim"], verdict(f["reproduced"]), f.get("evidence", "")] for f in results.get("findings", [])])}]
    sections.append({"heading": f"Methods at KL ≤ {_fmt(budget, 'g')} nats",
                     "text": ["Best mean gold reward among each method's checkpoints within the KL budget "
                              "(± standard error), the KL and mean completion length of that checkpoint, and the "
                              "win rate against the SFT policy with its 95% Wilson interval."],
                     "table": (["method", "β", "reward", "KL (nats)", "step", "mean length", "win rate vs SFT"],
                               _method_rows(table))})
    sections.append({"heading": "Plots", "images": [Path(p).name for p in plots.values()]})
    rm = results.get("reward_model")
    if rm:
        sections.append({"heading": "Reward model",
                         "text": [f"held-out pairwise accuracy {_fmt(rm.get('accuracy'))} over {rm.get('n')} pairs; "
                                  "calibration: predicted = mean σ(|margin|), observed = accuracy in the bin"],
                         "table": (["confidence bin", "pairs", "predicted", "observed"], [
                             [f"{_fmt(c['bin_low'], '.2f')}–{_fmt(c['bin_high'], '.2f')}", str(c["n"]),
                              _fmt(c["predicted"]), _fmt(c["observed"])] for c in rm.get("calibration", [])])})
    samples = [[s["prompt"], method, text] for s in results.get("samples", [])
               for method, text in s.get("completions", {}).items()]
    sections.append({"heading": "Samples", "table": (["prompt", "method", "completion"], samples)})
    sections.append({"heading": "Stages", "table": (["stage", "seconds", "status"], [
        [s["name"], _fmt(s.get("seconds"), ".1f"), str(s.get("status", ""))] for s in results.get("stages", [])])})
    commands = results.get("commands")
    sections.append({"heading": "Command", "code": "\n".join(commands) if isinstance(commands, list) else str(commands or "")})
    return sections


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _to_html(title: str, intro: str, sections: Sequence[dict]) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{_e(title)}</title>",
           "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
           "text-align:left;vertical-align:top;white-space:pre-wrap}img{max-width:100%;display:block;margin:1em 0}"
           "pre{background:#f4f4f4;padding:8px;white-space:pre-wrap}</style></head><body>",
           f"<h1>{_e(title)}</h1>", f"<p>{_e(intro)}</p>"]
    for s in sections:
        out.append(f"<h2>{_e(s['heading'])}</h2>")
        out += [f"<p>{_e(t)}</p>" for t in s.get("text", [])]
        if s.get("table"):
            headers, rows = s["table"]
            out.append("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in headers) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows]
            out.append("</table>")
        out += [f'<img src="{_e(name)}" alt="{_e(name)}">' for name in s.get("images", [])]
        if s.get("code"):
            out.append(f"<pre>{_e(s['code'])}</pre>")
    return "\n".join(out + ["</body></html>", ""])


def _md(text: Any) -> str:
    """Markdown-safe text: no raw HTML, no links / images / emphasis from model output, one line per cell."""
    text = html.escape(str(text), quote=False)
    text = re.sub(r"([\\`*_\[\]()!|#~{}<>])", r"\\\1", text)
    return re.sub(r"\r?\n", "<br>", text)


def _to_markdown(title: str, intro: str, sections: Sequence[dict]) -> str:
    out = [f"# {_md(title)}", "", _md(intro), ""]
    for s in sections:
        out += [f"## {_md(s['heading'])}", ""]
        out += [_md(t) + "\n" for t in s.get("text", [])]
        if s.get("table"):
            headers, rows = s["table"]
            out.append("| " + " | ".join(_md(h) for h in headers) + " |")
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
            out.append("")
        out += [f"![{name}]({name})\n" for name in s.get("images", [])]
        if s.get("code"):
            out += ["    " + line for line in s["code"].splitlines()] + [""]  # indented: nothing is interpreted
    return "\n".join(out)


def _jsonable(obj: Any) -> Any:
    """Plain JSON values: dataclasses via to_dict(), NaN / inf -> null (strict JSON has no NaN)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _write_csv(methods: Sequence[dict], path: Path) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for m in methods:
            for c in m.get("checkpoints", []):
                writer.writerow({"method": m["method"], "label": m.get("label") or m["method"],
                                 "beta": m.get("beta"), **c})
    return str(path)


def _write_plots(results: dict, run_dir: Path) -> dict[str, str]:
    from rlhfkit import plots  # matplotlib loads only when a report is written

    methods, written = results.get("methods", []), {}
    rows = []
    for m in methods:
        last = max((c["step"] for c in m.get("checkpoints", [])), default=None)
        tag = f"β={m['beta']:g}" if m.get("beta") is not None else None
        rows += [{**c, "method": m["method"], "label": tag if c["step"] == last else None}
                 for c in m.get("checkpoints", [])]
    if rows:
        written["frontier"] = plots.plot_frontier(rows, run_dir / "frontier.png")
    fit = results.get("beta_fit")
    betas, kls = beta_kl_points(methods)
    if fit is not None and len(betas) >= 2:
        fit = fit if isinstance(fit, BetaKLFit) else BetaKLFit(**{k: fit[k] for k in ("slope", "intercept", "r2", "n")})
        written["beta_kl"] = plots.plot_beta_kl(betas, kls, fit, run_dir / "beta_kl.png")
    bars = [{"method": m.get("label") or m["method"], **m["win_rate_vs_sft"]}
            for m in methods if m.get("win_rate_vs_sft")]
    if bars:
        written["win_rates"] = plots.plot_bars(bars, run_dir / "win_rates.png", "rate",
                                               "Win rate against the SFT policy (95% Wilson CI)", reference=0.5)
    return written


def write_report(run_dir: str | Path, results: dict) -> dict[str, str]:
    """Write report.html, report.md, results.json, methods.csv and the PNG plots into run_dir.

    `results` is a plain dict (every key optional except `methods`):
      title: str; preset: str; budget: float, the KL budget (nats) of the per-method table;
      commands: str | list[str], the command(s) that produced the run;
      stages: [{name, seconds, status}];
      methods: [{method: "sft" | "dpo" | "ppo" | "preferred_ft" | "unlikelihood" | ..., label: str,
                 beta: float | None, checkpoints: [{step, kl, kl_se, reward, reward_se, length}],
                 win_rate_vs_sft: {rate, low, high, wins, losses, ties, n} (stats.WinRate.to_dict()) | None}];
      reward_model: {accuracy, n, calibration: stats.calibration_table(...)} | None;
      samples: [{prompt: str, completions: {label: text}}] (untrusted text: always escaped);
      beta_fit: stats.BetaKLFit (or its dict) fitted on report.beta_kl_points(methods) | None;
      findings: [{claim, reproduced: True | False | None, evidence: str}], e.g. from the finding_* helpers.
    Returns {"html", "markdown", "json", "csv", and each plot written: "frontier", "beta_kl", "win_rates"}.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    methods = results.get("methods", [])
    paths = {"json": str(run_dir / "results.json"), "csv": _write_csv(methods, run_dir / "methods.csv")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(_jsonable(results), f, indent=2, ensure_ascii=False, allow_nan=False)
    plots = _write_plots(results, run_dir)
    title = str(results.get("title") or "rlhfkit report")
    intro = f"preset: {results.get('preset', '—')}; KL budget: {_fmt(results.get('budget'), 'g')} nats"
    budget = results.get("budget")
    sections = _sections(results, method_table(methods, math.inf if budget is None else budget), plots)
    (run_dir / "report.html").write_text(_to_html(title, intro, sections), encoding="utf-8")
    (run_dir / "report.md").write_text(_to_markdown(title, intro, sections), encoding="utf-8")
    return {**paths, "html": str(run_dir / "report.html"), "markdown": str(run_dir / "report.md"), **plots}
