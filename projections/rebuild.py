"""Rebuild every projection from the log into a fresh database, verify it, and swap it in while queries go on.

Why a fresh database: the live one keeps serving reads (and the live projector keeps writing) for as long as the
rebuild takes, and a rebuild that fails verification changes nothing. The steps:

1. **Build.** Capture the events topic's end offsets and read every partition from its first retained offset to
   them (``projections.logread``: Kafka Fetch requests, no group, nothing committed) into
   ``<base>__rebuild_<n>``, migrated from scratch (materialised views included, so the rollups are rebuilt
   too). By default the records are staged into ClickHouse as they are and the tables derived there with SQL
   (``projections.bulk``, about 6 times faster); a log the bulk path cannot vouch for — and ``bulk=False`` — is
   folded record by record with ``ProjectionFold``, the code the live projector runs. Both give the same rows
   (tested on one log). In embedded mode chDB is one engine per process, so the rebuild runs in the process
   that owns it, in threads, on a second client of that engine.
2. **Verify.** Per partition, the rebuilt ``events`` table must hold as many rows as the log has decodable
   events and the same checksum: the wrapping sum of CRC32(event_id), computed from the records read (the bulk
   path has ClickHouse compute it from the staged lines, whose count per partition must equal what Python
   staged) and by ClickHouse from the table. Then every table and rollup (or, for a one-projection rebuild,
   that projection's) must equal, in rows and checksum, the same table filled by an independent fold of the
   same log range: the log is read again and folded record by record by ``ProjectionFold`` into a scratch
   database (``<new>__check``, dropped afterwards), and ClickHouse checksums both (``projections.verify`` says
   why both sides are computed there). Any difference refuses the swap and names the table. The check costs a
   second read of the log and the Python fold (several times the bulk build), paid before the swap, while
   everything runs on.
3. **Swap.** Catch the new database up to the log's current end while the live projector runs on, then pause
   the projector between two batches, catch up the last gap, switch the store (under its lock: a query runs
   wholly on the old or wholly on the new database), persist the pointer (``open_store`` follows it after a
   restart) and let the projector go on with caches and watermarks read from the new database. The previous
   generation is kept as a rollback point (``rollback``) and for comparison; older generations are dropped at
   the swap. A database that failed verification, or was built without a swap, stays for inspection until the
   next swap.

**One projection** (``table=``): the new database is built and the chosen projection (its table and the rollups
its views feed) verified as above; at the swap, with the projector held, every other table is copied from the
database being replaced, as it is (vacuumed runs stay vacuumed), and the new database is caught up from those
copies' position with each fact table's watermarks, so nothing is counted twice. **Rollback** switches back to
the previous generation the same way: caught up from its own watermarks to the log's end, then swapped in.

Records that do not decode are skipped and counted (the live projector dead-lettered them when it met them).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from functools import partial
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.connection import KafkaTarget, kafka_connection
from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.projections.bulk import Block, BulkLoad, StagingError, count_event
from tickflow.projections.fold import ProjectionFold, Record, drop_projected
from tickflow.projections.logread import LogReadError, RangeReader
from tickflow.projections.models import PartitionCheck, RebuildProgress, RebuildReport, TableCheck
from tickflow.projections.store import ClickHouseStore
from tickflow.projections.verify import ALL_TABLES, compare_tables, projection_tables, table_checksums

__all__ = [
    "LiveProjector",
    "PartitionCheck",
    "Rebuild",
    "RebuildError",
    "RebuildProgress",
    "RebuildReport",
    "TableCheck",
    "rebuild_and_swap",
    "rebuild_database",
    "rollback",
    "table_checksums",
]

log = logging.getLogger("tickflow.rebuild")
#: Runs kept in the fold's cache (bounds memory, like the live projector's); an evicted run that shows up again
#: is read back from the rebuilt database, which already holds every earlier chunk.
FOLD_CACHE = 200_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the young-generation collector less often while a rebuild allocates millions of short-lived objects.

    A rebuild's heap is large and the collector rescans it constantly: it was half of the decode time. The
    thresholds are process-wide, so they are restored (and a collection run) as soon as the build ends.
    """
    before = gc.get_threshold()
    gc.freeze()  # what lived before the rebuild is not rescanned during it
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
        gc.collect(1)


class LiveProjector(Protocol):
    """What a swap needs of the live projector (``projections.projector.Projector``): to hold it between batches
    while reads switch database, and to make it read its caches and watermarks again from the new one."""

    def paused(self) -> AbstractAsyncContextManager[None]: ...

    def forget_projection_state(self) -> None: ...


class RebuildError(TickflowError):
    """A rebuild cannot start or go on; the message says what to fix."""

    code = ErrorCode.CONFLICT


class Rebuild:
    """One rebuild of ``store``'s projections into a new database of the same ClickHouse; see the module doc.

    ``build`` and ``catch_up`` block (run them in a thread); each reads Kafka on an event loop of its own.
    """

    def __init__(
        self,
        store: ClickHouseStore,
        *,
        kafka: KafkaTarget,
        topic: str,
        database: str | None = None,
        batch_events: int = 50_000,
        bulk: bool = True,
        table: str | None = None,
    ) -> None:
        """``table`` rebuilds one projection (``projections.verify.PROJECTIONS``) and keeps the other tables."""
        self.store, self.kafka, self.topic = store, kafka_connection(kafka), topic
        self.bulk = bulk
        self.checked = projection_tables(table)  # a ValueError names the projections, before anything is built
        self.table = table
        self.database = database or next_generation(store)
        self.batch_events = batch_events
        self.progress = RebuildProgress()
        self.report = RebuildReport(database=self.database, previous_database=store.database, table=table or "")
        self.fold = ProjectionFold(FOLD_CACHE)
        self.offsets: dict[int, int] = {}  # next offset to read, per partition
        self.digests: dict[int, list[int]] = {}  # partition -> [count, checksum]
        self.phases = dict.fromkeys(
            ("read", "stage", "derive", "decode", "fold", "insert", "verify", "catch_up", "swap"), 0.0
        )
        self._target: ClickHouseStore | None = None
        self._lock = threading.Lock()  # build and catch_up never overlap (they share the fold)
        #: Set when the target already holds rows past ``offsets`` (copied tables, a rollback): fact rows at or
        #: below these watermarks are dropped, as the live projector does after a redelivery.
        self._marks: dict[str, dict[int, int]] | None = None

    # -- build ---------------------------------------------------------------------------------------------

    def build(self) -> RebuildReport:
        """Read the log from its start to the end offsets of now into the new database (created, migrated)."""
        started = time.perf_counter()
        with self._lock:
            self.progress.phase = "migrating"
            self._target = self.store.sibling(self.database)
            self._target.migrate()
            self.progress.phase = "building"
            self.report.method = "bulk" if self.bulk else "fold"
            if self.bulk:
                try:
                    self.report.events = self._build_bulk()
                except StagingError as exc:
                    log.warning("bulk rebuild of %s refused (%s); folding every event in Python", self.topic, exc)
                    self.report.method, self.report.method_reason = "fold", f"the bulk path refused the log: {exc}"
                    self._restart_target()
            if self.report.method == "fold":
                with _fewer_collections():
                    self.report.events = asyncio.run(self._read(None))
        self.report.duration_s = time.perf_counter() - started
        self.report.events_per_s = self.report.events / self.report.duration_s if self.report.duration_s else 0.0
        self.report.end_offsets = dict(self.offsets)
        self.report.phases = dict(self.phases)
        return self.report

    def _build_bulk(self) -> int:
        """Stage the log into ClickHouse and derive the tables there (``projections.bulk``)."""
        assert self._target is not None
        bulk = BulkLoad(self._target, self.topic, self.fold)
        bulk.create_tables()
        bulk.suspend_views()
        try:
            with _fewer_collections():
                read = asyncio.run(self._read(None, bulk))
            self.progress.phase = "deriving"
            derived = time.perf_counter()
            bulk.derive()
            self.phases["derive"] += time.perf_counter() - derived
        finally:
            with contextlib.suppress(Exception):  # an insert still running when the build failed
                bulk.finish()
            bulk.drop_tables()
        self.digests = bulk.digests
        self.report.invalid_records += bulk.invalid_records
        return read

    def _restart_target(self) -> None:
        """Drop what a refused bulk build wrote and start the fold from scratch on an empty database."""
        assert self._target is not None
        self._target.command(f"DROP DATABASE IF EXISTS {self._target.quoted_database}")
        self._target.close()
        self._target = self.store.sibling(self.database)
        self._target.migrate()
        self.fold = ProjectionFold(FOLD_CACHE)
        self.offsets, self.digests = {}, {}
        self.report.invalid_records = 0
        self.progress.events_done = 0

    def catch_up(self) -> int:
        """Project what the log gained since the last read (after ``build``); returns how many events."""
        if self._target is None:
            raise RebuildError("catch_up needs a built database: call build() first")
        started = time.perf_counter()
        with self._lock:
            self.progress.phase = "catching up"
            n = asyncio.run(self._read(dict(self.offsets)))
        self.phases["catch_up"] += time.perf_counter() - started
        self.report.caught_up_events += n
        self.report.phases = dict(self.phases)
        return n

    async def _read(
        self, start: dict[int, int] | None, bulk: BulkLoad | None = None, until: dict[int, int] | None = None
    ) -> int:
        """Read from ``start`` (None: the first retained offsets) to ``until`` (None: the current end offsets)."""
        consumer = AIOKafkaConsumer(
            **self.kafka.client_options(),
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",  # its end offsets are the last stable offsets, where reads stop
        )
        reader = RangeReader(self.kafka, self.topic)
        await consumer.start()  # offsets only: nothing is assigned, so it fetches nothing
        try:
            await reader.start()
            tps = [TopicPartition(self.topic, p) for p in reader.partitions()]
            if not tps:
                raise RebuildError(f"the events topic {self.topic!r} does not exist: check TICKFLOW_PREFIX")
            ends = {tp.partition: o for tp, o in (await consumer.end_offsets(tps)).items()}
            if until is not None:
                ends = {p: until.get(p, 0) for p in ends}
            firsts = {tp.partition: o for tp, o in (await consumer.beginning_offsets(tps)).items()}
            begin = {p: max(firsts[p], (start or {}).get(p, 0)) for p in ends}
            if start is None:
                self.report.start_offsets = dict(begin)
                self.progress.events_total = sum(ends[p] - begin[p] for p in ends)
            else:
                self.progress.events_total += sum(ends[p] - begin[p] for p in ends)
            self.offsets.update(begin)
            if bulk is not None:
                return await self._pump(reader, ends, bulk.add, lambda: partial(self._stage_block, bulk, bulk.take()))
            chunk: list[tuple[int, int, bytes | None]] = []

            def add(partition: int, records: list[Any]) -> None:
                chunk.extend((partition, r.offset, r.value) for r in records)

            def take() -> Callable[[], None]:
                block = chunk[:]
                chunk.clear()
                return partial(self._project, block)

            return await self._pump(reader, ends, add, take)
        except LogReadError as exc:
            raise RebuildError(str(exc)) from exc
        finally:
            await reader.stop()
            await consumer.stop()

    async def _pump(
        self,
        reader: RangeReader,
        ends: dict[int, int],
        add: Callable[[int, list[Any]], None],
        take: Callable[[], Callable[[], None]],
    ) -> int:
        """Fetch up to ``ends``, handing each partition's records to ``add``; every ``batch_events`` records the
        work ``take`` returns runs in another thread while the next records are fetched."""
        positions = dict(self.offsets)

        def fetch_next() -> asyncio.Future[list[tuple[int, list[Any]]]] | None:
            if all(positions[p] >= end for p, end in ends.items()):
                return None
            return asyncio.ensure_future(reader.fetch(positions, ends))

        pending: asyncio.Future[None] | None = None
        fetching = fetch_next()
        read = unsent = 0
        while fetching is not None:
            waited = time.perf_counter()
            got = await fetching
            self.phases["read"] += time.perf_counter() - waited
            fetching = fetch_next()  # the broker answers the next fetch while these records are handled
            await asyncio.sleep(0)
            for partition, records in got:
                add(partition, records)
                unsent += len(records)
            if unsent >= self.batch_events or (unsent and fetching is None):
                if pending is not None:
                    await pending
                self.progress.events_done += unsent  # handed off; at most one block ahead of the tables
                read, unsent = read + unsent, 0
                pending = asyncio.ensure_future(asyncio.to_thread(take()))
        if pending is not None:
            await pending
        self.offsets.update(positions)
        return read

    def _stage_block(self, bulk: BulkLoad, block: Block) -> None:
        started = time.perf_counter()
        bulk.stage(block)
        self.phases["stage"] += time.perf_counter() - started

    def _project(self, chunk: list[tuple[int, int, bytes | None]]) -> None:
        t0 = time.perf_counter()
        records: list[Record] = []
        for partition, offset, value in chunk:
            try:
                env = decode(value, expect="event")
            except InvalidRecord:
                self.report.invalid_records += 1
                continue
            records.append((partition, offset, env))
            count_event(self.digests, partition, env.id)
        t1 = time.perf_counter()
        target = self._target
        assert target is not None
        missing = self.fold.missing(records)
        if missing:  # only after the cache evicted a run: read it back from what was already rebuilt
            self.fold.load(
                target.runs_by_id(missing.runs),
                target.steps_by_key(missing.steps),
                target.ticks_by_key(missing.ticks),
                target.stacks_by_id(missing.stacks),
            )
        rows = self.fold.fold(records, self.topic)
        if self._marks is not None:
            rows = drop_projected(rows, self._marks)
        t2 = time.perf_counter()
        target.write(rows)
        t3 = time.perf_counter()
        self.phases["decode"] += t1 - t0
        self.phases["fold"] += t2 - t1
        self.phases["insert"] += t3 - t2

    # -- verify --------------------------------------------------------------------------------------------

    def verify(self) -> RebuildReport:
        """Compare the rebuilt events table with the log per partition, then every checked table with an
        independent fold of the same log range (see the module doc); ``ok`` only when all agree."""
        target = self._target
        if target is None:
            raise RebuildError("verify needs a built database: call build() first")
        started = time.perf_counter()
        self.progress.phase = "verifying"
        rows = target.query("SELECT partition, count(), sum(CRC32(event_id)) FROM {db}.events FINAL GROUP BY partition")
        table = {int(p): (int(n), int(h)) for p, n, h in rows}
        checks = [
            PartitionCheck(
                partition=p,
                log_events=self.digests.get(p, [0, 0])[0],
                log_checksum=self.digests.get(p, [0, 0])[1],
                table_events=table.get(p, (0, 0))[0],
                table_checksum=table.get(p, (0, 0))[1],
            )
            for p in sorted(set(self.offsets) | set(table))
        ]
        r = self.report
        r.partitions = checks
        r.mismatches = [
            f"partition {c.partition}: the log has {c.log_events} events (checksum {c.log_checksum}), the rebuilt "
            f"events table {c.table_events} (checksum {c.table_checksum})"
            for c in checks
            if not c.ok
        ]
        sums = table_checksums(target)
        r.tables = {t: n for t, (n, _) in sums.items()}
        r.checksums = {t: h for t, (_, h) in sums.items()}
        r.check_method = "fold"
        r.table_checks = self._check_tables(sums)
        r.mismatches += [c.mismatch() for c in r.table_checks if not c.ok]
        r.ok = not r.mismatches
        self.phases["verify"] += time.perf_counter() - started
        r.phases = dict(self.phases)
        return r

    def _check_tables(self, sums: dict[str, tuple[int, int]]) -> list[TableCheck]:
        """Fold the log range the build read (``start_offsets`` to ``end_offsets``) again, record by record, into
        a scratch database, and compare the checked tables with it."""
        scratch = f"{self.database}__check"
        self.store.command(f"DROP DATABASE IF EXISTS `{scratch}`")  # a check a crash left behind
        reference = Rebuild(
            self.store, kafka=self.kafka, topic=self.topic, database=scratch, bulk=False, batch_events=self.batch_events
        )
        reference.progress = self.progress  # its events count into this rebuild's progress
        try:
            self.progress.phase = "verifying: folding the log again"
            reference._target = self.store.sibling(scratch)
            reference._target.migrate()
            with _fewer_collections():
                asyncio.run(reference._read(dict(self.report.start_offsets), until=dict(self.report.end_offsets)))
            self.progress.phase = "verifying: comparing tables"
            expected = table_checksums(reference._target, self.checked)
        finally:
            reference.close()
            self.store.command(f"DROP DATABASE IF EXISTS `{scratch}`")
        return compare_tables(sums, expected, self.checked)

    # -- swap ----------------------------------------------------------------------------------------------

    async def swap(self, projector: LiveProjector | None) -> None:
        """Catch up, then switch the store (and the live projector) to the new database; see the module doc."""
        if not self.report.ok:
            raise RebuildError(f"refusing to swap in {self.database}: verification failed ({self.report.mismatches})")
        started = time.perf_counter()
        await asyncio.to_thread(self.catch_up)  # most of the gap, while everything runs on
        self.progress.phase = "swapping"
        hold = projector.paused() if projector is not None else contextlib.nullcontext()
        async with hold:
            held = time.perf_counter()
            if self.table is not None:
                await asyncio.to_thread(self._take_other_tables)  # the live tables stand still: copy them
            await asyncio.to_thread(self.catch_up)  # the rest: nothing is projected meanwhile
            previous = self.store.database
            await asyncio.to_thread(self.store.switch_database, self.database)
            if projector is not None:
                projector.forget_projection_state()
            self.report.paused_ms = (time.perf_counter() - held) * 1000
        self.report.previous_database, self.report.swapped = previous, True
        await asyncio.to_thread(drop_generations, self.store, keep={self.database, previous})
        self.phases["swap"] += time.perf_counter() - started
        self.report.phases = dict(self.phases)
        self.progress.phase = "done"

    def _take_other_tables(self) -> None:
        """One projection rebuilt: replace every other table of the new database by a copy of the database being
        replaced (with its projector held, so every table stands at the same batch boundary), then go on from the
        lower of the two positions with the new database's watermarks, so no fact is inserted twice."""
        target = self._target
        assert target is not None
        source, db = self.store.database, target.quoted_database
        live = self.store.watermarks().get("events", {})
        with self._lock:
            views = BulkLoad(target, self.topic, self.fold)
            views.suspend_views()  # the copied rollups are the live ones: their views must not count the copies
            try:
                for t in (t for t in ALL_TABLES if t not in self.checked):
                    columns = ", ".join(
                        f"`{c}`"
                        for (c,) in target.query(
                            "SELECT name FROM system.columns WHERE database = {d:String} AND table = {t:String} "
                            "AND default_kind NOT IN ('MATERIALIZED', 'ALIAS') ORDER BY position",
                            {"d": target.database, "t": t},
                        )
                    )
                    target.command(f"TRUNCATE TABLE {db}.`{t}`")
                    target.command(f"INSERT INTO {db}.`{t}` ({columns}) SELECT {columns} FROM `{source}`.`{t}`")
            finally:
                views.restore_views(fill=False)
                views.finish()  # it inserted nothing: this only shuts its (idle) insert thread pool
            self.offsets = {p: min(o, live.get(p, -1) + 1) for p, o in self.offsets.items()}
            self.fold = ProjectionFold(FOLD_CACHE)  # what the copies hold is read back from them
            self._marks = target.watermarks()

    def resume_previous(self) -> None:
        """Open ``database`` (a generation a swap replaced) to catch it up from its own watermarks (``rollback``).

        Its tables stopped at one batch boundary (the projector was held for the swap), so its events watermark
        is its position in every partition."""
        target = self._target = self.store.sibling(self.database)
        marks = target.watermarks()
        self.offsets = {p: m + 1 for p, m in marks.get("events", {}).items()}
        self._marks = marks
        self.report.method, self.report.ok = "rollback", True

    def close(self) -> None:
        if self._target is not None:
            self._target.close()
            self._target = None


def _generations(store: ClickHouseStore) -> list[str]:
    rows = store.query(
        "SELECT name FROM system.databases WHERE name = {b:String} OR startsWith(name, {p:String}) ORDER BY name",
        {"b": store.base_database, "p": f"{store.base_database}__rebuild_"},
    )
    return [str(r[0]) for r in rows]


def next_generation(store: ClickHouseStore) -> str:
    """``<base>__rebuild_<n>`` with n one above any generation that exists."""
    pattern = re.compile(re.escape(store.base_database) + r"__rebuild_(\d+)$")
    numbers = [int(m.group(1)) for name in _generations(store) if (m := pattern.match(name))]
    return f"{store.base_database}__rebuild_{max(numbers, default=0) + 1}"


def drop_generations(store: ClickHouseStore, keep: set[str]) -> list[str]:
    """Drop the generations of the store's base database other than ``keep`` (and the active one)."""
    dropped = []
    for name in _generations(store):
        if name not in keep and name != store.database:
            store.command(f"DROP DATABASE IF EXISTS `{name}`")
            dropped.append(name)
    return dropped


def rebuild_database(
    store: ClickHouseStore,
    *,
    kafka: KafkaTarget,
    topic: str,
    database: str | None = None,
    before_verify: Callable[[Rebuild], Any] | None = None,
    bulk: bool = True,
    table: str | None = None,
) -> RebuildReport:
    """Build and verify a new database (no swap); blocking. ``before_verify`` is for fault-injection tests;
    ``bulk=False`` folds every event in Python (the reference the bulk path is tested against); ``table``
    checks one projection only."""
    rebuild = Rebuild(store, kafka=kafka, topic=topic, database=database, bulk=bulk, table=table)
    try:
        rebuild.build()
        if before_verify is not None:
            before_verify(rebuild)
        return rebuild.verify()
    finally:
        rebuild.close()


async def rebuild_and_swap(
    rebuild: Rebuild,
    *,
    swap: bool,
    projector: LiveProjector | None = None,
    before_verify: Callable[[Rebuild], Any] | None = None,
) -> RebuildReport:
    """Build, verify and (when asked and verified) swap in; a failed verification never swaps."""
    try:
        await asyncio.to_thread(rebuild.build)
        if before_verify is not None:
            await asyncio.to_thread(before_verify, rebuild)
        report = await asyncio.to_thread(rebuild.verify)
        if swap and report.ok:
            await rebuild.swap(projector)
        rebuild.progress.phase = "done"
        return rebuild.report
    finally:
        await asyncio.to_thread(rebuild.close)


async def rollback(
    store: ClickHouseStore, *, kafka: KafkaTarget, topic: str, projector: LiveProjector | None = None
) -> RebuildReport:
    """Swap back to the generation the last swap replaced (the same swap as a rebuild's, after catching that
    database up from its own watermarks to the log's end); a second rollback swaps forward again."""
    previous = await asyncio.to_thread(store.previous_database)
    if previous is None:
        raise RebuildError(
            f"nothing to roll back to: no swap has replaced a database of {store.base_database!r} that still exists "
            "(a swap keeps the database it replaced until the next swap)"
        )
    rebuild = Rebuild(store, kafka=kafka, topic=topic, database=previous)
    try:
        await asyncio.to_thread(rebuild.resume_previous)
        await rebuild.swap(projector)
        return rebuild.report
    finally:
        await asyncio.to_thread(rebuild.close)
