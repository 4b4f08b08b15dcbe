"""The factuality experiment's report: FactTune's table with intervals, the findings, the facts plot, checked samples.

Reads what the evaluate stage wrote (`runner.EVALUATION`): per held-out prompt and method, the mean number of
correct (supported) and incorrect (contradicted) facts per response, and the rest of `METRICS`. Renders, through
the sentiment report's renderer (`rlhfkit.report.write_document`, which escapes every piece of text: responses
are model output):

    report.html / report.md   Findings (`rlhfkit.findings.factuality_findings`), the paper-style table for all
                              held-out entities, for the entities seen in pretraining (often + rarely) and for the
                              unseen ones, the plot, each method's response to the first prompts with its claims
                              marked (✓ supported, ✗ contradicted, ? unverifiable), Stages, Command
    results.json              everything, strict JSON, with the per-prompt arrays (not every response's claims)
    methods.csv               method x group x metric: mean, low, high, n
    facts.png                 correct vs incorrect facts per response per method (`plots.plot_fact_bars`)

Intervals: a metric's 95% interval is the normal-approximation interval over prompts (`stats.mean_ci`; a prompt's
value is already the mean over its samples); share correct averages only the prompts where some sample made a
claim; the abstention share (responses with no claim) has a Wilson interval over all samples. With several
seeds, each prompt's values are first averaged over the seeds (`findings.pooled_entry`), as in the findings.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlhfkit import findings as findings_lib
from rlhfkit import report as report_lib
from rlhfkit.stats import mean_ci, wilson_interval

METRICS = ("correct", "incorrect", "unverifiable", "claims", "share_correct", "abstained", "length")
COLUMNS = (("correct", "correct / response", ".2f"), ("incorrect", "incorrect / response", ".2f"),
           ("share_correct", "share correct", ".3f"), ("abstained", "abstentions", ".3f"),
           ("claims", "claims / response", ".2f"), ("length", "length", ".1f"))
"""The paper-style table's columns after the method: (metric, heading, number format)."""
GROUPS = {"seen": ("often", "rarely"), "unseen": ("unseen",), "often": ("often",), "rarely": ("rarely",)}
"""Report group -> the entity groups (`world`: how often pretraining mentions the entity) it pools."""
CSV_COLUMNS = ["method", "label", "group", "metric", "mean", "low", "high", "n"]
SAMPLE_PROMPTS = 6
MARKS = {"supported": "✓", "contradicted": "✗", "unverifiable": "?"}
FINDINGS_TEXT = ("Each claim is decided from a 95% paired bootstrap interval over held-out prompts (rules: "
                 "rlhfkit.findings, FactTune claims): reproduced when it lies on the claimed side, did not reproduce "
                 "when it lies on the other, inconclusive otherwise. 'Detectable' is the smallest true effect, in "
                 "the claim's own unit (facts per response, or share of SFT's facts kept), that the run would have "
                 "found with 80% power.")


# ------------------------------------------------------------------------------------------------ numbers
def _metric(metric: str, values: Sequence[float], samples: int) -> dict | None:
    """{mean, low, high, n} of one metric over prompts (n: prompts; samples for the abstention share)."""
    if not values:
        return None
    if metric == "abstained":
        rate, n = sum(values) / len(values), len(values) * samples
        low, high = wilson_interval(min(max(rate, 0.0), 1.0), n)
        return {"mean": rate, "low": low, "high": high, "n": n}
    e = mean_ci(values)
    return {"mean": e.mean, "low": e.low, "high": e.high, "n": e.n}


def _summarise(per_prompt: Mapping[str, Sequence[float | None]], keep: Sequence[bool], samples: int) -> dict:
    """metric -> {mean, low, high, n} over the kept prompts; a metric without values is left out."""
    out = {}
    for metric in METRICS:
        values = per_prompt.get(metric)
        if values is None:
            continue
        kept = [float(v) for v, k in zip(values, keep, strict=True) if k and v is not None]
        if (summary := _metric(metric, kept, samples)) is not None:
            out[metric] = summary
    return out


def method_summary(entry: Mapping[str, Any], groups: Sequence[str] | None = None,
                   samples_per_prompt: int = 1) -> dict:
    """One method's metrics with 95% intervals, over all held-out prompts and per entity group.

    entry: an evaluation entry (or `findings.pooled_entry`'s merge of a method's seeds) with per_prompt arrays;
    groups: each prompt's entity group ("often" | "rarely" | "unseen"), aligned with the arrays (None: overall
    only); samples_per_prompt: responses sampled per prompt and seed (the abstention share's Wilson n).
    Returns {method, label, seeds, pairs, overall: {metric: {mean, low, high, n}}, groups: {"seen" | "unseen" |
    "often" | "rarely": {metric: ...}}}; a group without prompts is left out.
    """
    per_prompt = entry.get("per_prompt") or {}
    size = max((len(v) for v in per_prompt.values()), default=0)
    seeds = entry.get("seeds", [entry.get("seed", 0)])
    samples = int(samples_per_prompt) * len(seeds)
    by_group = {}
    if groups is not None:
        if len(groups) != size:
            raise ValueError(f"{len(groups)} entity groups but {size} per-prompt values for {entry.get('method')}; "
                             "they must be aligned with the evaluation's prompts")
        for name, members in GROUPS.items():
            keep = [g in members for g in groups]
            if any(keep):
                by_group[name] = _summarise(per_prompt, keep, samples)
    pairs = entry.get("pairs")
    return {"method": entry.get("method"), "label": entry.get("label") or entry.get("method"), "seeds": len(seeds),
            "pairs": pairs if isinstance(pairs, list) else [pairs], "overall": _summarise(per_prompt, [True] * size,
                                                                                          samples),
            "groups": by_group}


def method_table(methods: Sequence[dict], groups: Sequence[str] | None = None, samples_per_prompt: int = 1
                 ) -> list[dict]:
    """`method_summary` of every method (its seeds pooled), in the order the evaluation lists them."""
    names = dict.fromkeys(m["method"] for m in methods)
    return [method_summary(findings_lib.pooled_entry(methods, name), groups, samples_per_prompt) for name in names]


def _counts(results: Mapping[str, Any]) -> dict:
    """Each finished stage's data counts ({stage: counts}), for the stages that report any."""
    return {name: r["counts"] for name, r in results.items() if isinstance(r, Mapping) and r.get("counts")}


def report_entries(exp: Any, methods: list[dict]) -> dict:
    """The runner's Recipe.report hook: the FactTune findings, the tables and the evaluation's provenance.

    exp: runner.Experiment (its evaluation file and finished stages are read); methods: the evaluation's entries
    without their completions. Tolerates a missing evaluation field or stage (the entry is then None / empty).
    """
    from rlhfkit.experiments.runner import EVALUATION

    path = Path(exp.path(EVALUATION))
    ev = json.loads(path.read_text()) if path.exists() else {}
    samples = int(ev.get("samples_per_prompt") or 1)
    return {"findings": findings_lib.factuality_findings(methods, seed=exp.cfg.seed),
            "table": method_table(methods, ev.get("groups"), samples), "groups": ev.get("groups"),
            "prompts": ev.get("prompts"), "entities": ev.get("entities"), "checker": ev.get("checker"),
            "samples_per_prompt": samples, "data": _counts(exp.results)}


# ------------------------------------------------------------------------------------------------ sections
def _cell(summary: Mapping[str, Any] | None, spec: str) -> str:
    if not summary:
        return "—"
    fmt = report_lib.fmt
    return f"{fmt(summary['mean'], spec)} [{fmt(summary['low'], spec)}, {fmt(summary['high'], spec)}]"


def _table_section(heading: str, text: str, table: Sequence[dict], group: str | None) -> dict:
    rows = []
    for row in table:
        metrics = row["overall"] if group is None else row["groups"].get(group, {})
        seeds = f" ({row['seeds']} seeds)" if row["seeds"] > 1 else ""
        rows.append([f"{row['label']}{seeds}"] + [_cell(metrics.get(m), spec) for m, _, spec in COLUMNS])
    return {"heading": heading, "text": [text], "table": (["method"] + [h for _, h, _ in COLUMNS], rows)}


def _marked(checked: Mapping[str, Any] | None) -> str:
    """A response's claims, one a line: "✓ claim", "✗ claim (source: ...)", "? claim (...)"; "(no claim)"."""
    if not checked or not checked.get("claims"):
        return "(no claim)"
    lines = []
    for c in checked["claims"]:
        label = c.get("label")
        note = "" if label == "supported" or not c.get("evidence") else (
            f" (source: {c['evidence']})" if label == "contradicted" else f" ({c['evidence']})")
        lines.append(f"{MARKS.get(label, '?')} {c.get('text', '')}{note}")
    return "\n".join(lines)


def _samples_section(results: Mapping[str, Any]) -> dict:
    """The first prompts: each method's first response (its seed-0 entry) and its checked claims."""
    samples = results.get("samples") or []
    prompts = [s.get("prompt", "") for s in samples] or list(results.get("prompts") or [])
    first = {}
    for m in results.get("methods", []):
        first.setdefault(m["method"], m)
    rows = []
    for i, prompt in enumerate(prompts[:SAMPLE_PROMPTS]):
        completions = samples[i].get("completions", {}) if i < len(samples) else {}
        for m in first.values():
            label = m.get("label") or m["method"]
            checked = m.get("checked") or []
            claims = _marked(checked[i] if i < len(checked) else None)
            rows.append([prompt, label, completions.get(label, "—"), claims])
    return {"heading": "Samples",
            "text": ["Each method's first sampled response to the first held-out prompts, and its claims as the "
                     "checker labelled them: ✓ supported, ✗ contradicted by the knowledge source, ? unverifiable."],
            "table": (["prompt", "method", "response", "claims"], rows)}


def _sections(results: Mapping[str, Any], table: Sequence[dict], plot: str | None) -> list[dict]:
    how = ("Mean over held-out prompts (a prompt's value is the mean over its sampled responses) with its 95% "
           "interval: correct / incorrect = claims the knowledge source supports / contradicts, per response; share "
           "correct over the prompts with a claim; abstentions = share of responses with no claim (Wilson interval "
           "over all responses); length in tokens.")
    sections = [report_lib.findings_section(results.get("findings", []), FINDINGS_TEXT),
                _table_section("Facts per response, all held-out entities", how, table, None),
                _table_section("Entities seen in pretraining (often and rarely)", "As above, on the held-out entities "
                               "pretraining mentions.", table, "seen"),
                _table_section("Entities never seen in pretraining", "As above, on the held-out entities pretraining "
                               "never mentions: a factual model abstains or hedges here.", table, "unseen")]
    if plot:
        sections.append({"heading": "Plot", "images": [Path(plot).name]})
    sections += [_samples_section(results), report_lib.stages_section(results.get("stages", [])),
                 report_lib.command_section(results.get("commands"))]
    return sections


def _intro(results: Mapping[str, Any]) -> str:
    groups = results.get("groups") or []
    counts = ", ".join(f"{g}: {groups.count(g)}" for g in ("often", "rarely", "unseen") if g in groups)
    intro = (f"preset: {results.get('preset', '—')}; claim checker: {results.get('checker') or '—'}; "
             f"{results.get('samples_per_prompt') or '—'} samples per prompt"
             + (f"; {len(groups)} held-out prompts ({counts})" if groups else ""))
    short = [s["name"] for s in results.get("stages", []) if s.get("status", "done") != "done"]
    return intro + (f"; stopped short of their planned steps: {', '.join(short)} (see Stages)" if short else "")


# ------------------------------------------------------------------------------------------------ files
def _write_csv(table: Sequence[dict], path: Path) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in table:
            for group, metrics in {"all": row["overall"], **row["groups"]}.items():
                for metric, s in metrics.items():
                    writer.writerow({"method": row["method"], "label": row["label"], "group": group,
                                     "metric": metric, **s})
    return str(path)


def write_factuality_report(run_dir: str | Path, results: dict) -> dict[str, str]:
    """Write report.html, report.md, results.json, methods.csv and facts.png into run_dir (the Recipe's `write`).

    results: the runner's report results (title, preset, commands, stages, methods = the evaluation's entries
    without completions, samples) plus `report_entries`' (findings, table, groups, prompts, checker,
    samples_per_prompt, data); a missing `table` is computed from the methods. Returns the paths written.
    """
    from rlhfkit import plots

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    methods = results.get("methods", [])
    table = results.get("table") or method_table(methods, results.get("groups"), results.get("samples_per_prompt") or 1)
    raw = {**results, "table": table, "methods": [{k: v for k, v in m.items() if k != "checked"} for m in methods]}
    paths = {"json": str(run_dir / "results.json"), "csv": _write_csv(table, run_dir / "methods.csv")}
    with open(paths["json"], "w", encoding="utf-8") as f:
        json.dump(report_lib.jsonable(raw), f, indent=2, ensure_ascii=False, allow_nan=False)
    bars = [{"method": r["method"], "label": r["label"], "correct": r["overall"].get("correct"),
             "incorrect": r["overall"].get("incorrect")} for r in table if r["overall"].get("correct")]
    if bars:
        paths["facts"] = plots.plot_fact_bars(bars, run_dir / "facts.png")
    title = str(results.get("title") or "rlhfkit factuality report")
    sections = _sections(results, table, paths.get("facts"))
    return {**paths, **report_lib.write_document(run_dir, title, _intro(results), sections)}
