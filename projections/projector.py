"""The projector: events topic → every ClickHouse table, batched, exactly-once, commit-after-insert.

Each batch is folded into rows (``projections.fold``), inserted, and only then are its offsets committed. A crash
between the insert and the commit redelivers the batch. Versioned tables (runs, stacks, steps, ticks) would
absorb that anyway, but the per-minute rollups are materialised views that would count a fact twice, so the
projector reads each fact table's highest projected offset per partition (its *watermark*) after every rebalance
(even one that hands it the same partitions: another projector may have inserted rows meanwhile) and after a
refused commit, advances it past every batch it inserts itself, and drops rows at or below it: every fact is
inserted once. What a cold fold cache needs
(a run's row, an open step attempt, a stack) is read back from the store before the batch is folded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import Histogram
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from tickflow.events.codec import InvalidRecord, decode, encode
from tickflow.events.connection import KafkaTarget, kafka_connection
from tickflow.events.envelope import dead_letter
from tickflow.events.redact import redact
from tickflow.projections.fold import FACT_TABLES, ProjectionBatch, ProjectionFold, Record, drop_projected
from tickflow.projections.store import ProjectionStore

__all__ = ["STORE_RETRY_S", "VISIBLE_SECONDS", "Projector", "ProjectorMetrics"]

log = logging.getLogger("tickflow.projector")
RUN_CACHE_SIZE = 200_000
#: How long the projector retries a failing store call before giving up (its node then restarts it). Below
#: max.poll.interval.ms (5 min), so the consumer keeps its partitions while it waits.
STORE_RETRY_S = 120.0
_A = TypeVar("_A")
_R = TypeVar("_R")


#: Freshness of the views: from an event's append (its record's timestamp) to its batch's insert returning, when
#: queries see it. Observed per event, so its quantiles are the events' own.
VISIBLE_SECONDS = Histogram(
    "tickflow_projection_visible_seconds",
    "Time from an event's append to the log to its rows being visible in ClickHouse.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0),
)


@dataclass
class ProjectorMetrics:
    """What an operator watches: how far behind the log the projection is, and how fresh it is."""

    events_projected: int = 0
    batches: int = 0
    last_batch_size: int = 0
    last_insert_ms: float = 0.0
    #: Store calls that failed and were retried (ClickHouse refusing inserts or reads).
    store_failures: int = 0
    last_freshness_ms: float = 0.0
    lag: dict[str, int] = field(default_factory=dict)
    lag_by_partition: dict[int, int] = field(default_factory=dict)
    dead_lettered: int = 0
    #: Rows dropped because they were already projected (a redelivery after a crash before the commit).
    already_projected: int = 0


class Projector:
    """Runs the projection loop for one consumer group over the events topic."""

    def metric_values(self) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
        """Its counters and levels for /metrics (the API's collector reads them; no Prometheus import here)."""
        m, role = self.metrics, {"role": "projector"}
        for kind, name, help_text, value in (
            ("counter", "tickflow_projector_events", "Events projected into ClickHouse.", m.events_projected),
            ("counter", "tickflow_projector_batches", "Inserts into ClickHouse.", m.batches),
            ("counter", "tickflow_projector_dead_letters", "Events refused to the dead-letter topic.", m.dead_lettered),
            ("counter", "tickflow_projector_already_projected", "Rows already projected.", m.already_projected),
            ("gauge", "tickflow_projector_freshness_seconds", "Log → ClickHouse delay.", m.last_freshness_ms / 1e3),
            ("gauge", "tickflow_projector_insert_seconds", "Duration of the last insert.", m.last_insert_ms / 1e3),
            ("counter", "tickflow_projector_store_failures", "ClickHouse calls failed and retried.", m.store_failures),
        ):
            yield kind, name, help_text, role, float(value)
        for partition, lag in list(m.lag_by_partition.items()):
            labels = {"role": "projector", "topic": self.events_topic, "partition": str(partition)}
            yield "gauge", "tickflow_consumer_lag", "Records behind the end of a partition.", labels, float(lag)

    def __init__(
        self,
        store: ProjectionStore,
        *,
        kafka: KafkaTarget,
        events_topic: str,
        group_id: str,
        dead_letter_topic: str,
        batch_ms: int = 100,
        max_batch: int = 20_000,
        after_insert: Callable[[ProjectorMetrics], None] | None = None,
    ) -> None:
        """``after_insert`` runs after each batch's insert and before its offset commit — the window exactly-once
        projection must survive; the crash test passes a function that kills the process there."""
        self.store = store
        self.kafka = kafka_connection(kafka)
        self.events_topic = events_topic
        self.group_id = group_id
        self.dead_letter_topic = dead_letter_topic
        self.batch_ms = batch_ms
        self.max_batch = max_batch
        self.metrics = ProjectorMetrics()
        self.fold = ProjectionFold(RUN_CACHE_SIZE)
        self._watermarks: dict[str, dict[int, int]] = {}
        self._assignment: frozenset[TopicPartition] = frozenset()
        #: A rebalance happened (or a commit was refused) since the watermarks were read: read them again.
        self.rebalanced = True
        self._task: asyncio.Task[None] | None = None
        self._lag_checked = 0.0
        self._after_insert = after_insert
        self._gate = asyncio.Lock()
        #: The store calls run on a thread of their own, never queued behind the API's reads or analysts' SQL in
        #: the default executor: freshness does not depend on what else the process is asked.
        self._threads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tickflow-projector")

    async def start(self) -> None:
        self.consumer = AIOKafkaConsumer(
            **self.kafka.client_options(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_wait_ms=50,
            isolation_level="read_committed",  # the engine writes in transactions: never project an aborted one
        )
        self.producer = AIOKafkaProducer(**self.kafka.client_options(), acks="all", enable_idempotence=True)
        await self.producer.start()
        await self.consumer.start()
        self.consumer.subscribe([self.events_topic], listener=_Rebalanced(self))
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
        self._threads.shutdown(wait=False)

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
            async with self._gate:  # held from the insert to the commit: ``paused`` waits for a whole batch
                await self._refresh_watermarks()
                await self.project_batch(batch)
                if self._after_insert is not None:
                    self._after_insert(self.metrics)
                offsets = {tp: recs[-1].offset + 1 for tp, recs in batch.items()}
                try:
                    await self.consumer.commit(offsets)  # only after the insert: commits never outrun the store
                except (CommitFailedError, IllegalStateError) as exc:
                    # A rebalance got in first: the batch is redelivered to the partitions' owner (maybe this
                    # projector again), whose watermarks drop the rows already inserted.
                    log.warning("offset commit skipped during a rebalance: %s", exc)
                    self.rebalanced = True
            await self._update_lag()

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """Hold the loop between batches: every batch taken so far is inserted and committed, none starts.

        A rebuild swaps its database in while paused; keep it short (well under max.poll.interval.ms).
        """
        async with self._gate:
            yield

    def forget_projection_state(self) -> None:
        """Drop the fold's caches and the watermarks: the store now points at another database, so both are
        read again from it before the next batch (call while ``paused``)."""
        self.fold = ProjectionFold(RUN_CACHE_SIZE)
        self._watermarks = {}
        self._assignment = frozenset()
        self.rebalanced = True

    async def _refresh_watermarks(self) -> None:
        """After a rebalance, learn what is already in the store (another instance, or our past self)."""
        assignment = frozenset(self.consumer.assignment())
        if self.rebalanced or assignment != self._assignment:
            self.rebalanced = False
            self._assignment = assignment
            # The cached rows of partitions now owned elsewhere would only go stale (their new owner updates them
            # in the store): start from an empty cache, which the fold fills from the store as records need it.
            self.fold = ProjectionFold(RUN_CACHE_SIZE)
            self._watermarks = await self._in_thread(self.store.watermarks)
            log.info(
                "assigned %s; already projected up to (events, per partition): %s",
                sorted(tp.partition for tp in assignment),
                self._watermarks.get("events", {}),
            )

    async def project_batch(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        records: list[Record] = []
        for tp, recs in batch.items():
            for record in recs:
                try:
                    records.append((tp.partition, record.offset, decode(record.value, expect="event")))
                except InvalidRecord as exc:
                    await self._dead_letter(record, str(exc))
        rows = await self._retrying("read the projection state", self._fold, records)
        started = time.perf_counter()
        await self._retrying("insert a batch", self.store.write, rows)
        self._advance_watermarks(rows)
        m = self.metrics
        m.last_insert_ms = (time.perf_counter() - started) * 1000
        m.events_projected += len(rows.events)
        m.batches += 1
        m.last_batch_size = len(rows.events)
        if records:
            m.last_freshness_ms = time.time() * 1000 - records[-1][2].occurred_at_ms
        visible_ms = time.time() * 1000
        for recs in batch.values():
            for record in recs:
                VISIBLE_SECONDS.observe(max(0.0, visible_ms - record.timestamp) / 1000)

    async def _retrying(self, what: str, call: Callable[[_A], _R], arg: _A) -> _R:
        """``call(arg)`` in a thread, retried with backoff while ClickHouse refuses (a server restarting, a full
        disk, a lost connection) for up to ``STORE_RETRY_S``; then the error ends the loop and the node restarts
        the projector from its committed offsets. Nothing is committed meanwhile: the offsets wait for the insert.
        """
        retrying = AsyncRetrying(
            stop=stop_after_delay(STORE_RETRY_S),
            wait=wait_exponential_jitter(initial=0.2, max=10.0),
            retry=retry_if_exception_type(Exception),
            before_sleep=lambda state: self._store_failed(what, state.outcome.exception() if state.outcome else None),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._in_thread(call, arg)
        raise AssertionError("unreachable: tenacity reraises the last error")

    async def _in_thread(self, call: Callable[..., _R], *args: object) -> _R:
        return await asyncio.get_running_loop().run_in_executor(self._threads, call, *args)

    def _advance_watermarks(self, rows: ProjectionBatch) -> None:
        """What this projector just inserted is projected: a redelivery of it (a refused commit) is dropped."""
        for table in FACT_TABLES:
            marks = self._watermarks.setdefault(table, {})
            for row in getattr(rows, table):
                if row.offset > marks.get(row.partition, -1):
                    marks[row.partition] = row.offset

    def _store_failed(self, what: str, error: BaseException | None) -> None:
        self.metrics.store_failures += 1
        log.warning("cannot %s in ClickHouse (%r); retrying, offsets held back", what, error)

    def _fold(self, records: list[Record]) -> ProjectionBatch:
        missing = self.fold.missing(records)
        if missing:
            self.fold.load(
                self.store.runs_by_id(missing.runs),
                self.store.steps_by_key(missing.steps),
                self.store.ticks_by_key(missing.ticks),
                self.store.stacks_by_id(missing.stacks),
            )
        rows = self.fold.fold(records, self.events_topic)
        kept = drop_projected(rows, self._watermarks)
        self.metrics.already_projected += len(rows) - len(kept)
        return kept

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
            scrub=redact,
        )
        reason = letter.payload.reason  # type: ignore[attr-defined]  # redacted, for the log line too
        await self.producer.send_and_wait(self.dead_letter_topic, encode(letter), key=letter.key.encode())
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
                lag[f"{tp.topic}[{tp.partition}]"] = self.metrics.lag_by_partition[tp.partition] = max(
                    0, ends[tp] - await self.consumer.position(tp)
                )
            except Exception:  # position unknown while a rebalance is in progress
                continue
        self.metrics.lag = lag


class _Rebalanced(ConsumerRebalanceListener):  # type: ignore[misc]
    """Marks the projector's watermarks stale at every assignment (kept short: no heartbeats flow meanwhile)."""

    def __init__(self, projector: Projector) -> None:
        self.projector = projector

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.projector.rebalanced = True
