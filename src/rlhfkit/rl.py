"""Pure RL math for RLHF with PPO (and the group baselines RLOO / GRPO). Imports only torch (and rlhfkit.ops).

Shapes: B batch, A response tokens; every (B, A) mask is a prefix of ones (the response, then padding).
References: Ziegler et al. 2019 "Fine-Tuning Language Models from Human Preferences" (reward shaping, adaptive
KL controller); Schulman et al. 2016 (GAE); Schulman, "Approximating KL Divergence" (2020,
http://joschu.net/blog/kl-approx.html) for the k1/k2/k3 estimators; Ahmadian et al. 2024 (RLOO);
Shao et al. 2024, DeepSeekMath (GRPO).

Departures from the papers:
- `grpo_advantages` divides by the unbiased (n - 1) group standard deviation, as TRL does; the paper does not
  say which. A group whose scores are all equal gets advantage 0.
- `gae` treats the token after the last real one as terminal (value 0): a response ends at EOS or at the
  length limit, and in both cases the RM score already closes the episode, so nothing is bootstrapped.
- `explained_variance` returns NaN when the returns have no variance, where the ratio is undefined.
"""

from __future__ import annotations

import torch

from rlhfkit.ops import masked_var

KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled by pi (Schulman's "Approximating KL").

    logprobs, ref_logprobs: (B, A) log-probs of the sampled tokens -> (B, A). With log_r = ref - logp:
      k1 = -log_r                    unbiased, high variance, can be negative per token
      k2 = 0.5 * log_r^2             biased, low variance (its gradient is the true KL gradient to first order)
      k3 = (exp(log_r) - 1) - log_r  unbiased, low variance, never negative
    """
    log_r = ref_logprobs - logprobs  # (B, A)
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def shape_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    estimator: str = "k1",
) -> torch.Tensor:
    """Per-token RLHF reward (Ziegler et al. 2019, eq. 2): -kl_coef * KL_t on every response token, plus the
    reward-model score on the last real token.

    scores: (B,); logprobs, ref_logprobs, mask: (B, A), mask a prefix of ones -> (B, A), 0 on padding.
    """
    mask = mask.to(logprobs.dtype)
    rewards = -kl_coef * kl_penalty(logprobs, ref_logprobs, estimator) * mask  # (B, A)
    lengths = mask.sum(-1).long()  # (B,)
    last = (lengths - 1).clamp(min=0)  # (B,)  the EOS (or truncation) index
    # An empty response has no token to carry its score, so it gets none rather than index -1.
    score = torch.where(lengths > 0, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))  # (B,)
    return rewards.scatter_add(1, last[:, None], score[:, None])


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16), run backwards over the response.

    rewards, values, mask: (B, A) -> (advantages, returns), both (B, A), 0 on padding.
        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},   returns = A + V
    V beyond the last real token is 0 (the episode ends there). Run under no_grad by the caller.
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask  # (B, A): padding contributes nothing
    advantages = torch.zeros_like(values)  # (B, A)
    next_value = torch.zeros_like(values[:, 0])  # (B,)
    next_advantage = torch.zeros_like(values[:, 0])  # (B,)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, advantages + values


def _groups(scores: torch.Tensor, group_size: int, minimum: int) -> torch.Tensor:
    if group_size < minimum or scores.numel() % group_size:
        raise ValueError(
            f"group_size={group_size} must be >= {minimum} and divide the {scores.numel()} scores "
            "(laid out as consecutive groups of samples of one prompt)"
        )
    return scores.view(-1, group_size)  # (N / G, G)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): score minus the mean score of the OTHER samples of the
    same prompt. scores: (N,), consecutive groups of `group_size` samples of one prompt -> (N,).
    """
    groups = _groups(scores, group_size, minimum=2)  # (N / G, G)
    others_mean = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)  # (N / G, G)
    return (groups - others_mean).reshape(-1)


def grpo_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage (Shao et al. 2024, outcome supervision): (score - group mean) / (group std + eps).

    scores: (N,), consecutive groups of `group_size` samples of one prompt -> (N,).
    """
    groups = _groups(scores, group_size, minimum=2)  # (N / G, G)
    mean = groups.mean(-1, keepdim=True)
    std = groups.std(-1, keepdim=True)  # unbiased, see the module docstring
    return ((groups - mean) / (std + eps)).reshape(-1)


class FixedKLController:
    """A constant KL coefficient beta; `update` does nothing (same interface as the adaptive one)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive beta (Ziegler et al. 2019, eq. 2.2): a proportional controller holding KL near `target`.

        error = clip(current_kl / target - 1, -0.2, 0.2);   beta *= 1 + error * n_steps / horizon

    n_steps is the number of samples (episodes) since the last update; horizon sets how fast beta moves.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var[R - V] / Var[R] over the masked tokens: 1 is a perfect value head, 0 is no better than a
    constant, negative is worse. values, returns, mask: (B, A) -> float (NaN when Var[R] is 0).
    """
    values, returns = values.detach().float(), returns.detach().float()
    var_returns = masked_var(returns, mask)
    if var_returns.item() == 0.0:
        return float("nan")
    return (1.0 - masked_var(returns - values, mask) / var_returns).item()
