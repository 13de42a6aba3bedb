"""One contract for every EventLog: in memory and the real Kafka events topic."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tickflow.events import Envelope, RunCompleted, TopicNames
from tickflow.runtime.kafka import ensure_topics
from tickflow.runtime.log import EventLog, KafkaEventLog, MemoryEventLog, partition_of


def evs(run_id: str, n: int) -> list[Envelope]:
    return [
        Envelope.wrap(RunCompleted(output=i), id=f"{run_id}/{i}", key=run_id, seq=i, occurred_at_ms=i)
        for i in range(1, n + 1)
    ]


@pytest.fixture(params=["memory", "kafka"])
async def log(request: pytest.FixtureRequest, prefix: str) -> AsyncIterator[EventLog]:
    if request.param == "memory":
        yield MemoryEventLog(partitions=4)
        return
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    names = TopicNames(prefix=prefix, partitions=4)
    await ensure_topics(bootstrap, names, ())
    klog = KafkaEventLog(bootstrap, names.events, 4)
    yield klog
    await klog.close()


async def test_a_keys_events_come_back_in_order_on_its_partition(log: EventLog) -> None:
    await log.append(evs("a", 5) + evs("b", 3))
    await log.append(evs("a", 7)[5:])
    part = partition_of("a", log.partitions)
    got = [e for e in await log.read(part) if e.key == "a"]
    assert [e.seq for e in got] == [1, 2, 3, 4, 5, 6, 7]
    assert got == evs("a", 7)


async def test_every_event_is_on_exactly_one_partition(log: EventLog) -> None:
    keys = [f"run-{i}" for i in range(20)]
    for k in keys:
        await log.append(evs(k, 2))
    seen: dict[str, int] = {}
    for p in range(log.partitions):
        for e in await log.read(p):
            assert partition_of(e.key, log.partitions) == p
            seen[e.key] = seen.get(e.key, 0) + 1
    assert seen == {k: 2 for k in keys}


async def test_an_empty_partition_reads_empty(log: EventLog) -> None:
    for p in range(log.partitions):
        assert await log.read(p) == []
