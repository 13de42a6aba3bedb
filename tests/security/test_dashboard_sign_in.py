"""Signing in to the dashboard: the token once, then a session cookie (an HMAC of the token, HttpOnly,
SameSite=Strict) that state-changing requests may use only with the double-submit CSRF header; bearer clients need
no CSRF token; a wrong token, a forged cookie or an off-site redirect target get nothing."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration
TOKEN = "auth-test-token"
FORM = {"content-type": "application/x-www-form-urlencoded"}


async def test_sign_in_session_cookie_and_csrf(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), api_token=TOKEN)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    node = Node(settings, registry, frozenset({"api", "projector"}))
    await node.start()
    try:
        async with httpx.AsyncClient(base_url=settings.api_url, follow_redirects=False) as browser:
            page = await browser.get("/ui/board")
            assert page.status_code == 303 and page.headers["location"] == "/ui/login?next=/ui/board"
            assert (await browser.get("/runs")).status_code == 401  # the JSON API still wants the token
            wrong = await browser.post("/ui/login", content="token=nope&next=/ui/runs", headers=FORM)
            assert wrong.status_code == 401 and "tickflow_session" not in wrong.cookies
            evil = f"token={TOKEN}&next=https://evil.example/"
            off_site = await browser.post("/ui/login", content=evil, headers=FORM)
            assert off_site.status_code == 303 and off_site.headers["location"] == "/ui/board"
            cookie_headers = off_site.headers.get_list("set-cookie")
            session = next(h for h in cookie_headers if h.startswith("tickflow_session="))
            assert "HttpOnly" in session and "SameSite=strict" in session and TOKEN not in session
            assert (await browser.get("/ui/board")).status_code == 200
            assert (await browser.get("/runs")).status_code == 200  # reads work with the cookie
            start = {"workflow": "math", "input": 1, "run_id": "csrf-1"}
            refused = await browser.post("/runs", json=start)
            assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["detail"]
            forged = await browser.post("/runs", json=start, headers={"X-CSRF-Token": "guess"})
            assert forged.status_code == 403
            csrf = browser.cookies["tickflow_csrf"]
            accepted = await browser.post("/runs", json=start, headers={"X-CSRF-Token": csrf})
            assert accepted.status_code == 202, accepted.text
        async with httpx.AsyncClient(base_url=settings.api_url, cookies={"tickflow_session": "0" * 64}) as forger:
            assert (await forger.get("/runs")).status_code == 401
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=settings.api_url, headers=bearer) as sdk:
            answer = await sdk.post("/runs", json={"workflow": "math", "input": 2, "run_id": "csrf-2"})
            assert answer.status_code == 202  # no cookie, no CSRF token needed
    finally:
        await node.stop()
