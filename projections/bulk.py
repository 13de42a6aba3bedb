"""Bulk projection: the raw log loaded into ClickHouse once, and every table derived there with INSERT … SELECT.

Why: folding a million events one by one through pydantic and the Python row folds ran at ~10k events/s, most
of it decoding. ClickHouse parses JSON and aggregates columns in C++, so a rebuild hands it the records as they
are and asks for the tables. The SQL here mirrors the Python folds (``projections.rows``, ``projections.facts``)
and the rebuild tests hold the two to identical checksums. Python keeps what SQL cannot reproduce exactly:

* the records of agent stacks (``stack:*`` keys, a few per tick) are decoded and folded by ``ProjectionFold``:
  their board rows add floats in log order and carry small state machines;
* ``RunStarted`` / ``RunCompleted`` give a run's ``input`` / ``output`` as orjson writes them, and
  ``steps_total`` from a walk of the spec (once per spec hash);
* records that are not in the engine's canonical form — no value, not one line, not the current schema version,
  not valid JSON, another kind, an unknown type — go through the codec like everywhere else: upcast and re-encoded
  when they decode, skipped (and counted) when they do not. Python only frames the records (a few bytes
  operations each, the hot loop); ClickHouse checks every staged line (header shape, schema version) and hands
  back the ones that fail, with the stack records. The payload shapes of canonical records are trusted (the
  engine validated them when it wrote them).

How records travel: one line each, ``<partition:5><offset:20><value>``, read by ClickHouse with the LineAsString
format (no escaping, no per-column serialisation in Python): embedded, from a temporary file through ``file()``;
on a server, from a Memory table the block is inserted into (``ClickHouseStore.lines_source``). The events rows
are written from the lines block by block, while the next records are read; the fact and status tables are
derived once, after the last block. The database's materialised views are dropped for the load and re-created
after it, their rollups filled in one INSERT … SELECT each (a view riding on every insert cost as much as the
insert). The staging tables are dropped when the derivation ends.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from tickflow.events.agents import STACK_PREFIX
from tickflow.events.codec import InvalidRecord, decode, encode
from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.events.schemas import PAYLOAD_TYPES, RunStarted
from tickflow.events.topics import SLOT_PREFIX
from tickflow.projections.fold import ProjectionFold, Record
from tickflow.projections.rows import json_text, step_count

if TYPE_CHECKING:
    from tickflow.projections.store import ClickHouseStore

__all__ = ["MASK64", "Block", "BulkLoad", "StagingError", "count_event", "id_digest"]

#: Staging tables (the lines ones hold a block only with a server: embedded, ClickHouse reads a file).
LINES, LINES_RECODED = ("rebuild_lines_0", "rebuild_lines_1"), "rebuild_lines_recoded"
DOCS, WORKFLOWS = "rebuild_run_docs", "rebuild_workflows"
#: A run document: run_id, seq, type, workflow, spec_hash, input, output, steps_total.
Doc = tuple[str, int, str, str, str, str, str, int]
MASK64 = (1 << 64) - 1
_SPEC = b'","spec":'
_RUN_TYPE = b'","kind":"event","type":"Run'
_ID, _KIND_TYPE, _VERSION = b'{"id":"', b'","kind":"event","type":"', b'","schema_version":'
#: The run events whose documents Python extracts (see the module doc).
_RUN_DOC_TYPES = ("RunStarted", "RunRejected", "RunCompleted")
_RUN_DOC_TYPE_BYTES = frozenset(t.encode() for t in _RUN_DOC_TYPES)
#: type -> what must follow ``"schema_version":`` in a current-version record of that type.
_CURRENT = {t.encode(): b"%d," % cls.VERSION for (kind, t), cls in PAYLOAD_TYPES.items() if kind == "event"}
_DOC_COLUMNS = ("run_id", "seq", "type", "workflow", "spec_hash", "input", "output", "steps_total")
_CURRENT_TYPES = sorted(t for (kind, t) in PAYLOAD_TYPES if kind == "event")
#: What a staged line must be to become an events row as it is: a canonical header (``_CANONICAL``) of a known
#: type in its current schema version, the payload last; any other line goes through the codec.
_CANONICAL_SQL = (
    "(match(line, {canonical:String}) AND endsWith(line, '}}') AND visitParamExtractUInt(line, 'schema_version') = "
    f"transform(visitParamExtractString(line, 'type'), {_CURRENT_TYPES}, "
    f"{[PAYLOAD_TYPES['event', t].VERSION for t in _CURRENT_TYPES]}, 0))"
)
_VIEW_TARGET = re.compile(r"CREATE MATERIALIZED VIEW \S+ TO (\S+) ")
#: A staged line: partition and offset, then a canonical header as ``events.codec.encode`` writes it (fields in the
#: envelope's order, payload last).
_S = r'"(?:[^"\\]|\\.)*"'
_CANONICAL = (
    rf'^[0-9]{{25}}\{{"id":{_S},"kind":"event","type":"[A-Za-z0-9_]+","schema_version":[0-9]+,"key":{_S},'
    rf'"seq":(?:[0-9]+|null),"causation_id":(?:{_S}|null),"correlation_id":(?:{_S}|null),'
    rf'"occurred_at_ms":[0-9]+,(?:"trace_parent":{_S},)?"payload":\{{'
)
_CANONICAL_PARAMS = {"canonical": _CANONICAL}


def id_digest(event_id: str) -> int:
    """The per-event term of the rebuild's events checksum; ClickHouse computes ``CRC32(event_id)``."""
    return zlib.crc32(event_id.encode())


def count_event(digests: dict[int, list[int]], partition: int, event_id: str) -> None:
    """Add one event to a partition's [events, checksum] (the log side of the rebuild's verification)."""
    d = digests.setdefault(partition, [0, 0])
    d[0] += 1
    d[1] = (d[1] + id_digest(event_id)) & MASK64


class StagingError(TickflowError):
    """The bulk path cannot vouch for an exact projection of this log (the rebuild falls back to the fold).

    Never reaches a user: the rebuild catches it, and its message becomes the report's ``method_reason``."""

    code = ErrorCode.INTERNAL


@dataclass
class Block:
    """One block of staged records, handed from ``add``'s thread to ``stage``'s."""

    lines: bytes
    #: (partition, offset, document) of the runs' starts and ends among the lines.
    docs: list[tuple[int, int, Doc]]
    #: partition -> lines staged
    staged: dict[int, int]


@dataclass
class _Building:
    lines: list[bytes] = field(default_factory=list)
    docs: list[tuple[int, int, Doc]] = field(default_factory=list)
    staged: dict[int, int] = field(default_factory=dict)

    def block(self) -> Block:
        lines = self.lines
        if lines:
            lines[0] = lines[0][1:]  # the first line has no line before it to end
            lines.append(b"\n")
        return Block(b"".join(lines), self.docs, self.staged)


@dataclass
class BulkLoad:
    """Stages records of one topic into ``target`` and derives every projection table from them.

    ``add`` is the hot path (about a microsecond a record); ``take`` hands what was added to ``stage`` (which
    may run in another thread, one call at a time); ``derive`` runs once, after the last ``stage``.
    """

    target: ClickHouseStore
    topic: str
    fold: ProjectionFold
    #: Records that do not decode: met by ``add`` / by ``stage`` (two counters: two threads).
    invalid_read: int = 0
    invalid_staged: int = 0
    #: partition -> [events, wrapping sum of ``id_digest``] of what was staged (the log side of the check).
    digests: dict[int, list[int]] = field(default_factory=dict)
    _building: _Building = field(default_factory=lambda: _Building())
    _blocks: int = 0
    _inserts: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, "tickflow-rebuild-insert"))
    _inserting: Future[None] | None = None
    _inserter: ClickHouseStore | None = None
    _specs: dict[str, bytes] = field(default_factory=dict)  # spec_hash -> the spec as RunStarted records hold it
    _steps_total: dict[str, int] = field(default_factory=dict)
    _stack_records: list[Record] = field(default_factory=list)
    #: Suspended materialised views: (CREATE statement, target table, columns, SELECT).
    _views: list[tuple[str, str, list[str], str]] = field(default_factory=list)

    @property
    def invalid_records(self) -> int:
        return self.invalid_read + self.invalid_staged

    # -- staging -------------------------------------------------------------------------------------------

    def create_tables(self) -> None:
        db = self.target.quoted_database
        for table in (*LINES, LINES_RECODED):
            self.target.command(f"CREATE TABLE IF NOT EXISTS {db}.{table} (line String) ENGINE = Memory")
        self.target.command(
            f"CREATE TABLE IF NOT EXISTS {db}.{DOCS} (run_id String, seq UInt64, type LowCardinality(String), "
            "workflow String, spec_hash String, input String, output String, steps_total UInt32) "
            "ENGINE = MergeTree ORDER BY run_id"
        )
        # run_id -> workflow for the events rows; a Join table keeps its hash table between the blocks' inserts
        self.target.command(
            f"CREATE TABLE IF NOT EXISTS {db}.{WORKFLOWS} (run_id String, workflow String) "
            "ENGINE = Join(ANY, LEFT, run_id) SETTINGS join_any_take_last_row = 1"
        )

    def suspend_views(self) -> None:
        """Drop the database's materialised views for the load and remember them (``restore_views``).

        Why: a view costs ClickHouse about as much as the insert it rides on (2 of the 4 s the 1M-event events
        insert took), and once over a whole table it costs almost nothing (20 ms for the same rollup).
        """
        rows = self.target.query(
            "SELECT name, create_table_query, as_select FROM system.tables "
            "WHERE database = {db:String} AND engine = 'MaterializedView' ORDER BY name",
            {"db": self.target.database},
        )
        for name, create, select in rows:
            to = _VIEW_TARGET.match(create)
            if to is None:  # not a TO view: left alone (it fires as it would live)
                continue
            columns = [
                c
                for (c,) in self.target.query(
                    "SELECT name FROM system.columns WHERE database = {db:String} AND table = {t:String} "
                    "ORDER BY position",
                    {"db": self.target.database, "t": name},
                )
            ]
            self.target.command(f"DROP VIEW {self.target.quoted_database}.`{name}`")
            self._views.append((create, to.group(1), columns, select))

    def restore_views(self, *, fill: bool = True) -> None:
        """Re-create the suspended views, filling each view's table from its whole source table first (unless
        ``fill`` is False: the rebuild's one-projection swap copies those tables as they are)."""
        views, self._views = self._views, []
        for create, target, columns, select in views:
            if fill:
                self.target.command(f"INSERT INTO {target} ({', '.join(f'`{c}`' for c in columns)}) {select}")
            self.target.command(create)

    def drop_tables(self) -> None:
        for table in (*LINES, LINES_RECODED, DOCS, WORKFLOWS):
            self.target.command(f"DROP TABLE IF EXISTS {self.target.quoted_database}.{table}")

    def add(self, partition: int, records: Iterable[Any]) -> None:
        """Stage records (``.offset``, ``.value``) of one partition: the hot path, a few bytes operations a record.

        Records that cannot be a line (no value, a newline) or do not even start like the engine's records go
        through the codec here; ClickHouse checks the rest (``stage``).
        """
        building = self._building
        line, docs, n = building.lines.append, building.docs.append, 0
        for r in records:
            value = r.value
            if value is None or b"\n" in value or not value.startswith(_ID):
                if not self._add_decoded(partition, r.offset, value, building):
                    self.invalid_read += 1
                continue
            line(b"\n%05d%020d" % (partition, r.offset))  # each line starts with the previous one's newline
            line(value)
            n += 1
            if value.find(_RUN_TYPE, 7, 600) > 0 and (doc := self._current_run_doc(value)) is not None:
                docs((partition, r.offset, doc))
        building.staged[partition] = building.staged.get(partition, 0) + n

    def take(self) -> Block:
        """What was added since the last call (call it where ``add`` runs, hand it to ``stage``)."""
        building, self._building = self._building, _Building()
        return building.block()

    def stage(self, block: Block) -> None:
        """Check a block's lines, insert its run documents (and the workflows of its runs), then have its events
        inserted: their workflow comes from the documents, and a run's RunStarted is never after its other events
        in the log. Lines ClickHouse finds not in canonical form go through the codec, like the records ``add``
        sent there.

        The events insert runs in the background, on a client of its own, while the next block is read and
        checked (one insert at a time; ``finish`` waits for the last): the check and the insert each left a core
        idle.
        """
        recoded = _Building()
        sources = contextlib.ExitStack()
        try:
            table = LINES[self._blocks % 2]  # a server stages into a table; the next block must not clobber it
            self._blocks += 1
            source = sources.enter_context(self.target.lines_source(table, block.lines))
            odd = self._check(block, source, recoded)
            docs = [doc for partition, offset, doc in block.docs if (partition, offset) not in odd]
            # before any events row: an upcast RunStarted gives the workflow of its run's canonical events
            docs += (doc for _, _, doc in recoded.docs)
            if docs:
                rows = b"\n".join(map(orjson.dumps, docs))
                self.target.raw_insert(DOCS, _DOC_COLUMNS, rows, fmt="JSONCompactEachRow")
                workflows = [(d[0], d[3]) for d in docs if d[2] != "RunCompleted"]
                if workflows:
                    rows = b"\n".join(map(orjson.dumps, workflows))
                    self.target.raw_insert(WORKFLOWS, ("run_id", "workflow"), rows, fmt="JSONCompactEachRow")
            if recoded.lines:
                self._stage_recoded(recoded.block())
            self._wait_for_insert()
            if block.lines:
                where = f"WHERE {_CANONICAL_SQL}" if odd else ""  # else every line passed the check
                self._inserting = self._inserts.submit(self._insert_events, source, where, sources)
                sources = contextlib.ExitStack()  # the insert closes the block's source when it is done
        finally:
            sources.close()

    def finish(self) -> None:
        """Wait for the last events insert (after the last ``stage``); its error, if any, is raised here."""
        try:
            self._wait_for_insert()
        finally:
            self._inserts.shutdown()
            if self._inserter is not None:
                self._inserter.close()
                self._inserter = None

    def _wait_for_insert(self) -> None:
        inserting, self._inserting = self._inserting, None
        if inserting is not None:
            inserting.result()

    def _insert_events(self, source: str, where: str, sources: contextlib.ExitStack) -> None:
        with sources:
            if self._inserter is None:
                self._inserter = self.target.sibling(self.target.database)
            self._events_from(self._inserter, source, where)

    def _events_from(self, store: ClickHouseStore, source: str, where: str = "") -> None:
        """Insert the events rows of the lines of ``source`` (``where``: which of them)."""
        sql = _EVENTS_SQL.format(db=self.target.quoted_database, lines=source, where=where)
        store.command(sql, {"topic": self.topic, **_CANONICAL_PARAMS})

    def _stage_recoded(self, block: Block) -> None:
        """Lines re-encoded by the codec (canonical by construction: checked all the same), inserted at once."""
        with self.target.lines_source(LINES_RECODED, block.lines) as source:
            if self._check(block, source, _Building()):
                raise StagingError("records re-encoded by the codec are not in canonical form")
            self._events_from(self.target, source)

    def _check(self, block: Block, source: str, recoded: _Building) -> set[tuple[int, int]]:
        """ClickHouse's pass over a block: per partition, the lines in canonical form (count and checksum: the
        log side of the rebuild's verification), and the lines that are not, or are stack records, to decode
        here (those that decode are re-encoded into ``recoded``). Returns the (partition, offset) of the lines
        that are not in canonical form."""
        sql = _CHECK_SQL.format(lines=source, canonical=_CANONICAL_SQL, stack=STACK_PREFIX)
        rows = self.target.query(sql, _CANONICAL_PARAMS) if block.lines else []
        odd: set[tuple[int, int]] = set()
        for partition, n, checksum, not_canonical, stacks in rows:
            if n + len(not_canonical) != block.staged.get(partition, 0):
                raise StagingError(
                    f"partition {partition}: {block.staged.get(partition, 0)} lines were staged but ClickHouse "
                    f"read {n + len(not_canonical)}"
                )
            d = self.digests.setdefault(partition, [0, 0])
            d[0] += n
            d[1] = (d[1] + checksum) & MASK64
            for offset, value in stacks:
                self._add_stack_record(partition, offset, bytes.fromhex(value))
            for offset, value in not_canonical:
                odd.add((partition, offset))
                if not self._add_decoded(partition, offset, bytes.fromhex(value), recoded):
                    self.invalid_staged += 1
        if sum(block.staged.values()) and not rows:
            raise StagingError(f"{sum(block.staged.values())} lines were staged but ClickHouse read none")
        return odd

    def _add_decoded(self, partition: int, offset: int, value: bytes | None, into: _Building) -> bool:
        """A record off the fast path, through the codec: re-encoded canonically into ``into`` when it decodes
        (returns True), skipped when it does not."""
        try:
            env = decode(value, expect="event")
        except InvalidRecord:
            return False
        canonical = encode(env)
        into.lines += (b"\n%05d%020d" % (partition, offset), canonical)
        into.staged[partition] = into.staged.get(partition, 0) + 1
        if env.type in _RUN_DOC_TYPES:
            into.docs.append((partition, offset, self._run_doc(canonical)))
        return True

    def _add_stack_record(self, partition: int, offset: int, value: bytes) -> None:
        try:
            env = decode(value, expect="event")
        except InvalidRecord as exc:
            raise StagingError(f"a stack record at partition {partition}, offset {offset}: {exc}") from None
        self._stack_records.append((partition, offset, env))

    def _current_run_doc(self, value: bytes) -> Doc | None:
        """The document of a RunStarted/RunRejected/RunCompleted record in the current schema version (an older
        one is not in canonical form: ClickHouse sends it to the codec, which upcasts it)."""
        k = value.find(_KIND_TYPE, 7, 600)
        v = value.find(_VERSION, k + 25, k + 120) if k > 0 else -1
        type_ = value[k + 25 : v]
        if v > 0 and type_ in _RUN_DOC_TYPE_BYTES and value.startswith(_CURRENT[type_], v + 19):
            return self._run_doc(value)
        return None

    def _run_doc(self, value: bytes) -> Doc:
        """A run's workflow, input, output and step count, as the Python fold computes them (``projections.rows``)."""
        try:
            data = orjson.loads(self._without_known_spec(value))
            payload, type_ = data["payload"], data["type"]
            run, seq, workflow = data["key"], int(data["seq"] or 0), payload.get("workflow") or ""
            if type_ == "RunStarted":
                total = self._steps_total.get(payload["spec_hash"])
                if total is None:
                    spec = RunStarted.model_validate(payload).spec
                    total = self._steps_total[payload["spec_hash"]] = step_count(spec)
                    self._remember_spec(value, payload)
                doc = (run, seq, type_, workflow, payload["spec_hash"], json_text(payload.get("input")), "", total)
            else:
                doc = (run, seq, type_, workflow, "", "", json_text(payload.get("output")), 0)
        except (ValueError, KeyError, TypeError) as exc:
            raise StagingError(f"a run start or end record does not decode: {exc!r}") from None
        return doc

    def _without_known_spec(self, value: bytes) -> bytes:
        """A RunStarted record with its spec replaced by ``null`` when the spec is, byte for byte, one already
        seen: runs of one workflow repeat the same spec, and parsing it was most of the cost of a document."""
        at = value.find(_SPEC, 0, 2048)
        if at < 0:
            return value
        spec = self._specs.get(value[value.rfind(b'"', 0, at) + 1 : at].decode())
        start = at + len(_SPEC)
        if spec is None or not value.startswith(spec, start):
            return value
        return value[:start] + b"null" + value[start + len(spec) :]

    def _remember_spec(self, value: bytes, payload: dict[str, Any]) -> None:
        """Keep a spec's bytes when the record holds them as orjson writes them (the engine's records do)."""
        spec = orjson.dumps(payload["spec"])
        at = value.find(_SPEC, 0, 2048)
        if at >= 0 and value.startswith(spec, at + len(_SPEC)):
            self._specs[payload["spec_hash"]] = spec

    # -- derivation ----------------------------------------------------------------------------------------

    def derive(self) -> None:
        """Fill the fact and status tables from the staged events (after the last ``stage``)."""
        self.finish()
        db, t = self.target.quoted_database, self.target
        # steps (the largest) on a second client while the rest go on: each query alone left a core idle
        second = t.sibling(t.database)
        with ThreadPoolExecutor(1) as pool:
            steps = pool.submit(second.command, _STEPS_SQL.format(db=db))
            try:
                self._check_contiguous()
                t.command(_RUNS_SQL.format(db=db, slot=SLOT_PREFIX, stack=STACK_PREFIX))
                t.command(_LLM_CALLS_SQL.format(db=db))
                t.command(_MESSAGES_SQL.format(db=db))
                records = sorted(self._stack_records, key=lambda r: (r[0], r[1]))  # log order, per stack
                self._stack_records = []
                t.write(self.fold.fold_stacks(records))
            finally:
                steps.result()
                second.close()
        self._check_docs()
        self.restore_views()

    def _check_contiguous(self) -> None:
        """The runs SQL takes each run's log at face value: a quarantined or released run, or one whose seqs have a
        gap (an unreadable record was skipped), needs the fold's rules (``rows.run_row``), so the rebuild falls back
        to the Python fold for such a log."""
        db = self.target.quoted_database
        rows = self.target.query(
            f"SELECT count() FROM (SELECT run_id FROM {db}.events "
            f"WHERE NOT startsWith(run_id, '{SLOT_PREFIX}') AND NOT startsWith(run_id, '{STACK_PREFIX}') "
            "GROUP BY run_id HAVING countIf(type IN ('RunQuarantined', 'RunReleased')) > 0 "
            "OR (minIf(seq, seq > 0) = 1 AND max(seq) != uniqExactIf(seq, seq > 0)))"
        )
        if int(rows[0][0]):
            raise StagingError(f"{rows[0][0]} runs are quarantined or have a seq gap; their rows need the fold")

    def _check_docs(self) -> None:
        """Every RunStarted/RunRejected/RunCompleted event got its document (the sniffing missed none)."""
        db = self.target.quoted_database
        rows = self.target.query(
            f"SELECT (SELECT count() FROM {db}.events WHERE type IN {_RUN_DOC_TYPES}), "
            f"(SELECT count() FROM {db}.{DOCS})"
        )
        events, docs = (int(x) for x in rows[0])
        if events != docs:
            raise StagingError(f"{events} run start/end events but {docs} run documents were staged")


# Per partition of a block: the lines in canonical form (count, checksum of their ids) and, hex-encoded (exact
# bytes), the lines that are not and the stack records among those that are.
_CHECK_SQL = """
SELECT partition, countIf(ok), sumIf(CRC32(visitParamExtractString(line, 'id')), ok),
    groupArrayIf((offset, hex(substring(line, 26))), NOT ok),
    groupArrayIf((offset, hex(substring(line, 26))), ok AND startsWith(visitParamExtractString(line, 'key'), '{stack}'))
FROM (
    SELECT toUInt16(substring(line, 1, 5)) AS partition, toUInt64(substring(line, 6, 20)) AS offset, line,
        {canonical} AS ok
    FROM {lines}
)
GROUP BY partition
"""

# One line is ``<partition:5><offset:20><value>``; the header fields are read with the visitParam functions
# (the first occurrence of each name is the header's: the canonical check guarantees that the header comes first
# and that every field before the payload is a scalar or an escaped string; the digits hold no quote), the payload
# is cut out as it is.
_EVENTS_SQL = """
INSERT INTO {db}.events (run_id, workflow, seq, event_id, type, schema_version, occurred_at, causation_id,
    correlation_id, payload, topic, partition, offset)
SELECT run_id, workflow, seq, id, type, schema_version, fromUnixTimestamp64Milli(at_ms, 'UTC'),
    causation_id, correlation_id, payload, {{topic:String}}, partition, offset
FROM (
    SELECT toUInt16(substring(line, 1, 5)) AS partition, toUInt64(substring(line, 6, 20)) AS offset,
        visitParamExtractString(line, 'id') AS id, visitParamExtractString(line, 'type') AS type,
        toUInt16(visitParamExtractUInt(line, 'schema_version')) AS schema_version,
        visitParamExtractString(line, 'key') AS run_id, visitParamExtractUInt(line, 'seq') AS seq,
        visitParamExtractString(line, 'causation_id') AS causation_id,
        visitParamExtractString(line, 'correlation_id') AS correlation_id,
        visitParamExtractInt(line, 'occurred_at_ms') AS at_ms, position(line, ',"payload":') AS cut,
        substring(line, cut + 11, length(line) - cut - 11) AS payload
    FROM {lines}
    {where}
) AS e
ANY LEFT JOIN {db}.rebuild_workflows USING (run_id)
SETTINGS max_insert_threads = 2
"""

# A step attempt's row is its latest event (by seq): a StepScheduled alone, or a finish (StepCompleted or
# StepFailed) on top of the StepScheduled right before it; a finish with no open attempt before it starts from an
# empty row (``projections.facts.step_row``).
_STEPS_SQL = """
INSERT INTO {db}.steps (run_id, workflow, path, step, attempt, pool, status, scheduled_at, finished_at,
    duration_ms, worker, error_type, error_message, will_retry, version, partition, offset)
SELECT run_id, workflow, path,
    if(opened, prev.step, last.step), attempt,
    if(last.type = 'StepScheduled', last.pool, if(opened, prev.pool, '')),
    multiIf(last.type = 'StepScheduled', 'scheduled', last.type = 'StepCompleted', 'completed', 'failed'),
    if(last.type = 'StepScheduled', last.at, if(opened, prev.at, toDateTime64(0, 3, 'UTC'))),
    if(last.type = 'StepScheduled', toDateTime64(0, 3, 'UTC'), last.at),
    if(last.type = 'StepScheduled', 0, last.duration_ms),
    if(last.type = 'StepScheduled', '', last.worker),
    if(last.type = 'StepFailed', last.error_type, ''),
    if(last.type = 'StepFailed', last.error_message, ''),
    if(last.type = 'StepFailed', last.will_retry, 0),
    last.seq, last.partition, last.offset
FROM (
    SELECT run_id, any(workflow) AS workflow, p.path AS path, p.attempt AS attempt,
        arraySort(x -> x.seq, groupArray(CAST((seq, type, occurred_at, partition, offset, p.step, p.pool,
            p.duration_ms, p.worker, p.error.type, p.error.message, p.will_retry),
            'Tuple(seq UInt64, type String, at DateTime64(3, \\'UTC\\'), partition UInt16, offset UInt64, step String,
            pool String, duration_ms Float64, worker String, error_type String, error_message String,
            will_retry UInt8)'))) AS evs,
        evs[-1] AS last, evs[-2] AS prev,
        length(evs) > 1 AND prev.type = 'StepScheduled' AND last.type != 'StepScheduled' AS opened
    FROM (
        SELECT run_id, workflow, seq, type, occurred_at, partition, offset,
            JSONExtract(payload, 'Tuple(path String, step String, attempt UInt32, pool String, duration_ms Float64,
                worker String, error Tuple(type String, message String), will_retry UInt8)') AS p
        FROM {db}.events WHERE type IN ('StepScheduled', 'StepCompleted', 'StepFailed')
    )
    GROUP BY run_id, path, attempt
)
"""

# The cost flags are read Nullable: events recorded before they existed lack them and take the schema's defaults
# (price known, not illustrative, usage reported), as the codec decodes them.
_LLM_CALLS_SQL = """
INSERT INTO {db}.llm_calls (run_id, seq, workflow, path, call, attempt, agent, stack_id, provider, model, tokens_in,
    tokens_out, cost_usd, latency_ms, outcome, error_type, error_message, http_status, fallback, started_at,
    occurred_at, partition, offset, price_known, price_illustrative, usage_estimated)
SELECT run_id, seq, workflow, p.path, p.call, p.attempt, p.agent, p.stack_id, p.provider, p.model, p.tokens_in,
    p.tokens_out, p.cost_usd, p.latency_ms, p.outcome, p.error.type, p.error.message, ifNull(p.http_status, 0),
    p.fallback, if(p.started_at_ms != 0, fromUnixTimestamp64Milli(p.started_at_ms, 'UTC'), occurred_at),
    occurred_at, partition, offset, ifNull(p.price_known, 1), ifNull(p.price_illustrative, 0),
    ifNull(p.usage_estimated, 0)
FROM (
    SELECT *, JSONExtract(payload, 'Tuple(path String, call UInt32, attempt UInt32, agent String, stack_id String,
        provider String, model String, tokens_in UInt64, tokens_out UInt64, cost_usd Float64, latency_ms Float64,
        outcome String, error Tuple(type String, message String), http_status Nullable(Int32), fallback UInt8,
        started_at_ms Int64, price_known Nullable(UInt8), price_illustrative Nullable(UInt8),
        usage_estimated Nullable(UInt8))') AS p
    FROM {db}.events WHERE type = 'LlmCallAttempted'
)
"""

_MESSAGES_SQL = """
INSERT INTO {db}.messages (thread_id, message_id, run_id, seq, stack_id, agent, role, content, embedding, embedder,
    created_at, partition, offset)
SELECT p.thread_id, p.message_id, run_id, seq, p.stack_id, p.agent, p.role, p.content, p.embedding, p.embedder,
    occurred_at, partition, offset
FROM (
    SELECT *, JSONExtract(payload, 'Tuple(thread_id String, message_id String, stack_id String, agent String,
        role String, content String, embedding Array(Float32), embedder String)') AS p
    FROM {db}.events WHERE type = 'MessageAppended'
)
"""

# A run's row (``projections.rows.run_row``): each field is the value the latest event that sets it gave it, except
# two that depend on which nodes are still open. The current step (``c``) is the attempt scheduled last, unless it
# finished (completed, or failed for good) or the run ended. The open waits (``w``) are the wait nodes started and
# not finished (completed, failed or timed out), oldest first, while the run is running (a failing or ended run
# waits for nothing); the status of a running run with one is 'waiting'.
_RUNS_SQL = """
INSERT INTO {db}.runs (run_id, workflow, spec_hash, status, input, output, error_type, error_message, current_step,
    step_index, current_path, waiting_for, waiting_path, waits, attempt, steps_total, steps_completed, started_at,
    updated_at, finished_at, last_seq)
WITH
    NOT ifNull(c.finished, 1) AND e.lifecycle NOT IN ('completed', 'failed', 'cancelled', 'rejected') AS stepping,
    if(e.lifecycle = 'running', w.waits, []) AS open_waits
SELECT e.run_id, ifNull(d.workflow, ''), ifNull(d.spec_hash, ''),
    if(e.lifecycle = 'running' AND notEmpty(open_waits), 'waiting', e.lifecycle),
    ifNull(d.input, ''), ifNull(d.output, ''), e.error.1, e.error.2,
    if(stepping, c.step, ''), -1, if(stepping, c.path, ''), open_waits[1].2, open_waits[1].1, open_waits,
    if(stepping, c.attempt, 0), ifNull(d.steps_total, 0), e.steps_completed, e.started_at, e.updated_at,
    e.finished_at, e.last_seq
FROM (
    SELECT run_id,
        if(countIf(type IN ('RunStarted', 'RunRejected', 'RunFailing', 'RunCancelled', 'RunCompleted',
                'RunFailed')) = 0, 'pending',
            argMaxIf(multiIf(type = 'RunStarted', 'running', type = 'RunRejected', 'rejected',
                type = 'RunFailing', 'failing', type = 'RunCancelled', 'cancelled', type = 'RunCompleted',
                'completed', 'failed'), seq, type IN ('RunStarted', 'RunRejected', 'RunFailing', 'RunCancelled',
                'RunCompleted', 'RunFailed'))) AS lifecycle,
        argMaxIf(multiIf(type = 'RunRejected', ('RunRejected', p.reason), type = 'RunCancelled',
                ('Cancelled', p.reason), type = 'RunCompleted', ('', ''), (p.error.type, p.error.message)),
            seq, type IN ('RunRejected', 'RunFailing', 'RunCancelled', 'StepFailed', 'RunCompleted',
                'RunFailed')) AS error,
        uniqExactIf(seq, type = 'StepCompleted') AS steps_completed,
        argMaxIf(occurred_at, seq, type = 'RunStarted') AS started_at,
        argMax(occurred_at, seq) AS updated_at,
        argMaxIf(occurred_at, seq, type IN ('RunRejected', 'RunCancelled', 'RunCompleted', 'RunFailed'))
            AS finished_at,
        max(seq) AS last_seq
    FROM (
        SELECT run_id, seq, type, occurred_at,
            if(type IN ('RunRejected', 'RunFailing', 'RunCancelled', 'StepFailed', 'RunFailed'),
                JSONExtract(payload, 'Tuple(reason String, error Tuple(type String, message String))'),
                CAST(('', ('', '')), 'Tuple(reason String, error Tuple(type String, message String))')) AS p
        FROM {db}.events
        WHERE NOT startsWith(run_id, '{slot}') AND NOT startsWith(run_id, '{stack}')
    )
    GROUP BY run_id
) AS e
LEFT JOIN (
    SELECT run_id, argMax(step, scheduled_seq) AS step, argMax(path, scheduled_seq) AS path,
        argMax(attempt, scheduled_seq) AS attempt, argMax(finished, scheduled_seq) AS finished
    FROM (
        SELECT run_id, p.path AS path, p.attempt AS attempt, argMaxIf(p.step, seq, type = 'StepScheduled') AS step,
            maxIf(seq, type = 'StepScheduled') AS scheduled_seq,
            countIf(type = 'StepCompleted' OR (type = 'StepFailed' AND NOT p.will_retry)) > 0 AS finished
        FROM (
            SELECT run_id, seq, type,
                JSONExtract(payload, 'Tuple(path String, step String, attempt UInt32, will_retry UInt8)') AS p
            FROM {db}.events WHERE type IN ('StepScheduled', 'StepCompleted', 'StepFailed')
        )
        GROUP BY run_id, path, attempt
        HAVING scheduled_seq > 0
    )
    GROUP BY run_id
) AS c ON e.run_id = c.run_id
LEFT JOIN (
    SELECT run_id, arrayMap(x -> (x.2, x.3), arraySort(x -> x.1, groupArray((started, path, event)))) AS waits
    FROM (
        SELECT run_id, p.path AS path, minIf(seq, type = 'WaitStarted') AS started,
            argMinIf(p.event, seq, type = 'WaitStarted') AS event
        FROM (
            SELECT run_id, seq, type, JSONExtract(payload, 'Tuple(path String, event String)') AS p
            FROM {db}.events WHERE type IN ('WaitStarted', 'NodeCompleted', 'NodeFailed', 'WaitTimedOut')
        )
        GROUP BY run_id, path
        HAVING started > 0 AND countIf(type != 'WaitStarted') = 0
    )
    GROUP BY run_id
) AS w ON e.run_id = w.run_id
LEFT JOIN (
    SELECT run_id, argMaxIf(workflow, seq, type IN ('RunStarted', 'RunRejected')) AS workflow,
        argMaxIf(spec_hash, seq, type = 'RunStarted') AS spec_hash, argMaxIf(input, seq, type = 'RunStarted') AS input,
        argMaxIf(output, seq, type = 'RunCompleted') AS output,
        argMaxIf(steps_total, seq, type = 'RunStarted') AS steps_total
    FROM {db}.rebuild_run_docs GROUP BY run_id
) AS d ON e.run_id = d.run_id
SETTINGS join_use_nulls = 1
"""
