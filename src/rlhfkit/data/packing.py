"""Shared-prefix packing (`pack_groups`): the G sequences of one group (a DPO pair, a K-way ranking) in one row.

A pair (x, y_w), (x, y_l) is usually run as two rows, so the prompt x goes through the model twice. Here
the group's longest common prefix p (the prompt, plus any response tokens both sides start with) is laid
out once, followed by each side's own tail:

    columns   | p_0 ... p_{s-1} | a_s ... a_{n-1} | b_s ... b_{m-1} | pad ...
    positions | 0   ...  s-1    | s   ...  n-1    | s   ...  m-1    | 0 ...
    segment   | 0               | 1               | 2               | -1

and a 4D attention mask lets a token see the prefix and the earlier tokens of its own tail only, so every
token's hidden state -- hence every logit -- is the one it has in its own separate sequence (rotary positions
are given explicitly). The model runs on s + (n - s) + (m - s) tokens instead of n + m. Each side's token t is
scored from the column holding its token t-1; the last prefix column predicts the first tail token of every
side. Exact up to float rounding (tests/test_prefix.py compares log-probs and gradients with separate rows).

Needs an attention implementation that takes a custom 4D mask (transformers' "sdpa" and "eager");
`supports_shared_prefix` says whether a model does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.data.encode import Encoded


@dataclass
class PrefixBatch:
    """B groups of up to G sequences, packed. Shapes: input_ids, position_ids, segments (B, T); score_cols,
    targets, loss_mask (G, B, L) with L = the longest sequence - 1 (entry t-1 of side g scores token t of
    that sequence from column score_cols[g, b, t-1]); last_cols (G, B): the column of each sequence's last
    token; lengths (G, B): each sequence's length (0: group b has no side g); extras: per-sequence tensors,
    e.g. DPO's ref_logps (G*B,), or per-group tables, e.g. the reward model's rank and score (B, G)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segments: torch.Tensor
    score_cols: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    last_cols: torch.Tensor
    lengths: torch.Tensor
    rows: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, T) 1 on real columns: what the training loop counts as tokens processed."""
        return (self.segments >= 0).long()

    def to(self, device: Any) -> PrefixBatch:
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return PrefixBatch(**moved, extras={k: v.to(device) for k, v in self.extras.items()})

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def common_prefix_length(seqs: list[list[int]]) -> int:
    """Length of the longest prefix all sequences share, kept below every sequence's length so each side
    keeps a tail (a segment) of its own."""
    s = min(len(x) for x in seqs) - 1
    for i in range(s):
        if any(x[i] != seqs[0][i] for x in seqs[1:]):
            return i
    return max(s, 0)


def pack_groups(groups: list[list[Encoded]], pad_id: int) -> PrefixBatch:
    """Pack each group into one right-padded row. G = the largest group; a smaller group's missing sides have
    length 0 and an all-zero loss mask (K-way rankings of different K share a batch)."""
    G, B = max(len(group) for group in groups), len(groups)
    rows, positions, segments, cols = [], [], [], []
    for group in groups:
        seqs = [e.input_ids for e in group]
        s = common_prefix_length(seqs)
        row, pos, seg = list(seqs[0][:s]), list(range(s)), [0] * s
        group_cols = []
        for g, x in enumerate(seqs):
            start = len(row)
            group_cols.append(list(range(s)) + list(range(start, start + len(x) - s)))  # column of each token
            row += x[s:]
            pos += range(s, len(x))
            seg += [g + 1] * (len(x) - s)
        rows.append(row), positions.append(pos), segments.append(seg), cols.append(group_cols)
    T = max(len(r) for r in rows)
    L = max(len(e.input_ids) for group in groups for e in group) - 1
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, T), dtype=torch.long)
    seg_t = torch.full((B, T), -1, dtype=torch.long)
    score_cols = torch.zeros((G, B, L), dtype=torch.long)
    targets = torch.full((G, B, L), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((G, B, L), dtype=torch.long)
    last_cols = torch.zeros((G, B), dtype=torch.long)
    lengths = torch.zeros((G, B), dtype=torch.long)
    for b, group in enumerate(groups):
        n = len(rows[b])
        input_ids[b, :n], position_ids[b, :n], seg_t[b, :n] = (torch.tensor(v) for v in (rows[b], positions[b],
                                                                                          segments[b]))
        for g, e in enumerate(group):
            k = len(e.input_ids) - 1
            score_cols[g, b, :k] = torch.tensor(cols[b][g][:-1])  # token t is scored at the column of t-1
            targets[g, b, :k] = torch.tensor(e.input_ids[1:])
            loss_mask[g, b, :k] = torch.tensor(e.loss_mask[1:])
            last_cols[g, b], lengths[g, b] = cols[b][g][-1], k + 1
    return PrefixBatch(input_ids, position_ids, seg_t, score_cols, targets, loss_mask, last_cols, lengths,
                       torch.arange(B))


def attention_bias(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, T, T) additive mask: 0 where query column q may see key column k (k <= q and k in the prefix
    or in q's own tail), the dtype's minimum elsewhere. A padding column sees only itself (no empty row)."""
    T = segments.shape[1]
    q, k = segments[:, :, None], segments[:, None, :]  # (B, T, 1), (B, 1, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()  # (T, T)
    allowed = causal & (k >= 0) & (q >= 0) & ((k == 0) | (k == q))  # (B, T, T)
    allowed |= torch.eye(T, dtype=torch.bool, device=segments.device)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def supports_shared_prefix(model: Any) -> bool:
    """Does the model's attention take a custom 4D mask (transformers' sdpa / eager)?"""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
