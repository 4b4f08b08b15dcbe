"""The FastAPI app: server-rendered pages for labelers and the admin (Jinja2, no build step).

Security model: every route except the login form and the static files requires a session cookie (HttpOnly,
SameSite=Strict) obtained by posting a login token; every state-changing POST also carries the session's CSRF
token. Model text is untrusted: templates autoescape it, the page's script never inserts text as HTML, and the
Content-Security-Policy forbids inline scripts as a second line of defence.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader
from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool

from rlhfkit.labeling.webapp import db, labels
from rlhfkit.labeling.webapp.export import FORMATS, export_records, to_jsonl
from rlhfkit.labeling.webapp.stats import overview

HERE = Path(__file__).resolve().parent.parent
COOKIE = "rlhfkit_session"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class NotSignedIn(Exception):
    pass


class Forbidden(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def create_app(engine: Engine, labels_per_item: int = 3, secure_cookies: bool = False) -> FastAPI:
    """The labelling app over an open database (see db.open_db)."""
    app = FastAPI(title="rlhfkit labelling", docs_url=None, redoc_url=None, openapi_url=None)
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    templates = Jinja2Templates(env=env)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    def page(request: Request, name: str, status: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status)

    @app.middleware("http")
    async def security_headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    @app.exception_handler(NotSignedIn)
    async def not_signed_in(request: Request, _exc: NotSignedIn) -> Response:
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return PlainTextResponse("not signed in: log in with your token at /login", status_code=401)

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return page(request, "error.html", 403, who=None, message=exc.message)

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

    async def checked_form(request: Request, who: db.Who) -> dict[str, list[str]]:
        form = await request.form()
        fields: dict[str, list[str]] = {}
        for key, value in form.multi_items():
            fields.setdefault(key, []).append(str(value))
        if not hmac.compare_digest(fields.get("csrf", [""])[0], who.csrf):
            raise Forbidden("the form's CSRF token is missing or wrong; reload the page and submit again")
        return fields

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return page(request, "login.html", who=None, message=None)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        result = await run_in_threadpool(db.login, engine, str(form.get("token", "")).strip())
        if result is None:
            return page(request, "login.html", 401, who=None, message="unknown token")
        session_id, who = result
        response = RedirectResponse("/admin" if who.is_admin else "/label", status_code=303)
        response.set_cookie(COOKIE, session_id, max_age=db.SESSION_DAYS * 86400, httponly=True,
                            samesite="strict", secure=secure_cookies, path="/")
        return response

    @app.post("/logout")
    async def logout(request: Request, who: db.Who = Depends(current)):
        await checked_form(request, who)
        await run_in_threadpool(db.logout, engine, request.cookies[COOKIE])
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/")
    def home(who: db.Who = Depends(current)):
        return RedirectResponse("/admin" if who.is_admin else "/label", status_code=303)

    @app.get("/label", response_class=HTMLResponse)
    def label_page(request: Request, who: db.Who = Depends(current)):
        item = labels.next_item(engine, who.labeler_id, labels_per_item)
        prog = labels.progress(engine, who.labeler_id, labels_per_item)
        if item is None:
            return page(request, "label.html", who=who, item=None, progress=prog)
        responses = item.responses
        shown = [(i, responses[i]) for i in labels.display_order(item.id, who.labeler_id, len(responses))]
        return page(request, "label.html", who=who, item=item, shown=shown, k=len(responses), progress=prog,
                    flags=db.FLAGS)

    @app.post("/label")
    async def submit(request: Request, who: db.Who = Depends(current)):
        form = await checked_form(request, who)
        try:
            stored = await run_in_threadpool(_submit, engine, who, form)
        except labels.InvalidLabel as err:
            return page(request, "error.html", 400, who=who, message=f"not saved: {err}")
        return RedirectResponse("/label" if stored else "/label?already=1", status_code=303)

    @app.get("/admin", response_class=HTMLResponse)
    def admin_page(request: Request, who: db.Who = Depends(admin)):
        return page(request, "admin.html", who=who, ov=overview(engine), formats=FORMATS,
                    labels_per_item=labels_per_item)

    @app.get("/admin/export")
    def export(format: str = "preferences", who: db.Who = Depends(admin)):
        if format not in FORMATS:
            return PlainTextResponse(f"unknown format {format!r}; use one of {FORMATS}", status_code=400)
        body = to_jsonl(export_records(engine, format))
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": f'attachment; filename="{format}.jsonl"'})

    return app


def _submit(engine: Engine, who: db.Who, form: dict[str, list[str]]) -> bool:
    """Check the whole form, then write once. Raises InvalidLabel (nothing written) on any problem."""
    iid = (form.get("item_id") or [""])[0]
    item = labels.get_item(engine, iid)
    if item is None:
        raise labels.InvalidLabel(f"unknown item id {iid!r}")
    action = (form.get("action") or ["submit"])[0]
    if action not in ("submit", "skip"):
        raise labels.InvalidLabel(f"unknown action {action!r}")
    sub = None if action == "skip" else labels.parse_submission(form, len(item.responses))
    return labels.store_label(engine, who.labeler_id, iid, sub)
