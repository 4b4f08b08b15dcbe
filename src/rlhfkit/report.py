"""The experiment report: renders the numbers and the findings as HTML, Markdown, JSON, CSV and plots.

The findings themselves are decided in `rlhfkit.findings` (every verdict rule lives there) and rendered here
only as "reproduced" / "did not reproduce" / "inconclusive", each with its interval and the smallest gap the
run could have detected. Every piece of text in the report is escaped: completions are model output and
untrusted. Other experiments' reports (the factuality one) build their own sections and share the renderer
(`write_document`) and the common sections (`findings_section`, `stages_section`, `command_section`). Every
plot gives a method the same colour and marker (`plots.method_styles`).
"""

from __future__ import annotations

import csv
import html
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from rlhfkit.findings import NAMES, beta_kl_points, checkpoints_of, length_table, reference_of, verdict
from rlhfkit.stats import BetaKLFit, fit_frontier, wilson_interval

CSV_COLUMNS = ["method", "label", "seed", "beta", "step", "kl", "kl_se", "reward", "reward_se", "length"]


def best_within_budget(checkpoints: Sequence[dict], budget: float) -> dict | None:
    """The checkpoint with the highest mean reward among those with kl <= budget (lower KL breaks ties).
    Descriptive only (the maximum of noisy points is biased upwards): findings use `rlhfkit.findings`."""
    inside = [c for c in checkpoints if c["kl"] <= budget]
    return max(inside, key=lambda c: (c["reward"], -c["kl"])) if inside else None


def method_table(methods: Sequence[dict], budget: float) -> list[dict]:
    """One row per method entry: its best checkpoint within the KL budget (or None), its win rate vs SFT, and its
    LM-judged win rate vs SFT (None without a judge)."""
    rows = []
    for m in methods:
        best = best_within_budget(m.get("checkpoints", []), budget)
        rows.append({"method": m["method"], "label": m.get("label") or m["method"], "beta": m.get("beta"),
                     "best": best, "win_rate": m.get("win_rate_vs_sft"),
                     "judge_win_rate": m.get("judge_win_rate_vs_sft")})
    return rows


# ---- rendering: sections are built once, then written as HTML and as Markdown ----------------------------


def fmt(x: Any, spec: str = ".3f") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return format(x, spec) if isinstance(x, (int, float)) else str(x)


def stage_outcome(stage: dict) -> str:
    """How a stage ended, in words: "done", or e.g. "stopped by its time limit at step 300 of 800" (a stage
    row or stage result: {status, step, planned_steps})."""
    status = stage.get("status", "done")
    if status == "done":
        return "done"
    if status == "time_limit":
        planned = stage.get("planned_steps")
        return f"stopped by its time limit at step {stage.get('step', '?')}" + (f" of {planned}" if planned else "")
    return str(status)


def stages_section(stages: Sequence[dict]) -> dict:
    """Every stage's time and how it ended; a stage that did not finish its planned steps is called out."""
    short = [s for s in stages if s.get("status", "done") != "done"]
    text = [f"{s['name']} {stage_outcome(s)}: the results use that step's model, not the planned last one's."
            for s in short]
    return {"heading": "Stages", "text": text, "table": (["stage", "seconds", "status"], [
        [s["name"], fmt(s.get("seconds"), ".1f"), stage_outcome(s)] for s in stages])}


def _pm(value: Any, se: Any, spec: str = ".3f") -> str:
    return fmt(value, spec) if se is None else f"{fmt(value, spec)} ± {fmt(se, spec)}"


def _win(w: dict | None) -> str:
    """A win rate as "rate [low, high]", "—" without one."""
    return f"{fmt(w.get('rate'))} [{fmt(w.get('low'))}, {fmt(w.get('high'))}]" if w else "—"


def _method_rows(table: Sequence[dict], judged: bool) -> list[list[str]]:
    """The methods table's cells; judged: with the LM-judged win rate column."""
    rows = []
    for r in table:
        b = r["best"] or {}
        rows.append([r["label"], fmt(r["beta"], "g"), _pm(b.get("reward"), b.get("reward_se")),
                     _pm(b.get("kl"), b.get("kl_se")), fmt(b.get("step"), "d"), fmt(b.get("length"), ".1f"),
                     _win(r["win_rate"])] + ([_win(r["judge_win_rate"])] if judged else []))
    return rows


def _one(values: Iterable[Any]) -> str:
    """The value every entry shares, or all of them joined when they differ."""
    return ", ".join(str(v) for v in dict.fromkeys(values))


def _judge_note(judged: Sequence[dict]) -> str:
    """The line under the methods table that says how the LM-judged column was measured and what to read it with:
    the judge, the template, order-inconsistent, unparseable and identical pairs, and the judge's agreement with
    the gold reward on the same pairs, pooled over methods (`judge_win_rate_vs_sft` dicts)."""
    total = sum(j["n_prompts"] for j in judged)
    inconsistent = sum(j["order_inconsistent"] for j in judged)
    agree, decided = (sum(j["gold_agreement"][k] for j in judged) for k in ("agree", "n"))
    orders = ("asked in both orders (where the two disagree, a tie)" if all(j["both_orders"] for j in judged)
              else "asked in one order only (position bias not controlled)")
    if decided:
        low, high = wilson_interval(agree / decided, decided)
        agreement = f"{agree} of {decided} ({fmt(agree / decided)} [{fmt(low)}, {fmt(high)}]; 0.5 is chance)"
    else:
        agreement = "no pair where both named a side"
    return (f"LM-judged win rate vs SFT: judge {_one(j['judge'] for j in judged)}, template "
            f"{_one(j['template'] for j in judged)}, on the first {_one(j['n_prompts'] for j in judged)} held-out "
            f"prompts, each method's final completion against SFT's, {orders}; ties count half (95% Wilson "
            f"interval). Of {total} verdicts: {inconsistent} ({inconsistent / total:.0%}) order-inconsistent, "
            f"counted as ties; {sum(j['unparseable'] for j in judged)} unparseable, left out; "
            f"{sum(j['identical'] for j in judged)} between identical completions, ties not asked. The judge's "
            f"agreement with the gold reward on the same pairs, pooled over methods, where both named a side: "
            f"{agreement}. The DPO paper measured its win rates this way with GPT-4 as the judge, having first "
            "checked GPT-4 against human raters; read this column with the agreement before it.")


FINDINGS_TEXT = ("Each claim is decided from a confidence interval (rules: rlhfkit.findings): reproduced when it "
                 "excludes zero in the claimed direction, did not reproduce when it excludes zero in the other, "
                 "inconclusive otherwise. 'Detectable' is the smallest true gap in mean reward the run would have "
                 "found with 80% power.")


def findings_section(findings: Sequence[dict], text: str = FINDINGS_TEXT) -> dict:
    """The findings table every report opens with: claim, verdict (`findings.verdict`'s three words only),
    evidence and the smallest detectable effect; `text` says how the claims were decided."""
    return {"heading": "Findings", "text": [text],
            "table": (["claim", "verdict", "evidence", "detectable"], [
                [f["claim"], verdict(f["reproduced"]), f.get("evidence", ""), fmt(f.get("detectable"))]
                for f in findings])}


def command_section(commands: str | Sequence[str] | None) -> dict:
    """The command(s) that produced the run, as a code block."""
    return {"heading": "Command", "code": "\n".join(commands) if isinstance(commands, list) else str(commands or "")}


def _sections(results: dict, table: Sequence[dict], plots: dict[str, str]) -> list[dict]:
    budget = results.get("budget")
    sections = [findings_section(results.get("findings", []))]
    judged = [r["judge_win_rate"] for r in table if r["judge_win_rate"]]
    sections.append({"heading": f"Methods at KL ≤ {fmt(budget, 'g')} nats",
                     "text": ["Best mean gold reward among each method's checkpoints within the KL budget "
                              "(± standard error), the KL and mean completion length of that checkpoint, and the "
                              "win rate against the SFT policy with its 95% Wilson interval."],
                     "table": (["method", "β", "reward", "KL (nats)", "step", "mean length", "win rate vs SFT"]
                               + (["LM-judged win rate vs SFT"] if judged else []), _method_rows(table, bool(judged))),
                     "after": [_judge_note(judged)] if judged else []})
    sections.append({"heading": "Plots", "images": [Path(p).name for p in plots.values()]})
    lengths = length_table(results.get("methods", []))
    if lengths:
        sections.append(_length_section(lengths))
    rm = results.get("reward_model")
    if rm:
        sections.append({"heading": "Reward model",
                         "text": [f"held-out pairwise accuracy {fmt(rm.get('accuracy'))} over {rm.get('n')} pairs; "
                                  "calibration: predicted = mean σ(|margin|), observed = accuracy in the bin"],
                         "table": (["confidence bin", "pairs", "predicted", "observed"], [
                             [f"{fmt(c['bin_low'], '.2f')}–{fmt(c['bin_high'], '.2f')}", str(c["n"]),
                              fmt(c["predicted"]), fmt(c["observed"])] for c in rm.get("calibration", [])])})
    samples = [[s["prompt"], method, text] for s in results.get("samples", [])
               for method, text in s.get("completions", {}).items()]
    sections.append({"heading": "Samples", "table": (["prompt", "method", "completion"], samples)})
    sections.append(stages_section(results.get("stages", [])))
    sections.append(command_section(results.get("commands")))
    return sections


def _length_section(rows: Sequence[dict]) -> dict:
    slope, length0 = rows[0]["slope"], rows[0]["reference_length"]
    def interval(e: dict) -> str:
        return f"{fmt(e['mean'], '+.3f')} [{fmt(e['low'], '+.3f')}, {fmt(e['high'], '+.3f')}]"
    return {"heading": "Does the gain survive controlling for length?",
            "text": [f"Each run's final checkpoint: reward gain over the SFT policy, paired over prompts (95% "
                     f"bootstrap CI), raw and with every reward moved to the SFT mean length ({length0:.1f} tokens) "
                     "by the within-checkpoint slope of reward on length, re-estimated in each resample (pooled "
                     f"over every checkpoint it is {slope:+.4f} per token). A gain that is significant raw but not "
                     "controlled was bought with length."],
            "table": (["method", "step", "mean length", "gain over SFT", "length-controlled gain"],
                      [[r["label"], fmt(r["step"], "d"), fmt(r["length"], ".1f"), interval(r["gain"]),
                        interval(r["controlled"])] for r in rows])}


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
        out += [f"<p>{_e(t)}</p>" for t in s.get("after", [])]
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
        out += [_md(t) + "\n" for t in s.get("after", [])]
        out += [f"![{name}]({name})\n" for name in s.get("images", [])]
        if s.get("code"):
            out += ["    " + line for line in s["code"].splitlines()] + [""]  # indented: nothing is interpreted
    return "\n".join(out)


def jsonable(obj: Any) -> Any:
    """Plain JSON values: dataclasses via to_dict(), NaN / inf -> null (strict JSON has no NaN)."""
    if hasattr(obj, "to_dict"):
        obj = obj.to_dict()
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
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
                                 "seed": m.get("seed", 0), "beta": m.get("beta"), **c})
    return str(path)


def _curves(methods: Sequence[dict]) -> dict[str, tuple[float, float, float, float]]:
    """Per method, the curve the findings fit (stats.fit_frontier), over the method's KL range, for the plot."""
    ref = reference_of(methods)
    if ref is None:
        return {}
    curves = {}
    for name in dict.fromkeys(m["method"] for m in methods if m["method"] != "sft"):
        points = checkpoints_of(methods, name)
        kls = [c["kl"] for c in points]
        if points and max(kls) > 0:
            curves[name] = (ref["reward"], *fit_frontier(kls, [c["reward"] for c in points], ref["reward"]), max(kls))
    return curves


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
        names = {**NAMES, "sft": "SFT (reference)", "best_of_n": "best-of-N"}
        written["frontier"] = plots.plot_frontier(rows, run_dir / "frontier.png", names, _curves(methods))
    fit = results.get("beta_fit")
    betas, kls = beta_kl_points(methods)
    if fit is not None and len(betas) >= 2:
        fit = fit if isinstance(fit, BetaKLFit) else BetaKLFit(**{k: fit[k] for k in ("slope", "intercept", "r2", "n")})
        written["beta_kl"] = plots.plot_beta_kl(betas, kls, fit, run_dir / "beta_kl.png")
    bars = [{"method": m["method"], "label": m.get("label") or m["method"], **m["win_rate_vs_sft"]}
            for m in methods if m.get("win_rate_vs_sft")]
    if bars:
        written["win_rates"] = plots.plot_bars(bars, run_dir / "win_rates.png", "rate",
                                               "Win rate of each final policy against the SFT policy (95% Wilson CI)",
                                               reference=0.5, ylabel="win rate vs SFT (ties count half)")
    return written


def write_report(run_dir: str | Path, results: dict) -> dict[str, str]:
    """Write report.html, report.md, results.json, methods.csv and the PNG plots into run_dir.

    `results` is a plain dict (every key optional except `methods`):
      title: str; preset: str; budget: float, the KL budget (nats) of the per-method table;
      commands: str | list[str], the command(s) that produced the run;
      stages: [{name, seconds, status: "done" | "time_limit", step, planned_steps (training stages)}];
      methods: [{method: "sft" | "dpo" | "ppo" | "ppo_gt" | "preferred_ft" | "unlikelihood" | ..., label: str,
                 seed: int (which --seeds replicate; default 0), beta: float | None,
                 checkpoints: [{step, kl, kl_se, reward, reward_se, length,
                                rewards, kls, lengths (per-prompt values, optional: findings need them)}],
                 win_rate_vs_sft: {rate, low, high, wins, losses, ties, n} (stats.WinRate.to_dict()) | None,
                 judge_win_rate_vs_sft (optional; present on some entries, the methods table gains a column and a
                   line under it): a language-model judge's win rate of the entry's final completions over SFT's,
                   {rate, low, high, wins, losses, ties, n, unparseable, order_inconsistent,
                    order_inconsistent_share, mean_prob_a (evaluate.verdict_win_rate), identical (pairs of identical
                    texts, ties not asked), gold_agreement: {agree, n} (pairs where the judge and the gold reward
                    both named a side, and how many sides were the same), judge, template (identities),
                    n_prompts, both_orders}}];
      reward_model: {accuracy, n, calibration: stats.calibration_table(...)} | None;
      samples: [{prompt: str, completions: {label: text}}] (untrusted text: always escaped);
      beta_fit: stats.BetaKLFit (or its dict) fitted on findings.beta_kl_points(methods) | None;
      findings: [{claim, reproduced: True | False | None, evidence: str, detectable: float | None}], from
                `rlhfkit.findings` (e.g. `sentiment_findings`).
    Returns {"html", "markdown", "json", "csv", and each plot written: "frontier", "beta_kl", "win_rates"}.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    methods = results.get("methods", [])
    paths = {"json": str(run_dir / "results.json"), "csv": _write_csv(methods, run_dir / "methods.csv")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(jsonable(results), f, indent=2, ensure_ascii=False, allow_nan=False)
    plots = _write_plots(results, run_dir)
    title = str(results.get("title") or "rlhfkit report")
    intro = f"preset: {results.get('preset', '—')}; KL budget: {fmt(results.get('budget'), 'g')} nats"
    short = [s["name"] for s in results.get("stages", []) if s.get("status", "done") != "done"]
    if short:
        intro += f"; stopped short of their planned steps: {', '.join(short)} (see Stages)"
    budget = results.get("budget")
    sections = _sections(results, method_table(methods, math.inf if budget is None else budget), plots)
    return {**paths, **write_document(run_dir, title, intro, sections), **plots}


def write_document(run_dir: str | Path, title: str, intro: str, sections: Sequence[dict]) -> dict[str, str]:
    """Write sections as run_dir/report.html and run_dir/report.md, every piece of text escaped.

    A section is {heading, text: [paragraphs], table: (headers, rows of cells), after: [paragraphs], images:
    [file names beside the report], code: str}, every key but heading optional. Returns {"html", "markdown"}.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "report.html").write_text(_to_html(title, intro, sections), encoding="utf-8")
    (run_dir / "report.md").write_text(_to_markdown(title, intro, sections), encoding="utf-8")
    return {"html": str(run_dir / "report.html"), "markdown": str(run_dir / "report.md")}
