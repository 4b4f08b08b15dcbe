"""What a labeler does: get the next item, submit (or skip) a label, see their progress.

An item needs `labels_per_item` labels from different labelers, and never gets more. GET /label offers a labeler
one item and records the offer (db.Offer); a live offer holds one of the item's places for OFFER_LEASE, so an
item is offered to a new labeler only while its labels plus the other labelers' live offers leave a place, and
concurrent labelers cannot overfill it. A labeler may label only an item offered to them. The label replaces the
offer; a skip releases the place and is stored (it does not count towards the item's labels, and the item is
not offered to that labeler again). A label for an item that has no place left for its labeler (their offer
expired and others filled the item or hold its places) is refused with nothing written: the limit is an
invariant. Offering and storing each check and write in one transaction holding the item's row lock (SQLite:
BEGIN IMMEDIATE; PostgreSQL: SELECT ... FOR UPDATE), so racing requests cannot both take the last place.
Labels are checked completely before anything is written.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from sqlalchemy import and_, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased

from rlhfkit.labeling.webapp.db import FLAGS, Item, Label, Offer, utcnow

# Long enough to read a prompt and rank and score nine responses; an item left open in a tab is offered to
# someone else after it (and its labeler is then refused if the item filled up meanwhile).
OFFER_LEASE = dt.timedelta(minutes=30)
ITEM_ID = re.compile(r"[0-9a-f]{1,32}")  # what db.item_id makes (a hex digest) and the id column holds


class InvalidLabel(ValueError):
    """A submission that cannot be stored; the message is shown to the labeler as is."""

    status = 400


class NotYours(InvalidLabel):
    """A well-formed label for an item this labeler may not label now: it was not offered to them, or it has no
    place left for them. Nothing is written."""

    status = 409


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


def _label_counts():
    """Labels (skips excluded) per item."""
    return (select(Label.item_id, func.count().label("n")).where(Label.skipped.is_(False))
            .group_by(Label.item_id).subquery())


def _live(offer: Any, now: dt.datetime):
    """The condition that an offer (db.Offer or an alias of it) still holds its place at `now`."""
    return offer.offered_at > now - OFFER_LEASE


def _held_by_others(labeler_id: int, now: dt.datetime):
    """The condition that an offer is another labeler's live offer: it holds one of its item's places."""
    return and_(Offer.labeler_id != labeler_id, _live(Offer, now))


def _held_places(labeler_id: int, now: dt.datetime):
    """Live offers of the other labelers per item: each holds one of the item's places until it expires."""
    return (select(Offer.item_id, func.count().label("n"))
            .where(_held_by_others(labeler_id, now))
            .group_by(Offer.item_id).subquery())


def _open_items(labeler_id: int, labels_per_item: int, now: dt.datetime):
    """Items this labeler has not labelled or skipped and that have a place for them."""
    done = select(Label.item_id).where(Label.labeler_id == labeler_id)
    labels, held = _label_counts(), _held_places(labeler_id, now)
    taken = func.coalesce(labels.c.n, 0) + func.coalesce(held.c.n, 0)
    return (
        select(Item)
        .outerjoin(labels, labels.c.item_id == Item.id)
        .outerjoin(held, held.c.item_id == Item.id)
        .where(Item.id.not_in(done), taken < labels_per_item)
    )


def _places_taken(s: Session, iid: str, labeler_id: int, now: dt.datetime) -> tuple[int, int]:
    """Places of one item not available to this labeler: (its labels, the other labelers' live offers)."""
    labels = s.scalar(select(func.count()).select_from(Label).where(Label.item_id == iid, Label.skipped.is_(False)))
    held = s.scalar(select(func.count()).select_from(Offer).where(
        Offer.item_id == iid, _held_by_others(labeler_id, now)))
    return labels, held


def _lock_item(s: Session, iid: str) -> bool:
    """Lock the item's row until the transaction ends (PostgreSQL; SQLite's BEGIN IMMEDIATE already holds the
    whole database, and SQLAlchemy leaves FOR UPDATE out there). Offers and labels of one item are decided
    under this lock, one transaction at a time. False when there is no such item."""
    return s.scalar(select(Item.id).where(Item.id == iid).with_for_update()) is not None


def offer_next_item(engine: Engine, labeler_id: int, labels_per_item: int, now: dt.datetime | None = None
                    ) -> Item | None:
    """The item to show this labeler, its offer recorded (or renewed: a reload restarts the lease); None when
    none is left for them.

    The item they hold a live offer for comes first (a reload shows the same item), then the open items in load
    order. Each try is its own transaction that locks the candidate and counts its places again: a concurrent
    offer or label may have taken the last one while the lock was awaited. The next try passes over it, so
    there are at most as many tries as items; one lock per transaction means two labelers never wait on each
    other in turn.
    """
    now = now or utcnow()
    mine = aliased(Offer)
    candidates = (
        _open_items(labeler_id, labels_per_item, now)
        .outerjoin(mine, and_(mine.item_id == Item.id, mine.labeler_id == labeler_id,
                              _live(mine, now)))
        .order_by(mine.item_id.is_(None), Item.position)  # False (has my live offer) sorts first
        .limit(1)
    )
    passed_over: list[str] = []
    while True:
        with Session(engine, expire_on_commit=False) as s, s.begin():
            item = s.scalars(candidates.where(Item.id.not_in(passed_over))).first()
            if item is None:
                return None
            _lock_item(s, item.id)
            if sum(_places_taken(s, item.id, labeler_id, now)) >= labels_per_item:
                passed_over.append(item.id)
                continue
            offer = s.get(Offer, (item.id, labeler_id))
            if offer is None:
                s.add(Offer(item_id=item.id, labeler_id=labeler_id, offered_at=now))
            else:
                offer.offered_at = now
            return item


@dataclass(frozen=True)
class Progress:
    mine: int  # labels this labeler submitted (skips excluded)
    skipped: int
    left_for_me: int  # items with a place for this labeler now (the one shown included)
    complete: int  # items holding all their labels
    total: int


def progress(engine: Engine, labeler_id: int, labels_per_item: int, now: dt.datetime | None = None) -> Progress:
    now = now or utcnow()
    with Session(engine) as s:
        mine = dict(s.execute(
            select(Label.skipped, func.count()).where(Label.labeler_id == labeler_id).group_by(Label.skipped)
        ).all())
        left = s.scalar(select(func.count()).select_from(_open_items(labeler_id, labels_per_item, now).subquery()))
        full = (
            select(Label.item_id).where(Label.skipped.is_(False)).group_by(Label.item_id)
            .having(func.count() >= labels_per_item).subquery()
        )
        complete = s.scalar(select(func.count()).select_from(full))
        total = s.scalar(select(func.count()).select_from(Item))
    return Progress(mine.get(False, 0), mine.get(True, 0), left or 0, complete or 0, total or 0)


def get_item(engine: Engine, iid: str) -> Item | None:
    """The item with id `iid`; None for an unknown id, including any string no item id could be (PostgreSQL
    would refuse a NUL byte with an error, and a client posts whatever it likes)."""
    if not ITEM_ID.fullmatch(iid):
        return None
    with Session(engine, expire_on_commit=False) as s:
        return s.get(Item, iid)


def store_label(engine: Engine, labeler_id: int, iid: str, sub: Submission | None, labels_per_item: int,
                now: dt.datetime | None = None) -> bool:
    """Store a label (sub=None: a skip) in place of this labeler's offer of the item. Returns False when they
    already labelled or skipped it (a double submit): the first label stands and nothing is written. Raises
    NotYours, writing nothing, when the item was not offered to them or (for a label) has no place left for
    them; InvalidLabel for an unknown item."""
    now = now or utcnow()
    label = Label(item_id=iid, labeler_id=labeler_id, skipped=sub is None, created_at=now)
    if sub is not None:
        label.ranking_json = json.dumps(sub.ranking)
        label.likert_json = json.dumps(sub.likert)
        label.flags_json = json.dumps(sub.flags)
    with Session(engine) as s, s.begin():
        if not _lock_item(s, iid):
            raise InvalidLabel(f"unknown item id {iid!r}")
        if s.scalar(select(Label.id).where(Label.item_id == iid, Label.labeler_id == labeler_id)) is not None:
            return False
        offer = s.get(Offer, (iid, labeler_id))
        if offer is None:
            raise NotYours("this item was not offered to you, so nothing was saved; label the item the page "
                           "shows you")
        if sub is not None:
            _check_place(*_places_taken(s, iid, labeler_id, now), labels_per_item)
        s.delete(offer)
        s.add(label)
    return True


def _check_place(labels: int, held: int, labels_per_item: int) -> None:
    """Raise NotYours when an item's labels and the other labelers' live offers leave no place for a label.
    That happens only to a labeler whose own offer expired (a live offer keeps its place)."""
    minutes = int(OFFER_LEASE.total_seconds() // 60)
    if labels >= labels_per_item:
        raise NotYours(f"this item already has the {labels_per_item} labels it needs, so nothing was saved (it "
                       f"was shown to you more than {minutes} minutes ago and others labelled it meanwhile)")
    if labels + held >= labels_per_item:
        raise NotYours(f"this item was shown to you more than {minutes} minutes ago and its places went to other "
                       "labelers, so nothing was saved")
