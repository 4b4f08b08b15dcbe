"""A real uvicorn server on 127.0.0.1: concurrent labelers, double submits and a crash-restart lose nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
from labeling_helpers import full_label, login, write_candidates
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhfkit.labeling.web import load_candidates
from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.labels import Submission, store_label

N_LABELERS, N_ITEMS = 8, 100


def count_labels(engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(db.Label))


def label_all(base_url: str, token: str, ids: list[str]) -> list[tuple[int, str]]:
    """One labeler: log in, then post a label for each item (a bounded loop); returns (status, location)."""
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        csrf = login(client, token)
        out = []
        for iid in ids:
            r = client.post("/label", data={"csrf": csrf, "item_id": iid, "action": "submit", **full_label(2)})
            out.append((r.status_code, r.headers.get("location", "")))
        return out


def test_concurrent_labelers_lose_nothing(db_url, tmp_path, live_server):
    engine = db.open_db(db_url)
    cands = write_candidates(tmp_path / "c.jsonl", N_ITEMS, k=2)
    load_candidates(engine, cands)
    with Session(engine) as s:
        ids = list(s.scalars(select(db.Item.id).order_by(db.Item.position)))
    tokens = [db.add_labeler(engine, f"labeler{i}") for i in range(N_LABELERS)]
    server = live_server(db_url, cands, labels_per_item=N_LABELERS)
    url = server.start()
    with ThreadPoolExecutor(N_LABELERS) as pool:
        results = list(pool.map(lambda t: label_all(url, t, ids), tokens))
    assert all(r == (303, "/label") for res in results for r in res)
    assert count_labels(engine) == N_LABELERS * N_ITEMS
    with Session(engine) as s:  # one label per (item, labeler)
        pairs = s.execute(select(db.Label.item_id, db.Label.labeler_id)).all()
    assert len(set(pairs)) == N_LABELERS * N_ITEMS
    again = label_all(url, tokens[0], ids[:3])  # a double submit is stored once
    assert again == [(303, "/label?already=1")] * 3 and count_labels(engine) == N_LABELERS * N_ITEMS
    engine.dispose()


def test_racing_double_submits_store_one_label(db_url, candidates):
    engine = db.open_db(db_url)
    load_candidates(engine, candidates)
    labeler = db.login(engine, db.add_labeler(engine, "racer"))[1].labeler_id
    with Session(engine) as s:
        iid = s.scalar(select(db.Item.id).where(db.Item.prompt == "Second prompt"))
    barrier = threading.Barrier(6)

    def go(_):
        barrier.wait(timeout=10)
        return store_label(engine, labeler, iid, Submission([1, 0], [3, 5], [[], []]))

    with ThreadPoolExecutor(6) as pool:
        stored = list(pool.map(go, range(6)))
    assert stored.count(True) == 1 and count_labels(engine) == 1
    engine.dispose()


def test_a_crash_and_restart_loses_nothing_submitted(db_url, tmp_path, live_server):
    cands = write_candidates(tmp_path / "c.jsonl", 10, k=3)
    engine = db.open_db(db_url)
    token = db.add_labeler(engine, "steady")
    first = live_server(db_url, cands)
    with httpx.Client(base_url=first.start(), timeout=30.0) as client:
        csrf = login(client, token)
        with Session(engine) as s:
            ids = list(s.scalars(select(db.Item.id).order_by(db.Item.position)))
        for iid in ids[:4]:
            r = client.post("/label", data={"csrf": csrf, "item_id": iid, "action": "submit", **full_label(3)})
            assert r.status_code == 303
        printed = first.kill()  # SIGKILL mid-session: no clean shutdown
        assert "admin login token" in printed
        second = live_server(db_url, cands)
        client.base_url = httpx.URL(second.start())  # the same browser session (cookie) continues
        page = client.get("/label").text
        assert 'Labeled by you: <span id="mine">4</span>' in page and "items complete: 0 / 10" in page
        r = client.post("/label", data={"csrf": csrf, "item_id": ids[4], "action": "submit", **full_label(3)})
        assert r.status_code == 303
    assert count_labels(engine) == 5
    assert "admin login token" not in second.kill()  # created once, on first start only
    engine.dispose()
