"""Reward-model training throughput and peak memory: rlhfkit's `rm train` vs TRL's RewardTrainer (trl 1.16).

    python bench/bench_rm.py [--shape large|tiny] [--threads N] [--repeats 2] [--steps 6] [--k 2]

Both sides train the same trunk (`--shape`, common.SHAPES; saved as a causal LM, each side adds a fresh 1-output
`score` head) on the same token ids: a word-level tokenizer makes every prompt exactly `--prompt-len` tokens and
every response a uniform draw from `--response-len` tokens + EOS; TRL gets rlhfkit's `encode_pair` output as
pre-tokenised `chosen_ids` / `rejected_ids`. fp32, bf16 off, gradient checkpointing off, dropout off, AdamW, lr 1e-5,
clip 1.0, report_to none, no logging, evaluation or checkpoints inside the timed steps. TRL 1.16's RewardConfig has
no padding_free option.

Each optimizer step trains on `--groups` prompts with `--k` responses each = groups x C(k, 2) preference pairs:
  k = 2 (default): preference pairs; both libraries score 2 x groups sequences.
  k > 2: rankings. rlhfkit scores each response once and forms all pairs from the k rewards (InstructGPT); TRL has
         no ranking input, so it gets the expanded pairs and scores 2 x C(k, 2) sequences per prompt for the same
         pairs and the same mean Bradley-Terry loss.
Rows: rlhfkit (`rlhfkit.reward.run_rm_train`, default settings: shared-prefix, padding-free groups), TRL, and the
ablation `rlhfkit, one row per seq` (--no-shared-prefix: one right-padded row per response, as TRL). There is no
LM head in a reward model, so RLHFKIT_LM_HEAD does not apply.

Per run: steady pairs/s and tokens/s (median over steps after `--warmup`; rlhfkit's steps timed at each objective
call, TRL's at each `training_step`), pairs per CPU-second, peak RSS of the process and its increase during
training, and the fraction of the fp32 matmul roofline at 6 x non-embedding params per token each side runs.
"""

from __future__ import annotations

import random
import sys
import tempfile
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "rm"


@dataclass(frozen=True)
class Args(common.RunArgs):
    """bench_rm: rlhfkit reward-model training vs TRL RewardTrainer pairs/s and memory."""

    groups: int = 8
    """Prompts per optimizer step (k = 2: preference pairs per step)."""
    k: int = 2
    """Responses per prompt: 2 = preference pairs, more = rankings (all C(k, 2) pairs)."""
    prompt_len: int = 64
    """Prompt tokens (exact)."""
    response_len: str = "64:128"
    """Response tokens before EOS, each drawn uniformly from lo:hi."""
    trl: bool = True
    """Run the TRL row (needs the `bench` extra: trl==1.16.0)."""
    ablation: bool = True
    """Also run rlhfkit with one row per response (--no-shared-prefix)."""

    @property
    def pairs_per_step(self) -> int:
        return self.groups * self.k * (self.k - 1) // 2


# ------------------------------------------------------------------------------------------------ the sides
def rlhfkit_rm(p: dict) -> dict:
    """`rlhfkit rm train` (rlhfkit.reward.run_rm_train) on the rankings file; the objective wrapped to time steps."""
    import rlhfkit.reward.train as reward  # run_rm_train looks the objective up here
    from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    clock = common.StepClock()
    make_objective = reward.reward_objective

    def timed_objective(*args, **kwargs):
        objective = make_objective(*args, **kwargs)

        def timed(model, batch):
            clock.tick(common.real_tokens(batch), p["pairs_per_step"])
            return objective(model, batch)

        return timed

    reward.reward_objective = timed_objective
    with tempfile.TemporaryDirectory() as out:
        cfg = reward.RMConfig(
            data=DataConfig(train=p["rankings"], eval_fraction=0.0, max_length=p["max_length"],
                            max_prompt_length=p["prompt_len"]),
            model=ModelConfig(name=p["model"]), loss="bt", shared_prefix=p.get("shared_prefix", True),
            train=TrainConfig(batch_size=p["groups"], max_steps=p["steps"], log_every=10**6, save_every=10**6,
                              eval_every=10**6, threads=p["threads"], progress=False),
            optim=OptimConfig(lr=1e-5, warmup_steps=0, schedule="constant"), out=str(Path(out) / "run"))
        reward.run_rm_train(cfg)
    return clock.steady(p["warmup"])


def _trl_dataset(p: dict):
    """The same records rlhfkit reads, tokenised by rlhfkit.data.encode_pair, expanded to all C(k, 2) pairs."""
    from datasets import Dataset

    from rlhfkit.data import encode_pair, read_records
    from rlhfkit.models import load_tokenizer

    tok = load_tokenizer(p["model"])
    rows = []
    for rec in read_records(Path(p["rankings"]), "rankings"):
        ids = [encode_pair(tok, rec["prompt"], rec["responses"][i], p["max_length"], p["prompt_len"]).input_ids
               for i in rec["ranking"]]  # best first
        rows += [{"chosen_ids": ids[i], "rejected_ids": ids[j]} for i, j in combinations(range(len(ids)), 2)]
    return Dataset.from_list(rows), tok


def trl_rm(p: dict) -> dict:
    """TRL RewardTrainer on the expanded pairs."""
    import torch
    from trl import RewardConfig, RewardTrainer

    dataset, tok = _trl_dataset(p)
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(
            output_dir=out, per_device_train_batch_size=p["pairs_per_step"], max_steps=p["steps"], learning_rate=1e-5,
            lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, bf16=False, gradient_checkpointing=False,
            disable_dropout=True, logging_steps=10**6, save_strategy="no", eval_strategy="no", report_to="none",
            dataloader_num_workers=0, seed=0, max_length=None, use_cpu=not torch.cuda.is_available(),
            disable_tqdm=True)
        trainer = RewardTrainer(model=p["model"], args=args, train_dataset=dataset, processing_class=tok)
        assert next(trainer.model.parameters()).dtype == torch.float32
        clock = common.StepClock()
        common.time_trainer_steps(trainer, clock, p["pairs_per_step"])
        trainer.train()
    return clock.steady(p["warmup"])


SIDES = {"rlhfkit": rlhfkit_rm, "trl": trl_rm}


# ------------------------------------------------------------------------------------------------------ parent
def prepare(args: Args, root: Path) -> dict:
    """Save the model once and write the rankings file (k responses per prompt, a random best-first order)."""
    from rlhfkit.data import write_jsonl

    model_dir, sizes = common.word_model_dir(root, args.shape)
    vocab, (lo, hi), rng = common.SHAPES[args.shape]["vocab"], common.length_range(args.response_len), random.Random(0)
    recs = [{"prompt": common.word_text(rng, args.prompt_len, vocab),
             "responses": [" " + common.word_text(rng, rng.randint(lo, hi), vocab) for _ in range(args.k)],
             "ranking": rng.sample(range(args.k), args.k)} for _ in range(args.groups * (args.steps + 2))]
    write_jsonl(root / "rankings.jsonl", recs)
    return {"model": str(model_dir), "rankings": str(root / "rankings.jsonl"), **sizes, "prompts": len(recs)}


def variants(args: Args) -> list[common.Variant]:
    out = [common.Variant("rlhfkit", "rlhfkit")] + ([common.Variant("TRL", "trl")] if args.trl else [])
    if args.ablation:
        out.append(common.Variant("rlhfkit, one row per seq", "rlhfkit", params={"shared_prefix": False}))
    return out


KEYS = ("items_per_s", "items_per_cpu_s", "tokens_per_s", "tokens_per_step", "step_s", "peak_rss_mb",
        "train_rss_increase_mb", "rss_at_train_start_mb", "cuda_peak_mb", "run_seconds", "roofline_gflops")


def run(args: Args) -> dict:
    import importlib.util

    if args.trl and importlib.util.find_spec("trl") is None:
        print("trl is not installed (pip install -e '.[bench]'); measuring rlhfkit alone", file=sys.stderr)
        args = replace(args, trl=False)
    threads = args.threads or common.SHAPES[args.shape]["threads"]
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-rm-") as tmp:
        data = prepare(args, Path(tmp))
        params = {**vars(args), "threads": threads, "pairs_per_step": args.pairs_per_step,
                  "max_length": args.prompt_len + common.length_range(args.response_len)[1] + 1,
                  "model": data["model"], "rankings": data["rankings"]}
        roof = common.roofline(threads)
        runs = common.interleave(__file__, variants(args), params, args.repeats, threads)
    rows = []
    for label, side_runs in runs.items():
        for r in side_runs:
            r["roofline_6N"] = common.model_flops_fraction(r["tokens_per_s"], data["non_embedding_params"],
                                                           r["roofline_gflops"])
        rows.append({"benchmark": f"rm {args.shape} k={args.k}", "side": label,
                     **common.summarize(side_runs, KEYS + ("roofline_6N",)),
                     "pairs_per_s": common.median_of(side_runs, "items_per_s"), "threads": threads})
    ratio, targets = None, []
    if args.trl:
        ours, trl = rows[0], rows[1]
        ratio = {"pairs_per_s_paired": common.paired_ratio(runs, "rlhfkit", "TRL", "items_per_s"),
                 "pairs_per_s": ours["pairs_per_s"] / trl["pairs_per_s"],
                 "pairs_per_cpu_s_paired": common.paired_ratio(runs, "rlhfkit", "TRL", "items_per_cpu_s"),
                 "peak_rss_mb": ours["peak_rss_mb"] / trl["peak_rss_mb"],
                 "train_rss_increase_mb": ours["train_rss_increase_mb"] / trl["train_rss_increase_mb"]}
        targets = common.target_rows([(f"RM {args.shape} k={args.k}, prompt {args.prompt_len}, responses "
                                       f"{args.response_len}: pairs/s (paired)", ratio["pairs_per_s_paired"], 1.5,
                                       ">=")])
    return {"args": {**vars(args), "threads": threads}, "data": {k: v for k, v in data.items()
                                                                 if k not in ("model", "rankings")},
            "roofline": roof, "rows": rows, "ratio_rlhfkit_over_trl": ratio, "targets": targets, "runs": runs}


COLUMNS = ("side", "pairs_per_s", "items_per_cpu_s", "tokens_per_s", "tokens_per_step", "peak_rss_mb",
           "train_rss_increase_mb", "roofline_6N", "run_seconds", "load1_range")


def main(argv: list[str] | None = None) -> dict:
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv)
    result = run(args)
    path = common.write_result(NAME, result)
    d, threads = result["data"], result["args"]["threads"]
    print(f"RM, shape {args.shape} ({d['non_embedding_params'] / 1e6:.1f}M non-embedding params), {args.groups} "
          f"prompts x C({args.k},2) = {args.pairs_per_step} pairs/step, prompt {args.prompt_len} + responses "
          f"{args.response_len} + EOS, {threads} thread(s), {args.steps} steps (warmup {args.warmup}), "
          f"{args.repeats} repeats; roofline fp32 torch.mm {result['roofline']['gflops']:.1f} GFLOP/s")
    common.print_result(result, COLUMNS, path)
    return result


if __name__ == "__main__":
    if not common.child_main(SIDES):
        main()
