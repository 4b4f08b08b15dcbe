"""Signing in and out: the login form, token login, logout, and `/`, which sends each person to their start page.

A login token is exchanged for a session cookie (HttpOnly, SameSite=Strict; Secure when served over HTTPS).
Logout is a POST with the session's CSRF token, so another site cannot sign a labeler out.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool

from rlhfkit.labeling.webapp import db
from rlhfkit.labeling.webapp.deps import COOKIE, Deps, checked_form


def start_page(who: db.Who) -> str:
    return "/admin" if who.is_admin else "/label"


def register_auth_routes(app: FastAPI, deps: Deps) -> None:
    """GET/POST /login, POST /logout, GET /."""

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return deps.page(request, "login.html", who=None, message=None)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        result = await run_in_threadpool(db.login, deps.engine, str(form.get("token", "")).strip())
        if result is None:
            return deps.page(request, "login.html", 401, who=None, message="unknown token")
        session_id, who = result
        response = RedirectResponse(start_page(who), status_code=303)
        response.set_cookie(COOKIE, session_id, max_age=db.SESSION_DAYS * 86400, httponly=True,
                            samesite="strict", secure=deps.secure_cookies, path="/")
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
