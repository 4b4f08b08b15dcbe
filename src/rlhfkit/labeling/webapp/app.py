"""The FastAPI app: server-rendered pages for labelers and the admin (Jinja2, no build step).

Security model: every route except the login form and the static files requires a session cookie (HttpOnly,
SameSite=Strict) obtained by posting a login token; every state-changing POST also carries a CSRF token (the
session's, or for the login form a cookie-bound one), and one whose Origin (or Referer) names another site is
refused before any route sees it. Request bodies are capped before the app reads them, and forms are parsed
within caps sized from the largest real form (deps), so no client makes the server hold more than a few KB.
Model text is untrusted: templates autoescape it, the page's script never inserts text as HTML, and the
Content-Security-Policy forbids inline scripts as a second line of defence.

The routes live by concern in auth_routes (login, logout, /), label_routes (/label) and admin_routes (/admin,
export); the checks they share are in deps. This module wires them together and adds what applies to every
request and response: the body cap, the same-origin check, the security headers and the handling of
NotSignedIn / Forbidden / BadRequest.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rlhfkit.labeling.webapp.admin_routes import register_admin_routes
from rlhfkit.labeling.webapp.auth_routes import LoginThrottle, register_auth_routes
from rlhfkit.labeling.webapp.deps import (
    COOKIE,
    MAX_BODY_BYTES,
    BadRequest,
    Deps,
    Forbidden,
    NotSignedIn,
    make_deps,
    same_origin,
)
from rlhfkit.labeling.webapp.label_routes import register_label_routes

__all__ = ["COOKIE", "BodyLimit", "Forbidden", "NotSignedIn", "SECURITY_HEADERS", "create_app"]

HERE = Path(__file__).resolve().parent.parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the page's own form
    # posts, which the same-origin check must refuse; other sites still get no referrer.
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # the methods no route of this app changes anything by


def create_app(engine: Engine, labels_per_item: int = 3, secure_cookies: bool = False,
               throttle: LoginThrottle | None = None) -> FastAPI:
    """The labelling app over an open database (see db.open_db). `throttle` limits failed logins per client
    address (default: LoginThrottle(), on the monotonic clock)."""
    app = FastAPI(title="rlhfkit labelling", docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    deps = make_deps(engine, labels_per_item, secure_cookies, Jinja2Templates(env=env))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _register_guards(app, deps)
    register_auth_routes(app, deps, LoginThrottle() if throttle is None else throttle)
    register_label_routes(app, deps)
    register_admin_routes(app, deps)
    return app


class BodyLimit:
    """Pure ASGI middleware: reads the request body, at most `limit` bytes, before the app sees any of it.

    A declared Content-Length over the limit is answered 413 without reading a byte; a body without one
    (chunked) is read only until it passes the limit, then answered 413. So no client makes the server hold
    more than `limit` bytes of body, whatever a route does with it. Bodies that small are cheap to hold whole,
    which lets the app then read them as usual from a replayed `receive`.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _refuse(scope, receive, send, 400, "the Content-Length header is not a number")
            return
        if declared is not None and int(declared) > self.limit:
            await _refuse(scope, receive, send, 413, self._too_large())
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: there is no one to answer
            body += message.get("body", b"")
            if len(body) > self.limit:
                await _refuse(scope, receive, send, 413, self._too_large())
                return
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(bytes(body), receive), send)

    def _too_large(self) -> str:
        return f"request body too large: this server accepts at most {self.limit} bytes"


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
    # Connection: close, because the rest of an unread body must not be taken for the next request.
    await PlainTextResponse(message, status_code=status, headers={"Connection": "close"})(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then passes on what the server sends next (the
    client's disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def _register_guards(app: FastAPI, deps: Deps) -> None:
    """The body cap and the same-origin check on every request, security headers on every response, and the
    answers to a failed sign-in, permission check or unreadable form."""
    # Registered first, so it runs inside the middleware below: its refusals get the security headers too.
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.middleware("http")
    async def guard(request: Request, call_next) -> Response:
        headers = request.headers
        if request.method in SAFE_METHODS or same_origin(headers.get("origin"), headers.get("referer"),
                                                         headers.get("host", ""), deps.own_schemes(request)):
            response = await call_next(request)
        else:
            response = deps.page(request, "error.html", 403, who=None,
                                 message="refused: this form was sent from another site, not from this one's pages")
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _exc: NotSignedIn) -> Response:
        # A page view (GET) is sent to the login form; any other method gets a plain 401, because redirecting
        # a submitted form would silently drop what was in it.
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return PlainTextResponse("not signed in: log in with your token at /login", status_code=401)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return deps.page(request, "error.html", 403, who=None, message=exc.message)

    @app.exception_handler(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> Response:
        return deps.page(request, "error.html", 400, who=None, message=exc.message)
