"""K epochs of clipped minibatch updates on one batch of scored rollouts (PPO's optimisation phase)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from rlhfkit import losses, ops
from rlhfkit.errors import TrainingDiverged

if TYPE_CHECKING:
    from rlhfkit.ppo.config import PPOConfig


def minibatches(n: int, size: int, seed: int) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into chunks of `size` (the last one may be shorter)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return list(perm.split(size))


@dataclass
class Experience:
    """One batch of scored rollouts, ready for K epochs of updates. N completions, T = P + A tokens."""

    input_ids: torch.Tensor  # (N, T)
    attention_mask: torch.Tensor  # (N, T)
    P: int
    A: int
    mask: torch.Tensor  # (N, A) response tokens incl. EOS
    old_logprobs: torch.Tensor  # (N, A)
    old_values: torch.Tensor | None  # (N, A)
    advantages: torch.Tensor  # (N, A)
    returns: torch.Tensor | None  # (N, A)
    eos_id: int | None = None  # forbidden at response steps < cfg.min_new_tokens in every training forward


def training_forward(module: Any, exp: Experience, idx: torch.Tensor, cfg: PPOConfig) -> tuple:
    """The rows `idx` through the policy (with autograd): (logprobs (b, A), values (b, A) or None, per-token
    entropy (b, A) detached), under the sampling distribution."""
    return module(exp.input_ids[idx], exp.attention_mask[idx], exp.P, exp.A, cfg.temperature, cfg.min_new_tokens,
                  exp.eos_id)


def minibatch_loss(module: Any, exp: Experience, idx: torch.Tensor, cfg: PPOConfig, forward: tuple | None = None
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy loss (+ vf_coef * clipped value loss) on the rows `idx`, token-averaged.
    forward: this minibatch's (logprobs, values) when already computed with their graph (see policy_logprobs,
    `training_forward`)."""
    mask = exp.mask[idx]  # (b, A)
    logps, values = (forward or training_forward(module, exp, idx, cfg))[:2]
    pg, metrics = losses.ppo_policy_loss(logps, exp.old_logprobs[idx], exp.advantages[idx], mask, cfg.clip_range)
    policy_loss = ops.masked_mean(pg, mask)
    metrics = dict(metrics, **{"ppo/policy_loss": policy_loss.detach(),
                               "ppo/ratio_dev_max": ((logps - exp.old_logprobs[idx]).abs() * mask).max().detach()})
    if values is None:
        return policy_loss, metrics
    vf, vf_metrics = losses.ppo_value_loss(values, exp.old_values[idx], exp.returns[idx], mask,
                                           cfg.value_clip_range)
    value_loss = ops.masked_mean(vf, mask)
    metrics.update(vf_metrics, **{"ppo/value_loss": value_loss.detach()})
    return policy_loss + cfg.vf_coef * value_loss, metrics


def ptx_loss(module: Any, batch: Any) -> torch.Tensor:
    """Mean next-token NLL on a right-padded corpus batch, through the same module (so DDP sees it):
    the 'response' is every token after the first."""
    T = batch.input_ids.shape[1]
    logps, _, _ = module(batch.input_ids, batch.attention_mask, 1, T - 1)  # (B, T - 1)
    nll, n = losses.sft_loss(logps, batch.attention_mask[:, 1:])
    return nll.sum() / n.sum().clamp(min=1)


def train_epochs(module: Any, optimizer: Any, accelerator: Any, exp: Experience, epochs: list[list[torch.Tensor]],
                 cfg: PPOConfig, max_grad_norm: float | None, ptx_batches: Iterator | None = None,
                 first_forward: tuple | None = None, entropy_out: torch.Tensor | None = None
                 ) -> list[dict[str, float]]:
    """K epochs of minibatch updates; `epochs[k]` lists epoch k's minibatch rows. Returns per-update metrics
    (the first entry is the first minibatch, where the ratio must be 1). first_forward: the first minibatch's
    forward kept from the old-log-prob pass (None: recompute it). entropy_out: an (N, A) tensor that receives
    the per-token entropy of the first epoch's training forwards (each row once), for a step that had no
    old-log-prob pass to take it from; the rows of a supplied first_forward are left as they are."""
    history = []
    for k, chunks in enumerate(epochs):
        for j, idx in enumerate(chunks):
            idx = idx.to(exp.input_ids.device)
            if ptx_batches is not None:
                with accelerator.no_sync(module):  # grads accumulate; the PPO backward below syncs them
                    lm = ptx_loss(module, next(ptx_batches).to(exp.input_ids.device))
                    accelerator.backward(cfg.ptx.coef * lm)
            kept = first_forward if k == j == 0 else None
            forward = kept or training_forward(module, exp, idx, cfg)
            if entropy_out is not None and k == 0 and kept is None:
                entropy_out[idx] = forward[2]  # (b, A), detached
            loss, metrics = minibatch_loss(module, exp, idx, cfg, forward)
            if not torch.isfinite(loss):
                raise TrainingDiverged("non-finite PPO loss; lower --optim.lr or check the reward scale")
            accelerator.backward(loss)
            if max_grad_norm is not None:
                accelerator.clip_grad_norm_(module.parameters(), max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            row = {k: float(v) for k, v in metrics.items()}
            if ptx_batches is not None:
                row["ppo/ptx_loss"] = float(lm.detach())
            history.append(row)
    return history
