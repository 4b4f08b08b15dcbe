"""The factuality experiment's evidence: the paired bootstrap of any statistic, the FactTune findings' verdicts,
the per-method summary and the report files (escaped, strict JSON, the facts plot)."""

import csv
import json
import math
from dataclasses import dataclass

import numpy as np
import pytest

from rlhfkit import findings, stats
from rlhfkit.experiments import runner
from rlhfkit.experiments.factuality import report as fact_report

P = 200
GROUPS = ["often", "rarely", "unseen"] * (P // 3) + ["often"] * (P % 3)
EVIL = '<script>alert("x")</script> ![img](http://evil.example/a.png)'


def _entry(rng, method, correct, incorrect, seed=0, samples=4):
    """An evaluation entry whose per-prompt counts are means of `samples` Poisson draws (correct, incorrect)."""
    c = rng.poisson(correct, (P, samples)).astype(float)  # (P, S)
    i = rng.poisson(incorrect, (P, samples)).astype(float)  # (P, S)
    claims = c + i
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(claims > 0, c / np.maximum(claims, 1), np.nan)  # (P, S)
    share_mean = [None if np.isnan(row).all() else float(np.nanmean(row)) for row in share]
    per_prompt = {"correct": c.mean(1).tolist(), "incorrect": i.mean(1).tolist(), "unverifiable": [0.0] * P,
                  "claims": claims.mean(1).tolist(), "share_correct": share_mean,
                  "abstained": (claims == 0).mean(1).tolist(), "length": (10 * claims.mean(1) + 5).tolist()}
    labels = {"sft": "SFT", "facttune_fs": "FactTune-FS (DPO)", "facttune_mc": "FactTune-MC (DPO)",
              "detailed": "Detailed (DPO)"}
    return {"method": method, "label": labels[method], "seed": seed, "pairs": None if method == "sft" else 500,
            "per_prompt": per_prompt}


def _methods(rates, seed=0):
    """rates: method -> (correct, incorrect) Poisson means per sample."""
    rng = np.random.default_rng(seed)
    return [_entry(rng, m, *r) for m, r in rates.items()]


# FS keeps nearly all correct facts and cuts 1.0 of SFT's 1.5 incorrect ones; MC cuts 0.8 (80% of it); the
# detailed baseline states more of both
PAPER = {"sft": (2.0, 1.5), "facttune_fs": (1.9, 0.5), "facttune_mc": (1.9, 0.7), "detailed": (2.5, 2.0)}
NULL = {m: (2.0, 1.5) for m in PAPER}
# FactTune makes things worse, the generic baseline cuts errors
REVERSED = {"sft": (2.0, 1.5), "facttune_fs": (1.0, 2.5), "facttune_mc": (1.0, 2.5), "detailed": (2.0, 0.5)}


# ------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_mean_difference_matches_paired_gain():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 50), rng.normal(0.5, 1.0, 50)
    got = stats.bootstrap_statistic({"a": a, "b": b}, lambda m: m["a"] - m["b"], n_boot=300, seed=7)
    want = stats.paired_gain({"rewards": a}, {"rewards": b}, n_boot=300, seed=7)
    assert got.n == want.n == 50
    for field in ("mean", "se", "low", "high"):
        assert getattr(got, field) == pytest.approx(getattr(want, field), abs=1e-12)
    assert got.mean == pytest.approx(a.mean() - b.mean())


def test_bootstrap_statistic_by_hand():
    # two prompts, values 0 and 1: a resample's mean is 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4), so the 95%
    # percentile interval is exactly [0, 1], the estimate 0.5 and the bootstrap sd sqrt(1/8) = 0.354
    e = stats.bootstrap_statistic({"x": [0.0, 1.0]}, lambda m: m["x"], n_boot=4000, seed=0)
    assert (e.mean, e.low, e.high, e.n) == (0.5, 0.0, 1.0, 2)
    assert e.se == pytest.approx(math.sqrt(1 / 8), abs=0.01)
    # a ratio of means: 12 / 4 = 3 on the data; with every prompt at ratio 3 every resample is 3 too
    ratio = stats.bootstrap_statistic({"num": [3.0, 6.0, 3.0], "den": [1.0, 2.0, 1.0]}, lambda m: m["num"] / m["den"],
                                      n_boot=100)
    assert (ratio.mean, ratio.low, ratio.high, ratio.se) == (pytest.approx(3.0),) * 3 + (pytest.approx(0.0, abs=1e-12),)
    # mean(correct_v)/mean(correct_sft): (2 + 4) / (4 + 4) = 0.75
    kept = stats.bootstrap_statistic({"v": [2.0, 4.0], "sft": [4.0, 4.0]}, lambda m: m["v"] / m["sft"], n_boot=200)
    assert kept.mean == pytest.approx(0.75) and 0.5 <= kept.low <= kept.high <= 1.0


def test_bootstrap_statistic_refuses_bad_input():
    with pytest.raises(ValueError, match="need at least 2 prompts"):
        stats.bootstrap_statistic({"x": [1.0]}, lambda m: m["x"])
    with pytest.raises(ValueError, match="x: entry 1 is nan"):
        stats.bootstrap_statistic({"x": [1.0, float("nan")]}, lambda m: m["x"])
    with pytest.raises(ValueError, match="y has 3 values but x has 2"):
        stats.bootstrap_statistic({"x": [1.0, 2.0], "y": [1.0, 2.0, 3.0]}, lambda m: m["x"] - m["y"])
    with pytest.raises(ValueError, match="not finite on the data"):
        stats.bootstrap_statistic({"x": [1.0, 2.0], "y": [0.0, 0.0]}, lambda m: m["x"] / m["y"])
    with pytest.raises(ValueError, match=r"not finite in \d+ of 200 bootstrap"):
        stats.bootstrap_statistic({"x": [1.0, 2.0], "y": [0.0, 1.0]}, lambda m: m["x"] / m["y"], n_boot=200)
    with pytest.raises(ValueError, match="no arrays"):
        stats.bootstrap_statistic({}, lambda m: 0.0)


# ------------------------------------------------------------------------------------------- findings
def _verdicts(methods):
    return [f["reproduced"] for f in findings.factuality_findings(methods, n_boot=400)]


def test_every_facttune_claim_reproduces_on_paper_like_data():
    result = findings.factuality_findings(_methods(PAPER), n_boot=400)
    assert [f["reproduced"] for f in result] == [True] * 6, [f["evidence"] for f in result]
    fs = result[0]
    d = fs["estimates"]["d"]
    assert d["high"] < 0 and fs["detectable"] == pytest.approx(2.8016 * d["se"], rel=1e-4)
    assert f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" in fs["evidence"]
    assert "% of it)" in result[4]["evidence"]  # MC's cut as a share of FS's


def test_null_data_is_inconclusive():
    assert _verdicts(_methods(NULL, seed=2)) == [None] * 6


def test_identical_methods_are_inconclusive_except_that_detailed_does_not_cut_errors():
    sft = _methods({"sft": PAPER["sft"]})[0]
    same = [sft] + [{**sft, "method": m} for m in ("facttune_fs", "facttune_mc", "detailed")]
    # every difference is exactly 0 in every resample: (a)-(c) inconclusive; (d)'s "interval at or above 0" holds
    assert _verdicts(same) == [None, None, None, None, None, True]


def test_reversed_data_does_not_reproduce():
    assert _verdicts(_methods(REVERSED, seed=3)) == [False] * 6


def test_missing_mc_is_inconclusive_without_a_crash():
    methods = [m for m in _methods(PAPER) if m["method"] != "facttune_mc"]
    result = findings.factuality_findings(methods, n_boot=200)
    assert [f["reproduced"] for f in result] == [True, None, True, None, None, True]
    for f in (result[1], result[3], result[4]):
        assert f["evidence"] == "no FactTune-MC entry in the evaluation" and f["detectable"] is None


def test_mc_matching_needs_a_significant_fs_gain():
    # FS cuts nothing, MC cuts 0.5: MC - FS/2 is clearly > 0, but half of an insignificant gain is no bar
    rates = {**PAPER, "facttune_fs": (2.0, 1.5), "facttune_mc": (2.0, 1.0)}
    c = findings.finding_mc_matches_fs(_methods(rates, seed=4), n_boot=400)
    assert c["estimates"]["margin"]["low"] > 0 and c["estimates"]["gain_fs"]["low"] <= 0
    assert c["reproduced"] is None and c["evidence"].endswith("FS gain not significant, so half of it is no bar")


def test_detailed_cutting_less_than_half_of_fs_still_reproduces():
    # detailed cuts 0.05 of 1.5 errors (its interval straddles 0), FS cuts 1.0: not even half of FS's cut
    d = findings.finding_detailed_no_gain(_methods({**PAPER, "detailed": (2.5, 1.45)}, seed=5), n_boot=400)
    assert d["estimates"]["d"]["low"] < 0 < d["estimates"]["d"]["high"] and d["estimates"]["margin"]["low"] > 0
    assert d["reproduced"] is True and "less than half of FactTune-FS's cut" in d["evidence"]
    # the same baseline against an FS that cuts nothing: there is no bar, so inconclusive
    flat = findings.finding_detailed_no_gain(
        _methods({**PAPER, "facttune_fs": (2.0, 1.5), "detailed": (2.5, 1.45)}, seed=5), n_boot=400)
    assert flat["reproduced"] is None and flat["evidence"].endswith("FS gain not significant")


def test_sft_without_incorrect_facts_leaves_the_share_claim_inconclusive():
    methods = _methods({"sft": (2.0, 0.0), "facttune_fs": (2.0, 0.0)})
    b = findings.finding_keeps_correct(methods, "facttune_fs", n_boot=100)
    assert b["reproduced"] is None and "SFT states no incorrect fact" in b["evidence"]


def test_seeds_are_pooled_per_prompt_by_hand():
    one = {"method": "facttune_fs", "label": "FS (seed 0)", "seed": 0, "pairs": 10,
           "per_prompt": {"correct": [1.0, 2.0], "share_correct": [0.5, None]}}
    two = {"method": "facttune_fs", "label": "FS (seed 1)", "seed": 1, "pairs": 12,
           "per_prompt": {"correct": [3.0, 4.0], "share_correct": [None, None]}}
    pooled = findings.pooled_entry([one, two], "facttune_fs")
    assert pooled["per_prompt"] == {"correct": [2.0, 3.0], "share_correct": [0.5, None]}
    assert pooled["seeds"] == [0, 1] and pooled["pairs"] == [10, 12] and pooled["label"] == "FS"
    assert findings.pooled_entry([one], "facttune_fs")["label"] == "FS (seed 0)"
    assert findings.pooled_entry([one], "sft") is None
    short = {**two, "per_prompt": {"correct": [3.0]}}
    with pytest.raises(ValueError, match="different lengths"):
        findings.pooled_entry([one, short], "facttune_fs")
    sft = {**one, "method": "sft"}
    result = findings.finding_cuts_incorrect([sft, one, short], "facttune_fs", n_boot=50)
    assert result["reproduced"] is None and "different lengths" in result["evidence"]


# ------------------------------------------------------------------------------------------- summary
def test_method_summary_by_hand():
    entry = {"method": "sft", "label": "SFT", "seed": 0, "pairs": None,
             "per_prompt": {"correct": [1.0, 2.0, 3.0], "abstained": [0.0, 0.5, 1.0],
                            "share_correct": [None, 1.0, 0.5]}}
    s = fact_report.method_summary(entry, ["often", "rarely", "unseen"], samples_per_prompt=2)
    # overall correct: mean 2, se = 1 / sqrt(3), 2 -/+ 1.959964 * 0.57735
    assert s["overall"]["correct"] == pytest.approx({"mean": 2.0, "low": 0.868414, "high": 3.131586, "n": 3})
    # abstentions: 3 of 6 responses, Wilson 0.5 -/+ 1.959964 * sqrt(0.25/6 + z^2/144) / (1 + z^2/6) = -/+ 0.312384
    assert s["overall"]["abstained"] == pytest.approx({"mean": 0.5, "low": 0.187616, "high": 0.812384, "n": 6},
                                                      abs=1e-6)
    assert s["overall"]["share_correct"]["mean"] == pytest.approx(0.75) and s["overall"]["share_correct"]["n"] == 2
    # seen = often + rarely: correct [1, 2]: mean 1.5, se 0.5; unseen: one prompt, a zero-width interval
    assert s["groups"]["seen"]["correct"] == pytest.approx({"mean": 1.5, "low": 0.520018, "high": 2.479982, "n": 2})
    assert s["groups"]["unseen"]["correct"] == {"mean": 3.0, "low": 3.0, "high": 3.0, "n": 1}
    assert "share_correct" not in s["groups"]["often"]  # its one prompt made no claim: no share to average
    assert s["groups"]["rarely"]["share_correct"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 1}
    assert set(s["groups"]) == {"seen", "unseen", "often", "rarely"}
    with pytest.raises(ValueError, match="2 entity groups but 3"):
        fact_report.method_summary(entry, ["often", "rarely"])


# ------------------------------------------------------------------------------------------- report
def _checked():
    return {"claims": [
        {"text": "Lyon is a city in France.", "subject": "Lyon", "label": "supported", "evidence": "country: France"},
        {"text": "It is in Asia.", "subject": "Lyon", "label": "contradicted", "evidence": "continent of Lyon: Europe"},
        {"text": "Zorbville is in <b>Europe</b>.", "subject": "Zorbville", "label": "unverifiable",
         "evidence": "the knowledge source has no city 'Zorbville'"}],
        "supported": 1, "contradicted": 1, "unverifiable": 1, "score": 1 / 3}


def _evaluation():
    methods = _methods(PAPER)
    for m in methods:
        m["completions"] = [EVIL if m["method"] == "detailed" else f"{m['label']} answer {i}." for i in range(P)]
        m["checked"] = [_checked()] + [{"claims": [], "supported": 0, "contradicted": 0, "unverifiable": 0,
                                        "score": None}] * (P - 1)
    return {"prompts": [f"Tell me about City{i}." for i in range(P)], "entities": [f"City{i}" for i in range(P)],
            "groups": GROUPS, "checker": "rules", "samples_per_prompt": 4, "methods": methods}


@dataclass(frozen=True)
class _Cfg:  # a factuality-like config: no kl_budget
    preset: str = "tiny"
    out: str = ""
    seed: int = 0
    seeds: int = 1
    threads: int | None = 1
    keep_checkpoints: bool = False


def test_runner_writes_the_factuality_report_through_the_recipe_hook(tmp_path):
    (tmp_path / runner.EVALUATION).write_text(json.dumps(_evaluation()))
    recipe = runner.Recipe(name="factuality", title="Factuality <test>", config=_Cfg, presets={"tiny": _Cfg()},
                           shared=[], replicated=lambda cfg: [], final=[], estimates=lambda cfg: {},
                           report=fact_report.report_entries, write=fact_report.write_factuality_report)
    exp = runner.Experiment(_Cfg(), tmp_path, {})
    exp.results.update({"label": {"counts": {"pairs": 500}, "seconds": 1.0},
                        "facttune_fs": {"seconds": 3.0, "status": "time_limit", "step": 30, "planned_steps": 90}})
    out = runner.stage_report(exp, recipe)
    paths = out["paths"]
    assert set(paths) == {"html", "markdown", "json", "csv", "facts"}
    assert [f["reproduced"] for f in out["findings"]] == [True] * 6

    page = open(paths["html"], encoding="utf-8").read()
    assert "<script>" not in page and "&lt;script&gt;" in page and "Factuality &lt;test&gt;" in page
    assert page.count("<td>reproduced</td>") == 6 and '<img src="facts.png"' in page
    assert "✓ Lyon is a city in France." in page and "✗ It is in Asia. (source: continent of Lyon: Europe)" in page
    assert "? Zorbville is in &lt;b&gt;Europe&lt;/b&gt;." in page and "<b>Europe" not in page
    assert "claim checker: rules; 4 samples per prompt; 200 held-out prompts (often: 68, rarely: 66, unseen: 66)" \
        in page
    assert "facttune_fs stopped by its time limit at step 30 of 90" in page
    for heading in ("Findings", "Facts per response, all held-out entities", "Entities seen in pretraining",
                    "Entities never seen in pretraining", "Samples", "Stages", "Command"):
        assert f"<h2>{heading}" in page
    assert "<pre>rlhfkit experiment factuality --preset tiny</pre>" in page
    md = open(paths["markdown"], encoding="utf-8").read()
    assert "<script>" not in md and "](http" not in md

    text = open(paths["json"], encoding="utf-8").read()
    saved = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert saved["checker"] == "rules" and saved["data"] == {"label": {"pairs": 500}}
    assert all("checked" not in m and "completions" not in m for m in saved["methods"])
    assert len(saved["methods"][0]["per_prompt"]["correct"]) == P and len(saved["prompts"]) == P

    rows = list(csv.DictReader(open(paths["csv"], encoding="utf-8")))
    assert len(rows) == 4 * 5 * 7  # methods x (all, seen, unseen, often, rarely) x metrics
    sft_all = next(r for r in rows if r["method"] == "sft" and r["group"] == "all" and r["metric"] == "incorrect")
    assert float(sft_all["low"]) < float(sft_all["mean"]) < float(sft_all["high"]) and sft_all["n"] == "200"
    with open(paths["facts"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_writer_without_table_computes_it_and_table_cells_read_mean_low_high(tmp_path):
    ev = _evaluation()
    methods = [{k: v for k, v in m.items() if k != "completions"} for m in ev["methods"]]
    paths = fact_report.write_factuality_report(tmp_path, {"methods": methods, "groups": GROUPS,
                                                           "samples_per_prompt": 4, "prompts": ev["prompts"]})
    table = fact_report.method_table(methods, GROUPS, 4)
    fs = next(r for r in table if r["method"] == "facttune_fs")["overall"]["incorrect"]
    page = open(paths["html"], encoding="utf-8").read()
    assert f"<td>{fs['mean']:.2f} [{fs['low']:.2f}, {fs['high']:.2f}]</td>" in page
    assert page.count("<td>Tell me about City0.</td>") == 4 and page.count("<td>(no claim)</td>") == 4 * 5
    assert "<td>—</td><td>✓ Lyon" in page  # no samples given: the responses read "—", the claims are still marked


def test_seeds_pool_into_one_row_with_every_sample_in_the_abstention_count(tmp_path):
    rng = np.random.default_rng(6)
    sft = _entry(rng, "sft", *PAPER["sft"])
    fs = [{**_entry(rng, "facttune_fs", *PAPER["facttune_fs"], seed=k), "label": f"FactTune-FS (DPO) (seed {k})"}
          for k in range(2)]
    table = fact_report.method_table([sft] + fs, GROUPS, samples_per_prompt=4)
    assert [(r["label"], r["seeds"]) for r in table] == [("SFT", 1), ("FactTune-FS (DPO)", 2)]
    assert table[1]["overall"]["abstained"]["n"] == P * 4 * 2 and table[0]["overall"]["abstained"]["n"] == P * 4
    pooled = np.mean([f["per_prompt"]["incorrect"] for f in fs], axis=0)
    assert table[1]["overall"]["incorrect"]["mean"] == pytest.approx(pooled.mean())
    paths = fact_report.write_factuality_report(tmp_path, {"methods": [sft] + fs, "groups": GROUPS, "table": table})
    assert "<td>FactTune-FS (DPO) (2 seeds)</td>" in open(paths["html"], encoding="utf-8").read()
