"""A run goes start → completed on the real broker, with its status visible in real ClickHouse (chDB)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for
from tickflow.client import Client
from tickflow.events import DeadLetter, Envelope, StartRun, encode
from tickflow.events.errors import RunNotFound, UnknownWorkflow
from tickflow.node import Node

pytestmark = pytest.mark.integration


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), max_payload_bytes=2_000_000,
                          api_max_body_bytes=2_000_000), registry)
    await n.start()
    yield n
    await n.stop()


def sdk(node: Node) -> Client:
    return Client(node.settings.api_url)


async def test_runs_complete_and_are_visible_in_clickhouse(node: Node) -> None:
    def scenario() -> None:
        with sdk(node) as c:
            rid = c.start("math", 20)
            final = c.wait(rid, timeout=60)
            assert final.status == "completed", final
            assert final.output == 42 and final.steps_completed == 3 and final.steps_total == 3
            events = [e["type"] for e in c.events(rid)]
            assert events == [
                "RunStarted",
                "StepScheduled",
                "StepCompleted",
                "StepScheduled",
                "StepCompleted",
                "StepScheduled",
                "StepFailed",
                "StepScheduled",
                "StepCompleted",
                "NodeCompleted",
                "RunCompleted",
            ]
            failed = c.wait(c.start("doomed", 1), timeout=60)
            assert failed.status == "failed" and failed.error_message == "cannot handle 2"
            assert failed.error_type == "ValueError"
            assert any(r.run_id == rid for r in c.list_runs(status="completed"))

    await asyncio.to_thread(scenario)


async def test_start_with_the_same_id_starts_one_run(node: Node) -> None:
    def scenario() -> None:
        with sdk(node) as c:
            ids = {c.start("math", 1, run_id="same-id") for _ in range(3)}
            assert ids == {"same-id"}
            assert c.wait("same-id", timeout=60).status == "completed"

    await asyncio.to_thread(scenario)
    log = await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)
    started = [e for _, _, e in log if e.key == "same-id" and e.type == "RunStarted"]
    assert len(started) == 1


async def test_watch_yields_progress_until_the_end(node: Node) -> None:
    def scenario() -> list[str]:
        with sdk(node) as c:
            rid = c.start("math", 5)
            return [s.status for s in c.watch(rid, poll_s=0.02, timeout=60)]

    statuses = await asyncio.to_thread(scenario)
    assert statuses[-1] == "completed"


async def test_api_refuses_bad_requests_with_reasons(node: Node) -> None:
    def scenario() -> None:
        with sdk(node) as c:
            with pytest.raises(
                UnknownWorkflow, match=r"unknown workflow 'nope'; registered workflows: .*approval, bigdata, .*doomed"
            ):
                c.start("nope")
            with pytest.raises(RunNotFound, match="no run 'missing'"):
                c.status("missing")
        with httpx.Client(base_url=node.settings.api_url) as h:
            r = h.post("/runs", json={"workflow": "math", "input": 1, "surprise": True})
            assert r.status_code == 422 and "surprise" in r.text
            r = h.post("/runs", content=b"{oops", headers={"content-type": "application/json"})
            assert r.status_code == 422
            r = h.post("/runs", json={"workflow": "math", "input": "x" * 2_100_000})
            assert r.status_code == 413 and "the limit is 2000000" in r.text
            r = h.post("/runs", json={"workflow": "bigdata", "input": "x" * 1_100_000})  # above Kafka's record limit
            assert r.status_code == 202  # the input went to the blob store (claim-check)

    await asyncio.to_thread(scenario)


async def test_bad_commands_are_dead_lettered_and_the_engine_keeps_going(node: Node) -> None:
    topics = node.topics
    producer = AIOKafkaProducer(bootstrap_servers=node.settings.bootstrap, acks="all")
    await producer.start()
    unknown = Envelope.wrap(StartRun(workflow="ghost"), id="c-ghost", key="ghost-run", occurred_at_ms=1)
    bad = [
        (b"k1", b"{this is not json"),
        (b"k2", orjson.dumps({"kind": "command", "type": "Explode", "id": "x", "key": "k2", "payload": {}})),
        (
            b"k3",
            orjson.dumps(
                {
                    "kind": "command",
                    "type": "StartRun",
                    "id": "x",
                    "key": "k3",
                    "occurred_at_ms": 1,
                    "payload": {"workflow": "math", "colour": "red"},
                }
            ),
        ),
        (b"ghost-run", encode(unknown)),
    ]
    try:
        for key, value in bad:
            await producer.send_and_wait(topics.commands, value, key=key)
    finally:
        await producer.stop()

    def after() -> None:
        with sdk(node) as c:
            assert c.wait(c.start("math", 1), timeout=60).status == "completed"  # still running
            rejected = c.wait("ghost-run", timeout=30)
            assert rejected.status == "rejected" and "unknown workflow 'ghost'" in rejected.error_message

    await asyncio.to_thread(after)
    letters = [e.payload for _, _, e in await read_topic(node.settings.bootstrap, topics.dead_letter, 1)]
    assert all(isinstance(p, DeadLetter) for p in letters)
    reasons = {p.source_key: p.reason for p in letters if isinstance(p, DeadLetter)}
    assert "not valid JSON" in reasons["k1"]
    assert "unknown command type 'Explode'" in reasons["k2"]
    assert "colour: Extra inputs are not permitted" in reasons["k3"]
    assert "unknown workflow 'ghost'" in reasons["ghost-run"]
    for p in letters:
        assert isinstance(p, DeadLetter) and p.source_topic == topics.commands and p.source_offset >= 0
