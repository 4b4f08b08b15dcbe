"""The factuality experiment end to end on the smoke preset (through the CLI), its resume, and what it keeps apart."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from rlhfkit import cli
from rlhfkit.experiments.factuality.experiment import METHODS, PRESETS, RECIPE

METRICS = ("correct", "incorrect", "unverifiable", "claims", "abstained", "length")


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("factuality") / "smoke"
    assert cli.main(["experiment", "factuality", "--preset", "smoke", "--out", str(out)]) == 0
    return out


def test_smoke_experiment_reports_every_method_with_finite_figures_and_intervals(smoke_run):
    for name in ("report.html", "report.md", "results.json", "methods.csv", "facts.png"):
        assert (smoke_run / name).stat().st_size > 0, name
    results = json.loads((smoke_run / "results.json").read_text())
    assert [row["method"] for row in results["table"]] == ["sft"] + [m for m, _, _ in METHODS]
    for row in results["table"]:
        for scope in [row["overall"], *row["groups"].values()]:
            for metric in METRICS:
                e = scope[metric]
                assert all(math.isfinite(e[k]) for k in ("mean", "low", "high")), (row["method"], metric)
                assert e["low"] - 1e-9 <= e["mean"] <= e["high"] + 1e-9
    assert len(results["findings"]) == 6
    assert all(f["reproduced"] in (True, False, None) and f["evidence"] for f in results["findings"])
    html = (smoke_run / "report.html").read_text()
    assert "FactTune-FS" in html and "facts.png" in html and ("inconclusive" in html or "reproduced" in html)
    assert results["checker"] == "rules"


def test_held_out_cities_never_reach_training_and_every_method_trains_on_the_same_number_of_pairs(smoke_run):
    splits = json.loads((smoke_run / "world" / "entities.json").read_text())
    held = {n for group in splits["eval"].values() for n in group}
    train_prompts = {r["prompt"] for r in _jsonl(smoke_run / "world" / "prompts_train.jsonl")}
    sft = _jsonl(smoke_run / "world" / "sft_train.jsonl")
    assert not any(n in r["prompt"] for r in sft for n in held)
    sizes = set()
    for method, _, _ in METHODS:
        pairs = _jsonl(smoke_run / f"preferences_{method}.jsonl")
        assert pairs and {p["prompt"] for p in pairs} <= train_prompts
        assert all(p["chosen"] != p["rejected"] for p in pairs)
        sizes.add(len(pairs))
    assert len(sizes) == 1
    evaluation = json.loads((smoke_run / "evaluation.json").read_text())
    assert set(evaluation["entities"]) == held and not held & {p.removeprefix("Tell me about ").rstrip(".")
                                                               for p in train_prompts}


def test_scores_are_stored_with_the_claims_that_decided_them(smoke_run):
    scored = _jsonl(smoke_run / "scored.jsonl")
    for record in scored:
        for fs, detail, checked in zip(record["fs"], record["detail"], record["checked"]):
            assert detail == len(checked["claims"])
            assert fs == checked["score"]
            if fs is not None:
                assert fs == pytest.approx(checked["supported"] / len(checked["claims"]))
        for mc, shares in zip(record["mc"], record["agreement"]):
            assert (mc is None) == (not shares)
            if shares:
                assert mc == pytest.approx(sum(shares) / len(shares)) and all(0 <= s <= 1 for s in shares)


def test_a_rerun_skips_every_finished_stage(smoke_run, capsys):
    assert cli.main(["experiment", "factuality", "--preset", "smoke", "--out", str(smoke_run)]) == 0
    err = capsys.readouterr().err
    # shared stages, sample / score / pairs, one DPO run per method, evaluate and the report
    assert err.count("skipped") == len(RECIPE.shared) + 3 + len(METHODS) + 2


def test_presets_check_their_inputs_before_any_stage(tmp_path):
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.experiments.runner import run

    with pytest.raises(RlhfkitError, match="samples-per-prompt must be >= 2"):
        run(RECIPE, replace(PRESETS["smoke"], out=str(tmp_path / "x"), samples_per_prompt=1))
    with pytest.raises(RlhfkitError, match="unknown claim checker|checker"):
        run(RECIPE, replace(PRESETS["smoke"], out=str(tmp_path / "y"), checker="vader"))
    assert not (tmp_path / "x" / "stages").exists()
