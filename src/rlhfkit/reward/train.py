"""`rm train`: batches of Groups, the ranking losses (Bradley-Terry, Plackett-Luce), the objective `loop.fit`
minimises, and the stage that trains, evaluates on held-out pairs, measures the reward normalisation and saves.

The loss is chosen by a table lookup (`RANKING_LOSSES`); every entry maps a best-first reward table (G, K), its
mask (G, K), the Likert table (G, K) (nan where unknown) and the margin to per-prompt losses (G,).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.data import TokenBatch, collate, detect_kind, load_train_eval, split_summary
from rlhfkit.data.packing import PrefixBatch, pack_groups
from rlhfkit.errors import RlhfkitError
from rlhfkit.losses import bradley_terry_loss, plackett_luce_loss
from rlhfkit.ops import masked_mean
from rlhfkit.reward.groups import Group, encode_groups
from rlhfkit.reward.model import RewardModel, load_reward_model, save_reward_model, supports_packing
from rlhfkit.reward.score import (encode_for_scoring, pair_report, reference_responses, reward_norm, score_encoded,
                                  score_groups)
from rlhfkit.tracking import Run, say


@dataclass(frozen=True)
class RMConfig:
    """rlhfkit rm train: a reward model from pairwise preferences or K-way rankings."""

    data: DataConfig = field(default_factory=DataConfig)
    """Preferences or rankings (JSONL) and the length policy for prompt + response."""
    format: Literal["auto", "preferences", "rankings"] = "auto"
    """Record kind of data.train / data.eval; `auto` reads it from the first JSONL record."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="runs/sft/model"))
    """Trunk: the SFT model directory (default), `tiny` (random), `smollm2`, any causal LM or encoder dir / id."""
    loss: Literal["bt", "pl"] = "bt"
    """`bt`: Bradley-Terry, mean over the C(K,2) pairs of each prompt; `pl`: Plackett-Luce listwise."""
    margin: float = 0.0
    """Bradley-Terry margin per Likert point: m = margin * max(0, likert_chosen - likert_rejected); 0: none."""
    norm_reference: str | None = None
    """Candidates / preferences / rankings JSONL whose responses set the reward mean and std; default: held-out
    responses (train responses when nothing is held out)."""
    calibration_bins: int = 5
    """Bins of the held-out calibration table."""
    shared_prefix: bool = True
    """Run each prompt's K responses as one row, the prompt once (rlhfkit.data.packing; exact). Causal trunks
    with sdpa / eager attention only; encoders and other attention fall back to one row per response."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(batch_size=8, epochs=1))
    """Loop settings; batch_size counts prompts (all of a prompt's responses share its batch)."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5))
    """Optimizer settings."""
    out: str = "runs/rm"
    """Run directory; the reward model is saved to <out>/model."""


# ------------------------------------------------------------------------------------------------ batches
def collate_groups(groups: Sequence[Group], pad_id: int, shared_prefix: bool = False) -> TokenBatch | PrefixBatch:
    """Flatten groups into one right-padded TokenBatch (N = sum of K, T); extras give each row's group index,
    its rank within the group (0 = best) and its Likert score (nan when absent), all (N,).
    shared_prefix: one PrefixBatch row per group instead (prompt once, then its K responses); extras["likert"]
    is then the (B, K) best-first table."""
    if shared_prefix:
        batch = pack_groups([g.examples for g in groups], pad_id)
        K = batch.lengths.shape[0]
        batch.extras["likert"] = torch.tensor(
            [[g.likert[k] if g.likert and k < len(g.likert) else math.nan for k in range(K)] for g in groups],
            dtype=torch.float32)  # (B, K)
        return batch
    batch = collate([e for g in groups for e in g.examples], pad_id, "right")
    batch.extras["group"] = torch.tensor([gi for gi, g in enumerate(groups) for _ in g.examples])  # (N,)
    batch.extras["rank"] = torch.tensor([k for g in groups for k in range(len(g.examples))])  # (N,)
    batch.extras["likert"] = torch.tensor(
        [g.likert[k] if g.likert else math.nan for g in groups for k in range(len(g.examples))],
        dtype=torch.float32)  # (N,)
    return batch


def group_table(values: torch.Tensor, group: torch.Tensor, rank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter per-response values (N,) into a best-first table (G, K) and its mask (G, K) bool."""
    G, K = int(group.max()) + 1, int(rank.max()) + 1
    table = values.new_zeros((G, K)).index_put((group, rank), values)  # (G, K), keeps the gradient
    mask = torch.zeros((G, K), dtype=torch.bool, device=values.device).index_put(
        (group, rank), torch.ones_like(group, dtype=torch.bool))  # (G, K)
    return table, mask


# ------------------------------------------------------------------------------------------------- losses
RankingLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]  # -> (G,)


def _pairs(rewards: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns i < j of every pair of a best-first table (C,) each, and the pair mask (G, C)."""
    K = rewards.shape[1]
    i, j = torch.triu_indices(K, K, offset=1, device=rewards.device)  # (C,) each: every pair, better first
    return i, j, mask[:, i] & mask[:, j]


def bradley_terry_ranking_loss(rewards: torch.Tensor, mask: torch.Tensor, likert: torch.Tensor | None,
                               margin: float) -> torch.Tensor:
    """Bradley-Terry averaged over each prompt's valid pairs i < j; likert gives the margin. -> (G,)."""
    i, j, pair_mask = _pairs(rewards, mask)
    pair_margin = None
    if margin and likert is not None:
        pair_margin = margin * (likert[:, i] - likert[:, j]).nan_to_num(0.0).clamp(min=0.0)  # (G, C)
    return masked_mean(bradley_terry_loss(rewards[:, i], rewards[:, j], pair_margin), pair_mask, dim=-1)  # (G,)


RANKING_LOSSES: dict[str, RankingLoss] = {
    "bt": bradley_terry_ranking_loss,
    "pl": lambda rewards, mask, likert, margin: plackett_luce_loss(rewards, mask),
}


@torch.no_grad()
def _pair_metrics(rewards: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean rewards of the better / worse side, accuracy (ties count half) and margin over all valid pairs."""
    i, j, pair_mask = _pairs(rewards, mask)
    chosen, rejected = rewards[:, i], rewards[:, j]  # (G, C)
    gap = chosen - rejected  # (G, C)
    right = (gap > 0).float() + 0.5 * (gap == 0).float()  # (G, C)
    return {"rewards/chosen": float(masked_mean(chosen, pair_mask)),
            "rewards/rejected": float(masked_mean(rejected, pair_mask)),
            "rewards/accuracy": float(masked_mean(right, pair_mask)),
            "rewards/margin": float(masked_mean(gap, pair_mask))}


def ranking_losses(
    rewards: torch.Tensor, mask: torch.Tensor, loss: str = "bt", likert: torch.Tensor | None = None,
    margin: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-prompt loss (G,) from a best-first reward table (G, K) with mask (G, K); see the package docstring.

    `loss` names an entry of RANKING_LOSSES (`bt`: Bradley-Terry averaged over each prompt's valid pairs i < j;
    `pl`: Plackett-Luce). likert (G, K), nan where unknown, gives the margin. Metrics are over all valid pairs
    (ties count half in the accuracy).
    """
    if loss not in RANKING_LOSSES:
        raise ValueError(f"unknown reward-model loss {loss!r}; expected {' or '.join(map(repr, RANKING_LOSSES))}")
    losses = RANKING_LOSSES[loss](rewards, mask, likert, margin)  # (G,)
    return losses, _pair_metrics(rewards, mask)


def reward_table(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rewards of a batch of groups as best-first tables: rewards (G, K), mask (G, K) bool, likert (G, K)."""
    rewards = model(batch)
    if isinstance(batch, PrefixBatch):  # (K, G): side k of group g
        return rewards.T, (batch.lengths > 0).T, batch.extras["likert"].to(rewards.dtype)
    group, rank = batch.extras["group"], batch.extras["rank"]
    table, mask = group_table(rewards, group, rank)  # (G, K)
    likert, _ = group_table(batch.extras["likert"].to(rewards.dtype), group, rank)  # (G, K)
    return table, mask, likert


def reward_objective(loss: str = "bt", margin: float = 0.0) -> Callable[[Any, TokenBatch | PrefixBatch], tuple]:
    """The objective `loop.fit` minimises: each response scored once, pairs formed from the K rewards."""

    def objective(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, dict[str, float]]:
        table, mask, likert = reward_table(model, batch)  # (G, K) each
        losses, metrics = ranking_losses(table, mask, loss, likert, margin)  # (G,)
        return losses.mean(), metrics

    return objective


# -------------------------------------------------------------------------------------------------- stage
def _check_margin(cfg: RMConfig, groups: Sequence[Group]) -> None:
    if cfg.margin < 0:
        raise RlhfkitError(f"--margin must be >= 0, got {cfg.margin}")
    if cfg.margin and cfg.loss != "bt":
        raise RlhfkitError("--margin applies to the Bradley-Terry loss only (--loss bt)")
    if cfg.margin and not any(g.likert for g in groups):
        raise RlhfkitError("--margin needs rankings with Likert scores ('likert'); the training data has none")


def _norm_for(cfg: RMConfig, model: Any, tokenizer: Any, held_rewards: list[list[float]], train: list[Group],
              batch_size: int) -> dict[str, Any]:
    """Reward mean/std over the reference file, else the held-out responses, else the training responses."""
    pad = tokenizer.pad_token_id
    if cfg.norm_reference:
        encoding = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}
        examples = [encode_for_scoring(tokenizer, p, r, encoding) for p, r in reference_responses(cfg.norm_reference)]
        return reward_norm(score_encoded(model, examples, pad, batch_size), cfg.norm_reference)
    if held_rewards:
        return reward_norm([r for g in held_rewards for r in g], "held-out responses")
    return reward_norm([r for g in score_groups(model, train, pad, batch_size) for r in g], "training responses")


def run_rm_train(cfg: RMConfig) -> dict[str, Any]:
    """Train, evaluate on held-out pairs, measure the normalisation, save; returns a summary."""
    from rlhfkit.loop import fit, make_accelerator

    accelerator = make_accelerator(cfg.train)
    run = Run(cfg.out, cfg, is_main=accelerator.is_main_process)
    kind = detect_kind(cfg.data.train, ("preferences", "rankings"), cfg.format)
    train_recs, eval_recs = load_train_eval(cfg.data, kind, cfg.train.seed)  # held out by prompt
    model, tokenizer = load_reward_model(cfg.model, cfg.train.seed)
    train, stats = encode_groups(tokenizer, train_recs, cfg.data)
    held, held_stats = encode_groups(tokenizer, eval_recs, cfg.data)
    if not train:
        raise RlhfkitError(f"no training {kind} left after encoding ({stats.as_dict()})")
    _check_margin(cfg, train)
    split = split_summary(train_recs, eval_recs)
    say(f"rm: {len(train)} records of {split['train_prompts']} prompts / {sum(len(g.examples) for g in train)} "
        f"responses to train on ({stats.truncation.summary()}; {stats.duplicates} repeated responses and "
        f"{stats.too_few} records with < 2 responses dropped), {len(held)} records of {split['eval_prompts']} "
        "prompts held out")
    pad = tokenizer.pad_token_id
    shared = cfg.shared_prefix and supports_packing(model)
    rm = RewardModel(model)
    result = fit(reward_objective(cfg.loss, cfg.margin), rm, train, lambda gs: collate_groups(gs, pad, shared),
                 cfg.train, cfg.optim, run, accelerator, eval_examples=held or None)
    model = accelerator.unwrap_model(rm).model
    held_rewards = score_groups(model, held, pad, cfg.train.batch_size) if held else []
    report = pair_report(held_rewards, cfg.calibration_bins)
    norm = _norm_for(cfg, model, tokenizer, held_rewards, train, cfg.train.batch_size)
    summary = {"step": result.step, "status": result.status, "held_out": report, "reward_norm": norm,
               "data": {"kind": kind, "train": stats.as_dict(), "eval": held_stats.as_dict(),
                        "split": split},
               "tokens_per_s": result.tokens_per_second, "seconds": result.seconds, "model": str(run.dir / "model")}
    if accelerator.is_main_process:
        encoding = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}
        save_reward_model(model, tokenizer, run.dir / "model", norm, encoding)
        run.write_json("summary.json", summary)
    run.close()
    return summary
