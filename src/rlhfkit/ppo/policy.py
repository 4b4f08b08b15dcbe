"""The policy with its value head, and the log-probs one PPO step takes: old (policy), reference, entropy.

Every log-prob here is `rlhfkit.logprobs.response_forward` under the sampling distribution (temperature, EOS
forbidden before min_new_tokens), for the policy and pi_ref alike, so the shaped reward sees the true KL and
the first minibatch's importance ratio is exactly 1.
"""

from __future__ import annotations

from typing import Any

import torch

from rlhfkit.generation import Rollout
from rlhfkit.logprobs import Reference, response_forward
from rlhfkit.ops import entropy  # noqa: F401  (its home is ops; rlhfkit.ppo exports it)


class PolicyWithValue(torch.nn.Module):
    """The policy LM and (optionally) a scalar value head on its last hidden state, as one module."""

    def __init__(self, policy: Any, value_head: bool):
        super().__init__()
        self.policy = policy
        self.value_head = None
        if value_head:
            self.value_head = torch.nn.Linear(policy.config.hidden_size, 1)
            torch.nn.init.zeros_(self.value_head.weight)  # V = 0 at first: no arbitrary initial baseline
            torch.nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int, A: int,
                temperature: float = 1.0, min_new_tokens: int = 0, eos_id: int | None = None):
        return response_forward(self.policy, input_ids, attention_mask, P, A, temperature, self.value_head,
                                min_new_tokens, eos_id)


def make_reference(policy: Any) -> Any:
    """pi_ref's frozen weights: a copy of the initial policy, or None when the policy is a LoRA model (its base,
    adapter disabled, is the reference). `reference_logprobs` takes either, or a whole `Reference`."""
    return Reference.of(policy).frozen


def policy_logprobs(module: Any, rollout: Rollout, chunks: list[torch.Tensor], temperature: float, device: Any,
                    keep_first: bool = False, min_new_tokens: int = 0, eos_id: int | None = None):
    """Old log-probs (N, A), old values (N, A) or None, per-token entropy (N, A) and `first`, dropout off,
    computed on the same minibatch rows (`chunks`) and by the same forward as the first training epoch, under
    the sampling distribution (temperature, EOS forbidden at steps < min_new_tokens; see response_forward).

    keep_first: `first` is the first chunk's (logprobs, values) WITH their autograd graph (else None). The first
    minibatch of the first epoch is trained at exactly these parameters, so its training forward is this one (one
forward fewer per step; the ratio there is exp(0) = 1 by construction).
    """
    ids, attn = rollout.input_ids.to(device), rollout.attention_mask.to(device)
    P, A = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    N, has_values = ids.shape[0], getattr(module, "module", module).value_head is not None
    logps, ent = torch.zeros(N, A, device=device), torch.zeros(N, A, device=device)
    values = torch.zeros(N, A, device=device) if has_values else None
    first = None
    for k, idx in enumerate(chunks):
        idx = idx.to(device)
        with torch.set_grad_enabled(keep_first and k == 0):
            lp, v, token_entropy = module(ids[idx], attn[idx], P, A, temperature, min_new_tokens, eos_id)
        if keep_first and k == 0:
            first = (lp, v)
        with torch.no_grad():
            logps[idx] = lp.detach()
            ent[idx] = token_entropy  # (b, A), detached
            if values is not None:
                values[idx] = v.detach()
    return logps, values, ent, first


@torch.no_grad()
def reference_logprobs(module: Any, reference: Reference | Any, rollout: Rollout, chunks: list[torch.Tensor],
                       temperature: float, device: Any, min_new_tokens: int = 0, eos_id: int | None = None
                       ) -> torch.Tensor:
    """Log-probs (N, A) of the responses under pi_ref, under the same constrained distribution as the policy's
    (temperature, EOS forbidden at steps < min_new_tokens). `reference`: a `Reference`, or a bare frozen model
    (None: the LoRA policy inside `module` with its adapter disabled)."""
    if not isinstance(reference, Reference):
        reference = Reference(getattr(module, "module", module).policy, reference)
    ids, attn = rollout.input_ids.to(device), rollout.attention_mask.to(device)
    P, A = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    out = torch.zeros(ids.shape[0], A, device=device)
    with reference.model() as ref:
        for idx in chunks:
            idx = idx.to(device)
            out[idx] = response_forward(ref, ids[idx], attn[idx], P, A, temperature, None, min_new_tokens, eos_id)[0]
    return out
