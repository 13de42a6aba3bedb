"""Signing in to the dashboard when the API has a token: the token once, then an expiring session cookie.

The cookie (``tickflow.api.sessions``) is HttpOnly (no script reads it) and SameSite=Strict (no other site's page
sends it); signing out revokes it on the server, not only in the browser. Without ``TICKFLOW_API_TOKEN`` there is
nothing to sign in to.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from tickflow.api.deps import Deps
from tickflow.api.sessions import CSRF_COOKIE, SESSION_COOKIE

__all__ = ["router"]


def _next_page(raw: str) -> str:
    """Only a dashboard path is a place to go back to after signing in (no open redirect)."""
    return raw if raw.startswith("/ui/") and not raw.startswith("/ui//") else "/ui/board"


#: The sign-in page's template (``login.html``, beside the pages' templates).
_templates = Jinja2Templates(directory=Path(__file__).parent / "templates")

#: Sign-in and sign-out, under ``/ui``: open to anyone (they are how one gets credentials, and how they end).
router = APIRouter(prefix="/ui", include_in_schema=False)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, deps: Deps, next: str = "/ui/board") -> Response:
    if deps.credentials.token is None:
        return RedirectResponse(_next_page(next), status_code=303)
    context = {"request": request, "next": _next_page(next), "error": "", "csrf": "", "nav": "login"}
    return _templates.TemplateResponse(request, "login.html", context)


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request, deps: Deps) -> Response:
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    given, target = form.get("token", [""])[0], _next_page(form.get("next", ["/ui/board"])[0])
    token, sessions = deps.credentials.token, deps.credentials.sessions
    if token is None or sessions is None:
        return RedirectResponse(target, status_code=303)
    if not secrets.compare_digest(given.encode(), token.encode()):
        context = {"request": request, "next": target, "error": "That is not the API token.", "csrf": ""}
        return _templates.TemplateResponse(request, "login.html", context | {"nav": "login"}, status_code=401)
    answer = RedirectResponse(target, status_code=303)
    secure, max_age = request.url.scheme == "https", int(sessions.ttl_s)
    answer.set_cookie(
        SESSION_COOKIE, sessions.mint(), max_age=max_age, httponly=True, samesite="strict", secure=secure
    )
    answer.set_cookie(
        CSRF_COOKIE, secrets.token_urlsafe(32), max_age=max_age, httponly=False, samesite="strict", secure=secure
    )
    return answer


@router.post("/logout")
async def logout(request: Request, deps: Deps) -> Response:
    """Sign out: the session is revoked here (a copied cookie stops working too), then the cookies go."""
    if deps.credentials.sessions is not None:
        deps.credentials.sessions.revoke(request.cookies.get(SESSION_COOKIE, ""))
    answer: Response = RedirectResponse("/ui/login", status_code=303)
    if request.headers.get("hx-request"):  # the dashboard's button: htmx navigates on HX-Redirect
        answer = Response(status_code=204, headers={"HX-Redirect": "/ui/login"})
    answer.delete_cookie(SESSION_COOKIE)
    answer.delete_cookie(CSRF_COOKIE)
    return answer
