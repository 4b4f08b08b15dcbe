"""On-policy RLHF throughput and memory: rlhfkit `ppo --advantage rloo` vs TRL's RLOOTrainer (trl 1.16).

    OMP_WAIT_POLICY=PASSIVE python bench/bench_ppo.py [--steps 12] [--warmup 2] [--threads 2] [--repeats 2]
        [--shape tiny|large] [--prompt-len 64] [--tokens 64] [--group 4] [--prompts-per-step 4] [--no-ablation]

TRL 1.16 has no PPOTrainer, so the comparison is RLOO against RLOO (same estimator on both sides): the same
model (`--shape`, common.SHAPES: a seeded random Llama with a word-level tokenizer, saved to a folder and given
to TRL as a path), the same prompts of exactly `--prompt-len` tokens (random words; one word is one token and
no special token is added, so TRL, which has no prompt truncation, sees the same lengths), group size, prompts
per step, fixed-length completions (min = max new tokens, so both sides generate exactly the same number of
tokens), the same reward function (`word_reward`, on the completion's words), KL coefficient 0.05 in the
reward, one update per rollout batch (TRL num_iterations=1; rlhfkit --ppo-epochs 1 with one minibatch),
advantage normalisation off, lr 1e-5. fp32; TRL's bf16 and gradient checkpointing are turned off (TRL 1.16 turns
both on by default, even on the CPU, where that is many times slower) and its dropout is disabled
(`disable_dropout`; rlhfkit keeps the policy in eval mode throughout). With beta > 0 both sides keep a frozen
reference copy and compute its log-probs every step.

rlhfkit skips its old-log-prob pass here (one epoch, no value head: the sampler's log-probs are the old
log-probs, see rlhfkit.ppo.step); the `rlhfkit, old-logprob pass` row (`--no-ablation` drops it) runs the same
step with that pass, to show what the skip saves.

Each side runs in its own subprocess (bench/common.py), interleaved A B A B. Figures per run: steady rollouts/s
(completions per second; median start-to-start step time after `--warmup` steps), rlhfkit's split of a step into
generation / log-probs (reference, plus the old-log-prob pass where it runs) / scoring / optimisation, and peak
RSS (plus its increase after the model is loaded).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def word_reward(prompts, completions, **kwargs):
    """The share of a completion's words among the first 100 of the vocabulary (w0 .. w99): a dense, cheap
    reward on word text, called with the same (prompts, completions) lists by both sides."""
    return [sum(w[1:].isdigit() and int(w[1:]) < 100 for w in c.split()) / max(len(c.split()), 1)
            for c in completions]


# ---------------------------------------------------------------------------------------------------- sides
def run_rlhfkit(p: dict) -> dict:
    import time

    from rlhfkit import config as config_lib
    from rlhfkit import ppo
    from rlhfkit.data import read_located
    from rlhfkit.generation import TorchSampler
    from rlhfkit.loop import make_accelerator

    argv = ["--model.name", p["model"], "--prompts", p["prompts"], "--reward", "__main__:word_reward",
            "--advantage", "rloo", "--max-prompt-length", str(p["prompt_len"]),
            "--group-size", str(p["group"]), "--train.batch-size", str(p["prompts_per_step"]),
            "--minibatch-size", str(p["group"] * p["prompts_per_step"]), "--ppo-epochs", "1",
            "--max-new-tokens", str(p["tokens"]), "--min-new-tokens", str(p["tokens"]), "--no-eos-penalty",
            "--whiten-advantages", "False", "--kl.coef", "0.05", "--optim.lr", "1e-5",
            "--train.max-steps", str(p["steps"]), "--out", p["out"], "--train.progress", "False"]
    argv = [a for arg in argv for a in (["--eos-penalty", "False"] if arg == "--no-eos-penalty" else [arg])]
    cfg = config_lib.parse(ppo.PPOConfig, argv)
    tr = ppo.build_trainer(cfg, make_accelerator(cfg.train), read_located(p["prompts"], "prompts"))
    if not p.get("reuse_logprobs", True):  # the ablation: a sampler that does not vouch for its log-probs
        tr.sampler = TorchSampler(tr.inner.policy, tr.tokenizer.pad_token_id, tr.tokenizer.eos_token_id, False)
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
                      model_init_kwargs={"dtype": "float32"},
                      num_generations=p["group"], max_completion_length=p["tokens"], temperature=1.0,
                      generation_kwargs={"min_new_tokens": p["tokens"]}, beta=0.05, num_iterations=1,
                      normalize_advantages=False, learning_rate=1e-5, max_steps=p["steps"], bf16=False,
                      gradient_checkpointing=False, disable_dropout=True, report_to="none", save_strategy="no",
                      logging_steps=10_000, use_cpu=True, seed=0, shuffle_dataset=True)
    clock = Clock()
    trainer = RLOOTrainer(model=p["model"], reward_funcs=word_reward, args=args,
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
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shape", choices=sorted(common.SHAPES), default="tiny")
    parser.add_argument("--prompt-len", type=int, default=64, help="tokens per prompt (exact)")
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--prompts-per-step", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per completion (exact)")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false",
                        help="skip the 'rlhfkit, old-logprob pass' row")
    args = parser.parse_args()
    import random

    from rlhfkit.data import write_jsonl

    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        model, sizes = common.word_model_dir(tmp, args.shape)
        vocab, rng = common.SHAPES[args.shape]["vocab"], random.Random(0)
        prompts = Path(tmp) / "prompts.jsonl"
        write_jsonl(prompts, [{"prompt": common.word_text(rng, args.prompt_len, vocab)} for _ in range(256)])
        params = {"model": str(model), "prompts": str(prompts), "steps": args.steps, "warmup": args.warmup,
                  "group": args.group, "prompts_per_step": args.prompts_per_step, "tokens": args.tokens,
                  "prompt_len": args.prompt_len, "out": str(Path(tmp) / "out")}
        sides = [common.Variant("rlhfkit", "rlhfkit"), common.Variant("TRL", "trl")]
        if args.ablation:
            sides.append(common.Variant("rlhfkit, old-logprob pass", "rlhfkit", params={"reuse_logprobs": False}))
        runs = common.interleave(__file__, sides, params, args.repeats, args.threads)
    keys = ["rollouts_per_s", "step_s", "generation_s", "logprobs_s", "scoring_s", "optimisation_s", "peak_rss_mb",
            "train_rss_increase_mb"]
    rows = [{"side": side, **common.summarize(r, keys)} for side, r in runs.items()]
    common.print_table(rows, ["side", *keys, "load1_range"])
    speedup = rows[0]["rollouts_per_s"] / rows[1]["rollouts_per_s"]
    paired = common.paired_ratio(runs, "rlhfkit", "TRL", "rollouts_per_s")
    print(f"\nrlhfkit rloo / TRL RLOOTrainer rollouts/s: {speedup:.2f}x by medians, {paired:.2f}x paired "
          f"(shape {args.shape}: {sizes['params']:,} parameters; group {args.group}, {args.prompts_per_step} "
          f"prompts/step, {args.prompt_len} prompt + {args.tokens} new tokens, {args.threads} thread(s))")
    targets = common.target_rows([(f"RLOO step, {args.prompt_len}-token prompts + {args.tokens} new tokens: "
                                   "rollouts/s (paired)", paired, 1.5, ">=")])
    common.print_table(targets, ["target", "rlhfkit / TRL", "wanted", "result"])
    path = common.write_result("ppo", {"targets": targets, "params": {k: v for k, v in params.items() if k not in ("model", "prompts",
                                                                                                 "out")},
                                       "model": sizes, "threads": args.threads, "runs": runs, "summary": rows,
                                       "speedup_rollouts_per_s": speedup, "speedup_paired": paired})
    print(f"written to {path}")


if __name__ == "__main__":
    if not common.child_main(SIDES):
        main()
