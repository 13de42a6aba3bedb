"""The gate in front of every state-changing request (``tickflow.api.gate``) and the sessions behind it.

What a stranger's body may cost the loop the engine shares (nothing: credentials come first, then a bounded read,
then a C-speed shape scan), what a page of another site may do (nothing), how long a slow upload may hold a socket,
and that a dashboard session expires and ends when signed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.bench.api_shield import measure
from tests.conftest import free_port
from tests.unit.api.test_api_errors import RecordingProducer
from tickflow.api.app import create_api
from tickflow.api.gate import json_body_problem
from tickflow.api.guards import allowed_hosts
from tickflow.api.sessions import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, Sessions
from tickflow.events.codec import MAX_JSON_DEPTH
from tickflow.events.topics import TopicNames
from tickflow.projections.store import MemoryStore

TOKEN = "g4te-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
BASE = "http://127.0.0.1:8700"


def _app(**limits: Any) -> Any:
    return create_api(store=MemoryStore(), producer=RecordingProducer(), topics=TopicNames("g"), workflows={"known"},
                      token=limits.pop("token", TOKEN), hosts=allowed_hosts("127.0.0.1", None), **limits)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(_app(), base_url=BASE) as c:
        yield c


# --- what a hostile body costs the loop ------------------------------------------------------------------------------


@pytest.mark.parametrize("with_token", [False, True], ids=["stranger", "token-holder"])
async def test_four_mib_of_empty_arrays_cost_the_shared_loop_nothing(with_token: bool) -> None:
    """Before the gate, such a body held the loop 0.6-2.9 s (its 401 came after seconds: the depth check parsed it
    first). Now the stranger gets 401 without a byte read, and the token holder 422 from the scanner."""
    result = await measure(with_token=with_token, requests=5)
    assert result["statuses"] == {"422" if with_token else "401": 5}, result
    assert result["loop_lag_ms_max"] < 100, result


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _count(value: Any) -> int:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return 1 + sum(_count(v) for v in children)


_TEXT = st.text(alphabet=st.sampled_from('ab,[]{}"\\:é😀 \n'), max_size=12)
_SCALARS = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | _TEXT
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
                       max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(_VALUES, st.integers(0, MAX_JSON_DEPTH + 4), st.booleans())
def test_the_scanner_measures_depth_exactly_and_values_within_a_factor_of_two(
    inner: Any, wraps: int, as_object: bool
) -> None:
    value = inner
    for _ in range(wraps):
        value = {"k[": value} if as_object else [value, "]"]
    body = orjson.dumps(value)
    too_deep = json_body_problem(body, max_values=10**9)
    assert (too_deep is not None) == (_depth(value) > MAX_JSON_DEPTH), (too_deep, _depth(value))
    if too_deep is None:
        values = _count(value)  # the estimate lies in [values, 2 * values]
        assert json_body_problem(body, max_values=2 * values) is None
        if values > 1:
            assert "values" in (json_body_problem(body, max_values=values - 1) or "")


def test_lone_surrogates_are_named_and_pairs_or_escaped_backslashes_pass() -> None:
    assert "surrogate" in (json_body_problem(b'{"a": "\\ud800"}', 1_000) or "")
    assert "surrogate" in (json_body_problem(b'["x\\udc00y"]', 1_000) or "")
    assert json_body_problem(b'{"a": "\\ud83d\\ude00"}', 1_000) is None
    assert json_body_problem(b'{"a": "\\\\ud800"}', 1_000) is None  # the text backslash-u-d800, not an escape
    assert json_body_problem(b"not json at all [", 1_000) is None  # the route's parser says where it breaks


# --- browsers: same origin only ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{"origin": "https://evil.example"}, {"origin": "http://127.0.0.1:9999"}, {"origin": "null"},
     {"sec-fetch-site": "cross-site"}, {"sec-fetch-site": "same-site"}],
    ids=["other-site", "other-port", "opaque", "fetch-cross-site", "fetch-same-site"],
)
def test_a_page_of_another_origin_cannot_change_anything(headers: dict[str, str]) -> None:
    with TestClient(_app(token=None), base_url=BASE) as c:  # the token-less default: no credential to stop it
        for path in ("/runs/r1/cancel", "/stacks/s1/play", "/admin/rebuild", "/admin/rollback", "/admin/engine/verify"):
            answer = c.post(path, headers=headers)
            assert answer.status_code == 403 and answer.json()["code"] == "forbidden", (path, answer.text)
        sent = c.post("/runs", json={"workflow": "known"}, headers=headers)
        assert sent.status_code == 403
        assert c.app.state.deps.producer.sent == []  # type: ignore[attr-defined]


def test_same_origin_pages_trusted_origins_and_non_browsers_go_through() -> None:
    with TestClient(_app(token=None, trusted_origins=["https://ops.example"]), base_url=BASE) as c:
        for headers in ({"origin": BASE, "sec-fetch-site": "same-origin"}, {"origin": "https://ops.example"}, {}):
            assert c.post("/runs", json={"workflow": "known"}, headers=headers).status_code == 202, headers
        assert c.post("/ui/login", content="token=x", headers={**FORM, "origin": "https://evil.example"}).status_code \
            == 403  # no login CSRF either


def test_a_body_must_be_json_so_an_html_form_cannot_send_one(client: TestClient) -> None:
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", ""):
        answer = client.post("/runs", content=b'{"workflow": "known"}', headers={**AUTH, "content-type": media})
        assert answer.status_code == 415 and "application/json" in answer.json()["detail"], media
    assert client.post("/runs", content=b'{"workflow": "known"}',
                       headers={**AUTH, "content-type": "application/json; charset=utf-8"}).status_code == 202


def test_sign_in_bodies_are_small(client: TestClient) -> None:
    answer = client.post("/ui/login", content="token=" + "x" * 20_000, headers=FORM)
    assert answer.status_code == 413


# --- slow bodies ------------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _served(app: Any) -> AsyncIterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_a_body_that_trickles_in_is_cut_off_at_the_deadline() -> None:
    async with _served(_app(body_timeout_s=0.5)) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (f"POST /runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"workflow\"")
        started = time.monotonic()
        writer.write(head.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        writer.close()
        assert b" 408 " in status_line and time.monotonic() - started < 3


# --- sessions ---------------------------------------------------------------------------------------------------------


def test_sessions_expire_end_when_signed_out_or_when_the_token_changes() -> None:
    now = [1_000_000.0]
    sessions = Sessions("tok", ttl_s=60, clock=lambda: now[0])
    value = sessions.mint()
    assert "tok" not in value and sessions.valid(value)
    now[0] += 59
    assert sessions.valid(value)
    now[0] += 2
    assert not sessions.valid(value)  # expired
    fresh = sessions.mint()
    sessions.revoke(fresh)
    assert not sessions.valid(fresh)  # signed out
    assert not Sessions("rotated", ttl_s=60, clock=lambda: now[0]).valid(sessions.mint())
    for forged in ("", "1.2", "99999999999.abc.def", f"{fresh}x", "é.é.é", "\udcff"):
        assert not sessions.valid(forged)


def test_a_session_works_until_signed_out_and_a_copied_cookie_dies_with_it(client: TestClient) -> None:
    signed = client.post("/ui/login", content=f"token={TOKEN}&next=/ui/runs", headers=FORM, follow_redirects=False)
    assert signed.status_code == 303
    session, csrf = signed.cookies[SESSION_COOKIE], signed.cookies[CSRF_COOKIE]
    copied = {"cookie": f"{SESSION_COOKIE}={session}; {CSRF_COOKIE}={csrf}"}
    client.cookies.clear()
    assert client.get("/runs", headers=copied).status_code == 200
    no_csrf = client.post("/runs", json={"workflow": "known"}, headers=copied)
    assert no_csrf.status_code == 403 and no_csrf.json()["code"] == "forbidden"
    assert client.post("/runs", json={"workflow": "known"}, headers={**copied, CSRF_HEADER: csrf}).status_code == 202
    out = client.post("/ui/logout", headers={**copied, CSRF_HEADER: csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/runs", headers=copied).status_code == 401  # revoked on the server, not only in the browser


@pytest.mark.parametrize(
    "cookie", [b"tickflow_session=\xc3\xa9\xc3\xa9", b"tickflow_session=\xff\xfe; tickflow_csrf=\xe9"]
)
def test_a_session_cookie_of_any_bytes_is_a_401_never_a_500(client: TestClient, cookie: bytes) -> None:
    answer = client.get("/runs", headers=[(b"cookie", cookie)])  # type: ignore[arg-type]
    assert answer.status_code == 401
    sent = client.post("/runs", json={"workflow": "known"},
                       headers=[(b"cookie", cookie), (b"x-csrf-token", b"\xe9")])  # type: ignore[arg-type]
    assert sent.status_code == 401


# --- the rest ---------------------------------------------------------------------------------------------------------


def test_the_address_tickflow_up_prints_opens_the_dashboard(client: TestClient) -> None:
    answer = client.get("/", follow_redirects=False)
    assert answer.status_code == 307 and answer.headers["location"] == "/ui/board"


class _SlowEngine:
    """Enough of an engine for ``verify_engine``: its capture waits until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.captures = 0

    async def capture(self) -> tuple[dict[int, Any], int, dict[int, int]]:
        self.captures += 1
        await self.release.wait()
        return {}, int(time.time() * 1000), {}


async def test_verify_is_single_flight() -> None:
    app = _app()
    engine = _SlowEngine()
    app.state.deps.engine = engine
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=BASE, headers=AUTH) as http:
        first = asyncio.create_task(http.post("/admin/engine/verify"))
        while engine.captures == 0:
            await asyncio.sleep(0.01)
        second = await http.post("/admin/engine/verify")
        assert second.status_code == 409 and second.json()["code"] == "busy"
        engine.release.set()
        assert (await first).status_code == 200
    assert engine.captures == 1


def test_one_client_cannot_take_every_live_stream() -> None:
    from tickflow.api.live import StreamSlots

    slots = StreamSlots(limit=5, per_client=2)
    assert slots.take("10.0.0.1") is None and slots.take("10.0.0.1") is None
    assert slots.take("10.0.0.1") == "client"  # its own cap, while the process has room
    assert slots.take("10.0.0.2") is None and slots.take("10.0.0.3") is None and slots.take("10.0.0.3") is None
    assert slots.take("10.0.0.4") == "all"
    slots.give("10.0.0.1")
    assert slots.take("10.0.0.1") is None and slots.open == 5
