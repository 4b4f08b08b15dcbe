"""Response log-probs of every batch shape, the reference policy pi_ref, and eval mode: their one home.

Three batch shapes reach a log-prob, each with one function here:

    TokenBatch   right-padded rows (DPO pairs as 2B rows, SFT)           `batch_token_logprobs`
    PrefixBatch  one row per pair / ranking, the prompt laid out once    `packed_token_logprobs`
    Rollout      left-padded prompts + right-padded sampled responses    `response_forward`, `response_logprobs`

`ops.token_logprobs` is the one place logits are shifted against labels (packed rows gather at explicit scoring
columns instead: there the token t-1 of a side is not the column before t). Only the positions that score a
response go through the LM head (`logits_to_keep`), so prompt tokens never reach it.

Each function has two paths that agree to fp32 rounding: the chunked LM head (`rlhfkit.lmhead`: final hidden
states, then log-probs of the scored positions only, a chunk at a time, no (rows, positions, V) logits in
memory), where `lmhead.head_for` allows it, and the plain one (the model's logits, then `ops.token_logprobs`).

Rollout log-probs are those of the distribution the samples came from (`rlhfkit.sampling.constrain_logits`:
temperature, EOS forbidden before min_new_tokens, top-p), applied identically to policy and reference; with the
defaults it is the model's raw distribution.

`Reference` is pi_ref for every stage: a frozen copy of the initial model, or the policy itself with its LoRA
adapter disabled (no second model in memory). DPO's cached reference log-probs (`rlhfkit.dpo.refcache`) are
computed through it once. `eval_mode` turns dropout off for a block and restores the previous mode after.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit import lmhead, ops
from rlhfkit.data.collate import TokenBatch
from rlhfkit.data.packing import PrefixBatch
from rlhfkit.sampling import Rollout, constrain_logits


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[Any]:
    """Dropout off for the duration (log-probs must be deterministic), the previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _dtype(model: Any) -> torch.dtype:
    return next(p for p in model.parameters()).dtype


# ------------------------------------------------------------------------------------------- right-padded rows
def batch_token_logprobs(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Token log-probs of a right-padded batch from the first response position on.

    Returns (token_logps, mask), both (N, K-1) with K = T - s + 1, s = the earliest response column: the LM
    head runs only on the last K positions (`logits_to_keep`). A PrefixBatch of B groups of G gives (G*B, L)
    rows in the same order as the unpacked batch (side 0's B rows first).
    """
    if isinstance(batch, PrefixBatch):
        token_logps, mask = packed_token_logprobs(model, batch)  # (G, B, L)
        return token_logps.flatten(0, 1), mask.flatten(0, 1)
    first = max(1, int(batch.loss_mask.argmax(-1).min()))  # earliest response column s (token 0 is never scored)
    keep = batch.input_ids.shape[1] - first + 1
    mask = batch.loss_mask[:, -keep + 1 :]  # (N, K-1)
    head = lmhead.head_for(model)
    if head is not None:
        hidden, _ = lmhead.final_hidden(model, input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        start = batch.input_ids.shape[1] - keep  # column s - 1 predicts token s
        return lmhead.shifted_logprobs(hidden, head, batch.input_ids, start, mask.bool())[0], mask
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, logits_to_keep=keep,
                   use_cache=False).logits  # (N, K, V); no KV cache to build in a full-sequence pass
    ids = batch.input_ids[:, -keep:]  # (N, K): the tokens whose positions produced the kept logits
    return ops.token_logprobs(logits, ids), mask  # (N, K-1), (N, K-1)


def batch_sequence_logprobs(model: Any, batch: TokenBatch | PrefixBatch) -> torch.Tensor:
    """(N,) summed log-probs of the response tokens of a batch (PrefixBatch: G*B, side 0's rows first)."""
    token_logps, mask = batch_token_logprobs(model, batch)
    return ops.masked_sum(token_logps, mask, dim=-1)


# ----------------------------------------------------------------------------------------------- packed rows
def packed_hidden_states(model: Any, batch: PrefixBatch) -> torch.Tensor:
    """(B, T, H) last hidden states of a packed batch; `model` is a base model (no LM or score head)."""
    out = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                attention_mask=batch.attention_bias(_dtype(model)), use_cache=False)
    return out.last_hidden_state


def packed_token_logprobs(model: Any, batch: PrefixBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of every side of a packed batch, in fp32: (G, B, L) and its loss mask (G, B, L).

    `model` is a causal LM. The LM head runs only on columns from the earliest scoring column on
    (`logits_to_keep`); each kept column's log-normaliser is computed once, even when it scores two sides (the
    chunked head computes the last prefix column's once per side).
    """
    bias = batch.attention_bias(_dtype(model))  # (B, 1, T, T)
    head = lmhead.head_for(model)
    if head is not None:
        hidden, _ = lmhead.final_hidden(model, input_ids=batch.input_ids, position_ids=batch.position_ids,
                                        attention_mask=bias)  # (B, T, H)
        rows = batch.rows[None, :, None].expand_as(batch.score_cols)  # (G, B, L): the row holding each group
        logps, _ = lmhead.scored_logprobs(hidden, head, rows, batch.score_cols, batch.targets,
                                          batch.loss_mask.bool())  # (G, B, L)
        return logps, batch.loss_mask
    first = int(batch.score_cols[batch.loss_mask.bool()].min()) if batch.loss_mask.any() else 0
    keep = batch.input_ids.shape[1] - first
    logits = model(input_ids=batch.input_ids, position_ids=batch.position_ids, logits_to_keep=keep,
                   attention_mask=bias, use_cache=False).logits  # (B, K, V)
    B, K, V = logits.shape
    lse = torch.cat([torch.logsumexp(chunk.float(), dim=-1) for chunk in logits.split(max(1, 1024 // B), dim=1)],
                    dim=1)  # (B, K)
    cols = (batch.score_cols - first).clamp(min=0)  # (G, B, L) into the kept columns
    rows = batch.rows[None, :, None].expand_as(cols)  # (G, B, L): the row holding each group
    picked = logits[rows, cols, batch.targets].float()  # (G, B, L)
    logps = picked - lse[rows, cols]
    return logps * batch.loss_mask, batch.loss_mask


# --------------------------------------------------------------------------------------------------- rollouts
def response_token_logprobs(logits: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0,
                            top_p: float = 1.0, min_new_tokens: int = 0, eos_id: int | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained log-probs of A response tokens, teacher-forced: what KL and PPO must use.

    logits: (B, A + 1, V) raw logits at the last prompt position and the A response positions (column t predicts
    response token t); ids: (B, A + 1) the last prompt token and the A response tokens. Returns log-probs (B, A)
    in fp32 under `constrain_logits` (-inf for a token the constraint forbids, e.g. on padding; mask before
    summing) and the constrained logits (B, A + 1, V) (for entropies). Keeps autograd when enabled.
    """
    steps = torch.arange(logits.shape[1], device=logits.device)  # (A + 1,): column t predicts response token t
    constrained = constrain_logits(logits.float(), steps, temperature=temperature, top_p=top_p,
                                   min_new_tokens=min_new_tokens, eos_id=eos_id)  # (B, A + 1, V)
    return ops.token_logprobs(constrained, ids), constrained  # (B, A), (B, A + 1, V)


def response_forward(lm: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, P: int, A: int,
                     temperature: float = 1.0, value_head: Any = None, min_new_tokens: int = 0,
                     eos_id: int | None = None, top_p: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-probs, values and entropies of the A response tokens that follow P (left-padded) prompt columns.

    input_ids, attention_mask: (B, P + A). Returns logprobs (B, A) in fp32 under the sampling distribution
    (`constrain_logits`; 0 on padding, where attention_mask[:, P:] is 0), values (B, A) or None (V(s_t) read at
    the hidden state that predicts response token t), and the per-token entropy (B, A) of that distribution
    (detached; 0 on padding). Only the response positions go through the LM head.
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": ops.positions(attention_mask)}
    scored = attention_mask[:, P:].bool()  # (B, A): response tokens, not padding
    constraint = {"temperature": temperature, "min_new_tokens": min_new_tokens, "eos_id": eos_id}
    head = lmhead.head_for(lm, top_p)
    if head is not None:
        hidden, _ = lmhead.final_hidden(lm, **inputs)  # (B, P + A, H)
        logprobs, ent = lmhead.shifted_logprobs(hidden, head, input_ids, P - 1, scored, with_entropy=True,
                                                **constraint)  # (B, A), (B, A)
    else:
        out = lm(**inputs, logits_to_keep=A + 1, output_hidden_states=value_head is not None)
        hidden = out.hidden_states[-1] if value_head is not None else None
        # (B, A + 1, V): position P-1 predicts response token 0
        logprobs, logits = response_token_logprobs(out.logits[:, -(A + 1):], input_ids[:, P - 1:], top_p=top_p,
                                                   **constraint)  # (B, A), (B, A + 1, V)
        with torch.no_grad():
            ent = ops.entropy(logits[:, :-1]) * scored  # (B, A)
        logprobs = torch.where(scored, logprobs, torch.zeros_like(logprobs))  # where: -inf * 0 is NaN
    values = None
    if value_head is not None:
        values = value_head(hidden[:, P - 1: P - 1 + A].float()).squeeze(-1)  # (B, A)
    return logprobs, values, ent


def response_logprobs(model: Any, rollout: Rollout, batch_size: int | None = None, *, temperature: float = 1.0,
                      top_p: float = 1.0, min_new_tokens: int = 0, eos_id: int | None = None) -> torch.Tensor:
    """Per-token log-probs (N, A) of the rollout's response tokens under `model`, 0 on padding.

    With the defaults: the raw distribution (temperature 1, no constraint). Pass the sampling settings to get
    the constrained distribution the rollout was sampled from (`constrain_logits`), as any KL must.
    Runs with gradients if the caller enables them; use under torch.no_grad() for reference / old log-probs.
    """
    ids, attn = rollout.input_ids, rollout.attention_mask  # (N, P + A)
    P, A = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    device = next(model.parameters()).device
    step = batch_size or ids.shape[0]
    parts = [response_forward(model, ids[i: i + step].to(device), attn[i: i + step].to(device), P, A, temperature,
                              None, min_new_tokens, eos_id, top_p)[0]
             for i in range(0, ids.shape[0], step)]  # (b, A) each, 0 on padding (response_forward)
    return torch.cat(parts, 0)  # (N, A)


@torch.no_grad()
def sequence_logprob_sums(model: Any, rollout: Rollout, batch_size: int | None = None, **constraint: Any
                          ) -> torch.Tensor:
    """log model(y | x) summed over each response (N,), with dropout off; for KL estimates, not for training.

    constraint: temperature, top_p, min_new_tokens, eos_id as in `constrain_logits` (default: none).
    """
    with eval_mode(model):
        return response_logprobs(model, rollout, batch_size, **constraint).sum(-1)  # padding is already 0


# -------------------------------------------------------------------------------------------------- reference
@dataclass
class Reference:
    """pi_ref: a frozen copy of the initial model, or (frozen=None) the policy itself with its LoRA adapter
    disabled. Without LoRA and without a copy the policy stands in, which is right only before training."""

    policy: Any
    frozen: Any = None

    @classmethod
    def of(cls, policy: Any, keep_copy: bool = True) -> Reference:
        """The reference for a policy about to be trained: its adapter-disabled self when it is a LoRA model,
        else a frozen copy (keep_copy=False: no copy, for a reference needed only before training starts)."""
        from rlhfkit.models import is_peft

        if is_peft(policy) or not keep_copy:
            return cls(policy)
        return cls(policy, copy.deepcopy(policy).requires_grad_(False).eval())

    @contextlib.contextmanager
    def model(self) -> Iterator[Any]:
        """The reference model, in eval mode, under no_grad (adapter disabled when it is the LoRA policy)."""
        from rlhfkit.models import is_peft

        policy = getattr(self.policy, "module", self.policy)  # unwrap DDP
        target = self.frozen if self.frozen is not None else policy
        adapter = policy.disable_adapter() if self.frozen is None and is_peft(policy) else contextlib.nullcontext()
        with torch.no_grad(), eval_mode(target), adapter:
            yield target

    def sequence_logps(self, batch: TokenBatch | PrefixBatch) -> torch.Tensor:
        """(N,) summed reference log-probs of the response tokens of a batch."""
        with self.model() as ref:
            return batch_sequence_logprobs(ref, batch)

    def to(self, device: Any) -> Reference:
        if self.frozen is not None:
            self.frozen.to(device)
        return self
