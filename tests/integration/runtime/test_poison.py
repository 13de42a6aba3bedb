"""Poison records on every input topic: each is dead-lettered (or fails its own run) and no role stops.

One node hosts every role (engine, worker, projector, API, trigger). Malformed records go straight onto the
commands, results, tasks, events and trigger topics — a key longer than an envelope allows, a Kafka key that is
not the envelope's, bytes that are not JSON, JSON nested past orjson's limit and past tickflow's own, a time
beyond 64 bits — and valid commands whose consequences cannot be recorded: a start whose ``RunStarted`` would
pass the record limit, a resume whose next task would, a foreach whose joined output would. Afterwards every role
is still running, a new run completes, the live reader and a rebuild read past the bad records, and the
dead-letter topic names each bad record's coordinates and the reason.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.harness import settings_for
from tickflow.client import Client
from tickflow.events.codec import MAX_RECORD_BYTES, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import DeadLetter, Payload, ResumeRun, StartRun
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics, new_producer, read_partition
from tickflow.workflow import Flow, Registry, Workflow

pytestmark = pytest.mark.integration


async def echo(value: Any) -> Any:
    return value


async def fat(item: Any) -> str:
    return "x" * 200_000  # under the claim-check threshold, so the join collects them inline


def count(values: list[str]) -> int:
    return len(values)


registry = Registry()
registry.add(Workflow("hello").step(echo))
registry.add(Workflow("waiter").wait_for_event("go", timeout_s=600).step(echo, name="after"))
registry.add(Workflow("fat_join").foreach(Flow().step(fat), concurrency=6).step(count))


def envelope(payload: Any, key: str, **fields: Any) -> dict[str, Any]:
    env = Envelope.wrap(payload, id=f"poison/{uuid.uuid4().hex}", key=key, occurred_at_ms=1_700_000_000_000)
    return {**env.model_dump(mode="json"), **fields}


def sized_command(make: Callable[[str], Payload], key: str, size: int) -> bytes:
    """A command whose one big string field makes the record exactly ``size`` bytes long."""

    def encoded(fill: str) -> bytes:
        return encode(Envelope.wrap(make(fill), id=f"big/{key}", key=key, occurred_at_ms=1_700_000_000_000))

    raw = encoded("x")
    return encoded("x" * (size - len(raw) + 1))


async def test_poison_records_never_stop_a_role(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    topics = settings.topics
    trigger_topic = f"{prefix}.inbound"
    registry.triggers.clear()
    registry.trigger(trigger_topic, "hello", name="inbound")
    await ensure_topics(settings.bootstrap, topics, settings.pools)
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(trigger_topic, 1, 1)])
    await admin.close()
    node = Node(settings, registry)
    producer = new_producer(kafka_bootstrap)
    await node.start()
    await producer.start()
    try:
        with Client(settings.api_url) as c:
            await asyncio.to_thread(c.start, "waiter", None, run_id="waiting")
            await _until(lambda: _status(c, "waiting") == "waiting", "the waiter to wait")

        long_key = "k" * 300
        start = StartRun(workflow="hello", input=1)
        big_start = sized_command(
            lambda fill: StartRun(workflow="hello", input={"blob": fill}), "too-big-start", MAX_RECORD_BYTES - 8
        )
        big_resume = sized_command(
            lambda fill: ResumeRun(event="go", payload={"blob": fill}), "waiting", MAX_RECORD_BYTES - 8
        )
        far_future = {"type": "RunStarted", "occurred_at_ms": 2**64 - 1, "payload": {}}
        fork_far_future = envelope(start, "fork-1") | {
            "type": "ForkRun",
            "payload": {"source_run_id": "waiting", "at_seq": 1, "history": [far_future]},
        }
        deep_ok_json = orjson.dumps(envelope(start, "deep")).replace(
            b'"input":1', b'"input":' + b"[" * 300 + b"]" * 300
        )
        poison: dict[str, list[tuple[bytes | None, bytes]]] = {
            topics.commands: [
                (long_key.encode(), orjson.dumps(envelope(start, "k") | {"key": long_key})),
                (b"mismatch-a", orjson.dumps(envelope(start, "mismatch-b"))),
                (b"not-json", b"\xff\xfe not json at all"),
                (b"deep", b"[" * 1100 + b"]" * 1100),
                (b"deep", deep_ok_json),
                (b"fork-1", orjson.dumps(fork_far_future)),
                (b"too-big-start", big_start),
                (b"waiting", big_resume),
            ],
            topics.results: [
                (long_key.encode(), b'{"kind": "result"}'),
                (b"nobody", b"not json"),
            ],
            topics.tasks("default"): [
                (long_key.encode(), b"{}"),
                (b"t", b"[" * 300 + b"]" * 300),
            ],
            topics.events: [
                (long_key.encode(), b"garbage"),
                (b"healthy-run", b'{"kind": "event", "type": "RunCompleted", "payload": {}}'),
            ],
            trigger_topic: [(long_key.encode(), b'"' + b"y" * (MAX_RECORD_BYTES - 100) + b'"')],
        }
        sent = 0
        for topic, records in poison.items():
            for key, value in records:
                await producer.send_and_wait(topic, value, key=key)
                sent += 1

        with Client(settings.api_url) as c:
            fat_id = await asyncio.to_thread(c.start, "fat_join", [1, 2, 3, 4, 5, 6], run_id="fat")
            healthy = await asyncio.to_thread(c.start, "hello", {"after": "poison"}, run_id="healthy-run")
            done = await asyncio.to_thread(c.wait, healthy, timeout=60)
            assert done.status == "completed" and done.output == {"after": "poison"}

            failed = await asyncio.to_thread(c.wait, "waiting", timeout=60)
            assert (failed.status, failed.error_type) == ("failed", "PayloadTooLarge"), failed
            joined = await asyncio.to_thread(c.wait, fat_id, timeout=60)
            assert (joined.status, joined.error_type) == ("failed", "PayloadTooLarge"), joined
            rejected = await asyncio.to_thread(c.wait, "too-big-start", timeout=60)
            assert rejected.status == "rejected" and "PayloadTooLarge" in rejected.error_message, rejected

            # The live reader skips the undecodable record that sits in the healthy run's partition.
            live = [e["type"] for e in await asyncio.to_thread(lambda: list(c.live(healthy)))]
            assert live[0] == "RunStarted" and live[-1] == "RunCompleted"
            # A rebuild reads past the bad events and says how many it skipped.
            job = await asyncio.to_thread(c.rebuild, swap=False, wait=120)
            assert job.report is not None and job.report.invalid_records >= 2, job

        for name, role in node._running().items():
            assert role.task is not None and not role.task.done(), f"role {name} stopped: {role.task!r}"
        assert node.failures == {}, node.failures  # and none was restarted by its node
        (await check_log(settings)).assert_clean()  # every valid start ended; no seq lost or written twice

        letters = await _dead_letters(settings.bootstrap, topics.dead_letter, expect=13)
        by_source = {(d.source_topic, d.source_offset): d for d in letters}
        assert all(d.reason for d in letters)
        assert {d.consumer.split(":")[0] for d in letters} >= {"engine", "worker", "projector", "trigger"}
        too_long = [d for d in letters if d.source_key and d.source_key.startswith("kkkk")]
        assert {d.source_topic for d in too_long} >= {topics.commands, topics.results, topics.tasks("default")}
        assert any("PayloadTooLarge" in d.reason for d in letters), by_source
        assert any("depth limit" in d.reason for d in letters)  # orjson's own, at 1,024 levels
        assert any("deeper than" in d.reason for d in letters)
        assert any("occurred_at_ms" in d.reason for d in letters)
    finally:
        await producer.stop()
        await node.stop()


def _status(c: Client, run_id: str) -> str:
    try:
        return c.status(run_id).status
    except Exception:
        return ""


async def _until(check: Any, what: str, timeout: float = 60) -> None:
    for _ in range(int(timeout * 10)):
        if await asyncio.to_thread(check):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _dead_letters(bootstrap: str, topic: str, expect: int) -> list[DeadLetter]:
    from tickflow.events.codec import decode

    letters: list[DeadLetter] = []
    for _ in range(300):
        records = await read_partition(bootstrap, topic, 0)
        letters = [p for r in records if isinstance(p := decode(r.value).payload, DeadLetter)]
        if len(letters) >= expect:
            return letters
        await asyncio.sleep(0.2)
    raise AssertionError(f"{len(letters)} dead letters, expected at least {expect}: {letters}")
