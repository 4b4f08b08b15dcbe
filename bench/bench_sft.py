"""SFT throughput and peak memory: rlhfkit's `sft` stage vs TRL's SFTTrainer on the same model and token ids.

Both sides train one saved model (`--shape`: `large` = SmolLM2's width and 49,152-word vocabulary with 4 layers,
`tiny` = rlhfkit's tiny preset with 4,096 words; common.SHAPES) on the same (prompt, response) pairs: a word-level
tokenizer makes every prompt exactly `--prompt-len` tokens and every response a uniform draw from
`--response-len` tokens (+ EOS), so lengths vary within a batch -- where padding-free batching pays -- and are
identical on both sides. Loss on response tokens only (TRL: `completion_only_loss`, given rlhfkit's own token ids
and completion masks as `input_ids` + `completion_mask` columns), fp32, same batch and thread count.

- rlhfkit: `rlhfkit.sft.run_sft` -- exactly what `rlhfkit sft` runs, default settings (its objective is wrapped
  only to time each step). Ablation row `rlhfkit, LM head plain`: the same with RLHFKIT_LM_HEAD=plain (full
  (B, T, V) logits), which shows what the chunked LM head contributes.
- TRL 1.16 SFTTrainer: bf16 off and gradient (activation) checkpointing off -- TRL turns both on by default, even
  on CPU, where they cost far more than they save -- `packing=False`, its default fused AdamW, report_to none, no
  saving. Row `TRL padding_free`: `padding_free=True` (TRL flattens the batch into one row with position ids;
  transformers builds the block-diagonal mask from them for sdpa, so it runs on CPU).

Figures per run: steady-state median tokens/s and sequences/s (real, non-padding tokens; the first `--warmup` steps
dropped; steps timed start to start), tokens per CPU-second, peak RSS of the side's own process, the RSS increase
during training, and the fraction of the fp32 matmul roofline at 6 x non-embedding params per token.
`--pretrain` adds rlhfkit pretraining (packed blocks of `--max-length` tokens, every token trained) alone.

    python bench/bench_sft.py [--shape large|tiny] [--threads N] [--repeats 2] [--steps 6]
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "sft"


@dataclass(frozen=True)
class Args(common.RunArgs):
    """bench_sft: rlhfkit SFT vs TRL SFTTrainer (and optional rlhfkit pretrain) tokens/s and memory."""

    batch_size: int = 8
    """Sequences per optimizer step, both sides; no gradient accumulation."""
    prompt_len: int = 64
    """Prompt tokens (exact)."""
    response_len: str = "64:191"
    """Response tokens before EOS, drawn uniformly from lo:hi (64:191 -> sequences of 129-256 tokens)."""
    records: int = 256
    """Pairs written (the loops sample batches from them)."""
    trl: bool = True
    """Run the TRL side (needs the `bench` extra: trl==1.16.0)."""
    trl_padding_free: bool = True
    """Also run TRL with padding_free=True."""
    ablation: bool = True
    """Also run rlhfkit with RLHFKIT_LM_HEAD=plain."""
    pretrain: bool = False
    """Also measure rlhfkit pretrain tokens/s (packed blocks of max_length, batch_size blocks per step)."""

    @property
    def max_length(self) -> int:
        return self.prompt_len + common.length_range(self.response_len)[1] + 1


# ------------------------------------------------------------------------------------------------- sides
def rlhfkit_sft(params: dict) -> dict:
    """`rlhfkit sft` (rlhfkit.sft.run_sft) on the pairs file; its objective wrapped to time each step."""
    import rlhfkit.sft as sft
    from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig

    clock = common.StepClock()
    objective = sft.lm_objective

    def timed_objective(model, batch):
        clock.tick(common.real_tokens(batch), params["batch_size"])
        return objective(model, batch)

    sft.lm_objective = timed_objective  # run_sft looks it up in the module when it calls fit
    with tempfile.TemporaryDirectory() as out:
        cfg = sft.SFTConfig(
            data=DataConfig(train=params["pairs"], eval_fraction=0.0, max_length=params["max_length"],
                            max_prompt_length=params["prompt_len"]),
            model=ModelConfig(name=params["model"]),
            train=TrainConfig(batch_size=params["batch_size"], max_steps=params["steps"], threads=params["threads"],
                              progress=False, save_every=10**9, eval_every=10**9),
            optim=OptimConfig(lr=1e-4), out=str(Path(out) / "run"))
        summary = sft.run_sft(cfg)
    return {**clock.steady(params["warmup"]), "final_eval_loss": summary.get("eval_loss"),
            "optimizer": "torch.optim.AdamW (torch default: single-tensor on CPU)"}


def rlhfkit_pretrain(params: dict) -> dict:
    """rlhfkit.loop.fit with rlhfkit.sft.lm_objective on packed blocks -- what `rlhfkit pretrain` trains."""
    from rlhfkit.config import OptimConfig, TrainConfig
    from rlhfkit.data import Encoded, collate
    from rlhfkit.loop import fit, make_accelerator
    from rlhfkit.models import load_causal_lm
    from rlhfkit.config import ModelConfig
    from rlhfkit.sft import lm_objective
    from rlhfkit.tracking import Run

    cfg = TrainConfig(batch_size=params["batch_size"], max_steps=params["steps"], threads=params["threads"],
                      progress=False, save_every=10**9)
    accelerator = make_accelerator(cfg)
    model, tokenizer = load_causal_lm(ModelConfig(name=params["model"]))
    blocks = [Encoded(r["input_ids"], r["loss_mask"]) for r in map(json.loads, Path(params["blocks"]).open())]
    clock = common.StepClock()

    def timed_objective(m, batch):
        clock.tick(common.real_tokens(batch), params["batch_size"])
        return lm_objective(m, batch)

    with tempfile.TemporaryDirectory() as run_dir:
        fit(timed_objective, model, blocks, lambda ex: collate(ex, tokenizer.pad_token_id), cfg, OptimConfig(lr=3e-3),
            Run(run_dir), accelerator)
    return clock.steady(params["warmup"])


def trl_sft(params: dict) -> dict:
    """TRL SFTTrainer on rlhfkit's token ids + completion masks; bf16 and checkpointing off (see docstring)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(params["ids"]).read_text().splitlines()]
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["loss_mask"]} for r in rows])
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(output_dir=out, per_device_train_batch_size=params["batch_size"],
                        max_steps=params["steps"], learning_rate=1e-4, lr_scheduler_type="cosine", max_grad_norm=1.0,
                        # padding_free refuses a max_length it would not enforce; the ids already fit
                        max_length=None if params.get("padding_free") else params["max_length"],
                        completion_only_loss=True, packing=False,
                        padding_free=params.get("padding_free", False), bf16=False, fp16=False,
                        gradient_checkpointing=False, activation_checkpointing=False,
                        model_init_kwargs={"dtype": torch.float32}, use_cpu=not torch.cuda.is_available(),
                        save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10, seed=0,
                        dataloader_num_workers=0)
        trainer = SFTTrainer(model=params["model"], args=cfg, train_dataset=dataset)
        assert not getattr(trainer.model, "is_gradient_checkpointing", False), "checkpointing must be off"
        assert next(trainer.model.parameters()).dtype == torch.float32
        clock = common.StepClock()
        common.time_trainer_steps(trainer, clock, params["batch_size"])
        trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    flags = {k: opt.defaults.get(k) for k in ("fused", "foreach") if opt.defaults.get(k) is not None}
    return {**clock.steady(params["warmup"]), "optimizer": f"{type(opt).__module__}.{type(opt).__name__} {flags}",
            "attn_implementation": trainer.model.config._attn_implementation}


SIDES = {"rlhfkit": rlhfkit_sft, "trl": trl_sft, "rlhfkit_pretrain": rlhfkit_pretrain}


# ------------------------------------------------------------------------------------------------ parent
def prepare(args: Args, root: Path) -> dict:
    """Save the model once; write the text pairs (rlhfkit reads them), their token ids + completion masks as
    rlhfkit encodes them (TRL gets those), and the pretrain blocks."""
    from rlhfkit.config import DataConfig
    from rlhfkit.data import encode_sft_records, write_jsonl
    from rlhfkit.models import load_tokenizer

    model_dir, sizes = common.word_model_dir(root, args.shape)
    tokenizer = load_tokenizer(str(model_dir))
    vocab, (lo, hi), rng = len(tokenizer), common.length_range(args.response_len), random.Random(0)
    pairs = [{"prompt": common.word_text(rng, args.prompt_len, vocab),
              "response": " " + common.word_text(rng, rng.randint(lo, hi), vocab)} for _ in range(args.records)]
    write_jsonl(root / "pairs.jsonl", pairs)
    encoded, stats = encode_sft_records(tokenizer, pairs, DataConfig(max_length=args.max_length,
                                                                     max_prompt_length=args.prompt_len))
    write_jsonl(root / "ids.jsonl", [{"input_ids": e.input_ids, "loss_mask": e.loss_mask} for e in encoded])
    stream = [t for e in encoded for t in e.input_ids]
    blocks = [stream[i : i + args.max_length] for i in range(0, len(stream) - args.max_length, args.max_length)]
    write_jsonl(root / "blocks.jsonl", [{"input_ids": b, "loss_mask": [1] * len(b)} for b in blocks])
    lengths = [len(e.input_ids) for e in encoded]
    return {"model": str(model_dir), "pairs": str(root / "pairs.jsonl"), "ids": str(root / "ids.jsonl"),
            "blocks": str(root / "blocks.jsonl"), **sizes, "examples": len(encoded),
            "mean_length": sum(lengths) / len(lengths), "max_length_seen": max(lengths),
            "mean_trained": sum(sum(e.loss_mask) for e in encoded) / len(encoded), "truncation": stats.as_dict()}


def variants(args: Args) -> list[common.Variant]:
    out = [common.Variant("rlhfkit", "rlhfkit")]
    if args.trl:
        out.append(common.Variant("TRL", "trl"))
    if args.ablation:
        out.append(common.Variant("rlhfkit, LM head plain", "rlhfkit", env={"RLHFKIT_LM_HEAD": "plain"}))
    if args.trl and args.trl_padding_free:
        out.append(common.Variant("TRL padding_free", "trl", params={"padding_free": True}))
    if args.pretrain:
        out.append(common.Variant("rlhfkit pretrain", "rlhfkit_pretrain"))
    return out


KEYS = ("tokens_per_s", "items_per_s", "tokens_per_s_pooled", "tokens_per_cpu_s", "step_s", "tokens_per_step",
        "peak_rss_mb", "train_rss_increase_mb", "rss_at_train_start_mb", "cuda_peak_mb", "run_seconds")


def run(args: Args) -> dict:
    import importlib.util

    if args.trl and importlib.util.find_spec("trl") is None:
        print("trl is not installed (pip install -e '.[bench]'); measuring rlhfkit alone", file=sys.stderr)
        args = replace(args, trl=False)
    threads = args.threads or common.SHAPES[args.shape]["threads"]
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-sft-") as tmp:
        data = prepare(args, Path(tmp))
        params = {**vars(args), "threads": threads, "max_length": args.max_length,
                  **{k: data[k] for k in ("model", "pairs", "ids", "blocks")}}
        roof = common.roofline(threads)
        runs = common.interleave(__file__, variants(args), params, args.repeats, threads)
    n = data["non_embedding_params"]
    rows = []
    for label, side_runs in runs.items():
        for r in side_runs:  # each run against the roofline its own process measured right after it
            r["roofline_6N"] = common.model_flops_fraction(r["tokens_per_s"], n, r["roofline_gflops"])
        rows.append({"benchmark": "pretrain" if "pretrain" in label else "sft", "side": label,
                     **common.summarize(side_runs, KEYS + ("roofline_gflops", "roofline_6N")), "threads": threads,
                     "optimizer": side_runs[0].get("optimizer")})
    ratio, targets = None, []
    if args.trl:
        ours, trl = rows[0], rows[1]
        ratio = {"tokens_per_s": ours["tokens_per_s"] / trl["tokens_per_s"],
                 "tokens_per_s_paired": common.paired_ratio(runs, "rlhfkit", "TRL"),
                 "tokens_per_cpu_s_paired": common.paired_ratio(runs, "rlhfkit", "TRL", "tokens_per_cpu_s"),
                 "peak_rss_mb": ours["peak_rss_mb"] / trl["peak_rss_mb"],
                 "train_rss_increase_mb": ours["train_rss_increase_mb"] / trl["train_rss_increase_mb"]}
        targets = common.target_rows([
            (f"SFT {args.shape}: tokens/s (paired)", ratio["tokens_per_s_paired"], 1.5, ">="),
            (f"SFT {args.shape}: training memory (RSS increase)", ratio["train_rss_increase_mb"], 0.5, "<="),
            (f"SFT {args.shape}: peak RSS of the process", ratio["peak_rss_mb"], 0.5, "<=")])
    return {"args": {**vars(args), "threads": threads}, "data": {k: v for k, v in data.items()
                                                                 if k not in ("pairs", "ids", "blocks", "model")},
            "flops_per_token": "6 x non-embedding params (forward + backward)", "roofline": roof, "rows": rows,
            "ratio_rlhfkit_over_trl": ratio, "targets": targets, "runs": runs}


COLUMNS = ("benchmark", "side", "tokens_per_s", "tokens_per_s_min", "tokens_per_s_max", "items_per_s",
           "tokens_per_cpu_s", "peak_rss_mb", "train_rss_increase_mb", "roofline_6N", "run_seconds", "load1_range")


def main(argv: list[str] | None = None) -> dict:
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv)
    result = run(args)
    path = common.write_result(NAME, result)
    d, threads = result["data"], result["args"]["threads"]
    print(f"SFT, shape {args.shape} ({d['params'] / 1e6:.1f}M params, {d['non_embedding_params'] / 1e6:.1f}M "
          f"non-embedding), batch {args.batch_size}, prompt {args.prompt_len} + response {args.response_len} + EOS "
          f"(mean {d['mean_length']:.0f} tokens, {d['mean_trained']:.0f} trained), {threads} thread(s), "
          f"{args.steps} steps (warmup {args.warmup}), {args.repeats} repeats; roofline fp32 torch.mm "
          f"{result['roofline']['gflops']:.1f} GFLOP/s")
    common.print_result(result, COLUMNS, path)
    return result


if __name__ == "__main__":
    if not common.child_main(SIDES):
        main()
