"""What the route modules share: the app's settings, page rendering, and the sign-in, admin and CSRF checks.

`create_app` builds one `Deps` and hands it to each `register_*_routes`, so every route sees the same database,
templates and checks. The checks raise `NotSignedIn` / `Forbidden`; handlers that app.py installs turn them
into the login redirect / 401 and the 403 error page, the same way for every route.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.engine import Engine

from rlhfkit.labeling.webapp import db

COOKIE = "rlhfkit_session"


class NotSignedIn(Exception):
    pass


class Forbidden(Exception):
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


def make_deps(engine: Engine, labels_per_item: int, secure_cookies: bool, templates: Jinja2Templates) -> Deps:
    # Closures rather than methods: FastAPI reads a dependency's signature, and `admin` must name `current`
    # in its default, which a method's signature cannot do for its own instance.
    def current(request: Request) -> db.Who:
        session_id = request.cookies.get(COOKIE)
        who = db.lookup_session(engine, session_id) if session_id else None
        if who is None:
            raise NotSignedIn()
        return who

    def admin(who: db.Who = Depends(current)) -> db.Who:
        if not who.is_admin:
            raise Forbidden("this page is for the admin only")
        return who

    return Deps(engine, labels_per_item, secure_cookies, templates, current, admin)


async def checked_form(request: Request, who: db.Who) -> dict[str, list[str]]:
    """The posted form as key -> values (keys may repeat); raises Forbidden unless it carries who's CSRF token."""
    form = await request.form()
    fields: dict[str, list[str]] = {}
    for key, value in form.multi_items():
        fields.setdefault(key, []).append(str(value))
    if not hmac.compare_digest(fields.get("csrf", [""])[0], who.csrf):
        raise Forbidden("the form's CSRF token is missing or wrong; reload the page and submit again")
    return fields
