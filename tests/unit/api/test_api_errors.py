"""Every error answer carries a machine-readable code, and the SDK raises by that code, never by message text.

The API runs in process (Starlette's TestClient) on the in-memory store with a producer that records what it is
given; the SDK's ``Client`` talks to it through the same TestClient, which is an ``httpx.Client``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tickflow.api.app import create_api
from tickflow.client import Client
from tickflow.events.codec import MAX_JSON_DEPTH
from tickflow.events.errors import ApiError, ErrorCode, RunNotFound, UnknownWorkflow
from tickflow.events.topics import TopicNames
from tickflow.projections.store import MemoryStore


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value, key))


@pytest.fixture
def http() -> Iterator[TestClient]:
    app = create_api(
        store=MemoryStore(),
        producer=RecordingProducer(),
        topics=TopicNames("t"),
        workflows={"known"},
        token="s3cret",
        max_body_bytes=5_000,
    )
    with TestClient(app, headers={"authorization": "Bearer s3cret"}) as client:
        yield client


def _error(answer: Any) -> tuple[int, str, str]:
    body = answer.json()
    return answer.status_code, body["code"], str(body["detail"])


def test_each_refusal_has_its_code(http: TestClient) -> None:
    status, code, detail = _error(http.post("/runs", json={"workflow": "nope"}))
    assert (status, code) == (404, ErrorCode.UNKNOWN_WORKFLOW) and "registered workflows: known" in detail
    assert _error(http.get("/runs/r-1"))[:2] == (404, ErrorCode.RUN_NOT_FOUND)
    assert _error(http.post("/runs/r-1/cancel", json={}))[:2] == (404, ErrorCode.RUN_NOT_FOUND)
    assert _error(http.post("/runs", json={"workflow": "known", "extra": 1}))[:2] == (422, ErrorCode.INVALID_REQUEST)
    assert _error(http.post("/runs", json={"workflow": "known", "input": "x" * 6_000}))[:2] == (
        413,
        ErrorCode.PAYLOAD_TOO_LARGE,
    )
    status, code, detail = _error(http.get("/runs/r-1", headers={"authorization": "Bearer wrong"}))
    assert (status, code) == (401, ErrorCode.UNAUTHORIZED) and "TICKFLOW_API_TOKEN" in detail
    assert _error(http.get("/admin/rebuild/nope"))[1] in {ErrorCode.NOT_FOUND, ErrorCode.CONFLICT}


def test_what_no_record_could_hold_is_refused_up_front(http: TestClient) -> None:
    deep = b'{"workflow": "known", "input": ' + b"[" * 130 + b"]" * 130 + b"}"
    status, code, detail = _error(http.post("/runs", content=deep, headers={"content-type": "application/json"}))
    assert (status, code) == (422, ErrorCode.INVALID_REQUEST) and f"deeper than {MAX_JSON_DEPTH}" in detail
    way_deeper = b"[" * 1_500 + b"]" * 1_500  # past orjson's own limit too
    assert _error(http.post("/runs", content=way_deeper, headers={"content-type": "application/json"}))[0] == 422
    huge = b'{"workflow": "known", "input": 18446744073709551616}'  # beyond 64 bits
    status, code, detail = _error(http.post("/runs", content=huge, headers={"content-type": "application/json"}))
    assert (status, code) == (422, ErrorCode.INVALID_REQUEST) and "64" in detail
    resume = b'{"event": "go", "payload": ' + b"{\"a\": " * 130 + b"1" + b"}" * 130 + b"}"
    assert _error(http.post("/runs/r-1/resume", content=resume, headers={"content-type": "application/json"}))[0] == 422


def test_an_accepted_start_is_produced_once(http: TestClient) -> None:
    answer = http.post("/runs", json={"workflow": "known", "input": 1, "run_id": "r-7"})
    assert answer.status_code == 202 and answer.json()["run_id"] == "r-7"


def test_the_sdk_raises_by_code(http: TestClient) -> None:
    sdk = Client()
    sdk._http.close()
    sdk._http = http  # the same httpx.Client interface, served in process
    with pytest.raises(UnknownWorkflow, match="registered workflows"):
        sdk.start("nope")
    with pytest.raises(RunNotFound):
        sdk.status("r-1")
    with pytest.raises(ApiError) as refused:
        sdk.start("known", "x" * 6_000)
    assert (refused.value.status, refused.value.api_code) == (413, ErrorCode.PAYLOAD_TOO_LARGE)
