"""Run ids are forever: once a finished run's state has expired, its id still cannot start a second seq 1,
across restarts; and an id the API would refuse is refused by the engine too, whoever produced the command."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for
from tickflow.client import Client
from tickflow.events.agents import StackPaused
from tickflow.events.codec import decode, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import DeadLetter, SlotGranted, StartRun
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics, new_producer, read_partition

pytestmark = pytest.mark.integration


async def test_an_expired_run_id_is_never_reused(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    settings = settings_for(
        prefix, kafka_bootstrap, tmp_path, free_port(), state_retention_s=0.5, snapshot_interval_s=0.3, partitions=1
    )
    node = Node(settings, registry)
    await node.start()
    producer = new_producer(kafka_bootstrap)
    await producer.start()
    try:
        with Client(settings.api_url) as c:
            first = await asyncio.to_thread(c.start, "square", 3, run_id="once")
            assert (await asyncio.to_thread(c.wait, first, timeout=60)).output == 9
        assert node.engine is not None
        for _ in range(100):  # its state expires after 0.5 s; a snapshot round writes the id's marker
            if "once" in node.engine.partitions[0].gone and not node.engine.snapshots.expired[0]:
                break
            await asyncio.sleep(0.1)
        assert "once" in node.engine.partitions[0].gone and "once" not in node.engine.partitions[0].runs
        again = Envelope.wrap(StartRun(workflow="square", input=5), id="start/once-2", key="once", occurred_at_ms=1)
        await producer.send_and_wait(settings.topics.commands, encode(again), key=b"once")
        slash = orjson.dumps(
            Envelope.wrap(StartRun(workflow="square", input=1), id="s", key="a", occurred_at_ms=1).model_dump(
                mode="json"
            )
            | {"key": "a/b"}
        )
        await producer.send_and_wait(settings.topics.commands, slash, key=b"a/b")
    finally:
        await node.stop()

    restarted = Node(settings, registry)  # the id's marker comes back from the state topic
    await restarted.start()
    try:
        assert restarted.engine is not None
        for _ in range(100):
            if restarted.engine.recovered_partitions:
                break
            await asyncio.sleep(0.1)
        assert "once" in restarted.engine.partitions[0].gone
        third = Envelope.wrap(StartRun(workflow="square", input=7), id="start/once-3", key="once", occurred_at_ms=1)
        await producer.send_and_wait(settings.topics.commands, encode(third), key=b"once")
        letters: list[DeadLetter] = []
        for _ in range(100):
            records = await read_partition(kafka_bootstrap, settings.topics.dead_letter, 0)
            letters = [p for r in records if isinstance(p := decode(r.value).payload, DeadLetter)]
            if len(letters) >= 3:
                break
            await asyncio.sleep(0.1)
        reasons = sorted(d.reason for d in letters)
        assert sum("never reused" in r for r in reasons) == 2, reasons
        assert any("'a/b' is not allowed" in r for r in reasons), reasons
    finally:
        await producer.stop()
        await restarted.stop()
    log = await read_topic(kafka_bootstrap, settings.topics.events, settings.partitions)
    seqs = [e.seq for _, _, e in log if e.key == "once"]
    assert seqs == list(range(1, len(seqs) + 1)), f"a second history began for the same id: {seqs}"
    assert not [e for _, _, e in log if e.key == "a/b"]


async def test_a_gap_in_a_stack_or_slot_history_does_not_stop_recovery(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """Events of a slot and a stack that start at seq 5 (their first four lost): recovery says so and goes on."""
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), partitions=1)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    producer = new_producer(kafka_bootstrap)
    await producer.start()
    try:
        for key, payload in (("slot:square:x", SlotGranted(run_id="r")), ("stack:s1", StackPaused(reason="gap"))):
            gap = Envelope.wrap(payload, id=f"{key}/5", key=key, seq=5, occurred_at_ms=1)
            await producer.send_and_wait(settings.topics.events, encode(gap), key=key.encode(), partition=0)
    finally:
        await producer.stop()
    node = Node(settings, registry)
    await node.start()
    try:

        def square_four() -> object:
            with Client(settings.api_url) as c:
                return c.wait(c.start("square", 4), timeout=60).output

        assert await asyncio.to_thread(square_four) == 16
        assert node.engine is not None and node.engine.recovered_partitions == {0}
        assert node.engine.task is not None and not node.engine.task.done()
    finally:
        await node.stop()
