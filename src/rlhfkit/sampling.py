"""The distribution a policy is sampled from: ONE definition, shared by the sampler and every log-prob.

`constrain_logits` gives the logits of what is sampled: logits / temperature, EOS forbidden (-inf) at response
steps < min_new_tokens, then top-p truncation. The sampler (`rlhfkit.generation`) draws from it, the Rollout's
`logprobs` are its renormalised log-probs, and every KL or PPO log-prob (`rlhfkit.logprobs`) applies it
identically to the policy and the reference. Otherwise a constraint that changes the distribution (e.g. a
forbidden EOS) is scored as if it did not exist, and KL(pi || pi_ref) comes out wrong.

Top-p and KL: a token inside the policy's nucleus can lie outside the reference's, where the reference's
truncated probability is 0 and KL(pi || pi_ref) is infinite. So top_p < 1 is refused wherever a KL or PPO
log-prob is needed (`check_sampling(..., needs_logprobs=True)`); it stays available for plain sampling,
best-of-N and win rates.

`Rollout` is what sampling returns: prompts LEFT-padded to P columns, responses RIGHT-padded to A columns, so
every response starts at column P of `cat(prompt_ids, response_ids)`; samples of one prompt are consecutive rows.

Imports only torch (and the error type): a bottom-floor module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit.errors import RlhfkitError


@dataclass
class Rollout:
    """Shapes: N = prompts * samples_per_prompt, P prompt columns, A response columns."""

    prompt_ids: torch.Tensor  # (N, P) left-padded
    prompt_mask: torch.Tensor  # (N, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (N, A) right-padded with pad
    response_mask: torch.Tensor  # (N, A) 1 on generated tokens up to and including EOS
    logprobs: torch.Tensor  # (N, A) sampled tokens' log-probs under constrain_logits (renormalised); 0 on padding
    ended: torch.Tensor  # (N,) bool: the response emitted EOS within the budget

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)  # (N, P + A)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)  # (N, P + A)

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(-1)  # (N,)


@dataclass(frozen=True)
class SamplingConfig:
    """How completions are sampled: every command that samples reads these fields from one of these."""

    max_new_tokens: int = 24
    """Longest completion in tokens."""
    min_new_tokens: int = 0
    """Forbid EOS before this many tokens (= max_new_tokens: fixed-length completions)."""
    temperature: float = 1.0
    """Sampling temperature > 0; the KL compares both models at this temperature."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off); reward-kl refuses < 1 (infinite KL), win-rate accepts it."""
    samples_per_prompt: int = 1
    """Completions drawn per prompt (standard errors are clustered by prompt)."""
    batch_size: int = 256
    """Sequences per generation batch (256: measured fastest on 2 CPU cores, 400 prompts x 24 tokens)."""

    def constraint(self, eos_id: int | None) -> dict[str, Any]:
        """The keyword arguments of `constrain_logits` (and every log-prob function) for this distribution."""
        return {"temperature": self.temperature, "top_p": self.top_p, "min_new_tokens": self.min_new_tokens,
                "eos_id": eos_id}


def check_sampling(temperature: float, top_p: float, needs_logprobs: bool = False) -> None:
    """Refuse sampling settings that cannot work, with one clear line (RlhfkitError).

    needs_logprobs: the caller also scores samples by log-probs (a KL to a reference, PPO), which rules out
    greedy decoding (a point mass: no log-probs to compare) and top_p < 1 (see the module docstring).
    """
    if not temperature >= 0:  # also catches NaN
        raise RlhfkitError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise RlhfkitError(f"top_p must be in (0, 1] (1: off), got {top_p}")
    if not needs_logprobs:
        return
    if temperature == 0:
        raise RlhfkitError("temperature 0 (greedy decoding) has no sampling distribution, so a KL to the reference "
                           "or a PPO log-prob is undefined; use temperature > 0 (1: the policy's own distribution)")
    if top_p < 1:
        raise RlhfkitError(f"top_p {top_p} cannot be used where a KL to the reference is measured (PPO, eval "
                           "reward-kl): a sampled token outside the reference's nucleus has probability 0 under "
                           "it, so the KL is infinite; use top_p 1 (temperature and min_new_tokens still apply)")


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability reaches top_p (nucleus sampling). (..., V)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cum = sorted_logits.softmax(-1).cumsum(-1)
    remove = cum - sorted_logits.softmax(-1) >= top_p  # drop a token once the mass before it reaches top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def constrain_logits(logits: torch.Tensor, step: int | torch.Tensor, *, temperature: float = 1.0,
                     top_p: float = 1.0, min_new_tokens: int = 0, eos_id: int | None = None) -> torch.Tensor:
    """The logits of the distribution we sample from: THE one definition (see the module docstring).

    logits: (..., V) fp32 raw next-token logits. step: the response-token index each row predicts, an int or an
    integer tensor broadcastable to logits[..., 0] (e.g. (A,) for a whole response). Returns (..., V):
    logits / temperature (temperature 0, greedy, leaves them unscaled: argmax is all that is used), EOS set to
    -inf where step < min_new_tokens, then top-p truncation (-inf outside the nucleus). `log_softmax` of the
    result is the constrained, renormalised log-prob. Pure: the input is never modified.
    """
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if eos_id is not None and min_new_tokens > 0:
        forbid = torch.as_tensor(step, device=logits.device) < min_new_tokens  # broadcasts to logits[..., 0]
        is_eos = torch.arange(logits.shape[-1], device=logits.device) == eos_id  # (V,)
        logits = logits.masked_fill(forbid[..., None] & is_eos, float("-inf"))
    return _top_p_filter(logits, top_p)  # after the EOS mask: the nucleus is taken of what may be sampled
