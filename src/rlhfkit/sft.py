"""Step 0 (pretrain) and step 1 (SFT): next-token cross-entropy, on raw text or on responses only.

Pretrain: train a byte-level BPE tokenizer on the corpus (unless one is given), build the `tiny` model (or load
any model), pack BOS + text + EOS documents into blocks of `max_length` tokens, and minimise cross-entropy on
every token; held-out perplexity = exp(held-out loss). SFT: tokenise prompt and response apart (rlhfkit.data),
count only response / assistant tokens; full fine-tuning or LoRA (peft).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit import config as config_lib
from rlhfkit import losses
from rlhfkit.config import DataConfig, LoRAConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.data import Encoded, TokenBatch, check_lengths, collate, encode_sft_records, load_train_eval
from rlhfkit.data.packing import PrefixBatch, pack_groups, supports_shared_prefix
from rlhfkit.logprobs import batch_token_logprobs
from rlhfkit.tracking import Run, check_run_dir, say


@dataclass(frozen=True)
class PretrainConfig:
    """rlhfkit pretrain: a tokenizer and a model from scratch on a {"text"} corpus."""

    data: DataConfig = field(default_factory=lambda: DataConfig(max_length=64))
    """Corpus (JSONL {"text"}); max_length is the packed block size."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to train (default: the built-in tiny config)."""
    vocab_size: int = 4096
    """BPE vocabulary trained on the corpus when model.tokenizer is not given."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=32, max_steps=200))
    """Loop settings."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3, warmup_steps=20, weight_decay=0.1))
    """Optimizer settings."""
    out: str = "runs/pretrain"
    """Run directory; the model is saved to <out>/model."""


@dataclass(frozen=True)
class SFTConfig:
    """rlhfkit sft: supervised fine-tuning on {"prompt","response"} pairs or {"messages"} conversations."""

    data: DataConfig = field(default_factory=DataConfig)
    """SFT data and length policy."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Model to fine-tune: a directory, an HF id, `smollm2` (`tiny` starts from random weights)."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters (lora.r > 0) instead of full fine-tuning."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=16, epochs=1))
    """Loop settings."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    """Optimizer settings."""
    out: str = "runs/sft"
    """Run directory; the model is saved to <out>/model."""


def lm_objective(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, dict[str, float]]:
    """Token-weighted cross-entropy over loss_mask tokens (docs/design.md: SFT and pretraining), on right-padded
    rows or padding-free packed rows alike; the log-probs are `rlhfkit.logprobs.batch_token_logprobs` (the
    chunked LM head on the trained tokens only, where it applies)."""
    token_logps, mask = batch_token_logprobs(model, batch)  # (N, K-1) each
    nll_sum, n_tokens = losses.sft_loss(token_logps, mask)
    loss = nll_sum.sum() / n_tokens.sum().clamp(min=1)
    return loss, {"tokens": float(n_tokens.sum())}


def pack_corpus(tokenizer: Any, texts: list[str], block: int) -> list[Encoded]:
    """BOS + text + EOS per document, concatenated and cut into blocks of `block` tokens (last partial kept
    if it has at least 2 tokens). Every token is trained."""
    stream: list[int] = []
    for text in texts:
        stream += tokenizer(text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [stream[i : i + block] for i in range(0, len(stream), block)]
    return [Encoded(b, [1] * len(b)) for b in blocks if len(b) >= 2]


def _collate_for(tokenizer: Any, padding_free: bool = False):
    """Right-padded rows, or (padding_free, for models whose attention takes a 4D mask) several examples per row
    without padding (`rlhfkit.data.packing`, rows no wider than the longest example): exact either way."""
    pad = tokenizer.pad_token_id
    if padding_free:
        return lambda examples: pack_groups([[e] for e in examples], pad, row_tokens=0)
    return lambda examples: collate(examples, pad)


def perplexity(eval_metrics: dict[str, float]) -> float:
    loss = eval_metrics.get("eval/loss", float("nan"))
    return math.exp(loss) if loss < 50 else float("inf")


def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Train tokenizer + model; returns a summary (held-out perplexity, tokens/s, paths)."""
    from rlhfkit.loop import finish_stage, fit, make_accelerator
    from rlhfkit.models import check_context, load_causal_lm, load_tokenizer, train_bpe_tokenizer

    check_run_dir(cfg.out, cfg.train.resume)  # a used or unwritable --out is refused before anything is read
    train_recs, eval_recs = load_train_eval(cfg.data, "corpus", cfg.train.seed)  # bad data fails before any work
    accelerator = make_accelerator(cfg.train)
    texts = [r["text"] for r in train_recs]
    if cfg.model.tokenizer:
        tokenizer = load_tokenizer(cfg.model.tokenizer)
    else:
        tokenizer = train_bpe_tokenizer(texts, cfg.vocab_size)  # lengths are rlhfkit's job, not the tokenizer's
    model, tokenizer = load_causal_lm(cfg.model, seed=cfg.train.seed, tokenizer=tokenizer, untrained_ok=True)
    train = pack_corpus(tokenizer, texts, cfg.data.max_length)
    held = pack_corpus(tokenizer, [r["text"] for r in eval_recs], cfg.data.max_length)
    check_context(model, train + held, cfg.data.max_length)
    run = Run(cfg.out, cfg, is_main=accelerator.is_main_process)  # after the model loads: a failure leaves no run
    say(f"pretrain: {len(train)} blocks of {cfg.data.max_length} tokens, {len(held)} held out, "
        f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    result = fit(lm_objective, model, train, _collate_for(tokenizer), cfg.train, cfg.optim, run, accelerator,
                 eval_examples=held[:256] or None, tokenizer=tokenizer)
    summary = {"step": result.step, "status": result.status, "eval_loss": result.eval_metrics.get("eval/loss"),
               "perplexity": perplexity(result.eval_metrics), "tokens_per_s": result.tokens_per_second,
               "seconds": result.seconds}
    return finish_stage(accelerator, model, tokenizer, run, summary, result.snapshot)


def run_sft(cfg: SFTConfig) -> dict[str, Any]:
    """Fine-tune on response tokens only; returns a summary (held-out loss, truncation counts, paths)."""
    from rlhfkit.loop import finish_stage, fit, make_accelerator
    from rlhfkit.models import apply_lora, check_context, check_lora, load_causal_lm

    check_lora(cfg.model, cfg.lora)
    check_lengths(cfg.data)
    check_run_dir(cfg.out, cfg.train.resume)  # a used or unwritable --out is refused before anything is read
    train_recs, eval_recs = load_train_eval(cfg.data, "sft", cfg.train.seed)  # bad data fails before any work
    accelerator = make_accelerator(cfg.train)
    model, tokenizer = load_causal_lm(cfg.model, seed=cfg.train.seed)
    model = apply_lora(model, cfg.lora)
    train, stats = encode_sft_records(tokenizer, train_recs, cfg.data)
    held, _ = encode_sft_records(tokenizer, eval_recs, cfg.data)
    check_context(model, train + held, cfg.data.max_length)
    run = Run(cfg.out, cfg, is_main=accelerator.is_main_process)  # after the model loads: a failure leaves no run
    say(f"sft: {len(train)} training examples ({stats.summary()}), {len(held)} held out")
    result = fit(lm_objective, model, train, _collate_for(tokenizer, supports_shared_prefix(model)), cfg.train,
                 cfg.optim, run, accelerator, eval_examples=held or None, tokenizer=tokenizer)
    summary = {"step": result.step, "status": result.status, "eval_loss": result.eval_metrics.get("eval/loss"),
               "truncation": stats.as_dict(), "tokens_per_s": result.tokens_per_second, "seconds": result.seconds}
    return finish_stage(accelerator, model, tokenizer, run, summary, result.snapshot, cfg.lora.merge)


def pretrain_main(argv: list[str]) -> int:
    summary = run_pretrain(config_lib.parse(PretrainConfig, argv, prog="rlhfkit pretrain"))
    say(f"pretrain: held-out perplexity {summary['perplexity']:.1f}, {summary['tokens_per_s']:.0f} tokens/s; "
        f"model saved to {summary['model']}")
    return 0


def sft_main(argv: list[str]) -> int:
    summary = run_sft(config_lib.parse(SFTConfig, argv, prog="rlhfkit sft"))
    say(f"sft: held-out loss {summary['eval_loss']}; model saved to {summary['model']}")
    return 0
