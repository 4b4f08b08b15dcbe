"""DPO training throughput and peak memory: rlhfkit's `dpo` stage vs TRL's DPOTrainer (trl 1.16), same model and data.

    python bench/bench_dpo.py [--shape large|tiny] [--threads N] [--repeats 2] [--steps 6] [--precompute]

Both sides train one saved model (`--shape`, common.SHAPES) on the same text pairs: a word-level tokenizer makes
every prompt exactly `--prompt-len` tokens and every chosen / rejected response a uniform draw from
`--response-len` tokens, + EOS on both sides (TRL appends EOS to completions; rlhfkit's `encode_pair` does the
same). TRL is given the model folder (a path, so it loads its own policy and reference copies). fp32, bf16 off,
gradient checkpointing off (TRL turns both on by default, even on CPU), dropout off, `max_length=None` (nothing
truncated), report_to none, no logging inside the timed steps.

Rows (each in its own process, interleaved A B A B, `--repeats` times):
  rlhfkit                   `rlhfkit.dpo.run_dpo` with --ref-mode per_step (a reference forward every step, as
                            TRL's default) and otherwise default settings: shared-prefix, padding-free pairs
                            (each pair's prompt once, pairs sharing rows) and the default LM head.
  TRL                       DPOTrainer, reference forward every step (precompute_ref_log_probs=False).
  rlhfkit, LM head plain    ablation: RLHFKIT_LM_HEAD=plain (full (B, T, V) logits).
  rlhfkit, one row per seq  ablation: --no-shared-prefix (each response its own right-padded row, as TRL).
  --precompute adds rlhfkit --ref-mode cached vs TRL precompute_ref_log_probs=True.
TRL's `padding_free=True` is not a row: in TRL 1.16 DPOTrainer warns that it is "temporarily unavailable after a
refactor" and falls back to padding, so it would repeat the TRL row.

Per run: steady pairs/s and tokens/s (median over steps after `--warmup`, steps timed start to start: rlhfkit's
at each objective call, TRL's at each `training_step`), pairs per CPU-second, peak RSS of the process and its
increase during training, and the achieved fraction of the fp32 matmul roofline counting the tokens each side
actually runs at 8 x non-embedding params per token (6 training + 2 reference forward; 6 when precomputed).
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "dpo"


@dataclass(frozen=True)
class Args(common.RunArgs):
    """bench_dpo: rlhfkit DPO vs TRL DPOTrainer pairs/s and memory."""

    batch: int = 8
    """Pairs per optimizer step (2 x batch sequences), no gradient accumulation."""
    prompt_len: int = 64
    """Prompt tokens (exact)."""
    response_len: str = "64:128"
    """Chosen and rejected tokens before EOS, each drawn uniformly from lo:hi."""
    trl: bool = True
    """Run the TRL rows (needs the `bench` extra: trl==1.16.0)."""
    ablation: bool = True
    """Also run rlhfkit with RLHFKIT_LM_HEAD=plain and with one row per sequence."""
    precompute: bool = False
    """Also run both sides with reference log-probs computed once before training."""


# ------------------------------------------------------------------------------------------------- sides
def rlhfkit_dpo(params: dict) -> dict:
    """`rlhfkit dpo` (rlhfkit.dpo.run_dpo) on the pairs file; the objective wrapped to time each step."""
    import rlhfkit.dpo.offline as offline  # setup() looks the objective up here
    from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
    from rlhfkit.dpo import DPOConfig, run_dpo

    clock = common.StepClock()
    make_objective = offline.preference_objective

    def timed_objective(*args, **kwargs):
        objective = make_objective(*args, **kwargs)

        def timed(model, batch):
            clock.tick(common.real_tokens(batch), params["batch"])
            return objective(model, batch)

        return timed

    offline.preference_objective = timed_objective
    with tempfile.TemporaryDirectory() as out:
        cfg = DPOConfig(
            data=DataConfig(train=params["pairs"], eval_fraction=0.0, max_length=params["max_length"],
                            max_prompt_length=params["prompt_len"]),
            model=ModelConfig(name=params["model"]),
            train=TrainConfig(batch_size=params["batch"], max_steps=params["steps"], log_every=10**6,
                              save_every=10**6, eval_every=10**6, threads=params["threads"], progress=False),
            optim=OptimConfig(lr=1e-5, warmup_steps=0), loss="dpo", beta=0.1, kl_prompts=0,
            ref_mode=params.get("ref_mode", "per_step"), shared_prefix=params.get("shared_prefix", True),
            out=str(Path(out) / "run"))
        summary = run_dpo(cfg)
    return {**clock.steady(params["warmup"]), "ref_seconds": summary.get("ref_seconds"),
            "final_loss": summary["train"].get("train/loss")}


def trl_dpo(params: dict) -> dict:
    """TRL DPOTrainer on the same text pairs; reference per step unless params['precompute']."""
    import torch
    from datasets import Dataset, disable_caching
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    disable_caching()  # a cached rerun would silently skip the reference precompute
    rows = [json.loads(line) for line in Path(params["pairs"]).read_text().splitlines()]
    with tempfile.TemporaryDirectory() as out:
        args = DPOConfig(output_dir=out, per_device_train_batch_size=params["batch"], max_steps=params["steps"],
                         learning_rate=1e-5, lr_scheduler_type="constant", bf16=False, fp16=False,
                         gradient_checkpointing=False, precompute_ref_log_probs=params.get("precompute", False),
                         max_length=None, report_to="none", logging_steps=10**6, save_strategy="no",
                         use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0, disable_tqdm=True,
                         beta=0.1, seed=0)
        t0 = time.perf_counter()
        trainer = DPOTrainer(model=params["model"], args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=AutoTokenizer.from_pretrained(params["model"]))
        init_seconds = time.perf_counter() - t0
        assert next(trainer.model.parameters()).dtype == torch.float32
        clock = common.StepClock()
        common.time_trainer_steps(trainer, clock, params["batch"])
        result = trainer.train()
    return {**clock.steady(params["warmup"]), "init_seconds_incl_ref": init_seconds,
            "final_loss": result.training_loss}


SIDES = {"rlhfkit": rlhfkit_dpo, "trl": trl_dpo}


# ------------------------------------------------------------------------------------------------ parent
def prepare(args: Args, root: Path) -> dict:
    """Save the model once and write the text pairs both sides read."""
    from rlhfkit.data import write_jsonl

    model_dir, sizes = common.word_model_dir(root, args.shape)
    vocab, (lo, hi), rng = common.SHAPES[args.shape]["vocab"], common.length_range(args.response_len), random.Random(0)
    response = lambda: " " + common.word_text(rng, rng.randint(lo, hi), vocab)  # noqa: E731
    pairs = [{"prompt": common.word_text(rng, args.prompt_len, vocab), "chosen": response(), "rejected": response()}
             for _ in range(args.batch * (args.steps + 2))]
    write_jsonl(root / "pairs.jsonl", pairs)
    return {"model": str(model_dir), "pairs": str(root / "pairs.jsonl"), **sizes, "pairs_written": len(pairs)}


def variants(args: Args) -> list[common.Variant]:
    V = common.Variant
    out = [V("rlhfkit", "rlhfkit")] + ([V("TRL", "trl")] if args.trl else [])
    if args.ablation:
        out += [V("rlhfkit, LM head plain", "rlhfkit", env={"RLHFKIT_LM_HEAD": "plain"}),
                V("rlhfkit, one row per seq", "rlhfkit", params={"shared_prefix": False})]
    if args.precompute:
        out += [V("rlhfkit, ref cached", "rlhfkit", params={"ref_mode": "cached"})]
        out += [V("TRL, ref precomputed", "trl", params={"precompute": True})] if args.trl else []
    return out


KEYS = ("items_per_s", "items_per_cpu_s", "tokens_per_s", "tokens_per_step", "step_s", "peak_rss_mb",
        "train_rss_increase_mb", "rss_at_train_start_mb", "cuda_peak_mb", "ref_seconds", "init_seconds_incl_ref",
        "run_seconds", "roofline_gflops")


def run(args: Args) -> dict:
    import importlib.util

    if args.trl and importlib.util.find_spec("trl") is None:
        print("trl is not installed (pip install -e '.[bench]'); measuring rlhfkit alone", file=sys.stderr)
        args = replace(args, trl=False)
    threads = args.threads or common.SHAPES[args.shape]["threads"]
    max_length = args.prompt_len + 2 * common.length_range(args.response_len)[1] + 2
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-dpo-") as tmp:
        data = prepare(args, Path(tmp))
        params = {**vars(args), "threads": threads, "max_length": max_length, "model": data["model"],
                  "pairs": data["pairs"]}
        roof = common.roofline(threads)
        runs = common.interleave(__file__, variants(args), params, args.repeats, threads)
    rows = []
    for label, side_runs in runs.items():
        factor = 6 if "cached" in label or "precomputed" in label else 8  # + 2N per token for the reference forward
        for r in side_runs:
            r["roofline_frac"] = common.model_flops_fraction(r["tokens_per_s"], data["non_embedding_params"],
                                                             r["roofline_gflops"], factor)
        rows.append({"benchmark": f"dpo {args.shape}", "side": label, **common.summarize(side_runs, KEYS +
                                                                                          ("roofline_frac",)),
                     "pairs_per_s": common.median_of(side_runs, "items_per_s"), "threads": threads})
    ratio, targets = None, []
    if args.trl:
        ours, trl = rows[0], rows[1]
        ratio = {"pairs_per_s_paired": common.paired_ratio(runs, "rlhfkit", "TRL", "items_per_s"),
                 "pairs_per_s": ours["pairs_per_s"] / trl["pairs_per_s"],
                 "pairs_per_cpu_s_paired": common.paired_ratio(runs, "rlhfkit", "TRL", "items_per_cpu_s"),
                 "peak_rss_mb": ours["peak_rss_mb"] / trl["peak_rss_mb"],
                 "train_rss_increase_mb": ours["train_rss_increase_mb"] / trl["train_rss_increase_mb"]}
        shape = f"DPO {args.shape}, prompt {args.prompt_len}, responses {args.response_len}"
        targets = common.target_rows([
            (f"{shape}: pairs/s (paired), reference each step", ratio["pairs_per_s_paired"], 2.5, ">="),
            (f"{shape}: pairs/s (paired), large-vocabulary target", ratio["pairs_per_s_paired"], 1.5, ">="),
            (f"{shape}: training memory (RSS increase)", ratio["train_rss_increase_mb"], 0.5, "<="),
            (f"{shape}: peak RSS of the process", ratio["peak_rss_mb"], 0.5, "<=")])
    return {"args": {**vars(args), "threads": threads}, "data": {k: v for k, v in data.items()
                                                                 if k not in ("model", "pairs")},
            "roofline": roof, "rows": rows, "ratio_rlhfkit_over_trl": ratio, "targets": targets, "runs": runs}


COLUMNS = ("side", "pairs_per_s", "tokens_per_s_min", "tokens_per_s_max", "items_per_cpu_s", "tokens_per_step",
           "peak_rss_mb", "train_rss_increase_mb", "roofline_frac", "run_seconds", "load1_range")


def main(argv: list[str] | None = None) -> dict:
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv)
    result = run(args)
    path = common.write_result(NAME, result)
    d, threads = result["data"], result["args"]["threads"]
    print(f"DPO, shape {args.shape} ({d['params'] / 1e6:.1f}M params, {d['non_embedding_params'] / 1e6:.1f}M "
          f"non-embedding), {args.batch} pairs/step, prompt {args.prompt_len} + responses {args.response_len} + EOS, "
          f"{threads} thread(s), {args.steps} steps (warmup {args.warmup}), {args.repeats} repeats; roofline fp32 "
          f"torch.mm {result['roofline']['gflops']:.1f} GFLOP/s. tokens/s min-max: real tokens each side runs.")
    common.print_result(result, COLUMNS, path)
    return result


if __name__ == "__main__":
    if not common.child_main(SIDES):
        main()
