"""A batch redelivered to the projector that inserted it is not inserted again.

Its commit is refused by a rebalance that hands it the same partitions again. Before, the watermarks were read
again only when the assigned set changed, so the redelivered batch was inserted a second time and every per-minute
rollup counted it twice. The projector runs here on the in-memory store (recording every insert) with a consumer
that hands the same batch out twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError

from tests.unit.core.test_decider import Sim
from tickflow.events.codec import encode
from tickflow.projections.fold import ProjectionBatch
from tickflow.projections.projector import Projector
from tickflow.projections.store import MemoryStore
from tickflow.workflow import Workflow

TP = TopicPartition("t.events", 0)


def step1(x: Any) -> Any:
    return x


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.inserted: Counter[tuple[str, int, int]] = Counter()

    def write(self, batch: ProjectionBatch) -> None:
        for table in ("events", "steps"):
            for row in getattr(batch, table):
                self.inserted[(table, row.partition, row.offset)] += 1
        super().write(batch)


class RedeliveringConsumer:
    """Hands the batch out, refuses its commit (a rebalance gave the same partition back), hands it out again."""

    def __init__(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        self.batches = [{TP: records}, {TP: records}]
        self.commits = 0

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> Any:
        if self.batches and len(self.batches) + self.commits == 2:  # the second, once the first commit was tried
            return self.batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1
        if self.commits == 1:
            raise CommitFailedError("the group rebalanced")

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def position(self, tp: TopicPartition) -> int:
        return 0


async def test_a_batch_redelivered_after_a_refused_commit_is_inserted_once() -> None:
    sim = Sim(Workflow("w").step(step1), 1, run_id="r1")
    sim.ok("step1", 2)
    records = [
        ConsumerRecord("t.events", 0, offset, 0, 0, b"r1", encode(e), None, 2, 0, ())
        for offset, e in enumerate(sim.log)
    ]
    store = RecordingStore()
    projector = Projector(store, kafka="127.0.0.1:1", events_topic="t.events", group_id="g", dead_letter_topic="t.dl")
    consumer = RedeliveringConsumer(records)  # type: ignore[arg-type]
    projector.consumer = consumer  # type: ignore[assignment]
    task = asyncio.create_task(projector._loop())
    for _ in range(100):
        if consumer.commits >= 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert consumer.commits == 2
    twice = [key for key, n in store.inserted.items() if n > 1]
    assert twice == [] and len(store.inserted) >= len(records)
