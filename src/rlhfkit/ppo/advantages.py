"""Advantage estimators, by name: GAE with a learned value (PPO) or the value-free RLOO / GRPO group baselines.

Each estimator maps shaped per-token rewards (N, A) (`rl.shape_rewards`: -beta * KL_t, score on the EOS token),
old values (N, A) or None, the response mask (N, A) and the group size to token advantages (N, A) and GAE
returns (N, A) (None without a value head). The value-free estimators use the sequence reward
sum_t r_t = score - beta * sum_t KL_t, subtract the group baseline and broadcast it to every response token;
samples of one prompt are consecutive rows. Adding one is a pure function in `rl.py` and an entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhfkit import ops, rl

Advantages = tuple[torch.Tensor, "torch.Tensor | None"]


def gae_advantages(rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor, group_size: int,
                   gamma: float, lam: float, whiten: bool) -> Advantages:
    """GAE(gamma, lambda) from the value head's V(s_t); advantages whitened over the batch's response tokens."""
    advantages, returns = rl.gae(rewards, values, mask, gamma, lam)  # (N, A), (N, A)
    return (ops.masked_whiten(advantages, mask) if whiten else advantages), returns


def group_baseline(baseline: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[..., Advantages]:
    """A value-free estimator from a group baseline (sequence rewards (N,), group size) -> advantages (N,)."""

    def estimator(rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor, group_size: int,
                  gamma: float, lam: float, whiten: bool) -> Advantages:
        sequence_reward = (rewards * mask).sum(-1)  # (N,)
        adv = baseline(sequence_reward, group_size)  # (N,)
        if whiten:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8) if adv.numel() > 1 else adv
        return adv[:, None] * mask, None  # (N, A)

    return estimator


@dataclass(frozen=True)
class AdvantageEstimator:
    """How advantages are computed, and what that needs: a value head; at least this many samples per prompt."""

    compute: Callable[..., Advantages]
    value_head: bool
    min_group_size: int = 1


ADVANTAGE_ESTIMATORS: dict[str, AdvantageEstimator] = {
    "gae": AdvantageEstimator(gae_advantages, value_head=True),
    "rloo": AdvantageEstimator(group_baseline(rl.rloo_advantages), value_head=False, min_group_size=2),
    "grpo": AdvantageEstimator(group_baseline(rl.grpo_advantages), value_head=False, min_group_size=2),
}


def compute_advantages(method: str, rewards: torch.Tensor, values: torch.Tensor | None, mask: torch.Tensor,
                       group_size: int, gamma: float, lam: float, whiten: bool) -> Advantages:
    """Token advantages (N, A) and GAE returns (N, A) (None for the value-free estimators) by `method`."""
    return ADVANTAGE_ESTIMATORS[method].compute(rewards, values, mask.to(rewards.dtype), group_size, gamma, lam,
                                                whiten)
