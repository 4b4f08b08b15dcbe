"""Pure losses for every stage. Imports only torch (and rlhfkit.ops).

Each function returns per-example (or per-token) losses; the caller chooses how to reduce them over the batch.
Diagnostics are detached. Shape vocabulary: B batch, T tokens, A response tokens, K responses per prompt.

Token log-probs come from `rlhfkit.ops.token_logprobs`: (B, T-1), entry t-1 is log p(token t | tokens < t),
so the matching mask is `loss_mask[:, 1:]`. Sequence log-probs (B,) are their masked sums.

Departures from the papers:
- `ipo_loss` scores the implicit rewards as tau * log(pi / pi_ref) so they are comparable with DPO's beta-scaled
  rewards; Azar et al. (2023) define no implicit reward.
- `unlikelihood_loss` averages each term over its tokens (Welleck et al. 2019 sum over tokens); averaging keeps
  the chosen and rejected terms on one scale when the responses have different lengths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.ops import masked_mean, masked_sum


def sft_loss(token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token negative log-likelihood over the masked (response) tokens.

    token_logps: (B, T-1) from `ops.token_logprobs`; mask: (B, T-1), i.e. loss_mask[:, 1:].
    Returns (nll_sum, n_tokens), both (B,): the summed NLL and the number of counted tokens per example.

    The batch loss is token-weighted, as in standard SFT: nll_sum.sum() / n_tokens.sum() — every response token
    counts once, so long responses weigh more than short ones. Returning the two sums (rather than a mean)
    lets the caller accumulate them over gradient-accumulation steps and divide once.
    """
    nll_sum = -masked_sum(token_logps, mask, dim=-1)  # (B,)
    n_tokens = mask.to(token_logps.dtype).sum(-1)  # (B,)
    return nll_sum, n_tokens


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Pairwise reward-model loss  -log sigma(r(x, y_w) - r(x, y_l) - margin)  (InstructGPT eq. 1).

    chosen_rewards, rejected_rewards: (B,); margin: (B,) or None (Llama 2's margin term) -> (B,).
    logsigmoid keeps the value and gradient finite for any gap.
    """
    gap = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        gap = gap - margin
    return -F.logsigmoid(gap)


def plackett_luce_loss(rewards: torch.Tensor, mask: torch.Tensor | None = None,
                       ranks: torch.Tensor | None = None) -> torch.Tensor:
    """Listwise ranking loss  -sum_k log( exp r_k / sum_{j: rank_j >= rank_k} exp r_j )  (Plackett-Luce; DPO
    paper app. A.3), with ties handled by Breslow's approximation (as in the Cox partial likelihood).

    rewards: (B, K); mask: (B, K) bool, True for the responses a row really has; ranks: (B, K) integers, 0 =
    best, tied responses share a rank. ranks=None: the row's order, best first (ranks 0..K-1). Returns (B,).

    A response's denominator holds every response ranked at or below it, so tied responses share one. Without
    ties this is the Plackett-Luce likelihood (the last response's term is 0; for K = 2 it is Bradley-Terry).
    A tie of d responses costs at least d * log d, reached when their rewards are equal and every lower-ranked
    reward is far below: the loss pulls tied rewards together as well as above the responses they beat.
    """
    K = rewards.shape[-1]
    if mask is None:
        mask = torch.ones_like(rewards, dtype=torch.bool)
    mask = mask.bool()
    if ranks is None:
        ranks = torch.arange(K, device=rewards.device).expand(rewards.shape)
    # Padding gets the most negative finite value: exp() makes it vanish from every sum without the
    # -inf - -inf = nan that a true -inf would produce (and then leak into gradients).
    filled = torch.where(mask, rewards, torch.finfo(rewards.dtype).min)  # (B, K)
    # risk[b, k, j]: response j counts in the denominator of response k (ranked at or below it, and real)
    risk = (ranks[:, None, :] >= ranks[:, :, None]) & mask[:, None, :]  # (B, K, K)
    at_or_below = filled[:, None, :].expand(-1, K, -1)  # (B, K, K)
    denominators = torch.where(risk, at_or_below, torch.finfo(rewards.dtype).min).logsumexp(-1)  # (B, K)
    log_probs = torch.where(mask, filled - denominators, torch.zeros_like(filled))  # (B, K)
    return -log_probs.sum(-1)


def _logratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps):
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)  log pi(y_w)/pi_ref(y_w)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    return chosen_logratios, rejected_logratios


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7), optionally conservative.

    All inputs are sequence log-probs (B,) of the chosen (y_w) and rejected (y_l) responses under the policy
    and the frozen reference. With logits = beta * [(pi_w - ref_w) - (pi_l - ref_l)]:

        losses = -(1 - eps) * log sigma(logits) - eps * log sigma(-logits)

    eps = label_smoothing > 0 is conservative DPO (cDPO): the label is assumed flipped with probability eps.
    Returns (losses, chosen_rewards, rejected_rewards), all (B,); the implicit rewards beta * log(pi / pi_ref)
    are detached.
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    logits = beta * (chosen_logratios - rejected_logratios)  # (B,)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    tau: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity Preference Optimization (Azar et al. 2023, eq. 17):  (h - 1 / (2 tau))^2  with
    h = (pi_w - ref_w) - (pi_l - ref_l), the unscaled difference of log-ratios.

    Unlike DPO the loss is a regression to a finite margin 1/(2 tau), so it stops pushing once the pair is
    separated by that much (and pushes back if it overshoots). Inputs are sequence log-probs (B,).
    Returns (losses, chosen_rewards, rejected_rewards), all (B,); the rewards tau * log(pi / pi_ref) are our
    choice (see the module docstring) and are detached.
    """
    chosen_logratios, rejected_logratios = _logratios(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    h = chosen_logratios - rejected_logratios  # (B,)
    losses = (h - 1 / (2 * tau)) ** 2
    return losses, tau * chosen_logratios.detach(), tau * rejected_logratios.detach()


def preferred_ft_loss(chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor) -> torch.Tensor:
    """Preferred-FT baseline (DPO paper sec. 6): SFT on y_w only. Mean NLL over the chosen tokens.

    chosen_token_logps: (B, T-1) from `ops.token_logprobs`; chosen_mask: (B, T-1) response mask -> (B,).
    """
    return masked_mean(-chosen_token_logps, chosen_mask, dim=-1)


def unlikelihood_loss(
    chosen_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    rejected_mask: torch.Tensor,
    alpha: float = 1.0,
) -> torch.Tensor:
    """Unlikelihood baseline (Welleck et al. 2019; DPO paper sec. 6): raise p(y_w), lower p(y_l).

    With p_t the model's probability of token t and M the masks:

        loss = -(1 / |M_w|) sum_{t in M_w} log p_t(y_w)  -  alpha * (1 / |M_l|) sum_{t in M_l} log(1 - p_t(y_l))

    Token log-probs (B, T-1) from `ops.token_logprobs`, masks (B, T-1) -> (B,). log(1 - p) is computed as
    log1p(-exp(logp)) with logp clamped to at most -1e-6, so a rejected token with p = 1 costs ~13.8 nats
    instead of infinity (and gives no gradient, as a clamp does).
    """
    chosen_nll = masked_mean(-chosen_token_logps, chosen_mask, dim=-1)  # (B,)
    rejected_logps = rejected_token_logps.clamp(max=-1e-6)  # (B, T-1)
    log_one_minus_p = torch.log1p(-torch.exp(rejected_logps))  # (B, T-1)
    return chosen_nll - alpha * masked_mean(log_one_minus_p, rejected_mask, dim=-1)


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), per token, as a loss to minimise.

    logprobs: (B, A) under the policy being trained; old_logprobs: (B, A) from the rollout policy;
    advantages: (B, A); mask: (B, A), 1 on real response tokens.

        ratio = exp(logprobs - old_logprobs)
        losses = max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)),  0 where mask is 0

    Metrics (detached scalars over masked tokens): `ppo/clipfrac` — fraction of tokens where the clipped branch
    is the larger one (so the token gives no gradient); `ppo/approx_kl` — mean of 0.5 * (logp - old)^2;
    `ppo/ratio_mean`.
    """
    log_ratio = logprobs - old_logprobs  # (B, A)
    ratio = torch.exp(log_ratio)  # (B, A)
    unclipped = -advantages * ratio  # (B, A)
    clipped = -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)  # (B, A)
    losses = torch.maximum(unclipped, clipped) * mask.to(unclipped.dtype)
    with torch.no_grad():
        metrics = {
            "ppo/clipfrac": masked_mean((clipped > unclipped).float(), mask),
            "ppo/approx_kl": masked_mean(0.5 * log_ratio**2, mask),
            "ppo/ratio_mean": masked_mean(ratio, mask),
        }
    return losses, metrics


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 0.2,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (as in OpenAI baselines / lm-human-preferences), per token.

    values: (B, A) from the value head being trained; old_values: (B, A) from the rollout; returns: (B, A)
    GAE returns; mask: (B, A).

        losses = 0.5 * max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2),  0 where mask is 0

    Metric `ppo/vf_clipfrac` (detached): masked fraction of tokens where the clipped error is the larger one.
    """
    clipped_values = torch.maximum(torch.minimum(values, old_values + clip_range), old_values - clip_range)
    unclipped_err = (values - returns) ** 2  # (B, A)
    clipped_err = (clipped_values - returns) ** 2  # (B, A)
    losses = 0.5 * torch.maximum(unclipped_err, clipped_err) * mask.to(values.dtype)
    with torch.no_grad():
        metrics = {"ppo/vf_clipfrac": masked_mean((clipped_err > unclipped_err).float(), mask)}
    return losses, metrics
