"""Run the shared loop on a toy LM task; write per-rank losses and a parameter checksum to OUT/rank-<i>.json.

Used by tests/test_loop.py both as a single process and under `accelerate launch` with 2 CPU processes.
usage: fit_toy.py OUT_DIR GRAD_ACCUM STEPS
"""

import json
import sys
from pathlib import Path

import torch

from rlhfkit.config import OptimConfig, TinyArch, TrainConfig
from rlhfkit.data import Encoded, collate
from rlhfkit.loop import fit, make_accelerator
from rlhfkit.models import build_tiny, train_bpe_tokenizer
from rlhfkit.sft import lm_objective
from rlhfkit.tracking import Run

out, accum, steps = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
cfg = TrainConfig(batch_size=4, grad_accum=accum, max_steps=steps, save_every=1000, log_every=1, progress=False,
                  threads=1)
accelerator = make_accelerator(cfg)
texts = [f"the movie number {i} was {'great' if i % 2 else 'bad'} fun" for i in range(64)]
tok = train_bpe_tokenizer(texts, vocab_size=280)
model = build_tiny(tok, TinyArch(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64), seed=0)
examples = [Encoded(ids, [1] * len(ids)) for ids in (tok(t)["input_ids"] for t in texts)]
run = Run(out / "run", cfg, is_main=accelerator.is_main_process)
losses = []


def objective(m, batch):
    loss, metrics = lm_objective(m, batch)
    losses.append(float(loss))
    return loss, metrics


fit(objective, model, examples, lambda ex: collate(ex, tok.pad_token_id), cfg, OptimConfig(lr=1e-2, warmup_steps=0),
    run, accelerator)
params = torch.cat([p.detach().flatten() for p in accelerator.unwrap_model(model).parameters()])
out.mkdir(parents=True, exist_ok=True)
(out / f"rank-{accelerator.process_index}.json").write_text(json.dumps({
    "processes": accelerator.num_processes, "losses": losses, "param_sum": float(params.double().sum()),
    "param_abs_sum": float(params.double().abs().sum()),
}))
