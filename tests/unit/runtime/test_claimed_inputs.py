"""Claim-checked commands without a broker: a resume payload's schema is checked against the value its reference
stands for (the event keeps the reference), a fork's history may live in the blob store, and the API's
``/blobs/{sha256}`` answers only with credentials and a well-formed, known digest."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from tests.unit.api.test_api_errors import RecordingProducer
from tests.unit.core.test_decider import Sim
from tickflow.api.app import create_api
from tickflow.api.replay import fork_record
from tickflow.core.decider import ClaimedPayload, Fork, RunState, Signal, resume_schema, run
from tickflow.events.codec import MAX_RECORD_BYTES, decode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import BlobRef, ForkRun, HistoryEvent, NodeCompleted, ResumeRejected, ResumeRun
from tickflow.events.topics import TopicNames
from tickflow.projections.store import MemoryStore
from tickflow.runtime.claimcheck import FileBlobStore, offload
from tickflow.runtime.claimed_inputs import claimed_fork, claimed_signal
from tickflow.workflow import Workflow

SCHEMA = {"type": "object", "required": ["blob"], "properties": {"blob": {"type": "string", "pattern": "^y+$"}}}


def echo(value: Any) -> Any:
    return value


def waiting(schema: dict[str, Any] | None = SCHEMA) -> Sim:
    return Sim(Workflow("w").wait_for_event("upload", schema=schema).step(echo), None)


def resume(sim: Sim, payload: Any, claimed: ClaimedPayload | None, id: str) -> list[Any]:
    command = Envelope.wrap(ResumeRun(event="upload", payload=payload), id=id, key="r1", occurred_at_ms=0)
    return [e.payload for e in sim.apply(Signal(command, claimed)).events]


def test_a_claim_checked_resume_is_checked_against_its_value_and_recorded_as_its_reference(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    ref = offload({"blob": "y" * 5_000}, store, 100, 10**9, "payload")
    sim = waiting()
    assert resume_schema(sim.state, "upload") == SCHEMA and resume_schema(sim.state, "other") is None
    [refused] = resume(sim, ref, None, "r-1")  # without the value the reference itself is checked: refused
    assert isinstance(refused, ResumeRejected) and "does not match the wait's schema" in refused.reason
    [unread] = resume(sim, ref, ClaimedPayload(problem="FileNotFoundError: gone"), "r-2")
    assert isinstance(unread, ResumeRejected) and "could not be read (FileNotFoundError: gone)" in unread.reason
    [wrong] = resume(sim, ref, ClaimedPayload(value={"blob": "z" * 100_000}), "r-3")
    assert isinstance(wrong, ResumeRejected) and len(wrong.reason) < 2_000  # the 100 kB value is not quoted whole
    done, *_ = resume(sim, ref, ClaimedPayload(value={"blob": "y" * 5_000}), "r-4")
    assert isinstance(done, NodeCompleted) and done.output == ref  # the log keeps the reference
    assert sim.sent[-1].payload.input == ref  # the next step's worker reads the value
    sim.check_refold()


def test_the_engine_reads_a_claimed_resume_only_for_a_schema(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    ref = offload({"blob": "y" * 5_000}, store, 100, 10**9, "payload")
    command = Envelope.wrap(ResumeRun(event="upload", payload=ref), id="c", key="r1", occurred_at_ms=0)
    read = asyncio.run(claimed_signal(command, waiting().state, store))
    assert read.claimed == ClaimedPayload(value={"blob": "y" * 5_000})
    assert asyncio.run(claimed_signal(command, waiting(None).state, store)).claimed is None  # nothing to check
    gone = {"$blob": {"sha256": "0" * 64, "size": 3}}
    missing = Envelope.wrap(ResumeRun(event="upload", payload=gone), id="c", key="r1", occurred_at_ms=0)
    problem = asyncio.run(claimed_signal(missing, waiting().state, store)).claimed
    assert problem is not None and problem.problem is not None and "FileNotFoundError" in problem.problem


def _history(n: int, pad: int) -> list[HistoryEvent]:
    start = HistoryEvent(type="RunStarted", schema_version=2, occurred_at_ms=0,
                         payload={"workflow": "w", "input": "x" * pad, "spec": {"name": "w", "root": {}}})
    return [start] * n


def test_a_fork_history_above_a_record_goes_through_the_claim_check(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    small = Envelope.wrap(ForkRun(source_run_id="src", at_seq=1, history=_history(1, 10)), id="f", key="fk",
                          occurred_at_ms=0)
    assert decode(fork_record(small, store)).payload == small.payload  # inline when it fits
    history = _history(3, 400_000)
    big = Envelope.wrap(ForkRun(source_run_id="src", at_seq=3, history=history), id="f", key="fk", occurred_at_ms=0)
    raw = fork_record(big, store)
    assert len(raw) < 2_000 < MAX_RECORD_BYTES
    sent = decode(raw).payload
    assert isinstance(sent, ForkRun) and sent.history == [] and sent.history_blob is not None
    read = asyncio.run(claimed_fork(decode(raw), store))
    assert read.unreadable is None and read.command.payload.history == history  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="either inline"):
        ForkRun(source_run_id="src", at_seq=1)
    with pytest.raises(ValueError, match="either inline"):
        ForkRun(source_run_id="src", at_seq=1, history=_history(1, 1), history_blob=sent.history_blob)

    lost = ForkRun(source_run_id="src", at_seq=3, history_blob=BlobRef(sha256="1" * 64, size=10))
    fork = asyncio.run(claimed_fork(Envelope.wrap(lost, id="f2", key="fk2", occurred_at_ms=0), store))
    assert fork.unreadable is not None and "FileNotFoundError" in fork.unreadable
    [rejected] = run(RunState("fk2"), fork, 1_000).events  # refused with the reason, never an engine error
    assert rejected.type == "RunRejected" and "claim-checked history could not be read" in rejected.payload.reason
    [unread] = run(RunState("fk3"), Fork(Envelope.wrap(lost, id="f3", key="fk3", occurred_at_ms=0)), 1_000).events
    assert unread.type == "RunRejected" and "was not read" in unread.payload.reason  # produced straight to Kafka


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[TestClient, FileBlobStore]]:
    store = FileBlobStore(tmp_path)
    app = create_api(store=MemoryStore(), producer=RecordingProducer(), topics=TopicNames("t"), workflows={"w"},
                     token="s3cret", blobs=store, offload_bytes=1_000)
    with TestClient(app, base_url="http://127.0.0.1:8700") as client:
        yield client, store


def test_the_blob_route_answers_known_digests_to_those_with_credentials(api: tuple[TestClient, FileBlobStore]) -> None:
    http, store = api
    ref = offload({"rows": list(range(2_000))}, store, 100, 10**9, "x")["$blob"]
    url = f"/blobs/{ref['sha256']}"
    assert http.get(url).status_code == 401
    auth = {"authorization": "Bearer s3cret"}
    answer = http.get(url, headers=auth)
    assert answer.status_code == 200 and orjson.loads(answer.content) == {"rows": list(range(2_000))}
    assert int(answer.headers["content-length"]) == ref["size"]
    assert http.get(f"/blobs/{'a' * 64}", headers=auth).json()["code"] == "blob_not_found"
    bad = http.get("/blobs/not-a-digest", headers=auth)
    assert bad.status_code == 400 and "not a blob digest" in bad.json()["detail"]


def test_a_big_resume_payload_is_sent_as_a_reference(api: tuple[TestClient, FileBlobStore]) -> None:
    http, store = api
    auth = {"authorization": "Bearer s3cret"}
    assert http.post("/runs", json={"workflow": "w", "run_id": "r1"}, headers=auth).status_code == 202
    payload = {"blob": "y" * 5_000}
    sent = http.post("/runs/r1/resume", json={"event": "upload", "payload": payload}, headers=auth)
    assert sent.status_code == 202, sent.text
    producer = http.app.state.deps.producer  # type: ignore[attr-defined]
    command = decode(producer.sent[-1][1]).payload
    assert isinstance(command, ResumeRun) and set(command.payload) == {"$blob"}
    assert orjson.loads(store.get(command.payload["$blob"]["sha256"])) == payload
