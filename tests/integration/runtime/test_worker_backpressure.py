"""A worker whose local queue is full pauses its partitions and keeps polling them, so steps that hold every slot
for longer than ``max.poll.interval.ms`` never make it leave its group: no rebalance, no task run twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.harness import settings_for
from tickflow.events.codec import decode, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import RunStep, StepSucceeded
from tickflow.runtime.kafka import ensure_topics, new_producer, read_partition
from tickflow.runtime.worker import StepWorker
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration

STEP_S = 3.5
POLL_INTERVAL_MS = 2_500  # each step holds the only slot longer than this (the paused loop polls every 1 s)
TASKS = 4


async def hold(value: int) -> int:
    await asyncio.sleep(STEP_S)
    return value


async def test_a_full_queue_pauses_fetching_without_leaving_the_group(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), partitions=1)
    await ensure_topics(settings.kafka, settings.topics, settings.pools)
    registry = Registry()
    registry.add(Workflow("holding").step(hold))
    fn = next(iter(registry.functions))
    worker = StepWorker(settings, registry, concurrency=1, consumer_options={"max_poll_interval_ms": POLL_INTERVAL_MS})
    revocations: list[set[object]] = []
    stopping = False
    on_revoked = worker.on_revoked

    async def counting(revoked: set[object]) -> None:  # the listener is bound at start: count what it sees
        if revoked and not stopping:  # not the empty call of the first join, nor the hand-back at stop
            revocations.append(set(revoked))
        await on_revoked(revoked)  # type: ignore[arg-type]

    worker.on_revoked = counting  # type: ignore[method-assign]
    producer = new_producer(settings.kafka)
    await producer.start()
    await worker.start()
    try:
        for i in range(TASKS):  # more than the queue holds (2 x concurrency): fetching must pause
            key = f"hold-{i}/0/1"
            task = RunStep(workflow="holding", path="0", step="hold", fn=fn, attempt=1, input=i, idempotency_key=key)
            env = Envelope.wrap(task, id=f"task-{i}", key=f"hold-{i}", occurred_at_ms=int(time.time() * 1000))
            await producer.send_and_wait(settings.topics.tasks(), encode(env), key=env.key.encode(), partition=0)
        results: list[Envelope] = []
        paused_seen = False
        deadline = time.monotonic() + TASKS * STEP_S + 30
        while time.monotonic() < deadline:
            paused_seen = paused_seen or bool(worker.consumer.paused())
            results = [decode(r.value) for r in await read_partition(settings.kafka, settings.topics.results, 0)]
            if len(results) >= TASKS:
                break
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a duplicate would land now
        results = [decode(r.value) for r in await read_partition(settings.kafka, settings.topics.results, 0)]
    finally:
        stopping = True
        await worker.stop()
        await producer.stop()
    assert paused_seen, "the full queue never paused fetching"
    assert revocations == [], f"the worker left its group while its steps held every slot: {revocations}"
    outputs = sorted(r.payload.output for r in results if isinstance(r.payload, StepSucceeded))
    assert outputs == list(range(TASKS)), outputs  # each task ran once
    assert worker.executed == TASKS
