"""What the route modules share: the app's settings, page rendering, form reading, and the sign-in, admin, CSRF
and same-origin checks.

`create_app` builds one `Deps` and hands it to each `register_*_routes`, so every route sees the same database,
templates and checks. The checks raise `NotSignedIn` / `Forbidden` / `BadRequest`; handlers that app.py installs
turn them into the login redirect / 401, the 403 error page and the 400 error page, the same way for every route.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Engine
from starlette.exceptions import HTTPException

from rlhfkit.labeling.webapp import db

COOKIE = "rlhfkit_session"

# Request limits, sized from the largest form the app serves: a label for K = MAX_K = 9 responses has 39 fields
# (rank_i, likert_i, two flag_i each, csrf, item_id, action) in about 600 bytes, and its longest value is a
# 43-character token. Starlette's defaults (1000 fields of 1 MB) let one unauthenticated POST hold about 1 GB of
# server memory; these keep every request under MAX_BODY_BYTES while leaving real forms 2.5x to 25x headroom.
MAX_BODY_BYTES = 16 * 1024
MAX_FORM_FIELDS = 100
MAX_FIELD_BYTES = 1024

DEFAULT_PORTS = {"http": 80, "https": 443}


class NotSignedIn(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(Exception):
    """A request the app cannot read (a form over the limits, broken multipart); the message says which."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Deps:
    """Shared state of one app. `current` and `admin` are FastAPI dependencies yielding the signed-in db.Who."""

    engine: Engine
    labels_per_item: int
    secure_cookies: bool
    templates: Jinja2Templates
    current: Callable[[Request], db.Who]
    admin: Callable[..., db.Who]

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def own_schemes(self, request: Request) -> tuple[str, ...]:
        """The schemes this server is reached by. With secure cookies it sits behind HTTPS, usually a proxy that
        ends TLS and forwards plain HTTP, so browsers say https while the request arrives as http."""
        return (request.url.scheme, "https") if self.secure_cookies else (request.url.scheme,)


def make_deps(engine: Engine, labels_per_item: int, secure_cookies: bool, templates: Jinja2Templates) -> Deps:
    # Closures rather than methods: FastAPI reads a dependency's signature, and `admin` must name `current`
    # in its default, which a method's signature cannot do for its own instance.
    def current(request: Request) -> db.Who:
        session_id = request.cookies.get(COOKIE)
        who = db.lookup_session(engine, session_id) if session_id else None
        if who is None:  # no cookie, a forged or expired one, or a session ended by logout or revocation
            raise NotSignedIn()
        return who

    def admin(who: db.Who = Depends(current)) -> db.Who:
        if not who.is_admin:
            raise Forbidden("this page is for the admin only")
        return who

    return Deps(engine, labels_per_item, secure_cookies, templates, current, admin)


def same_token(given: str, expected: str) -> bool:
    """Constant-time comparison of a posted CSRF value with the expected one. Bytes, because compare_digest
    raises TypeError on a str with non-ASCII characters (a client can post any); an empty expected value (no
    cookie) never matches, not even an empty posted one."""
    return bool(expected) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


async def read_form(request: Request) -> dict[str, list[str]]:
    """The posted form as key -> values (keys may repeat), parsed within the request limits; no file uploads.
    Raises BadRequest naming the limit a form broke."""
    try:
        form = await request.form(max_files=0, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    except HTTPException as err:  # Starlette's answer to a form over the limits or broken multipart
        raise BadRequest(f"the form was refused: {err.detail}") from None
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        fields.setdefault(key, []).append(str(value))
    return fields


def first(fields: dict[str, list[str]], key: str, default: str = "") -> str:
    """A form field's first value: a repeated field counts once, as a browser never sends it twice."""
    return (fields.get(key) or [default])[0]


async def checked_form(request: Request, who: db.Who) -> dict[str, list[str]]:
    """The posted form (see read_form); raises Forbidden unless it carries who's CSRF token."""
    fields = await read_form(request)
    if not same_token(first(fields, "csrf"), who.csrf):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and submit again")
    return fields


def _origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the port filled in; None for anything else, `null` included."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number or out of range
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.username is not None:
        return None
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def same_origin(origin: str | None, referer: str | None, host: str, schemes: tuple[str, ...]) -> bool:
    """Whether a state-changing request comes from this server's own pages (a defence against cross-site forms
    in depth with the CSRF tokens). The browser's Origin header decides; without one, its Referer; without
    either the request is not from a browser form, and only the CSRF token applies. Our pages are the scheme
    plus the Host header the browser sent; an unreadable or `null` origin (sandboxed frames, privacy modes) is
    refused."""
    claimed = origin if origin is not None else referer
    if claimed is None:
        return True
    seen = _origin_of(claimed)
    return seen is not None and any(_origin_of(f"{scheme}://{host}") == seen for scheme in schemes)
