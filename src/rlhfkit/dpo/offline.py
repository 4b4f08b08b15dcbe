"""Offline DPO on a preferences / rankings file, and what every run shares with online rounds: the setup
(policy, reference, objective), one training round (reference cache, `fit`, the sampled KL at evaluation) and
the finish (model and summary.json)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import DataConfig
from rlhfkit.data import (Prompt, check_lengths, detect_kind, encode_prompt, prompt_key, read_data, split_summary,
                          split_train_eval, warn_shared_prompts)
from rlhfkit.data.packing import supports_shared_prefix
from rlhfkit.dpo.config import DPOConfig, check_loss_options
from rlhfkit.dpo.objective import (PAIR_LOSSES, Pair, as_pairs, collate_pairs, encode_pairs, preference_objective,
                                   shares_first_token)
from rlhfkit.dpo.refcache import attach_ref_logps
from rlhfkit.errors import RlhfkitError
from rlhfkit.generation import sample
from rlhfkit.logprobs import Reference, sequence_logprob_sums
from rlhfkit.sampling import SamplingConfig
from rlhfkit.tracking import Run, check_run_dir, say

PAIR_KINDS = ("preferences", "rankings")  # a source that cannot be sniffed (parquet, a datasets name): pairs


def sampled_kl(policy: Any, reference: Reference, prompt_ids: list[list[int]], tokenizer: Any, cfg: DPOConfig,
               seed: int) -> dict[str, float]:
    """objective/kl: mean over samples y ~ pi of sum_t log pi(y_t) - log pi_ref(y_t) (stats.sequence_kl)."""
    from rlhfkit.stats import sequence_kl

    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, samples_per_prompt=cfg.kl_samples, batch_size=64)
    rollout = sample(policy, prompt_ids, tokenizer.pad_token_id, tokenizer.eos_token_id, sampling, seed=seed)
    policy_logps = sequence_logprob_sums(policy, rollout)  # (N,); outside reference.model(): adapter enabled
    with reference.model() as ref:
        ref_logps = sequence_logprob_sums(ref, rollout)  # (N,)
    kl = sequence_kl((policy_logps - ref_logps).cpu().numpy())
    return {"objective/kl": kl.mean, "objective/kl_se": kl.se,
            "objective/response_length": float(rollout.lengths.float().mean())}


def kl_prompt_ids(tokenizer: Any, prompts: list[Prompt], n: int, seed: int) -> list[list[int]]:
    """Token ids of up to n distinct held-out prompts (a seeded sample). Prompts are told apart and ordered by
    `prompt_key`: a conversation is a list, neither hashable nor comparable with a string."""
    distinct = sorted({prompt_key(p): p for p in prompts}.items())
    random.Random(seed).shuffle(distinct)
    return [encode_prompt(tokenizer, p) for _, p in distinct[:n]]


@dataclass
class Setup:
    """What every round of a DPO run shares: accelerator, policy, tokenizer, reference and the objective."""

    cfg: DPOConfig
    accelerator: Any
    model: Any
    tokenizer: Any
    reference: Reference
    objective: Callable
    shared_prefix: bool  # cfg.shared_prefix, where the model's attention takes a 4D mask


def setup(cfg: DPOConfig) -> Setup:
    """Load the policy (+ LoRA), decide how pi_ref is computed, and build the objective from the loss table."""
    from rlhfkit.loop import make_accelerator
    from rlhfkit.models import apply_lora, check_lora, load_causal_lm

    check_loss_options(cfg)
    check_lora(cfg.model, cfg.lora)
    check_lengths(cfg.data)
    accelerator = make_accelerator(cfg.train)
    model, tokenizer = load_causal_lm(cfg.model, seed=cfg.train.seed)
    model = apply_lora(model, cfg.lora).to(accelerator.device)
    # a frozen copy only when pi_ref is needed after training starts (a LoRA policy is its own reference)
    reference = Reference.of(model, keep_copy=cfg.ref_mode == "per_step" or cfg.kl_prompts > 0 or cfg.online)
    objective = preference_objective(PAIR_LOSSES[cfg.loss](cfg), reference, cfg.beta)
    shared = cfg.shared_prefix and supports_shared_prefix(model)
    if cfg.shared_prefix and not shared:
        say("dpo: this model's attention takes no custom 4D mask; pairs run as two rows (--no-shared-prefix)")
    return Setup(cfg, accelerator, model, tokenizer, reference, objective, shared)


def train_round(s: Setup, train_pairs: list[Pair], eval_pairs: list[Pair], run: Run,
                kl_prompts: list[Prompt]) -> dict[str, Any]:
    """Reference log-probs (cached or per step), then `fit`; returns the round's summary."""
    from rlhfkit.loop import fit

    cfg, pad = s.cfg, s.tokenizer.pad_token_id
    ref_cache, t0 = "per_step", time.time()
    if cfg.ref_mode == "cached":
        ref_cache = attach_ref_logps(train_pairs + eval_pairs, s.reference, pad, cfg.train.batch_size,
                                     s.accelerator.device, run.dir / "ref_logps.pt", s.accelerator.is_main_process,
                                     s.shared_prefix)
    ref_seconds = time.time() - t0
    prompt_ids = kl_prompt_ids(s.tokenizer, kl_prompts, cfg.kl_prompts, cfg.train.seed)

    def evaluate(policy: Any) -> dict[str, float]:
        return sampled_kl(policy, s.reference, prompt_ids, s.tokenizer, cfg, cfg.train.seed)

    result = fit(s.objective, s.model, train_pairs, lambda chunk: collate_pairs(chunk, pad, s.shared_prefix),
                 cfg.train, cfg.optim, run, s.accelerator, eval_examples=eval_pairs or None,
                 evaluate=evaluate if prompt_ids else None, tokenizer=s.tokenizer)
    pairs_seen = result.step * cfg.train.batch_size * cfg.train.grad_accum * s.accelerator.num_processes
    return {"loss": cfg.loss, "beta": cfg.beta, "tau": cfg.tau, "label_smoothing": cfg.label_smoothing,
            "alpha": cfg.alpha, "step": result.step, "status": result.status, "eval": result.eval_metrics,
            "kl": result.eval_metrics.get("objective/kl"), "train": result.last_metrics,
            "pairs": len(train_pairs), "eval_pairs": len(eval_pairs), "ref_cache": ref_cache,
            "pairs_sharing_first_token": sum(shares_first_token(p) for p in train_pairs),
            "pairs_per_s": pairs_seen / max(result.seconds, 1e-9), "seconds": result.seconds,
            "ref_seconds": ref_seconds, "final_snapshot": str(result.snapshot) if result.snapshot else None}


def finish(s: Setup, run: Run, summary: dict[str, Any]) -> dict[str, Any]:
    from rlhfkit.loop import finish_stage

    snapshot = summary.get("final_snapshot")
    return finish_stage(s.accelerator, s.model, s.tokenizer, run, summary, Path(snapshot) if snapshot else None,
                        s.cfg.lora.merge)


def load_pair_records(data: DataConfig, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) preference records for offline DPO, rankings expanded to their pairs: the `eval` file
    (with a warning when its prompts also occur in train), else a seeded `eval_fraction` of train's prompts.

    The split is by prompt (`split_train_eval`) and comes before the expansion, so every pair and ranking of
    a held-out prompt is held out and none of its completions is trained on.
    """
    if not data.train:
        raise RlhfkitError("no training data: pass --data.train FILE (preferences or rankings JSONL)")
    kind = detect_kind(data.train, PAIR_KINDS, unreadable="preferences", columns=data.columns)
    records = read_data(data, data.train, kind)[: data.max_records]
    if data.eval:
        eval_kind = detect_kind(data.eval, PAIR_KINDS, unreadable="preferences", columns=data.columns)
        held = read_data(data, data.eval, eval_kind)
        warn_shared_prompts(records, held, data.train, data.eval)
        return as_pairs(records, kind), as_pairs(held, eval_kind)
    train, held = split_train_eval(records, data.eval_fraction, seed)
    return as_pairs(train, kind), as_pairs(held, kind)


def check_pairs_fit(s: Setup, pairs: list[Pair]) -> None:
    """Refuse pairs with a side longer than the model's context (`rlhfkit.models.check_context`)."""
    from rlhfkit.models import check_context

    check_context(s.model, (e for p in pairs for e in (p.chosen, p.rejected)), s.cfg.data.max_length)


def run_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Offline DPO (or a baseline) on a preferences / rankings file; returns the summary."""
    check_run_dir(cfg.out, cfg.train.resume)  # a used or unwritable --out is refused before anything is read
    train_recs, eval_recs = load_pair_records(cfg.data, cfg.train.seed)  # bad data fails before any model loads
    s = setup(cfg)
    train_pairs, dropped = encode_pairs(s.tokenizer, train_recs, cfg.data)
    eval_pairs, _ = encode_pairs(s.tokenizer, eval_recs, cfg.data)
    if not train_pairs:
        raise RlhfkitError(f"{cfg.data.train}: no pair survived the length policy ({dropped} dropped)")
    check_pairs_fit(s, train_pairs + eval_pairs)
    run = Run(cfg.out, cfg, is_main=s.accelerator.is_main_process)  # after every check: a refusal leaves no run
    split = split_summary(train_recs, eval_recs)
    say(f"dpo ({cfg.loss}): {len(train_pairs)} training pairs of {split['train_prompts']} prompts ({dropped} "
        f"dropped), {len(eval_pairs)} held out of {split['eval_prompts']} prompts")
    summary = train_round(s, train_pairs, eval_pairs, run, [p.prompt for p in eval_pairs])
    summary["dropped_pairs"] = dropped
    summary["split"] = split
    return finish(s, run, summary)
