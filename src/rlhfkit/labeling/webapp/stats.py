"""Figures for the admin page: progress and throughput per labeler, agreement, the most disputed items."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from rlhfkit.data.chat import Prompt
from rlhfkit.labeling.webapp.agreement import item_disagreement, krippendorff_alpha_interval, pairwise_agreement
from rlhfkit.labeling.webapp.db import Item, Label, Labeler


@dataclass(frozen=True)
class LabelerStats:
    name: str
    is_admin: bool
    labels: int
    skips: int
    per_hour: float | None  # labels per hour between their first and last submission
    agreement: float | None  # pairwise agreement with the other labelers on shared items


@dataclass(frozen=True)
class Disputed:
    item_id: str
    prompt: Prompt  # a string or a conversation, shown as its turns
    labelers: int
    disagreement: float


@dataclass(frozen=True)
class Overview:
    labelers: list[LabelerStats]
    agreement: float | None
    compared_pairs: int
    alpha: float | None
    disputed: list[Disputed]


def _rate(times: list) -> float | None:
    if len(times) < 2:
        return None
    hours = (max(times) - min(times)).total_seconds() / 3600
    return None if hours <= 0 else (len(times) - 1) / hours  # intervals, not labels, fill the span


def overview(engine: Engine, top: int = 10) -> Overview:
    with Session(engine) as s:
        labelers = list(s.scalars(select(Labeler).order_by(Labeler.name)))
        labels = list(s.scalars(select(Label)))
    names = {lab.id: lab.name for lab in labelers}
    rankings: dict[str, dict[str, list[int]]] = defaultdict(dict)
    likert_units: dict[tuple[str, int], list[float]] = defaultdict(list)
    for lab in labels:
        if lab.skipped:
            continue
        rankings[lab.item_id][names[lab.labeler_id]] = json.loads(lab.ranking_json)
        for i, score in enumerate(json.loads(lab.likert_json)):
            likert_units[(lab.item_id, i)].append(score)
    agree, total = pairwise_agreement(rankings)
    rows = [_labeler_row(lab, labels, rankings) for lab in labelers]
    most = sorted(
        ((iid, len(by), d) for iid, by in rankings.items() if (d := item_disagreement(by)) is not None),
        key=lambda x: (-x[2], x[0]),
    )[:top]
    shown = [iid for iid, _n, _d in most]
    with Session(engine) as s:  # the shown items only: reading every item would read all their responses too
        prompts = {item.id: item.prompt for item in s.scalars(select(Item).where(Item.id.in_(shown)))}
    disputed = [Disputed(iid, prompts[iid], n, d) for iid, n, d in most]
    alpha = krippendorff_alpha_interval([likert_units[key] for key in sorted(likert_units)])
    return Overview(rows, agree / total if total else None, total, alpha, disputed)


def _labeler_row(lab: Labeler, labels: list[Label], rankings: dict[str, dict[str, list[int]]]) -> LabelerStats:
    own = [x for x in labels if x.labeler_id == lab.id]
    done = [x.created_at for x in own if not x.skipped]
    agree = total = 0
    for by in rankings.values():  # this labeler against each other labeler of the items they share
        if lab.name in by:
            for other, ranking in by.items():
                if other != lab.name:
                    a, n = pairwise_agreement({"": {lab.name: by[lab.name], other: ranking}})
                    agree, total = agree + a, total + n
    return LabelerStats(lab.name, lab.is_admin, len(done), len(own) - len(done), _rate(done),
                        agree / total if total else None)
