"""The smoke experiment end to end (the same stages as the tiny preset at toy size), and its resumability."""

import json
import math

import pytest
from pathlib import Path

from rlhfkit.experiments.sentiment import PRESETS, methods_for, run_experiment, stages_for


def test_smoke_experiment_writes_a_report_with_every_method_on_the_frontier(smoke_run):
    cfg, result = smoke_run
    out = cfg.out
    for name in ("report.html", "report.md", "results.json", "methods.csv", "frontier.png"):
        assert (out_path := Path(out) / name).exists() and out_path.stat().st_size > 0, name
    results = json.loads((Path(out) / "results.json").read_text())
    methods = {m["method"] for m in results["methods"]}
    assert {"sft", "dpo", "ppo", "ppo_gt", "preferred_ft", "unlikelihood", "best_of_n"} <= methods
    assert len([m for m in results["methods"] if m["method"] == "dpo"]) >= 4
    for m in results["methods"]:
        assert m["checkpoints"], f"{m['label']} has no point on the frontier"
        for c in m["checkpoints"]:
            assert all(math.isfinite(c[k]) for k in ("kl", "reward", "length")), (m["label"], c)
    assert {m["seed"] for m in results["methods"] if m["method"] == "ppo"} == {0, 1}
    for m in results["methods"]:  # per-prompt values over the same held-out prompts, for the paired bootstrap
        for c in m["checkpoints"]:
            assert len(c["rewards"]) == len(c["kls"]) == len(c["lengths"]) == cfg.eval_prompts, m["label"]
    assert len(results["findings"]) == 4
    for f in results["findings"][:2] + results["findings"][3:]:  # frontier claims: an interval, or why not
        for c in f.get("comparisons", {}).values():
            assert c["low"] <= c["gap"] <= c["high"] and c["n_prompts"] == cfg.eval_prompts
            assert c["winner"] == ("a" if c["low"] > 0 else "b" if c["high"] < 0 else None)
        assert f.get("comparisons") or f["reproduced"] is None, f
        if "comparisons" in f and len(f["comparisons"]) == 2:  # one frontier claim: its verdict is its interval's
            c = next(iter(f["comparisons"].values()))
            assert f["reproduced"] == {"a": True, "b": False, None: None}[c["winner"]]
    _check_verdicts_follow_their_numbers(cfg, results)
    assert (Path(out) / "seed1" / "stages" / "ppo.json").exists()
    for name in ("pretrain", "sft", "reward_model", "dpo-beta0.1", "ppo"):  # training stages: the real status
        stage = next(s for s in results["stages"] if s["name"] == name)
        assert stage["status"] == "done" and stage["step"] == stage.get("planned_steps", stage["step"]) > 0, stage
    html = (Path(out) / "report.html").read_text()
    assert "<script" not in html.lower()


def _side(low: float, high: float) -> bool | None:
    """The verdict an interval for "A - B > 0" gives: above 0 reproduced, below 0 not, straddling 0 neither."""
    return True if low > 0 else False if high < 0 else None


def _check_verdicts_follow_their_numbers(cfg, results):
    """Every finding's verdict, re-derived from the numbers it records (and those recomputed from the
    methods in results.json), by the rules in rlhfkit.findings' docstring."""
    from rlhfkit import findings, stats

    f_ppo, f_ppo_gt, f_beta, f_baselines = results["findings"]
    # frontier claims: the verdict is the side of 0 the raw gap's interval lies on
    for f, key in ((f_ppo, "dpo vs ppo"), (f_ppo_gt, "dpo vs ppo_gt")):
        c = f["comparisons"][key]  # the smoke run has per-prompt values for every method
        assert f["reproduced"] is _side(c["low"], c["high"]), (key, c, f["reproduced"])
        assert f"{c['gap']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]" in f["evidence"]
    # baselines: reproduced iff both raw gaps are significantly positive; not iff either is significantly negative
    sides = [_side(f_baselines["comparisons"][k]["low"], f_baselines["comparisons"][k]["high"])
             for k in ("dpo vs preferred_ft", "dpo vs unlikelihood")]
    expected = False if False in sides else True if sides == [True, True] else None
    assert f_baselines["reproduced"] is expected, (sides, f_baselines["reproduced"])
    # beta sets KL: the fit and its slope interval recomputed from the methods' final checkpoints, then the rule
    betas, kls = findings.beta_kl_points(results["methods"])
    assert len(betas) == 4 * cfg.seeds
    fit = stats.fit_beta_kl(betas, kls)
    assert f_beta["fit"] == pytest.approx({"slope": fit.slope, "intercept": fit.intercept, "r2": fit.r2, "n": fit.n})
    assert results["beta_fit"] == pytest.approx(f_beta["fit"])
    low, high = findings.beta_slope_interval(results["methods"], seed=cfg.seed)
    assert f_beta["slope_interval"] == pytest.approx([low, high])
    if fit.n < 3:
        expected = None
    elif low > 0 or fit.r2 < 0.5:
        expected = False
    else:
        expected = True if high < 0 and fit.r2 >= 0.8 else None
    assert f_beta["reproduced"] is expected, (fit, low, high, f_beta["reproduced"])
    # and the report's findings table shows each verdict with its own word, in order
    words = {"reproduced", "did not reproduce", "inconclusive"}
    rows = [line.split(" | ") for line in (Path(cfg.out) / "report.md").read_text().splitlines()
            if line.startswith("| ")]
    assert [r[1] for r in rows if len(r) > 2 and r[1] in words] == [findings.verdict(f["reproduced"])
                                                                    for f in results["findings"]]


def test_finished_stages_keep_models_not_checkpoints_and_link_the_last_snapshot(smoke_run):
    cfg, _ = smoke_run
    out = Path(cfg.out)
    assert not list(out.rglob("checkpoints")), "a finished stage's optimizer checkpoints should be deleted"
    for run in (out / "runs").iterdir():
        if not (run / "snapshots").is_dir():
            continue
        last = sorted((run / "snapshots").iterdir())[-1] / "model.safetensors"
        final = run / "model" / "model.safetensors"
        assert final.stat().st_ino == last.stat().st_ino, f"{run.name}: final model written twice"


def test_rerun_skips_finished_stages(smoke_run, capsys):
    cfg, _ = smoke_run
    run_experiment(cfg)
    err = capsys.readouterr().err
    assert err.count("skipped") == len(stages_for(cfg))


def test_every_preset_lists_all_methods():
    for cfg in PRESETS.values():
        kinds = [m.method for m in methods_for(cfg)]
        assert kinds.count("dpo") >= 4 and {"ppo", "ppo_gt", "preferred_ft", "unlikelihood"} <= set(kinds)


# ------------------------------------------------------------------------------- stage status: done or time_limit
def _bare_experiment(tmp_path):
    from types import SimpleNamespace

    from rlhfkit.experiments.runner import Experiment

    return Experiment(SimpleNamespace(seed=0, keep_checkpoints=True), tmp_path, {"train": 1.0, "count": 1.0})


def test_a_stage_stopped_by_its_time_limit_is_recorded_shown_and_kept_as_such(tmp_path, capsys):
    from rlhfkit.experiments.runner import run_stage, stage_summaries

    exp = _bare_experiment(tmp_path)
    calls = []

    def train(e):
        calls.append(1)
        return {"step": 3, "planned_steps": 10, "status": "time_limit", "model": str(tmp_path / "m")}

    result = run_stage(exp, "train", train, 1, 2)
    counted = run_stage(exp, "count", lambda e: {"n": 4}, 2, 2)
    err = capsys.readouterr().err
    assert "[1/2] train: stopped by its time limit at step 3 of 10 after 0 s" in err
    assert "[2/2] count: finished in" in err
    saved = json.loads((tmp_path / "stages" / "train.json").read_text())
    assert (saved["status"], saved["step"], saved["planned_steps"]) == ("time_limit", 3, 10) == (
        result["status"], result["step"], result["planned_steps"])
    assert counted["status"] == "done"
    # a rerun keeps it (its later stages were built on this model), and says how it ended
    assert run_stage(exp, "train", train, 1, 2) == saved and calls == [1]
    assert "[1/2] train: stopped by its time limit at step 3 of 10 earlier" in capsys.readouterr().err
    rows = stage_summaries({"train": saved, "count": counted})
    assert rows == [{"name": "train", "seconds": saved["seconds"], "status": "time_limit", "step": 3,
                     "planned_steps": 10}, {"name": "count", "seconds": counted["seconds"], "status": "done"}]


def test_the_report_says_which_stage_stopped_short(tmp_path):
    from rlhfkit import report

    stages = [{"name": "pretrain", "seconds": 60.0, "status": "time_limit", "step": 300, "planned_steps": 800},
              {"name": "sft", "seconds": 5.0, "status": "done", "step": 20, "planned_steps": 20}]
    paths = report.write_report(tmp_path, {"methods": [], "stages": stages})
    md = Path(paths["markdown"]).read_text()
    assert "stopped short of their planned steps: pretrain" in md.splitlines()[2]  # the introduction
    assert "| pretrain | 60.0 | stopped by its time limit at step 300 of 800 |" in md
    assert "| sft | 5.0 | done |" in md
    assert json.loads(Path(paths["json"]).read_text())["stages"][0]["status"] == "time_limit"


def test_a_killed_training_stage_reruns_in_its_own_directory_without_being_refused(smoke_run, capsys):
    """The runner resumes a stage whose stage file is missing in the run directory it left; here a finished
    stage's file is removed, so its directory holds a whole run (and no checkpoint: they are deleted)."""
    cfg, _ = smoke_run
    (Path(cfg.out) / "stages" / "dpo-beta0.1.json").unlink()
    run_experiment(cfg)
    err = capsys.readouterr().err
    assert "no checkpoint to resume from; training from step 0" in err
    assert "dpo-beta0.1: finished in" in err and err.count("skipped") == len(stages_for(cfg)) - 1
    redone = json.loads((Path(cfg.out) / "stages" / "dpo-beta0.1.json").read_text())
    assert redone["status"] == "done" and redone["step"] == redone["planned_steps"] > 0
