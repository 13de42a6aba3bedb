"""The partition tickflow computes for a run is where Kafka puts the run's records.

The live reader and the token stream read one partition of a topic by ``partition_of`` rather than the whole topic,
so it must agree with the producers' default partitioner (murmur2, as in the Java client) on the real broker.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tickflow.events import Envelope, RunCompleted, TopicNames
from tickflow.events.codec import decode, encode
from tickflow.events.topics import partition_key
from tickflow.runtime.kafka import ensure_topics, new_producer, read_partition
from tickflow.runtime.live import partition_of

pytestmark = pytest.mark.integration  # the real broker's partitioner


def events_of(run_id: str, n: int) -> list[Envelope]:
    return [
        Envelope.wrap(RunCompleted(output=i), id=f"{run_id}/{i}", key=run_id, seq=i, occurred_at_ms=i)
        for i in range(1, n + 1)
    ]


async def test_every_run_s_records_are_on_the_partition_partition_of_names_in_order(
    kafka_bootstrap: str, prefix: str
) -> None:
    names = TopicNames(prefix=prefix, partitions=4)
    await ensure_topics(kafka_bootstrap, names, ())
    runs = [f"run-{i}" for i in range(20)] + ["stack-7/t/12", "ünïcode-run"]
    producer = new_producer(kafka_bootstrap)
    await producer.start()
    try:
        sends = [await producer.send(names.events, encode(e), key=partition_key(e.key))
                 for run_id in runs for e in events_of(run_id, 3)]
        for sent in sends:
            await sent
    finally:
        await producer.stop()
    seen: Counter[str] = Counter()
    for partition in range(names.partitions):
        got = [decode(r.value) for r in await read_partition(kafka_bootstrap, names.events, partition)]
        for envelope in got:
            assert partition_of(envelope.key, names.partitions) == partition, envelope.key
            seen[envelope.key] += 1
        for run_id in {e.key for e in got}:
            assert [e for e in got if e.key == run_id] == events_of(run_id, 3)
    assert seen == {run_id: 3 for run_id in runs}
    assert len({partition_of(r, names.partitions) for r in runs}) == names.partitions  # the check covers them all
