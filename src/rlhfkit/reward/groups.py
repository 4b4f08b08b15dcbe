"""Preference / ranking records -> Groups: one prompt's responses tokenised, best first, as the reward model
sees them. Shared by training (`reward.train`) and evaluation (`reward.score`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rlhfkit.config import DataConfig
from rlhfkit.data import Encoded, TruncationStats, encode_pair


@dataclass
class Group:
    """One prompt's responses as the reward model sees them, best first (K = 2 for a preference pair)."""

    examples: list[Encoded]
    likert: list[float] | None = None  # one Likert score per response, same order, when the record has them


@dataclass
class GroupStats:
    """What encoding dropped: repeated responses within a record and records left with < 2 responses."""

    truncation: TruncationStats = field(default_factory=TruncationStats)
    duplicates: int = 0
    too_few: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"truncation": self.truncation.as_dict(), "duplicate_responses_dropped": self.duplicates,
                "records_dropped_too_few_responses": self.too_few}


def ranked_responses(rec: dict) -> tuple[list[str], list[float] | None]:
    """A preference or ranking record's responses best first, and their Likert scores (or None)."""
    if "ranking" not in rec:
        return [rec["chosen"], rec["rejected"]], None
    responses = [rec["responses"][i] for i in rec["ranking"]]
    likert = rec.get("likert")
    return responses, ([float(likert[i]) for i in rec["ranking"]] if likert else None)


def encode_groups(tokenizer: Any, records: Sequence[dict], data: DataConfig) -> tuple[list[Group], GroupStats]:
    """Tokenise preference / ranking records into Groups under the DataConfig's length policy."""
    stats = GroupStats()
    groups = []
    for rec in records:
        responses, likert = ranked_responses(rec)
        kept: list[Encoded] = []
        kept_likert: list[float] = []
        for k, response in enumerate(responses):
            enc = encode_pair(tokenizer, rec["prompt"], response, data.max_length, data.max_prompt_length,
                              data.truncation, stats.truncation)
            if enc is None:
                continue
            if any(enc.input_ids == other.input_ids for other in kept):
                stats.duplicates += 1
                continue
            kept.append(enc)
            kept_likert.append(likert[k] if likert else math.nan)
        if len(kept) < 2:
            stats.too_few += 1
            continue
        groups.append(Group(kept, kept_likert if likert else None))
    return groups, stats
