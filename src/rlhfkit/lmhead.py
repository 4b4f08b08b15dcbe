"""The chunked LM head: token log-probs from final hidden states without the (rows x positions x V) logits.

The plain path runs the model's LM head on every kept position and log-softmaxes the (B, T, V) logits
(`ops.token_logprobs`); for training, autograd keeps those logits (and their fp32 copies) until the backward,
so peak memory grows with positions x vocabulary. Here the model's forward stops at the final hidden states
(`logits_to_keep` = an empty index: (B, 0, V) logits at no cost; `hidden_states[-1]` is the final-norm output),
the N positions that score a token are gathered into (N, H) with their targets (N,), and `ChunkedLogProbs`
computes, a chunk of positions at a time,

    z = constrain_logits(h W^T + b)   (the sampling distribution: logits / temperature, EOS forbidden early)
    logp = z[target] - logsumexp(z)                                                  (N,) fp32

keeping only hidden, weight, targets and the (N,) log-normalisers. Its backward recomputes each chunk's logits:
dlogp/dz = onehot(target) - softmax(z), taken back through `constrain_logits` by autograd (so the temperature
and the EOS mask have one definition), then grad_h = g W and grad_W += g^T h (grad_b += sum g). The matmul is
done in the weight's dtype as the plain path's (under the forward's autocast, if any), the softmax in fp32.
Exact to fp32 rounding in values and gradients (tests/test_lmhead.py). A frozen head (LoRA) needs only
d logp / d hidden, which the forward computes while the logits are at hand (no recompute).

How it relates to `ops.token_logprobs` (the one place logits are shifted against labels): there, logits column
t predicts input_ids column t + 1. The chunked path takes explicit (row, column, target) triples instead --
row r, column t, target input_ids[r, t + 1] for a right-padded batch; the packed batch's own score_cols /
targets for a PrefixBatch -- and scatters the log-probs back into the tensor the plain path returns, 0 where
nothing is scored (prompt, padding).

When the chunked path is used (`head_for`): the head must be a plain nn.Linear (not a LoRA- or
modules_to_save-wrapped head), the config must not transform the logits after the head (Gemma-2's
`final_logit_softcapping`, Cohere's `logit_scale`, Granite's `logits_scaling`), no forward hook may sit on the
model or the head (it could read or change the logits), the weights must be whole outside the forward (not
FSDP- or DeepSpeed-ZeRO-3-sharded, not offloaded by accelerate), and top_p must be 1 (the nucleus is not a
per-token function of the logits). Otherwise, or for a model without `get_output_embeddings`, the plain path.

RLHFKIT_LM_HEAD (read at every call) overrides the choice for ablations and benchmarks:
    auto     (default) chunked wherever it applies: it won every case measured below
    chunked  the same today; the name an ablation sets, whatever `auto` comes to mean
    plain    the plain path always

Measured (CPU, 2 threads, fp32, 2 shared cores, so times are the best of 2-3 interleaved runs and noisy to
~10%): a random tied-embedding Llama, 4 layers, right-padded batch of lengths uniform in [T/2, T] (one full row),
the first T/4 columns prompt (unscored). sft = `sft.lm_objective`; pretrain = the same with every real token
scored; dpo = `logprobs.batch_token_logprobs` summed. Peak = ru_maxrss growth over one step, own process.

    V      H    T    B   batch     fwd+bwd time      peak MiB       no-grad time     no-grad peak MiB
                                   plain  chunked   plain chunked   plain  chunked   plain  chunked
    4096   192  64   32  sft        656    522       325    219      199    169       92     80
    4096   192  64   32  pretrain   466    404       383    230      134    122       77     84
    4096   192  64   32  dpo        674    556       331    227      196    195       69     66
    49152  576  256  8   sft       7223   5692      1801    627     2362   1566      632    111
    49152  576  256  8   pretrain 10626  10504      1787    630     3215   2509      560    122
    49152  576  256  8   dpo       6131   5717      1598    755     1806   1554      460    118

The chunked head was never slower and always used less memory, so `auto` chunks wherever the head applies.
On the head alone (N = 1024 positions, H = 576, V = 49152, every position scored) the chunked forward+backward
does four matmuls to the plain path's three (the backward recomputes the logits): 4.5 s vs 3.3 s, while a
frozen head (LoRA, the fold in `ChunkedLogProbs`) took 1.6 s vs 1.8 s. It wins in the model because only
scored positions reach the head and the (B, T, V) fp32 traffic is gone. Chunks under 256 rows made the
(c, H) @ (H, V) matmul 2-3x slower per row (MIN_CHUNK_ROWS).

On one H200 (torch 2.11, head alone, N = 16384 positions, forward+backward, mean of 5, growth of
max_memory_allocated): V 49152, H 576, bf16: plain 47.5 ms / 5856 MiB, chunked 35.9 ms / 318 MiB; fp32:
119.7 ms / 9408 MiB vs 104.9 ms / 348 MiB; V 128256, H 2048, bf16: 145.3 ms / 15293 MiB vs 163.5 ms / 1881 MiB.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

from rlhfkit import ops
from rlhfkit.errors import RlhfkitError
from rlhfkit.sampling import constrain_logits

MODE_ENV = "RLHFKIT_LM_HEAD"
MODES = ("auto", "chunked", "plain")
CHUNK_ELEMENTS = 1 << 22  # logits per chunk (chunk rows x V): 16 MiB of fp32 ...
MIN_CHUNK_ROWS = 256  # ... but never fewer rows: a (c, H) @ (H, V) matmul ran 2-3x slower per row at c = 32-64
# config fields that rescale or squash the logits after the head (the chunked path would skip them)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def mode() -> str:
    """RLHFKIT_LM_HEAD: auto (default), chunked or plain."""
    value = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise RlhfkitError(f"{MODE_ENV}={value!r}: use one of {', '.join(MODES)} (unset: auto)")
    return value


def _sharded(model: Any, weight: torch.Tensor) -> bool:
    """Are the parameters materialised only inside the forward (FSDP, DeepSpeed ZeRO-3)?"""
    if weight.numel() == 0 or hasattr(weight, "ds_id") or type(weight).__name__ == "DTensor":
        return True
    names = [type(m).__name__ for m in (model, getattr(model, "module", model))]
    return any(n == "FullyShardedDataParallel" or n.startswith("FSDP") for n in names)  # FSDP1; FSDP2 classes


def plain_head(model: Any) -> torch.nn.Linear | None:
    """The model's output embedding when the chunked path can stand in for it (see the module docstring)."""
    inner = getattr(model, "module", model)  # unwrap DDP; a PeftModel forwards the lookup to its base model
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if type(head) is not torch.nn.Linear:
        return None
    config = getattr(inner, "config", None)
    if any(getattr(config, name, None) not in (None, 1, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    # a forward hook on the model may read or change the logits; one on the head, or accelerate's offload hook
    # (weights on the meta device outside the forward), changes what the head computes
    hooked = any(getattr(m, "_forward_hooks", None) for m in (model, inner)) or head._forward_hooks or \
        head._forward_pre_hooks or hasattr(head, "_hf_hook")
    return None if hooked or _sharded(model, head.weight) else head


def head_for(model: Any, top_p: float = 1.0) -> torch.nn.Linear | None:
    """The head to run chunked, or None for the plain path (RLHFKIT_LM_HEAD, top_p, then `plain_head`)."""
    choice = mode()
    if choice == "plain" or top_p < 1:
        return None
    return plain_head(model)  # auto = chunked: it won every measured case (see above)


def final_hidden(model: Any, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """(B, T, H) final-norm hidden states through the model's own forward (DDP's hooks run), the LM head given
    no position (`logits_to_keep` = an empty index), and the model output."""
    ids = inputs["input_ids"]
    none = torch.zeros(0, dtype=torch.long, device=ids.device)
    out = model(**inputs, logits_to_keep=none, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1], out


class ChunkedLogProbs(torch.autograd.Function):
    """logp (N,) fp32 of targets (N,) under constrain_logits(hidden (N, H) @ weight (V, H)^T + bias (V,)), and
    optionally the entropy (N,) of that distribution (no gradient). steps (N,) or None: the response step
    each position predicts (for min_new_tokens); constraint: temperature, min_new_tokens, eos_id.

    A frozen head (LoRA; only hidden needs a gradient): d logp_i / d hidden_i does not depend on the upstream
    gradient, so the forward computes it (N, H) while each chunk's logits are at hand, and the backward only
    scales it -- two matmuls in all, as the plain path, instead of three."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, steps, chunk, constraint, with_entropy):
        fold = ctx.needs_input_grad[0] and not any(ctx.needs_input_grad[1:3])
        jac = torch.empty_like(hidden) if fold else None  # (N, H) d logp / d hidden
        logps, lses, ents = [], [], []
        for start in range(0, hidden.shape[0], chunk):
            end = start + chunk
            logits, z = _chunk_logits(hidden, weight, bias, steps, start, end, constraint, track=fold)  # (c, V)
            lse = torch.logsumexp(z.detach(), dim=-1)  # (c,)
            logps.append(z.detach().gather(-1, targets[start:end, None]).squeeze(-1) - lse)
            lses.append(lse)
            if with_entropy:
                ents.append(ops.entropy(z.detach()))
            if fold:
                unit = torch.ones_like(lse)
                jac[start:end] = _logit_grad(logits, z, lse, targets[start:end], unit).to(weight.dtype) @ weight
        lse = torch.cat(lses) if lses else None
        ctx.save_for_backward(None if fold else hidden, weight, bias, targets, steps, lse, jac)
        ctx.chunk, ctx.constraint = chunk, constraint
        device = hidden.device.type  # the backward recomputes the logits under the forward's autocast, if any
        ctx.amp = {"device_type": device, "enabled": torch.is_autocast_enabled(device),
                   "dtype": torch.get_autocast_dtype(device)}
        empty = hidden.new_zeros(0, dtype=_upcast(weight[:0]).dtype)
        entropy = torch.cat(ents) if ents else empty
        ctx.mark_non_differentiable(entropy)
        return (torch.cat(logps) if logps else empty), entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        hidden, weight, bias, targets, steps, lse, jac = ctx.saved_tensors
        if jac is not None:
            return (grad_logps[:, None] * jac).to(jac.dtype), None, None, None, None, None, None, None
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = _upcast(weight[:0]).dtype  # fp32 (fp64 for fp64 weights, as gradcheck uses)
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=acc, device=weight.device) if need_b else None
        for start in range(0, hidden.shape[0], ctx.chunk):
            end = start + ctx.chunk
            with torch.autocast(**ctx.amp):
                logits, z = _chunk_logits(hidden, weight, bias, steps, start, end, ctx.constraint, track=True)
                grad = _logit_grad(logits, z, lse[start:end], targets[start:end], grad_logps[start:end])  # (c, V)
                low = grad.to(weight.dtype)  # the matmuls in the weight's dtype, as the plain path's backward
                if grad_h is not None:
                    grad_h[start:end] = low @ weight
                if grad_w is not None:
                    grad_w += low.T @ hidden[start:end]
            if grad_b is not None:
                grad_b += grad.sum(0)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None, None


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp32 for bf16 / fp16 / fp32 (the plain path's `.float()`), fp64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _chunk_logits(hidden, weight, bias, steps, start, end, constraint, track) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw logits (c, V) upcast (a leaf that requires grad when `track`) of positions [start, end), the matmul in
    the weight's dtype, and the constrained logits z = constrain_logits(logits) (top_p is 1 here: `head_for`)."""
    bias = bias.detach() if bias is not None else None
    with torch.enable_grad():
        logits = _upcast(F.linear(hidden[start:end].detach(), weight.detach(), bias)).requires_grad_(track)
        step = 0 if steps is None else steps[start:end]
        return logits, constrain_logits(logits, step, **constraint)


def _logit_grad(logits, z, lse, targets, g) -> torch.Tensor:
    """(c, V) d(sum_i g_i logp_i)/d logits: g (onehot(target) - softmax(z)) at z, then back through
    `constrain_logits` by autograd (temperature, EOS mask: one definition)."""
    grad_z = (z.detach() - lse[:, None]).exp_().mul_(-g[:, None])  # -g * softmax(z)
    grad_z.scatter_add_(-1, targets[:, None], g[:, None])  # + g * onehot(target)
    return grad_z if z is logits else torch.autograd.grad(z, logits, grad_z)[0]


def chunk_rows(vocab: int) -> int:
    """Positions per chunk: CHUNK_ELEMENTS logits, at least MIN_CHUNK_ROWS."""
    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab)


def head_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor,
                  steps: torch.Tensor | None = None, *, temperature: float = 1.0, min_new_tokens: int = 0,
                  eos_id: int | None = None, with_entropy: bool = False, chunk: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (N,) fp32 of targets (N,) at hidden states (N, H) through `head`, and entropies (N,) (detached;
    None unless with_entropy), under `constrain_logits` (temperature; EOS forbidden where steps < min_new_tokens).
    """
    constraint = {"temperature": temperature, "min_new_tokens": min_new_tokens, "eos_id": eos_id}
    chunk = chunk or chunk_rows(head.weight.shape[0])
    if not torch.is_grad_enabled():
        hidden = hidden.detach()  # no backward will come: the frozen-head fold would be wasted work
    logps, ent = ChunkedLogProbs.apply(hidden, head.weight, head.bias, targets, steps, chunk, constraint,
                                       with_entropy)
    return logps, (ent if with_entropy else None)


def scored_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, rows: torch.Tensor, cols: torch.Tensor,
                    targets: torch.Tensor, where: torch.Tensor, steps: torch.Tensor | None = None,
                    **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs (and entropies) laid out as the plain path's, from the scored positions only.

    hidden: (B, T, H). rows, cols, targets, where: one shape S (e.g. (N, K-1), (G, B, L), (B, A)): the token
    targets[s] is predicted by hidden[rows[s], cols[s]], scored where `where[s]`; steps: S or None (see
    `head_logprobs`). Returns logps S fp32, 0 where not scored, and entropies S or None.
    """
    picked = hidden[rows[where], cols[where]]  # (N, H): only the scored positions reach the head
    logps, ent = head_logprobs(picked, head, targets[where], None if steps is None else steps[where], **kwargs)
    out = logps.new_zeros(where.shape).index_put((where,), logps)
    if ent is not None:
        ent = ent.new_zeros(where.shape).index_put((where,), ent)
    return out, ent


def shifted_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, input_ids: torch.Tensor, start: int,
                     scored: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The chunked counterpart of `ops.token_logprobs(logits[:, start:], input_ids[:, start:])` on right-padded
    rows: log p(input_ids[:, t + 1] | hidden[:, t]) for t = start .. T-2.

    hidden: (B, T, H), input_ids: (B, T), scored: (B, T-1-start) bool (the positions to score). Entry j predicts
    response step j (the `steps` of `head_logprobs`: EOS is forbidden where j < min_new_tokens). Returns
    logps (B, T-1-start) fp32, 0 where not scored, and entropies (B, T-1-start) or None.
    """
    B, T = input_ids.shape
    cols = torch.arange(start, T - 1, device=input_ids.device).expand(B, -1)  # (B, T-1-start): column t
    rows = torch.arange(B, device=input_ids.device)[:, None].expand_as(cols)  # (B, T-1-start)
    return scored_logprobs(hidden, head, rows, cols, input_ids[:, start + 1:], scored, cols - start, **kwargs)
