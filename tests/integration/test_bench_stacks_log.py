"""The stacks benchmark's log reader on the real broker: a transactional topic ends in commit markers, which a
consumer is never handed, so a reader waiting for a record at the end offset never returns (the bench hung so).
``read_to_end`` must return, with every committed record and none of an aborted transaction's."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.bench.stacks_log import TopicCount, analyse, count_topic, read_log
from tickflow.events import Envelope, encode
from tickflow.events.agents import TickFinished, TickFired
from tickflow.events.schemas import RunCompleted

pytestmark = pytest.mark.integration


def event(payload: TickFired | TickFinished | RunCompleted, key: str, at: int) -> bytes:
    return encode(Envelope.wrap(payload, id=f"{key}/{uuid.uuid4().hex[:6]}", key=key, occurred_at_ms=at))


async def test_reads_a_transactional_topic_to_its_end(kafka_bootstrap: str, prefix: str) -> None:
    topic = f"{prefix}.events"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{prefix}-writer", enable_idempotence=True
    )
    await producer.start()
    t0 = 1_000_000
    try:
        for tick in (1, 2, 3):  # one transaction per tick, as an engine turn: both partitions end in a marker
            run = f"bs-00001.t{tick}"
            at = t0 + tick * 10_000
            async with producer.transaction():
                fired = TickFired(tick=tick, run_id=run, due_at_ms=at - 5)
                await producer.send(topic, event(fired, "stack:bs-00001", at), b"stack:bs-00001", 0, timestamp_ms=at)
                await producer.send(
                    topic, event(RunCompleted(output=1), run, at + 300), run.encode(), 1, timestamp_ms=at
                )
                done = TickFinished(tick=tick, run_id=run, status="completed")
                await producer.send(
                    topic, event(done, "stack:bs-00001", at + 310), b"stack:bs-00001", 0, timestamp_ms=at
                )
        await producer.begin_transaction()  # an aborted turn: its record is not the log's
        ghost = TickFired(tick=9, run_id="bs-00001.t9", due_at_ms=t0)
        await producer.send(topic, event(ghost, "stack:bs-00001", t0 + 20_000), b"stack:bs-00001", 0)
        await producer.abort_transaction()
    finally:
        await producer.stop()

    tick_run = re.compile(rb"bs-\d+\.t\d+")
    window = TopicCount(t0, t0 + 40_000, tick_run)
    log = await asyncio.wait_for(read_log(kafka_bootstrap, topic, 2, window), 30)

    assert log.records == 9 and log.types == {"TickFired": 3, "RunCompleted": 3, "TickFinished": 3}
    assert log.offsets["records"] == 9 and log.offsets["offsets"] > 9  # the markers (and the aborted record)
    assert window.by_key_kind == {"stack": 6, "tick_run": 3}
    figures = analyse(log, t0, t0 + 40_000, {0: "node1", 1: "node2"})
    assert figures["ticks_fired"] == 3 and figures["tick_lag_ms"]["p50"] == 5.0
    assert figures["tick_to_run_completed_ms"]["max"] == 300.0 and figures["runs_unfinished_at_cutoff"] == 0
    assert figures["ticks_by_process"] == {"node1": 3}
    again = await asyncio.wait_for(count_topic(kafka_bootstrap, topic, 2, TopicCount(0, t0 + 25_000, tick_run)), 30)
    assert again.records_in_window == 6 and again.by_type == {"TickFired": 2, "RunCompleted": 2, "TickFinished": 2}
