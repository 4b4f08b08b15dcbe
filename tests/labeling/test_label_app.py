"""The labelling app over a real database (SQLite always, PostgreSQL when available) via FastAPI's TestClient."""

from __future__ import annotations

import datetime as dt
import json
from math import comb

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from labeling_helpers import ITEM_RE, SCRIPT, Env, csrf_of, full_label, shown_item
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from rlhfkit.errors import DataError
from rlhfkit.labeling.web import export_main, load_candidates
from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.labels import OFFER_LEASE


@pytest.fixture
def env(db_url, candidates):
    e = Env(db_url, candidates)
    yield e
    e.engine.dispose()


def submit(client, csrf, item, k, **extra):
    data = {"csrf": csrf, "item_id": item, "action": "submit", **full_label(k), **extra}
    return client.post("/label", data=data, follow_redirects=False)


def skip(client, csrf, item):
    return client.post("/label", data={"csrf": csrf, "item_id": item, "action": "skip"}, follow_redirects=False)


def expire_offer(env, name: str, item: str) -> None:
    """Make `name`'s offer of `item` older than the lease, as if they had left the page open too long."""
    with Session(env.engine) as s, s.begin():
        labeler = s.scalar(select(db.Labeler.id).where(db.Labeler.name == name))
        s.execute(update(db.Offer).where(db.Offer.labeler_id == labeler, db.Offer.item_id == item)
                  .values(offered_at=db.utcnow() - OFFER_LEASE - dt.timedelta(seconds=1)))


# ------------------------------------------------------------------------------------------------ access
def test_every_route_needs_a_signed_in_session(env):
    anon = TestClient(env.app)
    forged = TestClient(env.app, cookies={"rlhfkit_session": "not-a-real-session"})
    routes = [(m, r.path) for r in env.app.routes if isinstance(r, APIRoute) for m in r.methods]
    assert {p for _, p in routes} >= {"/", "/label", "/admin", "/admin/export", "/logout"}
    for client in (anon, forged):
        for method, path in routes:
            if path == "/login":
                continue
            r = client.request(method, path, follow_redirects=False)
            expected = (303, "/login") if method == "GET" else (401, None)
            assert (r.status_code, r.headers.get("location")) == expected, (method, path)
    assert anon.get("/openapi.json").status_code == 404 and anon.get("/docs").status_code == 404


def test_a_labeler_cannot_reach_admin_pages_or_exports(env):
    client, _ = env.client("alice")
    for path in ("/admin", "/admin/export?format=preferences", "/admin/export?format=rankings"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 403 and "admin only" in r.text and "chosen" not in r.text
    admin, _ = env.client(None)
    assert admin.get("/admin").status_code == 200


def test_wrong_token_and_logout(env):
    client = TestClient(env.app)
    r = client.post("/login", data={"csrf": csrf_of(client.get("/login").text), "token": "guess"},
                    follow_redirects=False)
    assert r.status_code == 401 and "rlhfkit_session" not in r.headers.get("set-cookie", "")
    r = client.post("/login", data={"csrf": csrf_of(r.text), "token": db.add_labeler(env.engine, "bob")},
                    follow_redirects=False)
    assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
    cookie = client.cookies["rlhfkit_session"]
    csrf = csrf_of(client.get("/label").text)
    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    stale = TestClient(env.app, cookies={"rlhfkit_session": cookie})
    assert stale.get("/label", follow_redirects=False).headers["location"] == "/login"


def test_admin_token_is_created_on_first_start_only(env):
    assert env.admin_token is not None
    assert db.ensure_admin(env.engine) is None
    with Session(env.engine) as s:  # only the hash is stored
        hashes = list(s.scalars(select(db.Labeler.token_hash)))
    assert db.sha256(env.admin_token) in hashes and env.admin_token not in hashes


# ------------------------------------------------------------------------------------------------ untrusted text
def test_model_text_is_shown_as_plain_text(env):
    client, _ = env.client("alice")
    r = client.get("/label")
    html = r.text
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html and SCRIPT not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "<img" not in html
    assert "**bold** [x](javascript:alert(1))" in html and "<strong>bold" not in html  # markdown not rendered
    assert "Describe &lt;b&gt;this&lt;/b&gt; film" in html
    assert html.count("<script") == 1 and '<script src="/static/label.js"></script>' in html
    assert "script-src 'self'" in r.headers["content-security-policy"]


# ------------------------------------------------------------------------------------------------ CSRF and validation
def test_posts_without_the_sessions_csrf_token_are_refused(env):
    client, csrf = env.client("alice")
    _, other_csrf = env.client("bob")
    item = env.item_ids()[1]
    for bad in ("", "forged", other_csrf):
        r = submit(client, bad, item, 2)
        assert r.status_code == 403 and "CSRF" in r.text
    assert client.post("/logout", data={}, follow_redirects=False).status_code == 403
    assert env.n_labels() == 0


@pytest.mark.parametrize(
    "change, message",
    [
        ({"rank_0": "1", "rank_1": "1"}, "not a ranking"),
        ({"likert_1": "8"}, "score of response 2 is 8: scores go from 1 to 7"),
        ({"likert_0": "0"}, "score of response 1 is 0"),
        ({"item_id": "no-such-item"}, "unknown item id"),
        ({"flag_0": "boring"}, "unknown flag"),
    ],
)
def test_invalid_labels_are_rejected_and_nothing_is_written(env, change, message):
    client, csrf = env.client("alice")
    r = submit(client, csrf, shown_item(client), 3, **change)
    assert r.status_code == 400 and "not saved" in r.text and message in r.text.replace("&#39;", "'")
    assert env.n_labels() == 0


# ------------------------------------------------------------------------------------------------ labelling flow
def test_submit_moves_progress_and_a_double_submit_is_stored_once(env):
    client, csrf = env.client("alice")
    first = ITEM_RE.search(client.get("/label").text).group(1)
    assert 'Labeled by you: <span id="mine">0</span>' in client.get("/label").text
    r = submit(client, csrf, first, 3, flag_1="harmful")
    assert (r.status_code, r.headers["location"]) == (303, "/label")
    page = client.get("/label").text
    assert 'Labeled by you: <span id="mine">1</span>' in page and 'left for you: <span id="left">2</span>' in page
    assert ITEM_RE.search(page).group(1) != first
    r = submit(client, csrf, first, 3, likert_0="7")
    assert (r.status_code, r.headers["location"]) == (303, "/label?already=1")
    assert env.n_labels() == 1
    stored = db.Label
    with Session(env.engine) as s:
        label = s.scalar(select(stored))
    assert json.loads(label.likert_json) == [4, 4, 4] and json.loads(label.flags_json) == [[], ["harmful"], []]


def test_a_shown_item_holds_a_place_until_it_is_labelled_skipped_or_expired(env):
    ids = env.item_ids()  # labels_per_item = 2
    (a, ca), (b, cb), (c, cc) = env.client("a"), env.client("b"), env.client("c")
    assert shown_item(a) == shown_item(b) == ids[0]
    assert shown_item(c) == ids[1]  # both places of item 0 are held by a's and b's offers
    assert shown_item(a) == ids[0]  # a reload shows the same item
    assert skip(a, ca, ids[0]).headers["location"] == "/label"
    assert shown_item(a) == ids[1]  # a skipped item is never offered to a again, and the skip freed a place
    d, cd = env.client("d")
    assert shown_item(d) == ids[0]
    assert submit(b, cb, ids[0], 3).status_code == submit(d, cd, ids[0], 3).status_code == 303
    e, _ = env.client("e")
    assert shown_item(e) == ids[2]  # item 0 is full, item 1 held by a and c
    expire_offer(env, "c", ids[1])
    f, cf = env.client("f")
    assert shown_item(f) == ids[1]  # c's offer expired: its place went to f
    r = submit(c, cc, ids[1], 2)
    assert r.status_code == 409 and "nothing was saved" in r.text and env.n_labels() == 3  # a's skip, b, d
    assert submit(a, ca, ids[1], 2).status_code == submit(f, cf, ids[1], 2).status_code == 303
    page = c.get("/label").text
    assert "items complete: 2 / 3" in page and ITEM_RE.search(page).group(1) == ids[2]


def test_a_label_for_an_item_not_offered_is_refused(env):
    ids = env.item_ids()
    client, csrf = env.client("alice")
    assert shown_item(client) == ids[0]
    for r in (submit(client, csrf, ids[1], 2), skip(client, csrf, ids[2])):
        assert r.status_code == 409 and "was not offered to you" in r.text
    assert env.n_labels() == 0
    assert submit(client, csrf, ids[0], 3).headers["location"] == "/label"


def test_an_expired_offer_is_honoured_while_the_item_has_room(env):
    client, csrf = env.client("alice")
    item = shown_item(client)
    expire_offer(env, "alice", item)
    assert submit(client, csrf, item, 3).headers["location"] == "/label" and env.n_labels() == 1


def test_a_label_for_an_item_that_filled_up_meanwhile_is_refused(env):
    item = env.item_ids()[0]  # labels_per_item = 2
    (a, ca), (b, cb) = env.client("a"), env.client("b")  # logging in shows each of them the first item
    assert shown_item(a) == shown_item(b) == item
    expire_offer(env, "a", item)  # a left the page open; c gets a's place, and c and b label the item
    c, cc = env.client("c")
    assert shown_item(c) == item
    assert submit(b, cb, item, 3).status_code == submit(c, cc, item, 3).status_code == 303
    r = submit(a, ca, item, 3)
    assert r.status_code == 409 and "already has the 2 labels it needs" in r.text
    assert env.n_labels() == 2
    assert skip(a, ca, item).headers["location"] == "/label"  # a may still put it aside


def test_labelers_do_not_see_each_others_labels(env):
    (a, ca), (b, _) = env.client("a"), env.client("b")
    iid = env.item_ids()[0]
    assert shown_item(a) == iid
    assert submit(a, ca, iid, 3, flag_0="harmful", flag_2="untrue", likert_1="7").status_code == 303
    page = b.get("/label").text
    assert ITEM_RE.search(page).group(1) == iid
    assert "checked" not in page and "selected" not in page
    assert 'Labeled by you: <span id="mine">0</span>' in page


# ------------------------------------------------------------------------------------------------ loading, export, admin
def test_loading_the_same_candidates_twice_adds_nothing(env, candidates, tmp_path):
    assert load_candidates(env.engine, candidates) == 0 and len(env.item_ids()) == 3
    bad = tmp_path / "ten.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "responses": [str(i) for i in range(10)], "policy": "x"}) + "\n")
    with pytest.raises(DataError, match="record 1 has 10 responses"):
        load_candidates(env.engine, bad)


def _label_everything(env):
    ids = env.item_ids()
    (a, ca), (b, cb) = env.client("ann"), env.client("ben")
    assert shown_item(a) == shown_item(b) == ids[0]
    statuses = [submit(a, ca, ids[0], 3, rank_0="1", rank_1="2", rank_2="3", flag_0="harmful"),
                submit(b, cb, ids[0], 3, rank_0="3", rank_1="2", rank_2="1", likert_2="6")]  # ann reversed
    assert shown_item(a) == shown_item(b) == ids[1]
    statuses += [submit(a, ca, ids[1], 2, rank_0="2", rank_1="1"), submit(b, cb, ids[1], 2, rank_0="2", rank_1="1")]
    assert shown_item(a) == ids[2]
    statuses.append(submit(a, ca, ids[2], 4))
    assert [r.status_code for r in statuses] == [303] * 5
    return ids


def test_export_is_complete_deterministic_and_readable_by_the_trainers(env, tmp_path):
    from rlhfkit.data import read_records

    _label_everything(env)
    out = {}
    for fmt in ("preferences", "rankings"):
        for n in (1, 2):
            path = tmp_path / f"{fmt}{n}.jsonl"
            export_main(["--db", env.url, "--format", fmt, "--out", str(path)])
            out[fmt, n] = path.read_bytes()
        assert out[fmt, 1] == out[fmt, 2]
    rankings = read_records(tmp_path / "rankings1.jsonl", "rankings")
    prefs = read_records(tmp_path / "preferences1.jsonl", "preferences")
    assert len(rankings) == 5
    assert len(prefs) == comb(3, 2) * 2 + comb(2, 2) * 2 + comb(4, 2)
    first = rankings[0]["label"]
    assert first["source"] == "human" and first["labeler"] in ("ann", "ben") and first["time"].endswith("Z")
    assert set(first) >= {"labeler", "time", "likert", "flags", "item_id", "policy"}
    ann_item0 = next(r for r in rankings
                     if r["label"]["labeler"] == "ann" and r["prompt"].startswith("Describe"))
    assert ann_item0["ranking"] == [0, 1, 2] and ann_item0["label"]["flags"] == [["harmful"], [], []]
    admin, _ = env.client(None)
    assert admin.get("/admin/export?format=preferences").content == out["preferences", 1]


def test_admin_page_shows_progress_agreement_and_disputed_items(env):
    ids = _label_everything(env)
    admin, _ = env.client(None)
    html = admin.get("/admin").text
    # Item 0: ann and ben disagree on all 3 pairs; item 1: they agree on its 1 pair -> 1 of 4 = 25.0%.
    assert "over 4 comparisons): <strong>25.0%</strong>" in html
    assert "<td>ann</td><td>3</td><td>0</td>" in html and "<td>ben</td><td>2</td><td>0</td>" in html
    assert f"<code>{ids[0]}</code></td><td>2</td><td>100.0%</td>" in html
    assert "Describe &lt;b&gt;this&lt;/b&gt; film" in html
    assert "Krippendorff" in html
