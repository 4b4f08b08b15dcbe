"""Shared-prefix and padding-free packing (`pack_groups`): the G sequences of a group (a DPO pair, a K-way ranking,
one SFT example) laid out with their common prefix once, and several groups per row without padding.

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

Padding-free (`row_tokens`): groups of different lengths share rows, one after another, instead of each being
padded to the longest. A `docs` id per column keeps attention inside each group (block-diagonal) and positions
restart at 0 for each group, so again every logit is its separate sequence's. With rows no longer than the
widest group (row_tokens = that width, what the stages use) the attention cost per row is unchanged and every
padding token a right-padded batch would run is gone (tests/test_packing.py compares with padded rows, per
sequence).

Both need an attention implementation that takes a custom 4D mask (transformers' "sdpa" and "eager");
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
    docs: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def attention_mask(self) -> torch.Tensor:
        """(R, T) 1 on real columns: what the training loop counts as tokens processed."""
        return (self.segments >= 0).long()

    def attention_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """(R, 1, T, T) the 4D additive mask the model takes (`attention_bias`)."""
        return attention_bias(self.segments, dtype, self.docs)

    def to(self, device: Any) -> PrefixBatch:
        moved = {k: v.to(device) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return PrefixBatch(**moved, extras={k: v.to(device) for k, v in self.extras.items()})

    def __len__(self) -> int:
        return self.rows.shape[0]  # groups, not rows: several groups can share a row


def common_prefix_length(seqs: list[list[int]]) -> int:
    """Length of the longest prefix all sequences share, kept below every sequence's length so each side
    keeps a tail (a segment) of its own."""
    s = min(len(x) for x in seqs) - 1
    for i in range(s):
        if any(x[i] != seqs[0][i] for x in seqs[1:]):
            return i
    return max(s, 0)


def _lay_out(group: list[Encoded]) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """One group's packed tokens, positions, segments (0 prefix, g+1 tail g) and each side's column of each token
    (counted from the group's first column)."""
    seqs = [e.input_ids for e in group]
    s = common_prefix_length(seqs)
    tokens, pos, seg = list(seqs[0][:s]), list(range(s)), [0] * s
    cols = []
    for g, x in enumerate(seqs):
        start = len(tokens)
        cols.append(list(range(s)) + list(range(start, start + len(x) - s)))  # column of each token
        tokens += x[s:]
        pos += range(s, len(x))
        seg += [g + 1] * (len(x) - s)
    return tokens, pos, seg, cols


def assign_rows(widths: list[int], row_tokens: int | None) -> list[int]:
    """The row of each group: one per group (row_tokens None), or first-fit by decreasing width into rows of
    max(row_tokens, widest) columns (row_tokens 0: as wide as the widest group, so no row is longer than a
    right-padded batch's).
    Deterministic; groups keep their own order within a row."""
    if row_tokens is None:
        return list(range(len(widths)))
    capacity = max(row_tokens, max(widths))
    free: list[int] = []  # free columns of each row opened so far
    rows = [0] * len(widths)
    for b in sorted(range(len(widths)), key=lambda i: (-widths[i], i)):
        r = next((r for r, room in enumerate(free) if room >= widths[b]), len(free))
        if r == len(free):
            free.append(capacity)
        free[r] -= widths[b]
        rows[b] = r
    return rows


def pack_groups(groups: list[list[Encoded]], pad_id: int, row_tokens: int | None = None) -> PrefixBatch:
    """Pack each group's sequences, their shared prefix laid out once (see the module docstring).

    row_tokens None: one right-padded row per group. Otherwise padding-free: several groups share a row
    (`assign_rows`: first-fit into rows of max(row_tokens, the widest group) columns), each group's positions
    starting at 0 and its attention kept inside it (`docs`), so every logit is still the one its own separate
    sequence gives. G = the largest group; a smaller group's missing sides have length 0 and an all-zero loss mask
    (K-way rankings of different K share a batch).
    """
    G, B = max(len(group) for group in groups), len(groups)
    laid = [_lay_out(group) for group in groups]
    rows = assign_rows([len(tokens) for tokens, *_ in laid], row_tokens)
    R = max(rows) + 1
    offsets, used = [0] * B, [0] * R
    for b in range(B):  # groups fill their row in batch order
        offsets[b], used[rows[b]] = used[rows[b]], used[rows[b]] + len(laid[b][0])
    T = max(used)
    L = max(len(e.input_ids) for group in groups for e in group) - 1
    input_ids = torch.full((R, T), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, T), dtype=torch.long)
    seg_t = torch.full((R, T), -1, dtype=torch.long)
    docs = torch.full((R, T), -1, dtype=torch.long)
    score_cols = torch.zeros((G, B, L), dtype=torch.long)
    targets = torch.full((G, B, L), pad_id, dtype=torch.long)
    loss_mask = torch.zeros((G, B, L), dtype=torch.long)
    last_cols = torch.zeros((G, B), dtype=torch.long)
    lengths = torch.zeros((G, B), dtype=torch.long)
    for b, group in enumerate(groups):
        tokens, pos, seg, cols = laid[b]
        r, o = rows[b], offsets[b]
        span = slice(o, o + len(tokens))
        input_ids[r, span], position_ids[r, span], seg_t[r, span] = (torch.tensor(v) for v in (tokens, pos, seg))
        docs[r, span] = b
        for g, e in enumerate(group):
            k = len(e.input_ids) - 1
            score_cols[g, b, :k] = torch.tensor(cols[g][:-1]) + o  # token t is scored at the column of t-1
            targets[g, b, :k] = torch.tensor(e.input_ids[1:])
            loss_mask[g, b, :k] = torch.tensor(e.loss_mask[1:])
            last_cols[g, b], lengths[g, b] = cols[g][-1] + o, k + 1
    return PrefixBatch(input_ids, position_ids, seg_t, score_cols, targets, loss_mask, last_cols, lengths,
                       torch.tensor(rows), docs)


def attention_bias(segments: torch.Tensor, dtype: torch.dtype, docs: torch.Tensor | None = None) -> torch.Tensor:
    """(R, 1, T, T) additive mask: 0 where query column q may see key column k (k <= q, both in the same group
    (`docs`; None: one group per row), and k in the prefix or in q's own tail), the dtype's minimum elsewhere. A
    padding column sees only itself (no empty row)."""
    T = segments.shape[1]
    q, k = segments[:, :, None], segments[:, None, :]  # (R, T, 1), (R, 1, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()  # (T, T)
    allowed = causal & (k >= 0) & (q >= 0) & ((k == 0) | (k == q))  # (R, T, T)
    if docs is not None:
        allowed &= docs[:, :, None] == docs[:, None, :]
    allowed |= torch.eye(T, dtype=torch.bool, device=segments.device)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=segments.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def supports_shared_prefix(model: Any) -> bool:
    """Does the model's attention take a custom 4D mask (transformers' sdpa / eager)?"""
    config = getattr(getattr(model, "module", model), "config", None)
    return getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
