"""Preference pairs and the objective `rlhfkit.loop.fit` minimises: policy log-probs of both sides, the
reference's (cached on the batch or computed per step), one loss from the `PAIR_LOSSES` table, and the implicit
rewards beta * log(pi / pi_ref) reported for every loss."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from rlhfkit import losses, ops
from rlhfkit.config import DataConfig
from rlhfkit.data import Encoded, TokenBatch, collate, encode_pair, ranking_to_pairs
from rlhfkit.data.packing import PrefixBatch, pack_groups
from rlhfkit.dpo.config import DPOConfig
from rlhfkit.logprobs import Reference, batch_token_logprobs


@dataclass
class Pair:
    """One tokenised preference pair; ref_logps = (log pi_ref(y_w|x), log pi_ref(y_l|x)) once computed."""

    chosen: Encoded
    rejected: Encoded
    prompt: str = ""
    ref_logps: tuple[float, float] | None = None


def as_pairs(records: list[dict], kind: str) -> list[dict]:
    """Preference records; rankings expand to their C(K, 2) pairs (best first)."""
    return [p for r in records for p in ranking_to_pairs(r)] if kind == "rankings" else records


def encode_pairs(tokenizer: Any, records: list[dict], data: DataConfig) -> tuple[list[Pair], int]:
    """Tokenise each pair's two sides under the length policy; a pair is dropped if either side is.
    Returns (pairs, dropped)."""
    pairs, dropped = [], 0
    for rec in records:
        sides = [encode_pair(tokenizer, rec["prompt"], rec[k], data.max_length, data.max_prompt_length,
                             data.truncation) for k in ("chosen", "rejected")]
        if sides[0] is None or sides[1] is None:
            dropped += 1
            continue
        pairs.append(Pair(sides[0], sides[1], rec["prompt"]))
    return pairs, dropped


def shares_first_token(pair: Pair) -> bool:
    """Do y_w and y_l start with the same token (after the same prompt)? That token gets no DPO gradient."""
    c, r = pair.chosen, pair.rejected
    return c.input_ids[: c.prompt_length + 1] == r.input_ids[: r.prompt_length + 1]


def collate_pairs(pairs: list[Pair], pad_id: int, shared_prefix: bool = False) -> TokenBatch | PrefixBatch:
    """(2B, T) batch: chosen in rows [0, B), rejected in rows [B, 2B); or, shared_prefix, a padding-free
    PrefixBatch of B pairs (chosen side 0, rejected side 1; the prompt once per pair, pairs sharing rows no wider
    than the widest pair). extras["ref_logps"] (2B,) chosen first, when cached."""
    if shared_prefix:
        batch = pack_groups([[p.chosen, p.rejected] for p in pairs], pad_id, row_tokens=0)
    else:
        batch = collate([p.chosen for p in pairs] + [p.rejected for p in pairs], pad_id)
    if all(p.ref_logps is not None for p in pairs):
        ref = [p.ref_logps[0] for p in pairs] + [p.ref_logps[1] for p in pairs]
        batch.extras["ref_logps"] = torch.tensor(ref, dtype=torch.float32)  # (2B,)
    return batch


# ----------------------------------------------------------------------------------------------- losses
@dataclass
class PairLogps:
    """Policy log-probs of a (2B, T) pair batch split into its chosen and rejected halves."""

    chosen: torch.Tensor  # (B,) log pi(y_w | x)
    rejected: torch.Tensor  # (B,) log pi(y_l | x)
    chosen_tokens: torch.Tensor  # (B, K-1) per-token log-probs of y_w
    rejected_tokens: torch.Tensor  # (B, K-1)
    chosen_mask: torch.Tensor  # (B, K-1)
    rejected_mask: torch.Tensor  # (B, K-1)


# A pair loss maps (policy log-probs, reference (ref_chosen (B,), ref_rejected (B,))) to per-pair losses (B,).
PairLoss = Callable[[PairLogps, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]

PAIR_LOSSES: dict[str, Callable[[DPOConfig], PairLoss]] = {
    "dpo": lambda c: lambda p, ref: losses.dpo_loss(p.chosen, p.rejected, *ref, beta=c.beta)[0],
    "cdpo": lambda c: lambda p, ref: losses.dpo_loss(p.chosen, p.rejected, *ref, beta=c.beta,
                                                     label_smoothing=c.label_smoothing)[0],
    "ipo": lambda c: lambda p, ref: losses.ipo_loss(p.chosen, p.rejected, *ref, tau=c.tau)[0],
    "preferred_ft": lambda c: lambda p, ref: losses.preferred_ft_loss(p.chosen_tokens, p.chosen_mask),
    "unlikelihood": lambda c: lambda p, ref: losses.unlikelihood_loss(
        p.chosen_tokens, p.chosen_mask, p.rejected_tokens, p.rejected_mask, alpha=c.alpha),
}


def pair_metrics(p: PairLogps, ref: tuple[torch.Tensor, torch.Tensor], beta: float) -> dict[str, float]:
    """Implicit rewards beta * log(pi / pi_ref) of both sides and their accuracy / margin (DPO paper sec. 5)."""
    chosen_rewards = beta * (p.chosen.detach() - ref[0])  # (B,)
    rejected_rewards = beta * (p.rejected.detach() - ref[1])  # (B,)
    return {
        "rewards/chosen": float(chosen_rewards.mean()),
        "rewards/rejected": float(rejected_rewards.mean()),
        "rewards/accuracy": float((chosen_rewards > rejected_rewards).float().mean()),
        "rewards/margin": float((chosen_rewards - rejected_rewards).mean()),
        "logps/chosen": float(p.chosen.detach().mean()),
        "logps/rejected": float(p.rejected.detach().mean()),
    }


def preference_objective(pair_loss: PairLoss, reference: Reference, beta: float):
    """objective(model, batch) -> (mean pair loss, metrics) for `rlhfkit.loop.fit`; batch is (2B, T) from
    `collate_pairs`. Reference log-probs come from the batch (cached) or from `reference` (per step)."""

    def objective(model: Any, batch: TokenBatch | PrefixBatch) -> tuple[torch.Tensor, dict[str, float]]:
        token_logps, mask = batch_token_logprobs(model, batch)  # (2B, K-1), (2B, K-1)
        seq = ops.masked_sum(token_logps, mask, dim=-1)  # (2B,)
        ref = batch.extras.get("ref_logps")
        if ref is None:
            ref = reference.sequence_logps(batch)  # (2B,)
        B = seq.shape[0] // 2
        p = PairLogps(seq[:B], seq[B:], token_logps[:B], token_logps[B:], mask[:B], mask[B:])
        ref_pair = (ref[:B], ref[B:])
        return pair_loss(p, ref_pair).mean(), pair_metrics(p, ref_pair, beta)

    return objective
