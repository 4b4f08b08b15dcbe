"""`rm train`: batches of Groups, the ranking losses (Bradley-Terry, Plackett-Luce), the objective `loop.fit`
minimises, and the stage that trains, evaluates on held-out pairs, measures the reward normalisation and saves.

The loss is chosen by a table lookup (`RANKING_LOSSES`); every entry maps a best-first reward table (G, K), its
mask (G, K), the rank table (G, K) (0 = best; tied responses share a rank), the score table (G, K) (nan where
unknown) and the margin to per-prompt losses (G,). A pair of tied responses is not a preference: Bradley-Terry and
the pair metrics skip it; Plackett-Luce gives tied responses one denominator (Breslow, `losses.plackett_luce_loss`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rlhfkit.config import DataConfig, ModelConfig, OptimConfig, TrainConfig
from rlhfkit.data import TokenBatch, check_lengths, collate, detect_kind, load_train_eval, split_summary
from rlhfkit.data.packing import PrefixBatch, pack_groups
from rlhfkit.errors import RlhfkitError
from rlhfkit.losses import bradley_terry_loss, plackett_luce_loss
from rlhfkit.ops import masked_mean
from rlhfkit.reward.groups import Group, encode_groups
from rlhfkit.reward.model import RewardModel, load_reward_model, save_reward_model, supports_packing
from rlhfkit.reward.score import (encode_for_scoring, pair_report, reference_responses, reward_norm, score_encoded,
                                  score_groups)
from rlhfkit.tracking import Run, check_run_dir, say


@dataclass(frozen=True)
class RMConfig:
    """rlhfkit rm train: a reward model from pairwise preferences or K-way rankings."""

    data: DataConfig = field(default_factory=DataConfig)
    """Preferences or rankings (JSONL) and the length policy for prompt + response."""
    format: Literal["auto", "preferences", "rankings"] = "auto"
    """Record kind of data.train / data.eval; `auto` reads it from the first JSONL record."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(name="runs/sentiment-tiny/sft/model"))
    """Trunk: the SFT model directory (default), `tiny` (random), `smollm2`, any causal LM or encoder dir / id."""
    loss: Literal["bt", "pl"] = "bt"
    """`bt`: Bradley-Terry, mean over the C(K,2) pairs of each prompt (tied pairs skipped); `pl`: Plackett-Luce
    listwise (ties: Breslow)."""
    margin: float = 0.0
    """Bradley-Terry margin per score point: m = margin * max(0, score_chosen - score_rejected), the scores being a
    ranking's `scores` (else `likert`) or a preference's `score_chosen` / `score_rejected`; 0: none."""
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
    its position within the group (0 = first, best), its rank (0 = best; tied responses share one) and its
    score (nan when absent), all (N,).
    shared_prefix: a padding-free PrefixBatch instead (each group's prompt once, then its K responses; groups
    share rows no wider than the widest group); extras["rank"] and extras["score"] are then (B, K) best-first
    tables (rank K and nan where a group has no response)."""
    if shared_prefix:
        batch = pack_groups([g.examples for g in groups], pad_id, row_tokens=0)
        K = batch.lengths.shape[0]
        batch.extras["rank"] = torch.tensor(
            [[g.ranks[k] if k < len(g.ranks) else K for k in range(K)] for g in groups])  # (B, K)
        batch.extras["score"] = torch.tensor(
            [[g.scores[k] if g.scores and k < len(g.scores) else math.nan for k in range(K)] for g in groups],
            dtype=torch.float32)  # (B, K)
        return batch
    batch = collate([e for g in groups for e in g.examples], pad_id, "right")
    batch.extras["group"] = torch.tensor([gi for gi, g in enumerate(groups) for _ in g.examples])  # (N,)
    batch.extras["position"] = torch.tensor([k for g in groups for k in range(len(g.examples))])  # (N,)
    batch.extras["rank"] = torch.tensor([r for g in groups for r in g.ranks])  # (N,)
    batch.extras["score"] = torch.tensor(
        [g.scores[k] if g.scores else math.nan for g in groups for k in range(len(g.examples))],
        dtype=torch.float32)  # (N,)
    return batch


def group_table(values: torch.Tensor, group: torch.Tensor,
                position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter per-response values (N,) into a best-first table (G, K) and its mask (G, K) bool: value n goes
    to row group[n], column position[n]; cells no response fills are 0 (False in the mask)."""
    G, K = int(group.max()) + 1, int(position.max()) + 1
    table = values.new_zeros((G, K)).index_put((group, position), values)  # (G, K), keeps the gradient
    mask = torch.zeros((G, K), dtype=torch.bool, device=values.device).index_put(
        (group, position), torch.ones_like(group, dtype=torch.bool))  # (G, K)
    return table, mask


# ------------------------------------------------------------------------------------------------- losses
RankingLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor]  # (G,)


def default_ranks(mask: torch.Tensor) -> torch.Tensor:
    """(G, K) ranks of a table without ties: each column's index, 0 = best."""
    return torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)


def _pairs(mask: torch.Tensor, ranks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns i < j of every pair of a best-first table (C,) each, and the pair mask (G, C): both responses
    real and ranked apart (a tied pair is no preference)."""
    K = mask.shape[1]
    i, j = torch.triu_indices(K, K, offset=1, device=mask.device)  # (C,) each: every pair, better first
    return i, j, mask[:, i] & mask[:, j] & (ranks[:, i] < ranks[:, j])


def bradley_terry_ranking_loss(rewards: torch.Tensor, mask: torch.Tensor, ranks: torch.Tensor,
                               scores: torch.Tensor | None, margin: float) -> torch.Tensor:
    """Bradley-Terry averaged over each prompt's valid pairs i < j of different rank; scores gives the margin.
    -> (G,)."""
    i, j, pair_mask = _pairs(mask, ranks)
    pair_margin = None
    if margin and scores is not None:
        pair_margin = margin * (scores[:, i] - scores[:, j]).nan_to_num(0.0).clamp(min=0.0)  # (G, C)
    return masked_mean(bradley_terry_loss(rewards[:, i], rewards[:, j], pair_margin), pair_mask, dim=-1)  # (G,)


RANKING_LOSSES: dict[str, RankingLoss] = {
    "bt": bradley_terry_ranking_loss,
    "pl": lambda rewards, mask, ranks, scores, margin: plackett_luce_loss(rewards, mask, ranks),
}


@torch.no_grad()
def _pair_metrics(rewards: torch.Tensor, mask: torch.Tensor, ranks: torch.Tensor) -> dict[str, float]:
    """Mean rewards of the better / worse side, accuracy (equal rewards count half) and margin over all valid
    pairs (tied responses are no pair)."""
    i, j, pair_mask = _pairs(mask, ranks)
    chosen, rejected = rewards[:, i], rewards[:, j]  # (G, C)
    gap = chosen - rejected  # (G, C)
    right = (gap > 0).float() + 0.5 * (gap == 0).float()  # (G, C)
    return {"rewards/chosen": float(masked_mean(chosen, pair_mask)),
            "rewards/rejected": float(masked_mean(rejected, pair_mask)),
            "rewards/accuracy": float(masked_mean(right, pair_mask)),
            "rewards/margin": float(masked_mean(gap, pair_mask))}


def ranking_losses(
    rewards: torch.Tensor, mask: torch.Tensor, loss: str = "bt", scores: torch.Tensor | None = None,
    margin: float = 0.0, ranks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-prompt loss (G,) from a best-first reward table (G, K) with mask (G, K); see the package docstring.

    `loss` names an entry of RANKING_LOSSES (`bt`: Bradley-Terry averaged over each prompt's valid pairs i < j
    of different rank; `pl`: Plackett-Luce, ties by Breslow). scores (G, K), nan where unknown, gives the
    margin. ranks (G, K): 0 = best, tied responses share one; None: no ties (each column its own rank).
    Metrics are over all valid pairs (equal rewards count half in the accuracy).
    """
    if loss not in RANKING_LOSSES:
        raise ValueError(f"unknown reward-model loss {loss!r}; expected {' or '.join(map(repr, RANKING_LOSSES))}")
    ranks = default_ranks(mask) if ranks is None else ranks
    losses = RANKING_LOSSES[loss](rewards, mask, ranks, scores, margin)  # (G,)
    return losses, _pair_metrics(rewards, mask, ranks)


def reward_table(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, ...]:
    """Rewards of a batch of groups as best-first tables: rewards (G, K), mask (G, K) bool, ranks (G, K) long,
    scores (G, K)."""
    rewards = model(batch)
    if isinstance(batch, PrefixBatch):  # (K, G): side k of group g
        return (rewards.T, (batch.lengths > 0).T, batch.extras["rank"],
                batch.extras["score"].to(rewards.dtype))
    group, position = batch.extras["group"], batch.extras["position"]
    table, mask = group_table(rewards, group, position)  # (G, K)
    ranks, _ = group_table(batch.extras["rank"], group, position)  # (G, K)
    scores, _ = group_table(batch.extras["score"].to(rewards.dtype), group, position)  # (G, K)
    return table, mask, ranks, scores


def reward_objective(loss: str = "bt", margin: float = 0.0) -> Callable[[Any, TokenBatch | PrefixBatch], tuple]:
    """The objective `loop.fit` minimises: each response scored once, pairs formed from the K rewards."""

    def objective(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, dict[str, float]]:
        table, mask, ranks, scores = reward_table(model, batch)  # (G, K) each
        losses, metrics = ranking_losses(table, mask, loss, scores, margin, ranks)  # (G,)
        return losses.mean(), metrics

    return objective


# -------------------------------------------------------------------------------------------------- stage
def _check_margin(cfg: RMConfig, groups: Sequence[Group]) -> None:
    if cfg.margin < 0:
        raise RlhfkitError(f"--margin must be >= 0, got {cfg.margin}")
    if cfg.margin and cfg.loss != "bt":
        raise RlhfkitError("--margin applies to the Bradley-Terry loss only (--loss bt)")
    if cfg.margin and not any(g.scores for g in groups):
        raise RlhfkitError("--margin needs scores in the training data (a ranking's 'likert' or 'scores', a "
                           "preference's 'score_chosen' and 'score_rejected'); it has none")


def _norm_for(cfg: RMConfig, model: Any, tokenizer: Any, held_rewards: list[list[float]], train: list[Group],
              batch_size: int, reference: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Reward mean/std over the reference file's (prompt, response) pairs (`reference`, read from
    cfg.norm_reference), else the held-out responses, else the training responses."""
    pad = tokenizer.pad_token_id
    if reference is not None:
        encoding = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}
        examples = [encode_for_scoring(tokenizer, p, r, encoding) for p, r in reference]
        return reward_norm(score_encoded(model, examples, pad, batch_size), cfg.norm_reference)
    if held_rewards:
        return reward_norm([r for g in held_rewards for r in g], "held-out responses")
    return reward_norm([r for g in score_groups(model, train, pad, batch_size) for r in g], "training responses")


def run_rm_train(cfg: RMConfig) -> dict[str, Any]:
    """Train, evaluate on held-out pairs, measure the normalisation, save; returns a summary."""
    from rlhfkit.loop import fit, make_accelerator
    from rlhfkit.models import check_context

    check_lengths(cfg.data)
    if not cfg.data.train:
        raise RlhfkitError("no training data: pass --data.train FILE (preferences or rankings JSONL)")
    check_run_dir(cfg.out, cfg.train.resume)  # a used or unwritable --out is refused before anything is read
    kind = detect_kind(cfg.data.train, ("preferences", "rankings"), cfg.format, columns=cfg.data.columns)
    train_recs, eval_recs = load_train_eval(cfg.data, kind, cfg.train.seed)  # held out by prompt
    reference = reference_responses(cfg.norm_reference) if cfg.norm_reference else None  # read before training
    accelerator = make_accelerator(cfg.train)
    model, tokenizer = load_reward_model(cfg.model, cfg.train.seed)
    train, stats = encode_groups(tokenizer, train_recs, cfg.data)
    held, held_stats = encode_groups(tokenizer, eval_recs, cfg.data)
    check_context(model, (e for g in train + held for e in g.examples), cfg.data.max_length)
    if not train:
        raise RlhfkitError(f"no training {kind} left after encoding ({stats.as_dict()})")
    _check_margin(cfg, train)
    run = Run(cfg.out, cfg, is_main=accelerator.is_main_process)  # after every check: a refusal leaves no run
    split = split_summary(train_recs, eval_recs)
    say(f"rm: {len(train)} records of {split['train_prompts']} prompts / {sum(len(g.examples) for g in train)} "
        f"responses to train on ({stats.truncation.summary()}; {stats.duplicates} repeated responses, "
        f"{stats.too_few} records with < 2 responses and {stats.all_tied} with every response tied dropped), "
        f"{len(held)} records of {split['eval_prompts']} prompts held out")
    pad = tokenizer.pad_token_id
    shared = cfg.shared_prefix and supports_packing(model)
    encoding = {"max_length": cfg.data.max_length, "max_prompt_length": cfg.data.max_prompt_length}
    model.config.rlhfkit_encoding = encoding  # snapshots carry the training lengths too
    rm = RewardModel(model)
    result = fit(reward_objective(cfg.loss, cfg.margin), rm, train, lambda gs: collate_groups(gs, pad, shared),
                 cfg.train, cfg.optim, run, accelerator, eval_examples=held or None, tokenizer=tokenizer)
    model = accelerator.unwrap_model(rm).model
    held_rewards = score_groups(model, held, pad, cfg.train.batch_size) if held else []
    report = pair_report(held_rewards, cfg.calibration_bins, [g.ranks for g in held])
    norm = _norm_for(cfg, model, tokenizer, held_rewards, train, cfg.train.batch_size, reference)
    summary = {"step": result.step, "planned_steps": result.planned_steps, "status": result.status,
               "held_out": report, "reward_norm": norm,
               "data": {"kind": kind, "train": stats.as_dict(), "eval": held_stats.as_dict(),
                        "split": split},
               "tokens_per_s": result.tokens_per_second, "seconds": result.seconds, "model": str(run.dir / "model")}
    if accelerator.is_main_process:
        save_reward_model(model, tokenizer, run.dir / "model", norm, encoding)
        run.write_json("summary.json", summary)
    run.close()
    return summary
