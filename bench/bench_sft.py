"""SFT (and pretrain) throughput and peak memory: rlhfkit's loop vs TRL's SFTTrainer on the same model and data.

Both sides train the same saved tiny model (rlhfkit's `tiny` preset, BPE trained on the embedded corpus) on the
same tokenised (prompt, response) pairs -- Rotten Tomatoes snippets split into a prompt prefix and its
completion, exactly as `rlhfkit corpus` builds sft_train.jsonl -- with the same batch size, maximum length,
completion-only loss, fp32 and thread count. TRL gets the token ids and completion masks rlhfkit produced
(`input_ids` + `completion_mask` columns), so both sides see identical sequences.

Fairness settings for TRL on CPU (TRL_NOTES.md): bf16 off and gradient (activation) checkpointing off; both
default to on in TRL 1.16 and make it ~17x slower on a CPU without bf16 units. Each side keeps its own
default optimizer implementation (recorded in the output).

Figures: steady-state median tokens/s (real, non-padding tokens; steps after `warmup`, timed start to start),
tokens per CPU-second of the side's process (steadier than wall time when other processes share the cores),
peak RSS of the side's own process, the RSS increase during training, and the achieved fraction of the fp32
matmul roofline at 6 x non-embedding params per token (forward + backward). Pretrain (packed blocks, every
token trained) is measured for rlhfkit alone.

    python bench/bench_sft.py [--threads 1] [--repeats 3] [--steps 40]
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

NAME = "sft"


@dataclass(frozen=True)
class Args:
    """bench_sft: rlhfkit SFT vs TRL SFTTrainer, plus rlhfkit pretrain tokens/s."""

    threads: int = 1
    """torch threads for every side (1 is the steadiest on a shared 2-core machine)."""
    repeats: int = 3
    """Runs per side, interleaved A B A B; figures are medians over runs."""
    steps: int = 30
    """Optimizer steps per run."""
    warmup: int = 5
    """Steps left out of the steady-state median."""
    batch_size: int = 16
    """SFT micro-batch size (sequences), both sides; no gradient accumulation."""
    max_length: int = 64
    """Longest SFT sequence (prompt + response + EOS) and the pretrain block size."""
    records: int = 4000
    """SFT pairs tokenised (the loop samples batches from them)."""
    pretrain_batch_size: int = 32
    """Pretrain micro-batch size (blocks of max_length tokens), rlhfkit's default."""
    pretrain: bool = True
    """Also measure rlhfkit pretrain tokens/s."""
    trl: bool = True
    """Run the TRL side (needs the `bench` extra: trl==1.16.0)."""


# ------------------------------------------------------------------------------------------------- sides
def _load_examples(path: str) -> list:
    from rlhfkit.data import Encoded

    return [Encoded(r["input_ids"], r["loss_mask"]) for r in map(json.loads, Path(path).read_text().splitlines())]


def _rlhfkit_fit(params: dict, data_key: str, batch_size: int, lr: float) -> dict:
    """rlhfkit.loop.fit with rlhfkit.sft.lm_objective -- what `rlhfkit sft` / `rlhfkit pretrain` run."""
    from rlhfkit.config import ModelConfig, OptimConfig, TrainConfig
    from rlhfkit.data import collate
    from rlhfkit.loop import fit, make_accelerator
    from rlhfkit.models import load_causal_lm
    from rlhfkit.sft import lm_objective
    from rlhfkit.tracking import Run

    train_cfg = TrainConfig(batch_size=batch_size, max_steps=params["steps"], threads=params["threads"],
                            progress=False, save_every=10**9)
    accelerator = make_accelerator(train_cfg)
    model, tokenizer = load_causal_lm(ModelConfig(name=params["model"]))
    examples = _load_examples(params[data_key])
    clock = common.StepClock()

    def timed_objective(m, batch):
        clock.tick(int(batch.attention_mask.sum()))
        return lm_objective(m, batch)

    pad = tokenizer.pad_token_id
    with tempfile.TemporaryDirectory() as run_dir:
        common.mark_train_start()
        result = fit(timed_objective, model, examples, lambda ex: collate(ex, pad), train_cfg,
                     OptimConfig(lr=lr), Run(run_dir), accelerator)
    return {**clock.steady(params["warmup"]), "final_loss": result.last_metrics.get("train/loss"),
            "optimizer": "torch.optim.AdamW (torch default: single-tensor on CPU)", "n_nonembed": common.non_embedding_params(model)}


def rlhfkit_sft(params: dict) -> dict:
    return _rlhfkit_fit(params, "sft_data", params["batch_size"], lr=1e-4)


def rlhfkit_pretrain(params: dict) -> dict:
    return _rlhfkit_fit(params, "pretrain_data", params["pretrain_batch_size"], lr=3e-3)


def trl_sft(params: dict) -> dict:
    """TRL SFTTrainer on pre-tokenised ids + completion masks; bf16 and checkpointing off (see docstring)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in Path(params["sft_data"]).read_text().splitlines()]
    dataset = Dataset.from_list([{"input_ids": r["input_ids"], "completion_mask": r["loss_mask"]} for r in rows])
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(output_dir=out, per_device_train_batch_size=params["batch_size"],
                        max_steps=params["steps"], learning_rate=1e-4, warmup_steps=10, lr_scheduler_type="cosine",
                        max_grad_norm=1.0, max_length=params["max_length"], completion_only_loss=True, packing=False,
                        bf16=False, fp16=False, gradient_checkpointing=False, activation_checkpointing=False,
                        model_init_kwargs={"dtype": torch.float32}, use_cpu=not torch.cuda.is_available(),
                        save_strategy="no", report_to="none", disable_tqdm=True, logging_steps=10, seed=0,
                        dataloader_num_workers=0)
        trainer = SFTTrainer(model=params["model"], args=cfg, train_dataset=dataset)
        assert not getattr(trainer.model, "is_gradient_checkpointing", False), "checkpointing must be off"
        assert next(trainer.model.parameters()).dtype == torch.float32
        clock = common.StepClock()
        inner = trainer.training_step

        def timed_step(model, inputs, *args, **kwargs):
            clock.tick(int(inputs["attention_mask"].sum()))
            return inner(model, inputs, *args, **kwargs)

        trainer.training_step = timed_step
        common.mark_train_start()
        trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    flags = {k: opt.defaults.get(k) for k in ("fused", "foreach") if opt.defaults.get(k) is not None}
    return {**clock.steady(params["warmup"]), "optimizer": f"{type(opt).__module__}.{type(opt).__name__} {flags}"}


SIDES = {"rlhfkit": rlhfkit_sft, "trl": trl_sft, "rlhfkit_pretrain": rlhfkit_pretrain}


# ------------------------------------------------------------------------------------------------ parent
def prepare(args: Args, root: Path) -> dict:
    """Save the tiny model once and write the tokenised SFT pairs and pretrain blocks both sides read."""
    from rlhfkit.corpus import prefix_words, review_sft_pair
    from rlhfkit.config import DataConfig
    from rlhfkit.data import encode_sft_records
    from rlhfkit.models import load_tokenizer
    from rlhfkit.sft import pack_corpus

    texts, source = common.corpus_texts()
    model_dir = common.tiny_model_dir(root, texts, max_length=128)
    tokenizer = load_tokenizer(str(model_dir))
    reviews, _ = common.corpus_texts(reviews_only=True)
    pairs = [review_sft_pair(t, n) for t in reviews if (n := prefix_words(t, 0))][: args.records]
    data_cfg = DataConfig(max_length=args.max_length, max_prompt_length=args.max_length // 2)
    sft, stats = encode_sft_records(tokenizer, pairs, data_cfg)
    blocks = pack_corpus(tokenizer, texts[: args.records], args.max_length)
    paths = {"sft_data": root / "sft.jsonl", "pretrain_data": root / "pretrain.jsonl"}
    for key, examples in (("sft_data", sft), ("pretrain_data", blocks)):
        paths[key].write_text("".join(json.dumps({"input_ids": e.input_ids, "loss_mask": e.loss_mask}) + "\n"
                                      for e in examples))
    lengths = [len(e.input_ids) for e in sft]
    return {"model": str(model_dir), **{k: str(v) for k, v in paths.items()}, "data_source": source,
            "sft_examples": len(sft), "sft_mean_length": sum(lengths) / len(lengths),
            "sft_mean_trained": sum(sum(e.loss_mask) for e in sft) / len(sft), "truncation": stats.as_dict(),
            "pretrain_blocks": len(blocks)}


KEYS = ("tokens_per_s", "tokens_per_s_pooled", "tokens_per_cpu_s", "step_s", "tokens_per_step", "peak_rss_mb", "train_rss_increase_mb",
        "rss_at_train_start_mb", "cuda_peak_mb", "n_nonembed")


def run(args: Args) -> dict:
    import importlib.util

    if args.trl and importlib.util.find_spec("trl") is None:
        print("trl is not installed (pip install -e '.[bench]'); measuring rlhfkit alone", file=sys.stderr)
        args = replace(args, trl=False)
    sides = ["rlhfkit"] + (["trl"] if args.trl else []) + (["rlhfkit_pretrain"] if args.pretrain else [])
    with tempfile.TemporaryDirectory(prefix="rlhfkit-bench-sft-") as tmp:
        data = prepare(args, Path(tmp))
        params = {**vars(args), **{k: data[k] for k in ("model", "sft_data", "pretrain_data")}}
        roof = common.roofline(args.threads)
        runs = common.interleave(__file__, sides, params, args.repeats, args.threads)
    n = next((r["n_nonembed"] for r in runs["rlhfkit"] if "n_nonembed" in r), None)
    rows = []
    for side in sides:
        for r in runs[side]:  # each run against the roofline its own process measured right after it
            r["roofline_6N"] = common.model_flops_fraction(r["tokens_per_s"], n, r["roofline_gflops"])
        summary = common.summarize(runs[side], KEYS + ("roofline_gflops", "roofline_6N"))
        rows.append({"benchmark": "pretrain" if side.endswith("pretrain") else "sft",
                     "side": side.replace("_pretrain", ""), **summary, "threads": args.threads,
                     "optimizer": runs[side][0].get("optimizer")})
    ratio = None
    if args.trl:
        ratio = {k: rows[0][k] / rows[1][k] for k in ("tokens_per_s", "peak_rss_mb", "train_rss_increase_mb")
                 if rows[0].get(k) and rows[1].get(k)}
        ratio["tokens_per_s_paired"] = common.paired_ratio(runs, "rlhfkit", "trl")
        ratio["tokens_per_cpu_s_paired"] = common.paired_ratio(runs, "rlhfkit", "trl", "tokens_per_cpu_s")
    return {"args": vars(args), "data": {k: v for k, v in data.items() if not k.endswith("_data") and k != "model"},
            "n_nonembed": n, "flops_per_token": "6 x non-embedding params (forward + backward)", "roofline": roof, "rows": rows, "ratio_rlhfkit_over_trl": ratio, "runs": runs}


COLUMNS = ("benchmark", "side", "tokens_per_s", "tokens_per_s_min", "tokens_per_s_max", "tokens_per_cpu_s", "peak_rss_mb",
           "train_rss_increase_mb", "roofline_gflops", "roofline_6N", "threads", "load1_range")


def main(argv: list[str] | None = None) -> dict:
    import tyro

    args = tyro.cli(Args, args=sys.argv[1:] if argv is None else argv)
    result = run(args)
    path = common.write_result(NAME, result)
    print(f"roofline: fp32 torch.mm {result['roofline']['gflops']:.1f} GFLOP/s median "
          f"({result['roofline']['gflops_max']:.1f} best) at {args.threads} thread(s)")
    common.print_table(result["rows"], COLUMNS)
    if result["ratio_rlhfkit_over_trl"]:
        print("rlhfkit / TRL: " + ", ".join(f"{k} {v:.2f}" for k, v in result["ratio_rlhfkit_over_trl"].items()
                                          if v is not None))
    print(f"written to {path}")
    return result


if __name__ == "__main__":
    if not common.child_main(SIDES):
        main()
