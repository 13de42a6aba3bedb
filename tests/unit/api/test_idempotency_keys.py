"""Every command route takes an ``Idempotency-Key``: a request sent again with the same key is the same command
(same command id, which the engine recognises: ``RunState.resumed_by``, ``StackState.commands``); the SDK sends
one with every command and retries a lost answer under it; the key itself never enters the log.

The API runs in process on the in-memory store, with a producer that records what it is given.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from tickflow.api.app import create_api
from tickflow.client import Client
from tickflow.events import decode
from tickflow.events.topics import TopicNames
from tickflow.projections.store import MemoryStore

KEY = "retry-me-7f3c secret-looking value"


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> None:
        self.sent.append((topic, value, key))

    def ids(self) -> list[str]:
        return [decode(value).id for _, value, _ in self.sent]


@pytest.fixture
def producer() -> RecordingProducer:
    return RecordingProducer()


@pytest.fixture
def http(producer: RecordingProducer) -> Iterator[TestClient]:
    app = create_api(store=MemoryStore(), producer=producer, topics=TopicNames("t"), workflows={"known"})
    with TestClient(app) as client:
        client.post("/runs", json={"workflow": "known", "run_id": "r1"})  # the routes below need a known run
        producer.sent.clear()
        yield client


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/runs/r1/resume", {"event": "approve", "payload": {"ok": True}}),
        ("POST", "/runs/r1/cancel", {"reason": "r"}),
        ("POST", "/runs/r1/release", None),
        ("POST", "/stacks", {"stack_id": "s1", "workflow": "known"}),
        ("PATCH", "/stacks/s1", {"interval_s": 30}),
        ("POST", "/stacks/s1/pause", None),
        ("POST", "/stacks/s1/play", None),
        ("DELETE", "/stacks/s1", None),
    ],
)
def test_the_same_key_is_the_same_command_and_no_key_a_new_one(
    http: TestClient, producer: RecordingProducer, method: str, path: str, body: object
) -> None:
    for headers in ({"Idempotency-Key": KEY}, {"Idempotency-Key": KEY}, {"Idempotency-Key": "other"}, {}, {}):
        answer = http.request(method, path, json=body, headers=headers)
        assert answer.status_code == 202, answer.text
        assert answer.json()["command_id"] == producer.ids()[-1]
    first, retry, other, plain, plain_again = producer.ids()
    assert first == retry and len({first, other, plain, plain_again}) == 4
    assert all(KEY not in value.decode() for _, value, _ in producer.sent), "the key itself never enters the log"


def test_a_start_without_a_run_id_takes_its_id_from_the_key(http: TestClient, producer: RecordingProducer) -> None:
    ids = [
        http.post("/runs", json={"workflow": "known"}, headers={"Idempotency-Key": KEY}).json()["run_id"]
        for _ in range(2)
    ]
    assert ids[0] == ids[1] and KEY not in ids[0]
    assert http.post("/runs", json={"workflow": "known"}).json()["run_id"] != ids[0]


def test_the_sdk_retries_a_lost_answer_under_one_key(producer: RecordingProducer) -> None:
    """The first answer is lost (a transport error after the API took the command); the SDK's retry carries the
    same key, so the engine sees one command id twice and applies it once."""
    app = create_api(store=MemoryStore(), producer=producer, topics=TopicNames("t"), workflows={"known"})
    with TestClient(app) as inner:
        inner.post("/runs", json={"workflow": "known", "run_id": "r1"})
        producer.sent.clear()
        lost = [True]

        def flaky(request: httpx.Request) -> httpx.Response:
            answer = inner.request(request.method, request.url.path, content=request.content, headers=request.headers)
            if lost.pop() if lost else False:
                raise httpx.ReadError("connection reset after the request was sent", request=request)
            return httpx.Response(answer.status_code, content=answer.content, headers=answer.headers)

        client = Client("http://testserver")
        client._http = httpx.Client(base_url="http://testserver", transport=httpx.MockTransport(flaky))
        command_id = client.resume("r1", "approve", {"ok": True}, wait=False)
        assert producer.ids() == [command_id, command_id]
        assert client.play_stack("s1", idempotency_key="mine") == client.play_stack("s1", idempotency_key="mine")
