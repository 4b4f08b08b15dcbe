"""Collation: a list of `Encoded` examples padded into one `TokenBatch` (B, T)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlhfkit.data.encode import Encoded


@dataclass
class TokenBatch:
    """A padded batch. Shapes: input_ids, attention_mask, loss_mask all (B, T).

    attention_mask is 1 on real tokens (prompt and response), loss_mask is 1 only on trained tokens; padding is
    0 in both. With right padding the sequences start at column 0.
    """

    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # (B, T)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # per-example (B,), e.g. ref log-probs, ranks

    def to(self, device: Any) -> TokenBatch:
        return TokenBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.loss_mask.to(device),
            {k: v.to(device) for k, v in self.extras.items()},
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def collate(examples: list[Encoded], pad_id: int, padding_side: str = "right") -> TokenBatch:
    """Pad a list of Encoded into a TokenBatch (B, T) with T = the longest example."""
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    loss_mask = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    for b, e in enumerate(examples):
        n = len(e.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(T - n, T)
        input_ids[b, cols] = torch.tensor(e.input_ids)
        attention_mask[b, cols] = 1
        loss_mask[b, cols] = torch.tensor(e.loss_mask)
    return TokenBatch(input_ids, attention_mask, loss_mask)
