"""Collected labels -> `rankings` or `preferences` records (docs/formats.md) with provenance.

Records are sorted by (item id, labeler name, response pair) and carry no export time, so exporting the same
database twice gives byte-identical files. Skips are not exported.
"""

from __future__ import annotations

import datetime as dt
import json
from itertools import combinations

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from rlhfkit.labeling.webapp.db import Item, Label, Labeler

FORMATS = ("preferences", "rankings")


def iso_utc(t: dt.datetime) -> str:
    """Naive-UTC database time -> ISO-8601 with an explicit Z."""
    return t.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _labels(engine: Engine) -> list[tuple[Item, Label, Labeler]]:
    with Session(engine) as s:
        rows = s.execute(
            select(Item, Label, Labeler)
            .join(Label, Label.item_id == Item.id)
            .join(Labeler, Labeler.id == Label.labeler_id)
            .where(Label.skipped.is_(False))
            .order_by(Item.id, Labeler.name)
        ).all()
        s.expunge_all()
    return [tuple(r) for r in rows]


def ranking_record(item: Item, label: Label, labeler: Labeler) -> dict:
    likert, flags = json.loads(label.likert_json), json.loads(label.flags_json)
    provenance = {"source": "human", "labeler": labeler.name, "labeler_id": labeler.id,
                  "time": iso_utc(label.created_at), "likert": likert, "flags": flags,
                  "item_id": item.id, "policy": item.policy}
    return {"prompt": item.prompt, "responses": item.responses, "ranking": json.loads(label.ranking_json),
            "likert": likert, "label": provenance}


def ranking_to_preferences(rec: dict) -> list[dict]:
    """A ranking of K -> its C(K, 2) (chosen, rejected) pairs, best-first; each pair keeps its own Likert
    scores and flags. Pairs of identical text carry no preference and are dropped."""
    out = []
    prov = rec["label"]
    for a, b in combinations(rec["ranking"], 2):  # a is ranked above b
        chosen, rejected = rec["responses"][a], rec["responses"][b]
        if chosen == rejected:
            continue
        label = dict(prov, pair=[a, b], k=len(rec["responses"]),
                     likert={"chosen": prov["likert"][a], "rejected": prov["likert"][b]},
                     flags={"chosen": prov["flags"][a], "rejected": prov["flags"][b]})
        out.append({"prompt": rec["prompt"], "chosen": chosen, "rejected": rejected, "label": label})
    return out


def export_records(engine: Engine, fmt: str) -> list[dict]:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {FORMATS}")
    rankings = [ranking_record(*row) for row in _labels(engine)]
    if fmt == "rankings":
        return rankings
    return [pair for rec in rankings for pair in ranking_to_preferences(rec)]


def to_jsonl(records: list[dict]) -> str:
    """The same bytes `rlhfkit.data.write_jsonl` writes, for the download link."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
