"""On-policy RLHF throughput and memory: rlhfkit `ppo --advantage rloo` vs TRL's RLOOTrainer (trl 1.16).

    OMP_WAIT_POLICY=PASSIVE python bench/bench_ppo.py [--steps 12] [--warmup 2] [--threads 1] [--repeats 2]

TRL 1.16 has no PPOTrainer, so the comparison is RLOO against RLOO (same estimator on both sides): the same tiny
model (rlhfkit's `tiny` preset, saved to a folder and given to TRL as a path), the same prompts, group size,
prompts per step, fixed-length completions (min = max new tokens, so both sides generate exactly the same number of
tokens), the same gold reward (VADER on prompt + completion), KL coefficient 0.05 in the reward, one update per
rollout batch (TRL num_iterations=1; rlhfkit --ppo-epochs 1 with one minibatch), advantage normalisation off.
fp32, TRL's bf16 and gradient checkpointing off, dropout off (see /work/shared/TRL_NOTES.md).

Each side runs in its own subprocess (bench/common.py), interleaved A B A B. Figures per run: steady rollouts/s
(completions per second; median start-to-start step time after `--warmup` steps), rlhfkit's split of a step into
generation / log-probs / scoring / optimisation, and peak RSS (plus its increase after the model is loaded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def vader_reward(prompts, completions, **kwargs):
    """TRL reward function signature around rlhfkit's VADER gold scorer (identical scores on both sides)."""
    from rlhfkit.labeling.gold import vader_score

    return vader_score(list(prompts), list(completions))


# ---------------------------------------------------------------------------------------------------- sides
def run_rlhfkit(p: dict) -> dict:
    import time

    from rlhfkit import config as config_lib
    from rlhfkit import ppo
    from rlhfkit.loop import make_accelerator

    argv = ["--model.name", p["model"], "--prompts", p["prompts"], "--reward", "vader", "--advantage", "rloo",
            "--group-size", str(p["group"]), "--train.batch-size", str(p["prompts_per_step"]),
            "--minibatch-size", str(p["group"] * p["prompts_per_step"]), "--ppo-epochs", "1",
            "--max-new-tokens", str(p["tokens"]), "--min-new-tokens", str(p["tokens"]), "--no-eos-penalty",
            "--whiten-advantages", "False", "--kl.coef", "0.05", "--optim.lr", "1e-5",
            "--train.max-steps", str(p["steps"]), "--out", p["out"], "--train.progress", "False"]
    argv = [a for arg in argv for a in (["--eos-penalty", "False"] if arg == "--no-eos-penalty" else [arg])]
    cfg = config_lib.parse(ppo.PPOConfig, argv)
    tr = ppo.build_trainer(cfg, make_accelerator(cfg.train))
    common.mark_train_start()
    times, rows = [], []
    for step in range(p["steps"]):
        times.append(time.perf_counter())
        rows.append(ppo.ppo_step(tr, step))
    times.append(time.perf_counter())
    steady = [b - a for a, b in zip(times, times[1:])][p["warmup"]:]
    n = p["group"] * p["prompts_per_step"]
    split = {k: statistics.median(r[f"time/{k}"] for r in rows[p["warmup"]:])
             for k in ("generation", "logprobs", "scoring", "optimisation")}
    return {"rollouts_per_s": n / statistics.median(steady), "step_s": statistics.median(steady),
            "tokens_per_s": n * p["tokens"] / statistics.median(steady),  # generated tokens, for common's log line
            **{f"{k}_s": v for k, v in split.items()}, "score_last": rows[-1]["objective/score"]}


def run_trl(p: dict) -> dict:
    import time

    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    from rlhfkit.data import read_records

    class Clock(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

        def on_train_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter())

    n = p["group"] * p["prompts_per_step"]
    prompts = [r["prompt"] for r in read_records(p["prompts"], "prompts")]
    args = RLOOConfig(output_dir=p["out"], per_device_train_batch_size=n, gradient_accumulation_steps=1,
                      num_generations=p["group"], max_completion_length=p["tokens"], temperature=1.0,
                      generation_kwargs={"min_new_tokens": p["tokens"]}, beta=0.05, num_iterations=1,
                      normalize_advantages=False, learning_rate=1e-5, max_steps=p["steps"], bf16=False,
                      gradient_checkpointing=False, disable_dropout=True, report_to="none", save_strategy="no",
                      logging_steps=10_000, use_cpu=True, seed=0, shuffle_dataset=True)
    clock = Clock()
    trainer = RLOOTrainer(model=p["model"], reward_funcs=vader_reward, args=args,
                          train_dataset=Dataset.from_list([{"prompt": t} for t in prompts]),
                          processing_class=AutoTokenizer.from_pretrained(p["model"]), callbacks=[clock])
    common.mark_train_start()
    trainer.train()
    steady = [b - a for a, b in zip(clock.times, clock.times[1:])][p["warmup"]:]
    return {"rollouts_per_s": n / statistics.median(steady), "step_s": statistics.median(steady),
            "tokens_per_s": n * p["tokens"] / statistics.median(steady)}


SIDES = {"rlhfkit": run_rlhfkit, "trl": run_trl}


# ---------------------------------------------------------------------------------------------------- parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    from rlhfkit.data import write_jsonl

    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        texts, source = common.corpus_texts(4000)
        model = common.tiny_model_dir(tmp, texts)
        prompts = Path(tmp) / "prompts.jsonl"
        write_jsonl(prompts, [{"prompt": " ".join(t.split()[:6])} for t in texts[:512] if t.split()])
        params = {"model": str(model), "prompts": str(prompts), "steps": args.steps, "warmup": args.warmup,
                  "group": args.group, "prompts_per_step": args.prompts_per_step, "tokens": args.tokens,
                  "out": str(Path(tmp) / "out")}
        runs = common.interleave(__file__, list(SIDES), params, args.repeats, args.threads)
    keys = ["rollouts_per_s", "step_s", "generation_s", "logprobs_s", "scoring_s", "optimisation_s", "peak_rss_mb",
            "train_rss_increase_mb"]
    rows = [{"side": side, **common.summarize(r, keys)} for side, r in runs.items()]
    common.print_table(rows, ["side", *keys, "load1_range"])
    speedup = rows[0]["rollouts_per_s"] / rows[1]["rollouts_per_s"]
    print(f"\nrlhfkit rloo / TRL RLOOTrainer rollouts/s: {speedup:.2f}x "
          f"(group {args.group}, {args.prompts_per_step} prompts/step, {args.tokens} tokens, {args.threads} thread(s), "
          f"corpus {source})")
    path = common.write_result("ppo", {"params": {k: v for k, v in params.items() if k not in ("model", "prompts",
                                                                                                 "out")},
                                       "threads": args.threads, "corpus": source, "runs": runs, "summary": rows,
                                       "speedup_rollouts_per_s": speedup})
    print(f"written to {path}")


if __name__ == "__main__":
    if not common.child_main(SIDES):
        main()
