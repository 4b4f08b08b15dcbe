"""Concurrency: a real uvicorn server on 127.0.0.1 with concurrent labelers, double submits and a crash-restart
that lose nothing; racing offers and submits that cannot overfill an item (threads on one engine)."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
from labeling_helpers import full_label, login, shown_item, write_candidates
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from rlhfkit.labeling.web import load_candidates
from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.labels import OFFER_LEASE, NotYours, Submission, offer_next_item, store_label

N_LABELERS, N_ITEMS = 8, 60


def count_labels(engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(db.Label))


def label_all(base_url: str, token: str, n_items: int) -> list[tuple[str, int, str]]:
    """One labeler as a person works: log in, then label the item the page shows until it shows none (at most
    n_items + 1 page views). Returns (item id, status, location) per post."""
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        csrf = login(client, token)
        out = []
        for _ in range(n_items + 1):
            iid = shown_item(client)
            if iid is None:
                break
            r = client.post("/label", data={"csrf": csrf, "item_id": iid, "action": "submit", **full_label(2)})
            out.append((iid, r.status_code, r.headers.get("location", "")))
        return out


def post_labels(base_url: str, token: str, ids: list[str]) -> list[tuple[int, str]]:
    """Post a label for each of `ids` without viewing the page first; returns (status, location) per post."""
    with httpx.Client(base_url=base_url, timeout=60.0) as client:
        csrf = login(client, token)
        return [(r.status_code, r.headers.get("location", "")) for r in (
            client.post("/label", data={"csrf": csrf, "item_id": iid, "action": "submit", **full_label(2)})
            for iid in ids)]


def item_ids(engine) -> list[str]:
    with Session(engine) as s:
        return list(s.scalars(select(db.Item.id).order_by(db.Item.position)))


def test_concurrent_labelers_lose_nothing(db_url, tmp_path, live_server):
    engine = db.open_db(db_url)
    cands = write_candidates(tmp_path / "c.jsonl", N_ITEMS, k=2)
    load_candidates(engine, cands)
    ids = item_ids(engine)
    tokens = [db.add_labeler(engine, f"labeler{i}") for i in range(N_LABELERS)]
    server = live_server(db_url, cands, labels_per_item=N_LABELERS)
    url = server.start()
    with ThreadPoolExecutor(N_LABELERS) as pool:
        results = list(pool.map(lambda t: label_all(url, t, N_ITEMS), tokens))
    assert all([iid for iid, _, _ in res] == ids for res in results)  # every labeler labelled every item, in order
    assert all((status, location) == (303, "/label") for res in results for _, status, location in res)
    assert count_labels(engine) == N_LABELERS * N_ITEMS
    with Session(engine) as s:  # one label per (item, labeler)
        pairs = s.execute(select(db.Label.item_id, db.Label.labeler_id)).all()
    assert len(set(pairs)) == N_LABELERS * N_ITEMS
    again = post_labels(url, tokens[0], ids[:3])  # a double submit is stored once
    assert again == [(303, "/label?already=1")] * 3 and count_labels(engine) == N_LABELERS * N_ITEMS
    engine.dispose()


def test_concurrent_labelers_fill_every_item_exactly(db_url, tmp_path, live_server):
    """More labelers than places: each item ends with exactly labels_per_item labels, none with more."""
    engine = db.open_db(db_url)
    cands = write_candidates(tmp_path / "c.jsonl", 12, k=2)
    tokens = [db.add_labeler(engine, f"labeler{i}") for i in range(N_LABELERS)]
    url = live_server(db_url, cands, labels_per_item=3).start()
    with ThreadPoolExecutor(N_LABELERS) as pool:
        results = list(pool.map(lambda t: label_all(url, t, 12), tokens))
    assert all(status == 303 for res in results for _, status, _ in res)
    with Session(engine) as s:
        per_item = Counter(s.scalars(select(db.Label.item_id)))
    assert sorted(per_item) == sorted(item_ids(engine)) and set(per_item.values()) == {3}
    engine.dispose()


def race(fn, args) -> list:
    """fn(arg) for every arg, each in its own thread, all released at the same moment (a barrier)."""
    args = list(args)
    barrier = threading.Barrier(len(args))

    def go(arg):
        barrier.wait(timeout=10)
        return fn(arg)

    with ThreadPoolExecutor(len(args)) as pool:
        return list(pool.map(go, args))


def test_racing_double_submits_store_one_label(db_url, candidates):
    engine = db.open_db(db_url)
    load_candidates(engine, candidates)
    labeler = db.login(engine, db.add_labeler(engine, "racer"))[1].labeler_id
    iid = offer_next_item(engine, labeler, 3).id
    sub = Submission([0, 1, 2], [3, 5, 1], [[], [], []])
    stored = race(lambda _: store_label(engine, labeler, iid, sub, 3), range(6))
    assert stored.count(True) == 1 and count_labels(engine) == 1
    engine.dispose()


def test_racing_offers_never_hold_more_places_than_an_item_has(db_url, candidates):
    engine = db.open_db(db_url)
    load_candidates(engine, candidates)  # 3 items
    labelers = [db.login(engine, db.add_labeler(engine, f"l{i}"))[1].labeler_id for i in range(6)]
    offered = Counter(race(lambda labeler: offer_next_item(engine, labeler, 2).id, labelers))
    assert offered == Counter({iid: 2 for iid in item_ids(engine)})  # each item to exactly 2 of the 6
    engine.dispose()


def test_racing_submits_never_overfill_an_item(db_url, candidates):
    """Six labelers whose offers of one item all expired (each pair was offered it after the previous pair's
    lease ran out) submit at the same moment: exactly labels_per_item = 2 labels are stored."""
    engine = db.open_db(db_url)
    load_candidates(engine, candidates)
    labelers = [db.login(engine, db.add_labeler(engine, f"l{i}"))[1].labeler_id for i in range(6)]
    start = db.utcnow() - 10 * OFFER_LEASE
    offered = {offer_next_item(engine, lab, 2, now=start + (i // 2) * 2 * OFFER_LEASE).id
               for i, lab in enumerate(labelers)}
    assert len(offered) == 1
    iid = offered.pop()

    def submit(labeler):
        try:
            return store_label(engine, labeler, iid, Submission([0, 1, 2], [4, 4, 4], [[], [], []]), 2)
        except NotYours as err:
            return str(err)

    results = race(submit, labelers)
    assert results.count(True) == 2 and count_labels(engine) == 2
    assert all("already has the 2 labels it needs" in r for r in results if r is not True)
    engine.dispose()


def test_a_double_submit_of_a_now_full_item_is_reported_as_already_stored(db_url, candidates):
    engine = db.open_db(db_url)
    load_candidates(engine, candidates)
    labeler = db.login(engine, db.add_labeler(engine, "twice"))[1].labeler_id
    iid = offer_next_item(engine, labeler, 1).id
    sub = Submission([0, 1, 2], [4, 4, 4], [[], [], []])
    assert store_label(engine, labeler, iid, sub, 1) is True
    assert store_label(engine, labeler, iid, sub, 1) is False  # not "not offered" (offer used) nor "full"
    engine.dispose()


def test_a_crash_and_restart_loses_nothing_submitted(db_url, tmp_path, live_server):
    cands = write_candidates(tmp_path / "c.jsonl", 10, k=3)
    engine = db.open_db(db_url)
    token = db.add_labeler(engine, "steady")
    first = live_server(db_url, cands)
    with httpx.Client(base_url=first.start(), timeout=30.0) as client:
        csrf = login(client, token)
        ids = item_ids(engine)
        for iid in ids[:4]:
            assert shown_item(client) == iid
            r = client.post("/label", data={"csrf": csrf, "item_id": iid, "action": "submit", **full_label(3)})
            assert r.status_code == 303
        printed = first.kill()  # SIGKILL mid-session: no clean shutdown
        assert "admin login token" in printed
        second = live_server(db_url, cands)
        client.base_url = httpx.URL(second.start())  # the same browser session (cookie) continues
        page = client.get("/label").text
        assert 'Labeled by you: <span id="mine">4</span>' in page and "items complete: 0 / 10" in page
        assert f'name="item_id" value="{ids[4]}"' in page
        r = client.post("/label", data={"csrf": csrf, "item_id": ids[4], "action": "submit", **full_label(3)})
        assert r.status_code == 303
    assert count_labels(engine) == 5
    assert "admin login token" not in second.kill()  # created once, on first start only
    engine.dispose()
