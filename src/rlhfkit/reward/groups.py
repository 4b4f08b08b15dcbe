"""Preference / ranking records -> Groups: one prompt's responses tokenised, best first, with their ranks (tied
responses share one), as the reward model sees them. Shared by training (`reward.train`) and evaluation
(`reward.score`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.config import DataConfig
from rlhfkit.data import Encoded, TruncationStats, encode_pair
from rlhfkit.data.records import ranking_tiers


@dataclass
class Group:
    """One prompt's responses as the reward model sees them, best first (K = 2 for a preference pair).

    ranks: each response's rank, same order (0 = best; tied responses share one; dense: 0..R-1, so rows are
    non-decreasing). Left out: the responses are strictly ordered, ranks 0..K-1.
    """

    examples: list[Encoded]
    scores: list[float] | None = None  # one score per response (margin), same order, when the record has them
    ranks: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ranks:
            self.ranks = list(range(len(self.examples)))
        if len(self.ranks) != len(self.examples):
            raise ValueError(f"{len(self.ranks)} ranks for {len(self.examples)} responses")


@dataclass
class GroupStats:
    """What encoding dropped: repeated responses within a record, records left with < 2 responses and records
    left with every response tied (nothing to compare)."""

    truncation: TruncationStats = field(default_factory=TruncationStats)
    duplicates: int = 0
    too_few: int = 0
    all_tied: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"truncation": self.truncation.as_dict(), "duplicate_responses_dropped": self.duplicates,
                "records_dropped_too_few_responses": self.too_few, "records_dropped_all_tied": self.all_tied}


def ranked_responses(rec: dict) -> tuple[list[str], list[int], list[float] | None]:
    """A preference or ranking record's responses best first, their ranks (0 = best; a tie shares one) and
    their scores for the margin (or None): `score_chosen` / `score_rejected` of a preference, `scores` or else
    `likert` of a ranking."""
    if "ranking" not in rec:
        scores = [rec.get("score_chosen"), rec.get("score_rejected")]
        return [rec["chosen"], rec["rejected"]], [0, 1], None if None in scores else [float(s) for s in scores]
    order = [(i, t) for t, tier in enumerate(ranking_tiers(rec["ranking"])) for i in tier]
    responses = [rec["responses"][i] for i, _ in order]
    scores = rec.get("scores") or rec.get("likert")
    return responses, [t for _, t in order], ([float(scores[i]) for i, _ in order] if scores else None)


def dense_ranks(ranks: Sequence[int]) -> list[int]:
    """Non-decreasing ranks renumbered 0, 1, ... without gaps (after some responses were dropped):
    [0, 2, 2, 5] -> [0, 1, 1, 2]."""
    levels = {r: n for n, r in enumerate(sorted(set(ranks)))}
    return [levels[r] for r in ranks]


def encode_groups(tokenizer: Any, records: Sequence[dict], data: DataConfig) -> tuple[list[Group], GroupStats]:
    """Tokenise preference / ranking records into Groups under the DataConfig's length policy. A response
    repeating one kept before it (identical token ids) is dropped: the best-ranked copy stays."""
    stats = GroupStats()
    groups = []
    for rec in records:
        responses, ranks, scores = ranked_responses(rec)
        kept: list[Encoded] = []
        kept_ranks: list[int] = []
        kept_scores: list[float] = []
        for k, response in enumerate(responses):
            enc = encode_pair(tokenizer, rec["prompt"], response, data.max_length, data.max_prompt_length,
                              data.truncation, stats.truncation)
            if enc is None:
                continue
            if any(enc.input_ids == other.input_ids for other in kept):
                stats.duplicates += 1
                continue
            kept.append(enc)
            kept_ranks.append(ranks[k])
            kept_scores.append(scores[k] if scores else math.nan)
        if len(kept) < 2:
            stats.too_few += 1
            continue
        if len(set(kept_ranks)) < 2:
            stats.all_tied += 1
            continue
        groups.append(Group(kept, kept_scores if scores else None, dense_ranks(kept_ranks)))
    return groups, stats
