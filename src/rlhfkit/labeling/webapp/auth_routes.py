"""Signing in and out: the login form, token login, logout, and `/`, which sends each person to their start page.

A login token is exchanged for a session cookie (HttpOnly, SameSite=Strict; Secure when served over HTTPS).
The login form carries its own CSRF value, bound to a short-lived cookie that GET /login sets (double submit),
so another site cannot sign a visitor in as the attacker and collect what they label. Failed logins are logged
(address and time, never the token) and limited per client address by LoginThrottle. Logout is a POST with the
session's CSRF token, so another site cannot sign a labeler out.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from typing import Callable

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.deps import COOKIE, Deps, checked_form, first, read_form, same_token

log = logging.getLogger("rlhfkit.labeling")

LOGIN_COOKIE = "rlhfkit_login"
LOGIN_FORM_S = 3600  # how long a fetched login form stays usable; an older one is answered with a fresh form


class LoginThrottle:
    """Failed logins per client address in a sliding window: after `max_failures` within `window_s` seconds,
    that address may not try again (even with a right token, or the answer would confirm a guess) until the
    oldest of them leaves the window. A success resets nothing: one labeler's login must not clear the count of
    a guesser sharing the address.

    Memory is bounded: an address keeps at most `max_failures` times, addresses whose failures all left the
    window are dropped, and beyond `max_addresses` the address with the oldest last failure is forgotten.
    Thread-safe; `now` is a monotonic clock in seconds (injected by tests).
    """

    def __init__(self, max_failures: int = 10, window_s: float = 300.0, now: Callable[[], float] = time.monotonic,
                 max_addresses: int = 10_000) -> None:
        self.max_failures, self.window_s, self.now, self.max_addresses = max_failures, window_s, now, max_addresses
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()  # least recently failed first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Addresses remembered."""
        with self._lock:
            return len(self._failures)

    def failures(self, address: str) -> int:
        """Failures of `address` within the window."""
        with self._lock:
            return len(self._recent(address))

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again; None when it may now."""
        with self._lock:
            times = self._recent(address)
            return times[0] + self.window_s - self.now() if len(times) >= self.max_failures else None

    def failed(self, address: str) -> int:
        """Record a failed login of `address`; returns its failures within the window."""
        with self._lock:
            times = self._recent(address)
            times.append(self.now())
            self._failures[address] = times
            self._failures.move_to_end(address)  # entries stay ordered by their last failure
            while len(self._failures) > self.max_addresses:
                self._failures.popitem(last=False)
            return len(times)

    def _recent(self, address: str) -> deque[float]:
        """`address`'s failure times within the window, oldest first (a new empty deque when none). First drops
        the addresses whose last failure left the window: ordered by last failure, they are at the front."""
        horizon = self.now() - self.window_s
        while self._failures and next(iter(self._failures.values()))[-1] <= horizon:
            self._failures.popitem(last=False)
        times = self._failures.get(address, deque(maxlen=self.max_failures))
        while times and times[0] <= horizon:
            times.popleft()
        return times


def start_page(who: db.Who) -> str:
    return "/admin" if who.is_admin else "/label"


def client_address(request: Request) -> str:
    # The peer address; behind a reverse proxy uvicorn puts the forwarded client here (--forwarded-allow-ips).
    return request.client.host if request.client else "unknown"


def register_auth_routes(app: FastAPI, deps: Deps, throttle: LoginThrottle) -> None:
    """GET/POST /login, POST /logout, GET /."""

    def login_page(request: Request, status: int = 200, message: str | None = None) -> HTMLResponse:
        """The login form with a fresh CSRF value, also set as the cookie the post must bring back."""
        token = secrets.token_urlsafe(32)
        response = deps.page(request, "login.html", status, who=None, message=message, csrf=token)
        response.set_cookie(LOGIN_COOKIE, token, max_age=LOGIN_FORM_S, httponly=True, samesite="strict",
                            secure=deps.secure_cookies, path="/login")
        return response

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return login_page(request)

    @app.post("/login")
    async def login(request: Request):
        address = client_address(request)
        wait = throttle.retry_after(address)
        if wait is not None:
            log.warning("login refused: too many failed logins from %s (at %s)", address, _utc_now())
            minutes = math.ceil(wait / 60)
            response = login_page(request, 429, f"too many failed logins from your address; try again in "
                                                f"{minutes} minute{'s' if minutes != 1 else ''}")
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        form = await read_form(request)
        if not same_token(first(form, "csrf"), request.cookies.get(LOGIN_COOKIE, "")):
            return login_page(request, 403, "this login form expired or was not sent from this site's login "
                                            "page; enter your token again")
        result = await run_in_threadpool(db.login, deps.engine, first(form, "token").strip())
        if result is None:
            count = throttle.failed(address)
            log.warning("failed login from %s at %s (%d in the last %d s)", address, _utc_now(), count,
                        throttle.window_s)
            return login_page(request, 401, "unknown token")
        session_id, who = result
        response = RedirectResponse(start_page(who), status_code=303)
        response.set_cookie(COOKIE, session_id, max_age=db.SESSION_DAYS * 86400, httponly=True,
                            samesite="strict", secure=deps.secure_cookies, path="/")
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    @app.post("/logout")
    async def logout(request: Request, who: db.Who = Depends(deps.current)):
        await checked_form(request, who)
        await run_in_threadpool(db.logout, deps.engine, request.cookies[COOKIE])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/")
    def home(who: db.Who = Depends(deps.current)):
        return RedirectResponse(start_page(who), status_code=303)


def _utc_now() -> str:
    return db.utcnow().isoformat(timespec="seconds") + "Z"
