"""The rebuild's range reader on the real broker: exact ranges, compressed batches, a missing topic."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tickflow.projections.logread import RangeReader
from tickflow.projections.rebuild import RebuildError, rebuild_database
from tickflow.projections.store import ClickHouseStore

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, n: int, compression: str | None) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, compression_type=compression)
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, b"v%d" % i, key=b"k", partition=i % 2)
        await producer.flush()
    finally:
        await producer.stop()


@pytest.mark.parametrize("compression", [None, "gzip"])
async def test_reads_exactly_the_range_asked_for(kafka_bootstrap: str, prefix: str, compression: str | None) -> None:
    topic = f"{prefix}.range"
    await _produce(kafka_bootstrap, topic, 400, compression)  # offsets 0..199 on each partition
    reader = RangeReader(kafka_bootstrap, topic)
    await reader.start()
    try:
        assert reader.partitions() == [0, 1]
        positions, ends = {0: 37, 1: 0}, {0: 151, 1: 200}
        got: dict[int, list[tuple[int, bytes]]] = {0: [], 1: []}
        while any(positions[p] < ends[p] for p in ends):
            for partition, records in await reader.fetch(positions, ends):
                got[partition].extend((r.offset, r.value) for r in records)
    finally:
        await reader.stop()
    assert positions == ends
    # partition 0 holds the even values: offset o is value 2 * o
    assert got[0] == [(o, b"v%d" % (2 * o)) for o in range(37, 151)]
    assert got[1] == [(o, b"v%d" % (2 * o + 1)) for o in range(200)]


def test_a_missing_topic_is_a_clear_error(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    store = ClickHouseStore(path=str(tmp_path / "chdb"), database=prefix)
    try:
        with pytest.raises(RebuildError, match="does not exist: check TICKFLOW_PREFIX"):
            rebuild_database(store, kafka=kafka_bootstrap, topic=f"{prefix}.no-such-topic")
    finally:
        store.close()
