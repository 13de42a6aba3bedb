"""Signing in to the dashboard when the API has a token: the token once, then an HttpOnly cookie.

A browser cannot put a bearer token on an ``EventSource`` request, so the dashboard's live streams need a cookie.
The cookie holds an HMAC of the token (never the token itself), is HttpOnly (no script reads it) and
SameSite=Strict (no other site's page sends it). A state-changing request that relies on the cookie must also
carry the ``X-CSRF-Token`` header equal to the ``tickflow_csrf`` cookie (double submit): a page of another origin
can neither read that cookie nor set that header. Requests with the bearer token are not cookie-based and need no
CSRF token. Without ``TICKFLOW_API_TOKEN`` there is nothing to sign in to.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

__all__ = ["CSRF_COOKIE", "CSRF_HEADER", "SESSION_COOKIE", "build_login_router", "cookie_session", "session_value"]

SESSION_COOKIE = "tickflow_session"
CSRF_COOKIE = "tickflow_csrf"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_AGE_S = 7 * 86_400


def session_value(token: str) -> str:
    """What the session cookie holds: proof of the token, not the token."""
    return hmac.new(token.encode(), b"tickflow-dashboard-session-v1", hashlib.sha256).hexdigest()


def cookie_session(request: Request, token: str) -> bool:
    """True when ``request`` is signed in by cookie; raises 403 for an unsafe method without the CSRF token."""
    session = request.cookies.get(SESSION_COOKIE, "")
    if not session or not secrets.compare_digest(session, session_value(token)):
        return False
    if request.method not in _SAFE_METHODS:
        expected, sent = request.cookies.get(CSRF_COOKIE, ""), request.headers.get(CSRF_HEADER, "")
        if not expected or not secrets.compare_digest(expected, sent):
            raise HTTPException(403, "missing or wrong X-CSRF-Token header: reload the dashboard page and try again")
    return True


def _next_page(raw: str) -> str:
    """Only a dashboard path is a place to go back to after signing in (no open redirect)."""
    return raw if raw.startswith("/ui/") and not raw.startswith("/ui//") else "/ui/board"


def build_login_router(token: str | None, templates_dir: Path) -> APIRouter:
    templates = Jinja2Templates(directory=templates_dir)
    router = APIRouter(prefix="/ui", include_in_schema=False)

    @router.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/ui/board") -> Response:
        if token is None:
            return RedirectResponse(_next_page(next), status_code=303)
        context = {"request": request, "next": _next_page(next), "error": "", "csrf": "", "nav": "login"}
        return templates.TemplateResponse(request, "login.html", context)

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given, target = form.get("token", [""])[0], _next_page(form.get("next", ["/ui/board"])[0])
        if token is None:
            return RedirectResponse(target, status_code=303)
        if not secrets.compare_digest(given.encode(), token.encode()):
            context = {"request": request, "next": target, "error": "That is not the API token.", "csrf": ""}
            return templates.TemplateResponse(request, "login.html", context | {"nav": "login"}, status_code=401)
        answer = RedirectResponse(target, status_code=303)
        secure = request.url.scheme == "https"
        answer.set_cookie(
            SESSION_COOKIE, session_value(token), max_age=_MAX_AGE_S, httponly=True, samesite="strict", secure=secure
        )
        answer.set_cookie(
            CSRF_COOKIE, secrets.token_urlsafe(32), max_age=_MAX_AGE_S, httponly=False, samesite="strict", secure=secure
        )
        return answer

    @router.post("/logout")
    async def logout() -> Response:
        answer = RedirectResponse("/ui/login", status_code=303)
        answer.delete_cookie(SESSION_COOKIE)
        answer.delete_cookie(CSRF_COOKIE)
        return answer

    return router
