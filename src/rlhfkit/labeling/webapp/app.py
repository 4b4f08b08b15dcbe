"""The FastAPI app: server-rendered pages for labelers and the admin (Jinja2, no build step).

Security model: every route except the login form and the static files requires a session cookie (HttpOnly,
SameSite=Strict) obtained by posting a login token; every state-changing POST also carries the session's CSRF
token. Model text is untrusted: templates autoescape it, the page's script never inserts text as HTML, and the
Content-Security-Policy forbids inline scripts as a second line of defence.

The routes live by concern in auth_routes (login, logout, /), label_routes (/label) and admin_routes (/admin,
export); the checks they share are in deps. This module wires them together and adds what applies to every
response: the security headers and the handling of NotSignedIn / Forbidden.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.engine import Engine

from rlhfkit.labeling.webapp.admin_routes import register_admin_routes
from rlhfkit.labeling.webapp.auth_routes import register_auth_routes
from rlhfkit.labeling.webapp.deps import COOKIE, Deps, Forbidden, NotSignedIn, make_deps
from rlhfkit.labeling.webapp.label_routes import register_label_routes

__all__ = ["COOKIE", "Forbidden", "NotSignedIn", "SECURITY_HEADERS", "create_app"]

HERE = Path(__file__).resolve().parent.parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def create_app(engine: Engine, labels_per_item: int = 3, secure_cookies: bool = False) -> FastAPI:
    """The labelling app over an open database (see db.open_db)."""
    app = FastAPI(title="rlhfkit labelling", docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    deps = make_deps(engine, labels_per_item, secure_cookies, Jinja2Templates(env=env))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    _register_guards(app, deps)
    register_auth_routes(app, deps)
    register_label_routes(app, deps)
    register_admin_routes(app, deps)
    return app


def _register_guards(app: FastAPI, deps: Deps) -> None:
    """Security headers on every response, and the answers to a failed sign-in or permission check."""

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        response = await call_next(request)
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
