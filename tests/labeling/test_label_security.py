"""Hostile clients against the labelling app: oversized and malformed requests, forms sent from other sites,
token guessing, the sessions of a revoked labeler. None of them gets a 500, and none of them writes anything."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from labeling_helpers import Env, csrf_of, full_label, shown_item, write_candidates

from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.auth_routes import LOGIN_COOKIE, LoginThrottle
from rlhfkit.labeling.webapp.deps import MAX_BODY_BYTES, MAX_FIELD_BYTES, MAX_FORM_FIELDS, same_origin

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture
def env(tmp_path, candidates):
    """SQLite only: for the checks that happen before the database is reached."""
    e = Env(f"sqlite:///{tmp_path / 'labels.db'}", candidates)
    yield e
    e.engine.dispose()


@pytest.fixture
def both_env(db_url, candidates):
    """On each back end: for hostile input that reaches the database."""
    e = Env(db_url, candidates)
    yield e
    e.engine.dispose()


class Clock:
    """A fake monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def try_login(client: TestClient, token: str, **headers):
    """Fetch the login form and post `token` with its CSRF value, as a browser does."""
    csrf = csrf_of(client.get("/login").text)
    return client.post("/login", data={"csrf": csrf, "token": token}, headers=headers, follow_redirects=False)


# ------------------------------------------------------------------------------------------------ request size
def test_a_body_over_the_cap_is_refused_with_413(env):
    anon = TestClient(env.app)
    big = b"token=" + b"x" * MAX_BODY_BYTES
    for path in ("/login", "/label", "/logout", "/no-such-page"):
        r = anon.post(path, content=big, headers=FORM)
        assert r.status_code == 413 and "too large" in r.text, path
        assert r.headers["x-frame-options"] == "DENY"  # the refusal is a response like any other


async def _post_endless_body(app, chunk: int = 4096) -> tuple[int, int]:
    """POST /login with a chunked body that never ends (no Content-Length) straight into the ASGI app; returns
    the status answered and the bytes the app read before answering."""
    pulled = 0
    started: list[dict] = []

    async def receive():
        nonlocal pulled
        pulled += chunk
        return {"type": "http.request", "body": b"x" * chunk, "more_body": True}

    async def send(message):
        if message["type"] == "http.response.start":
            started.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/login", "raw_path": b"/login", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/x-www-form-urlencoded"),
                         (b"transfer-encoding", b"chunked")],
             "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}
    await asyncio.wait_for(app(scope, receive, send), timeout=20)
    return started[0]["status"], pulled


def test_a_streamed_body_without_content_length_is_cut_at_the_cap(env):
    status, pulled = asyncio.run(_post_endless_body(env.app))
    assert status == 413 and pulled <= MAX_BODY_BYTES + 4096


def _raw_request(url: str, head: str, body_chunks: list[bytes]) -> tuple[str, float]:
    """Send a hand-made request to a live server; returns its status line and the seconds it took."""
    host, port = url.removeprefix("http://").split(":")
    t0 = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        try:
            for part in body_chunks:
                sock.sendall(part)
        except OSError:  # the server answered and closed while we were still sending: that is the point
            pass
        reply = b""
        while b"\r\n" not in reply:
            data = sock.recv(4096)
            if not data:
                break
            reply += data
    return reply.split(b"\r\n")[0].decode(), time.monotonic() - t0


def test_a_live_server_refuses_oversized_bodies_at_once(tmp_path, live_server):
    url = live_server(f"sqlite:///{tmp_path / 'labels.db'}").start()
    head = "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    # Declared: a gigabyte announced, nothing sent; answered from the header alone.
    status, seconds = _raw_request(url, head + "Content-Length: 1000000000\r\n\r\n", [])
    assert status.startswith("HTTP/1.1 413") and seconds < 5
    # Chunked (no Content-Length): the server stops reading at the cap.
    chunk = b"x" * 4096
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (MAX_BODY_BYTES // len(chunk) + 2)
    status, seconds = _raw_request(url, head + "Transfer-Encoding: chunked\r\n\r\n", chunks)
    assert status.startswith("HTTP/1.1 413") and seconds < 5


def test_forms_over_the_field_caps_are_refused_with_400(env):
    client = TestClient(env.app)
    csrf = csrf_of(client.get("/login").text)
    many = urlencode([("csrf", csrf)] + [(f"f{i}", "1") for i in range(MAX_FORM_FIELDS)])
    r = client.post("/login", content=many, headers=FORM)
    assert r.status_code == 400 and "Too many fields" in r.text
    r = client.post("/login", data={"csrf": csrf, "token": "x" * (MAX_FIELD_BYTES + 1)})
    assert r.status_code == 400 and "maximum size" in r.text
    r = client.post("/login", data={"csrf": csrf}, files={"token": ("token.txt", b"abc")})
    assert r.status_code == 400 and "Too many files" in r.text


def test_the_largest_real_form_fits_the_caps_with_room_to_spare(tmp_path):
    env = Env(f"sqlite:///{tmp_path / 'nine.db'}", write_candidates(tmp_path / "nine.jsonl", 1, k=db.MAX_K))
    client, csrf = env.client("nina")
    data = {"csrf": csrf, "item_id": shown_item(client), "action": "submit", **full_label(db.MAX_K),
            **{f"flag_{i}": list(db.FLAGS) for i in range(db.MAX_K)}}
    fields = [(k, v) for k, vs in data.items() for v in (vs if isinstance(vs, list) else [vs])]
    assert len(fields) * 2 <= MAX_FORM_FIELDS and len(urlencode(fields)) * 10 <= MAX_BODY_BYTES
    assert max(len(v) for _, v in fields) * 10 <= MAX_FIELD_BYTES
    r = client.post("/label", data=data, follow_redirects=False)
    assert r.headers["location"] == "/label" and env.n_labels() == 1
    env.engine.dispose()


# ------------------------------------------------------------------------------------------------ CSRF
def test_a_non_ascii_csrf_value_is_refused_like_any_wrong_token(env):
    client, _ = env.client("alice")
    item = shown_item(client)
    for path, body in (("/label", f"csrf=%C3%A9&item_id={item}&action=skip"), ("/logout", "csrf=%C3%A9")):
        assert client.post(path, content=body, headers=FORM).status_code == 403, path
    anon = TestClient(env.app)
    anon.get("/login")
    assert anon.post("/login", content="csrf=%C3%A9&token=x", headers=FORM).status_code == 403
    assert env.n_labels() == 0 and shown_item(client) == item  # nothing stored, still signed in


def test_login_needs_the_csrf_value_of_a_login_form_from_this_site(env):
    token = db.add_labeler(env.engine, "alice")
    client = TestClient(env.app)
    r = client.post("/login", data={"csrf": "", "token": token}, follow_redirects=False)  # no login form fetched
    assert r.status_code == 403 and "rlhfkit_session" not in r.headers.get("set-cookie", "")
    form = client.get("/login")
    cookie = form.headers["set-cookie"].lower()
    assert cookie.startswith(f"{LOGIN_COOKIE}=") and "httponly" in cookie and "samesite=strict" in cookie
    assert "path=/login" in cookie and "max-age=" in cookie
    other_csrf = csrf_of(TestClient(env.app).get("/login").text)  # a valid value, but of another browser
    for forged in ("", "forged", other_csrf):
        r = client.post("/login", data={"csrf": forged, "token": token}, follow_redirects=False)
        assert r.status_code == 403 and "rlhfkit_session" not in r.headers.get("set-cookie", "")
    r = client.post("/login", data={"csrf": csrf_of(r.text), "token": token}, follow_redirects=False)
    assert r.status_code == 303 and "rlhfkit_session" in client.cookies
    assert LOGIN_COOKIE not in client.cookies  # used up


@pytest.mark.parametrize(
    "headers, allowed",
    [
        ({}, True),  # not a browser: the CSRF tokens alone decide
        ({"Origin": "http://testserver"}, True),
        ({"Origin": "http://TestServer:80"}, True),
        ({"Referer": "http://testserver/login"}, True),
        ({"Origin": "http://testserver", "Referer": "https://evil.example/"}, True),  # Origin decides
        ({"Origin": "https://evil.example"}, False),
        ({"Origin": "null"}, False),
        ({"Origin": ""}, False),
        ({"Origin": "http://testserver.evil.example"}, False),
        ({"Origin": "https://testserver"}, False),
        ({"Origin": "http://testserver:8000"}, False),
        ({"Referer": "https://evil.example/page"}, False),
        ({"Referer": "not a url"}, False),
    ],
)
def test_logins_from_other_origins_are_refused(env, headers, allowed):
    r = try_login(TestClient(env.app), db.add_labeler(env.engine, "alice"), **headers)
    assert r.status_code == (303 if allowed else 403)
    assert ("rlhfkit_session" in r.headers.get("set-cookie", "")) == allowed


def test_label_and_logout_posts_from_other_origins_are_refused(env):
    client, csrf = env.client("alice")
    item = shown_item(client)
    evil = {"Origin": "https://evil.example"}
    data = {"csrf": csrf, "item_id": item, "action": "submit", **full_label(3)}
    assert client.post("/label", data=data, headers=evil).status_code == 403
    assert client.post("/logout", data={"csrf": csrf}, headers=evil).status_code == 403
    assert env.n_labels() == 0 and shown_item(client) == item  # nothing stored, still signed in
    own = {"Origin": "http://testserver"}
    assert client.post("/label", data=data, headers=own, follow_redirects=False).status_code == 303


def test_same_origin_behind_a_tls_proxy():
    # A proxy that ends TLS forwards plain HTTP: the app sees scheme http, the browser says https.
    assert same_origin("https://labels.example", None, "labels.example", ("http", "https"))
    assert not same_origin("https://labels.example", None, "labels.example", ("http",))
    assert same_origin(None, "https://labels.example/label?x=1", "labels.example:443", ("https",))
    assert not same_origin("https://labels.example", None, "", ("https",))  # no Host header to compare with
    assert not same_origin("https://labels.example", None, "evil.example@labels.example", ("https",))


# ------------------------------------------------------------------------------------------------ failed logins
def test_login_throttle_counts_failures_per_address_in_a_sliding_window():
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_s=300, now=clock)
    for _ in range(3):
        assert throttle.retry_after("a") is None
        throttle.failed("a")
        clock.t += 10
    assert throttle.retry_after("a") == pytest.approx(270)  # until the first failure (t=1000) leaves the window
    assert throttle.retry_after("b") is None and throttle.failures("a") == 3
    clock.t = 1300
    assert throttle.retry_after("a") is None and throttle.failures("a") == 2
    throttle.failed("a")
    assert throttle.retry_after("a") == pytest.approx(10)


def test_login_throttle_memory_is_bounded():
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_s=300, now=clock, max_addresses=50)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 250}.{i % 250}")
        throttle.failed("attacker")
    assert len(throttle) <= 50 and throttle.failures("attacker") == 3  # kept: the most recent failures
    assert throttle.failures("10.0.3.249") == 1 and throttle.failures("10.0.0.0") == 0  # oldest evicted
    clock.t += 300
    throttle.failed("late")
    assert len(throttle) == 1  # every entry older than the window was dropped


def test_failed_logins_are_logged_and_rate_limited_per_address(tmp_path, candidates, caplog):
    clock = Clock()
    env = Env(f"sqlite:///{tmp_path / 'labels.db'}", candidates, throttle=LoginThrottle(now=clock))
    token = db.add_labeler(env.engine, "alice")
    attacker = TestClient(env.app, client=("203.0.113.9", 5000))
    guesses = [f"guess{i}-{token[:6]}" for i in range(10)]
    with caplog.at_level(logging.INFO, logger="rlhfkit.labeling"):
        assert [try_login(attacker, g).status_code for g in guesses[:9]] == [401] * 9
        assert try_login(attacker, token).status_code == 303  # a success does not reset the count
        assert try_login(attacker, guesses[9]).status_code == 401  # the tenth failure in the window
        r = try_login(attacker, token)  # even the right token: this address waits
        assert r.status_code == 429 and int(r.headers["retry-after"]) == 300 and "too many" in r.text
        neighbour = TestClient(env.app, client=("198.51.100.7", 5000))
        assert try_login(neighbour, token).status_code == 303  # another address is not affected
        clock.t += 299
        assert try_login(attacker, token).status_code == 429
        clock.t += 1
        assert try_login(attacker, token).status_code == 303
    messages = [r.getMessage() for r in caplog.records if r.name == "rlhfkit.labeling"]
    failed = [m for m in messages if m.startswith("failed login")]
    assert len(failed) == 10 and all("203.0.113.9" in m and re.search(r"\d\d:\d\d:\d\dZ", m) for m in failed)
    assert any("too many failed logins" in m for m in messages)
    assert not any(token[:6] in m or "guess" in m for m in messages)  # no token, nor any part of one
    env.engine.dispose()


# ------------------------------------------------------------------------------------------------ revocation
def test_a_revoked_labeler_is_signed_out_at_once(env):
    client, csrf = env.client("mallory")
    item = shown_item(client)
    db.revoke_labeler(env.engine, "mallory")
    assert client.get("/label", follow_redirects=False).headers["location"] == "/login"
    data = {"csrf": csrf, "item_id": item, "action": "submit", **full_label(3)}
    assert client.post("/label", data=data).status_code == 401 and env.n_labels() == 0


# ------------------------------------------------------------------------------------------------ no 500s
def _hostile_requests(item: str, csrf: str) -> list[tuple[str, str, dict]]:
    """(path, body, headers) of requests a signed-in client controls; none may answer 500."""
    label = urlencode({"csrf": csrf, "item_id": item, "action": "submit", **full_label(3)})
    return [
        ("/label", f"csrf={csrf}", FORM),  # no item, no action
        ("/label", f"csrf={csrf}&item_id={item}&action=submit", FORM),  # no ranks, no scores
        ("/label", label + "&rank_0=1&item_id=zzz&action=skip", FORM),  # repeated fields: the first counts
        ("/label", label.replace("rank_0=1", "rank_0=99999999999999999999"), FORM),
        ("/label", label.replace("rank_0=1", "rank_0=-1"), FORM),
        ("/label", label.replace("likert_0=4", "likert_0=4.0"), FORM),
        ("/label", label.replace(item, "%00" + item), FORM),  # PostgreSQL refuses NUL in text
        ("/label", label.replace(item, "x" * 900), FORM),  # longer than the id column
        ("/label", label.replace("action=submit", "action=%FF%FE"), FORM),
        ("/label", label + "&flag_0=%00", FORM),
        ("/label", label.encode().replace(b"likert_1=4", b"likert_1=\xff\xfe").decode("latin-1"), FORM),
        ("/label", label + "&%ZZ=%", FORM),  # broken percent-escapes
        ("/label", label, {"Content-Type": "application/json"}),
        ("/label", label, {"Content-Type": "text/plain"}),
        ("/label", label, {"Content-Type": "multipart/form-data"}),  # no boundary
        ("/label", "--b\r\ngarbage", {"Content-Type": "multipart/form-data; boundary=b"}),
        ("/label", label, {"Content-Length": "abc"}),
        ("/logout", "csrf=%00", FORM),
        ("/login", "csrf=&token=%00", FORM),
        ("/login", "token=" + "%FF" * 300, FORM),
    ]


def test_hostile_requests_never_answer_500(both_env):
    client, csrf = both_env.client("eve")
    item = shown_item(client)
    client = TestClient(both_env.app, raise_server_exceptions=False, cookies=client.cookies)
    for path, body, headers in _hostile_requests(item, csrf):
        r = client.post(path, content=body.encode("latin-1"), headers=headers, follow_redirects=False)
        assert r.status_code in (303, 400, 403, 409), (path, body[:80], headers, r.status_code, r.text[:300])
    assert both_env.n_labels() <= 1  # at most the one well-formed label among them
    for host in ("[", "[::1", "a b", "", "x:abc", "x:99999", "a@b"):  # Host headers no browser sends
        r = client.post("/logout", content=f"csrf={csrf}", headers={**FORM, "Host": host, "Origin": "http://x"})
        assert r.status_code == 403, host
    admin, _ = both_env.client(None)
    assert admin.get("/admin/export?format=%00%FF").status_code == 400
