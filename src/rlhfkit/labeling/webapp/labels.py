"""What a labeler does: get the next item, submit (or skip) a label, see their progress.

An item is offered to a labeler until it holds `labels_per_item` labels from different labelers; skips do not
count towards that. A label for an item that filled up while its labeler was still working on it is stored all
the same: nothing a person did is thrown away. Labels are checked completely before anything is written.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from rlhfkit.labeling.webapp.db import FLAGS, Item, Label, utcnow


class InvalidLabel(ValueError):
    """A submission that cannot be stored; the message is shown to the labeler as is."""


@dataclass(frozen=True)
class Submission:
    """A checked label for one item. ranking: response indices best first; likert, flags: per response."""

    ranking: list[int]
    likert: list[int]
    flags: list[list[str]]


def parse_submission(form: Mapping[str, Sequence[str]], k: int) -> Submission:
    """Read `rank_i` (position 1..K), `likert_i` (1..7) and `flag_i` (repeatable) for each response i.

    Raises InvalidLabel naming the first problem: a missing or non-integer field, ranks that are not a
    permutation of 1..K, a score outside 1-7, an unknown flag.
    """
    ranks = [_int_field(form, f"rank_{i}", f"rank of response {i + 1}") for i in range(k)]
    if sorted(ranks) != list(range(1, k + 1)):
        raise InvalidLabel(f"the ranks {ranks} are not a ranking: give each response a different rank from 1 to {k}")
    likert = [_int_field(form, f"likert_{i}", f"score of response {i + 1}") for i in range(k)]
    for i, score in enumerate(likert):
        if not 1 <= score <= 7:
            raise InvalidLabel(f"score of response {i + 1} is {score}: scores go from 1 to 7")
    flags = [sorted(set(form.get(f"flag_{i}", []))) for i in range(k)]
    for i, fl in enumerate(flags):
        unknown = [f for f in fl if f not in FLAGS]
        if unknown:
            raise InvalidLabel(f"response {i + 1} has unknown flag(s) {unknown}; allowed: {list(FLAGS)}")
    ranking = sorted(range(k), key=lambda i: ranks[i])  # position 1 first
    return Submission(ranking=ranking, likert=likert, flags=flags)


def _int_field(form: Mapping[str, Sequence[str]], key: str, what: str) -> int:
    values = form.get(key) or [""]
    try:
        return int(values[0])
    except ValueError:
        raise InvalidLabel(f"{what} is missing or not a whole number") from None


def display_order(item_id: str, labeler_id: int, k: int) -> list[int]:
    """Order in which this labeler sees the responses: shuffled per (item, labeler) against position bias,
    the same on every reload."""
    order = list(range(k))
    random.Random(f"{item_id}:{labeler_id}").shuffle(order)
    return order


def _open_items(labeler_id: int, labels_per_item: int):
    """Items this labeler has not labelled or skipped and that still need labels."""
    done = select(Label.item_id).where(Label.labeler_id == labeler_id)
    counts = (
        select(Label.item_id, func.count().label("n"))
        .where(Label.skipped.is_(False))
        .group_by(Label.item_id)
        .subquery()
    )
    return (
        select(Item)
        .outerjoin(counts, counts.c.item_id == Item.id)
        .where(Item.id.not_in(done), func.coalesce(counts.c.n, 0) < labels_per_item)
    )


def next_item(engine: Engine, labeler_id: int, labels_per_item: int) -> Item | None:
    with Session(engine, expire_on_commit=False) as s:
        return s.scalars(_open_items(labeler_id, labels_per_item).order_by(Item.position).limit(1)).first()


@dataclass(frozen=True)
class Progress:
    mine: int  # labels this labeler submitted (skips excluded)
    skipped: int
    left_for_me: int  # items still waiting for this labeler
    complete: int  # items holding all their labels
    total: int


def progress(engine: Engine, labeler_id: int, labels_per_item: int) -> Progress:
    with Session(engine) as s:
        mine = dict(s.execute(
            select(Label.skipped, func.count()).where(Label.labeler_id == labeler_id).group_by(Label.skipped)
        ).all())
        left = s.scalar(select(func.count()).select_from(_open_items(labeler_id, labels_per_item).subquery()))
        full = (
            select(Label.item_id).where(Label.skipped.is_(False)).group_by(Label.item_id)
            .having(func.count() >= labels_per_item).subquery()
        )
        complete = s.scalar(select(func.count()).select_from(full))
        total = s.scalar(select(func.count()).select_from(Item))
    return Progress(mine.get(False, 0), mine.get(True, 0), left or 0, complete or 0, total or 0)


def get_item(engine: Engine, iid: str) -> Item | None:
    with Session(engine, expire_on_commit=False) as s:
        return s.get(Item, iid)


def store_label(engine: Engine, labeler_id: int, iid: str, sub: Submission | None) -> bool:
    """Store a label (sub=None: a skip). Returns False when this labeler already labelled the item (a double
    submit): the first label stands and nothing is written."""
    label = Label(item_id=iid, labeler_id=labeler_id, skipped=sub is None, created_at=utcnow())
    if sub is not None:
        label.ranking_json = json.dumps(sub.ranking)
        label.likert_json = json.dumps(sub.likert)
        label.flags_json = json.dumps(sub.flags)
    try:
        with Session(engine) as s, s.begin():
            exists = s.scalar(select(Label.id).where(and_(Label.item_id == iid, Label.labeler_id == labeler_id)))
            if exists is not None:
                return False
            s.add(label)
    except IntegrityError:  # the same double submit, racing: the unique constraint decided
        return False
    return True
