"""Pure tensor helpers shared by every stage. Imports only torch.

Vocabulary for shape comments: B batch, T tokens, A response tokens, V vocabulary.

`token_logprobs` is the one place in rlhfkit that shifts logits against labels: logits[:, t] predicts
input_ids[:, t + 1]. Everything else works with per-token log-probs indexed by the predicted token (packed
shared-prefix rows gather at explicit scoring columns instead; see `rlhfkit.logprobs`). The chunked LM head
(`rlhfkit.lmhead.shifted_logprobs`) keeps the convention from hidden states: column t scores input_ids[:, t + 1].
"""

from __future__ import annotations

import torch


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is 1 (over `dim`, or everything when dim is None)."""
    values = values * mask.to(values.dtype)
    return values.sum() if dim is None else values.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1; an all-zero mask gives 0, not NaN."""
    mask = mask.to(values.dtype)
    total = masked_sum(values, mask, dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp(min=1.0)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (a scalar), with Bessel's correction by default."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.to(values.dtype).sum()
        var = var * n / (n - 1).clamp(min=1.0)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / std over the masked entries; masked-out entries come back as 0."""
    mean = masked_mean(values, mask)
    whitened = (values - mean) * torch.rsqrt(masked_var(values, mask) + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log p(input_ids[:, t+1] | tokens <= t) for t = 0..T-2, in fp32.

    logits: (B, T, V), input_ids: (B, T) -> (B, T-1), where entry [:, t-1] is the log-prob of token t.

    Works in chunks of tokens so no full (B, T, V) fp32 log-softmax copy is ever held: the memory peak is
    one (chunk, V) fp32 block beyond the logits themselves.
    """
    B, T, V = logits.shape
    if T < 2:
        return logits.new_zeros((B, 0), dtype=torch.float32)
    # Flatten all T positions, not logits[:, :-1]: that slice is non-contiguous, so reshaping it copied the whole
    # (B, T-1, V) tensor (and autograd kept the copy alive). The last position gets a placeholder label and is
    # dropped at the end.
    flat_logits = logits.reshape(B * T, V)  # a view for contiguous logits
    flat_labels = torch.cat([input_ids[:, 1:], input_ids[:, -1:]], dim=1).reshape(B * T)  # (B*T,)
    out = []
    for start in range(0, B * T, chunk_size):
        block = flat_logits[start : start + chunk_size].float()  # (chunk, V)
        picked = block.gather(-1, flat_labels[start : start + chunk_size, None]).squeeze(-1)
        out.append(picked - torch.logsumexp(block, dim=-1))
    return torch.cat(out).view(B, T)[:, :-1]


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum over tokens t >= 1 with loss_mask[:, t] == 1 of log p(token t | tokens < t).

    logits: (B, T, V), input_ids: (B, T), loss_mask: (B, T) -> (B,) in fp32.
    loss_mask[:, 0] is ignored: the first token has nothing predicting it.
    """
    return masked_sum(token_logprobs(logits, input_ids), loss_mask[:, 1:], dim=-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (...) of the categorical given by logits (..., V); -inf logits (forbidden tokens) add 0, not NaN."""
    p, logp = logits.softmax(-1), logits.log_softmax(-1)
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that ignore left padding: 0 at each row's first real token. (N, T) -> (N, T)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
