"""The projector: events topic → ClickHouse ``events`` and ``runs``, batched, idempotent, commit-after-insert.

Each batch is inserted, then its offsets are committed; a crash in between re-inserts the batch on restart,
which the ReplacingMergeTree tables collapse (reads use FINAL), so queries never see a duplicate. The runs row
of each run is folded from its events; the last row of a run not in the cache is read back from the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from events.codec import InvalidRecord, decode, encode
from events.envelope import Envelope, dead_letter
from events.topics import SLOT_PREFIX
from projections.rows import EventRow, RunRow, event_row, run_row
from projections.store import ProjectionStore

__all__ = ["Projector", "ProjectorMetrics"]

log = logging.getLogger("tickflow.projector")
RUN_CACHE_SIZE = 200_000


@dataclass
class ProjectorMetrics:
    """What an operator watches: how far behind the log the projection is, and how fresh it is."""

    events_projected: int = 0
    batches: int = 0
    last_batch_size: int = 0
    last_insert_ms: float = 0.0
    last_freshness_ms: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    dead_lettered: int = 0


class Projector:
    """Runs the projection loop for one consumer group over the events topic."""

    def __init__(
        self,
        store: ProjectionStore,
        *,
        bootstrap: str,
        events_topic: str,
        group_id: str,
        dead_letter_topic: str,
        batch_ms: int = 100,
        max_batch: int = 20_000,
    ) -> None:
        self.store = store
        self.bootstrap = bootstrap
        self.events_topic = events_topic
        self.group_id = group_id
        self.dead_letter_topic = dead_letter_topic
        self.batch_ms = batch_ms
        self.max_batch = max_batch
        self.metrics = ProjectorMetrics()
        self._runs: OrderedDict[str, RunRow] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._lag_checked = 0.0

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            self.events_topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=50,
        )
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True)
        await self.producer.start()
        await self.consumer.start()
        self._task = asyncio.create_task(self._loop(), name="tickflow-projector")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def _collect(self) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        """Wait for records, then keep fetching for up to ``batch_ms`` so inserts stay few and large."""
        out: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]] = {}
        first = await self.consumer.getmany(timeout_ms=500, max_records=self.max_batch)
        if not first:
            return out
        for tp, recs in first.items():
            out.setdefault(tp, []).extend(recs)
        deadline = time.monotonic() + self.batch_ms / 1000
        count = sum(len(r) for r in out.values())
        while count < self.max_batch and (left := deadline - time.monotonic()) > 0:
            more = await self.consumer.getmany(timeout_ms=int(left * 1000) + 1, max_records=self.max_batch - count)
            for tp, recs in more.items():
                out.setdefault(tp, []).extend(recs)
                count += len(recs)
        return out

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            if not batch:
                await self._update_lag()
                continue
            await self.project_batch(batch)
            offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items()}
            await self.consumer.commit(offsets)  # only after the insert: commits never outrun the store
            await self._update_lag()

    async def project_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        event_rows: list[EventRow] = []
        decoded: list[Envelope] = []
        for tp, records in batch.items():
            for record in records:
                try:
                    env = decode(record.value, expect="event")
                except InvalidRecord as exc:
                    await self._dead_letter(record, str(exc))
                    continue
                decoded.append(env)
                event_rows.append(event_row(env, tp.topic, tp.partition, record.offset))
        run_rows = await asyncio.to_thread(self._fold_runs, decoded)
        started = time.perf_counter()
        await asyncio.to_thread(self.store.write, event_rows, run_rows)
        m = self.metrics
        m.last_insert_ms = (time.perf_counter() - started) * 1000
        m.events_projected += len(event_rows)
        m.batches += 1
        m.last_batch_size = len(event_rows)
        if decoded:
            m.last_freshness_ms = time.time() * 1000 - decoded[-1].occurred_at_ms

    def _fold_runs(self, events: list[Envelope]) -> list[RunRow]:
        # Slot entities (per-key concurrency) share the log with runs but are not runs.
        events = [e for e in events if not e.key.startswith(SLOT_PREFIX)]
        missing = [e.key for e in events if e.key not in self._runs]
        if missing:
            for run_id, row in self.store.runs_by_id(list(dict.fromkeys(missing))).items():
                self._runs[run_id] = row
        touched: dict[str, RunRow] = {}
        for env in events:
            row = run_row(self._runs.get(env.key), env)
            self._runs[env.key] = row
            self._runs.move_to_end(env.key)
            touched[env.key] = row
        while len(self._runs) > RUN_CACHE_SIZE:
            self._runs.popitem(last=False)
        return list(touched.values())

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str) -> None:
        letter = dead_letter(
            consumer="projector",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            reason=reason,
            now_ms=int(time.time() * 1000),
        )
        await self.producer.send_and_wait(self.dead_letter_topic, encode(letter), key=record.key)
        self.metrics.dead_lettered += 1
        log.warning("dead-lettered event %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)

    async def _update_lag(self) -> None:
        if time.monotonic() - self._lag_checked < 1.0:  # an end_offsets round trip per batch would cost throughput
            return
        self._lag_checked = time.monotonic()
        assignment = self.consumer.assignment()
        if not assignment:
            return
        ends = await self.consumer.end_offsets(list(assignment))
        lag = {}
        for tp in assignment:
            try:
                lag[f"{tp.topic}[{tp.partition}]"] = max(0, ends[tp] - await self.consumer.position(tp))
            except Exception:  # position unknown while a rebalance is in progress
                continue
        self.metrics.lag = lag
