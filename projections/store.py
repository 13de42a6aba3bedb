"""Where projections live: a ``ProjectionStore`` protocol, its in-memory twin, and ClickHouse.

ClickHouse runs embedded (chDB, the real engine in-process, one process per data directory) or as a server by
URL; both speak through clickhouse-connect. Every read uses bound parameters. Writes are idempotent: tables
are ReplacingMergeTree keyed by (run, seq) / versioned by last_seq, and reads use FINAL, so a batch inserted
twice (a crash between insert and offset commit) is invisible to queries.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence, Sized
from importlib import resources
from typing import Any, Protocol

from tickflow.events.agents import stack_key
from tickflow.projections.facts import (
    LLM_CALL_COLUMNS,
    MESSAGE_COLUMNS,
    STACK_COLUMNS,
    STEP_COLUMNS,
    TICK_COLUMNS,
    StackRow,
    StepRow,
    TickRow,
)
from tickflow.projections.fold import FACT_TABLES, ProjectionBatch
from tickflow.projections.queries import RunQuery
from tickflow.projections.rows import EVENT_COLUMNS, RUN_COLUMNS, TERMINAL_STATUSES, EventRow, RunRow

__all__ = ["META_DATABASE", "TABLE_COLUMNS", "ClickHouseStore", "MemoryStore", "ProjectionStore", "open_store"]

#: Where the pointer to each projection database's active generation lives (one per ClickHouse, fixed name).
META_DATABASE = "tickflow_meta"

#: Row fields of every table the projector writes, in the rows' field order.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "events": EVENT_COLUMNS,
    "runs": RUN_COLUMNS,
    "steps": STEP_COLUMNS,
    "llm_calls": LLM_CALL_COLUMNS,
    "stacks": STACK_COLUMNS,
    "ticks": TICK_COLUMNS,
    "messages": MESSAGE_COLUMNS,
}


def _column(field_name: str) -> str:
    """Rows hold times as epoch milliseconds (``*_at_ms``); tables hold DateTime64 (``*_at``)."""
    return field_name[:-3] if field_name.endswith("_at_ms") else field_name


def _table_columns(columns: Sequence[str]) -> list[str]:
    return [_column(c) for c in columns]


def _select_list(columns: Sequence[str]) -> str:
    """Columns in row-field order, DateTime64 read back as epoch milliseconds like the rows hold them."""
    return ", ".join(f"toUnixTimestamp64Milli({_column(c)})" if c.endswith("_at_ms") else c for c in columns)


#: The order a batch is inserted in (see ``ClickHouseStore.write``).
WRITE_ORDER = ("events", "steps", "llm_calls", "messages", "ticks", "stacks", "runs")
#: The tables ``vacuum`` deletes a finished run from, its status row last (see ``ClickHouseStore.vacuum``).
VACUUM_ORDER = ("events", "steps", "llm_calls", "ticks", "runs")
_INSERT_COLUMNS = {table: _table_columns(cols) for table, cols in TABLE_COLUMNS.items()}
_EVENT_SELECT, _RUN_SELECT = _select_list(EVENT_COLUMNS), _select_list(RUN_COLUMNS)
_STEP_SELECT, _TICK_SELECT = _select_list(STEP_COLUMNS), _select_list(TICK_COLUMNS)
_STACK_SELECT = _select_list(STACK_COLUMNS)


class ProjectionStore(Protocol):
    """The read models the projector writes and the API reads."""

    def migrate(self) -> None: ...

    def write(self, batch: ProjectionBatch) -> None:
        """Insert a batch's rows; fact tables get the batch's facts exactly as given (the projector filters)."""
        ...

    def watermarks(self) -> dict[str, dict[int, int]]:
        """Per fact table and partition, the highest event offset already projected."""
        ...

    def runs_by_id(self, run_ids: Sequence[str]) -> dict[str, RunRow]: ...

    def steps_by_key(self, keys: Sequence[tuple[str, str, int]]) -> dict[tuple[str, str, int], StepRow]: ...

    def ticks_by_key(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], TickRow]: ...

    def stacks_by_id(self, stack_ids: Sequence[str]) -> dict[str, StackRow]: ...

    def run_steps(self, run_id: str) -> list[StepRow]:
        """Every attempt of every step of a run, in the order they were scheduled (the run's timeline)."""
        ...

    def list_stacks(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[StackRow]: ...

    def list_runs(self, query: RunQuery) -> list[RunRow]:
        """The runs ``query`` asks for, the latest started first (``started_since_ms``: started at or after it)."""
        ...

    def run_events(self, run_id: str) -> list[EventRow]: ...

    def status_counts(self, workflow: str | None = None) -> dict[str, int]: ...

    def first_offset(self, key: str) -> tuple[int, int] | None:
        """(partition, offset) of the first projected event of a run or entity key, to start reading the log."""
        ...

    def event_count(self) -> int: ...

    def table_counts(self) -> dict[str, int]:
        """Rows per table as queries see them (duplicates collapsed): what a rebuild is verified against."""
        ...

    def vacuum(self, finished_before_ms: int) -> int:
        """Delete every row of the runs that finished before the cutoff, from every per-run table (runs, events,
        steps, llm_calls, ticks), and skipped ticks (no run) due before it; returns how many runs went.

        A run still in flight is never touched, however old. Agent memory (messages) outlives the runs that wrote
        it: a thread belongs to a stack or an agent. A stack deleted before the cutoff goes with its row, events and
        ticks, and so do the threads only it wrote to (see docs/operations.md, "Retention and storage")."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """The in-memory twin: same contract, for unit tests and for reasoning about the real one."""

    def __init__(self) -> None:
        self._events: dict[tuple[str, int], EventRow] = {}
        self._runs: dict[str, RunRow] = {}
        self._steps: dict[tuple[str, str, int], StepRow] = {}
        self._ticks: dict[tuple[str, int], TickRow] = {}
        self._stacks: dict[str, StackRow] = {}
        self._facts: dict[str, dict[tuple[Any, ...], Any]] = {"llm_calls": {}, "messages": {}}
        self._marks: dict[str, dict[int, int]] = {}

    def migrate(self) -> None:
        return None

    def write(self, batch: ProjectionBatch) -> None:
        for e in batch.events:
            self._events.setdefault((e.run_id, e.seq), e)
        for r in batch.runs:
            cur = self._runs.get(r.run_id)
            if cur is None or r.last_seq >= cur.last_seq:
                self._runs[r.run_id] = r
        for st in batch.stacks:
            prev_stack = self._stacks.get(st.stack_id)
            if prev_stack is None or st.last_seq >= prev_stack.last_seq:
                self._stacks[st.stack_id] = st
        for sr in batch.steps:
            prev_step = self._steps.get((sr.run_id, sr.path, sr.attempt))
            if prev_step is None or sr.version >= prev_step.version:
                self._steps[(sr.run_id, sr.path, sr.attempt)] = sr
        for tr in batch.ticks:
            prev_tick = self._ticks.get((tr.stack_id, tr.tick))
            if prev_tick is None or tr.version >= prev_tick.version:
                self._ticks[(tr.stack_id, tr.tick)] = tr
        self._facts["llm_calls"].update(((c.run_id, c.seq), c) for c in batch.llm_calls)
        self._facts["messages"].update(((m.thread_id, m.message_id), m) for m in batch.messages)
        for table in FACT_TABLES:
            marks = self._marks.setdefault(table, {})
            for row in getattr(batch, table):
                marks[row.partition] = max(marks.get(row.partition, -1), row.offset)

    def watermarks(self) -> dict[str, dict[int, int]]:
        return {t: dict(m) for t, m in self._marks.items()}

    def runs_by_id(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        return {i: self._runs[i] for i in run_ids if i in self._runs}

    def steps_by_key(self, keys: Sequence[tuple[str, str, int]]) -> dict[tuple[str, str, int], StepRow]:
        return {k: self._steps[k] for k in keys if k in self._steps}

    def ticks_by_key(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], TickRow]:
        return {k: self._ticks[k] for k in keys if k in self._ticks}

    def stacks_by_id(self, stack_ids: Sequence[str]) -> dict[str, StackRow]:
        return {i: self._stacks[i] for i in stack_ids if i in self._stacks}

    def run_steps(self, run_id: str) -> list[StepRow]:
        rows = [r for (rid, _, _), r in self._steps.items() if rid == run_id]
        return sorted(rows, key=lambda r: (r.scheduled_at_ms, r.path, r.attempt))

    def list_stacks(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[StackRow]:
        rows = [r for r in self._stacks.values() if status is None or r.status == status]
        rows.sort(key=lambda r: r.stack_id)
        return rows[offset : offset + limit]

    def list_runs(self, query: RunQuery) -> list[RunRow]:
        rows = [
            r
            for r in self._runs.values()
            if (query.status is None or r.status == query.status)
            and (query.workflow is None or r.workflow == query.workflow)
            and (query.started_since_ms is None or r.started_at_ms >= query.started_since_ms)
        ]
        rows.sort(key=lambda r: (-r.started_at_ms, r.run_id))
        return rows[query.offset : query.offset + query.limit]

    def run_events(self, run_id: str) -> list[EventRow]:
        return sorted((e for (r, _), e in self._events.items() if r == run_id), key=lambda e: e.seq)

    def status_counts(self, workflow: str | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self._runs.values():
            if workflow is None or r.workflow == workflow:
                counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def event_count(self) -> int:
        return len(self._events)

    def table_counts(self) -> dict[str, int]:
        sizes: dict[str, Sized] = {"events": self._events, "runs": self._runs, "steps": self._steps}
        sizes["stacks"] = self._stacks
        counts = {table: len(rows) for table, rows in sizes.items()}
        counts |= {"ticks": len(self._ticks)} | {t: len(rows) for t, rows in self._facts.items()}
        return counts

    def first_offset(self, key: str) -> tuple[int, int] | None:
        found = [(e.partition, e.offset) for (r, _), e in self._events.items() if r == key]
        return min(found, key=lambda po: po[1]) if found else None

    def vacuum(self, finished_before_ms: int) -> int:
        gone = {r.run_id for r in self._runs.values() if r.terminal and 0 < r.finished_at_ms < finished_before_ms}
        self._runs = {k: v for k, v in self._runs.items() if k not in gone}
        self._events = {k: v for k, v in self._events.items() if k[0] not in gone}
        self._steps = {k: v for k, v in self._steps.items() if k[0] not in gone}
        self._facts["llm_calls"] = {k: v for k, v in self._facts["llm_calls"].items() if k[0] not in gone}
        stacks = {
            i for i, st in self._stacks.items() if st.status == "deleted" and 0 < st.updated_at_ms < finished_before_ms
        }
        self._ticks = {
            k: t
            for k, t in self._ticks.items()
            if not (t.run_id in gone or t.stack_id in stacks or (not t.run_id and 0 < t.due_at_ms < finished_before_ms))
        }
        keys = {stack_key(i) for i in stacks}
        self._events = {k: v for k, v in self._events.items() if k[0] not in keys}
        threads = _threads_only_of(((m.thread_id, m.stack_id) for m in self._facts["messages"].values()), stacks)
        self._facts["messages"] = {k: m for k, m in self._facts["messages"].items() if m.thread_id not in threads}
        self._stacks = {k: v for k, v in self._stacks.items() if k not in stacks}
        return len(gone)

    def close(self) -> None:
        return None


class ClickHouseStore:
    """ClickHouse through clickhouse-connect: embedded chDB (``path``) or a server (``url``).

    clickhouse-connect's chDB client is synchronous and one chDB instance serves one process, so all calls go
    through one lock; async callers run them in a thread.
    """

    def __init__(self, *, path: str | None = None, url: str | None = None, database: str = "tickflow") -> None:
        import clickhouse_connect

        self._lock = threading.Lock()
        self.database = database
        #: The configured name; ``database`` may later be a rebuilt generation of it (see ``switch_database``).
        self.base_database = database
        self._path, self._url = path, url  # for open_client (read-only SQL sessions)
        if url:
            boot = clickhouse_connect.get_client(dsn=url)
            boot.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            boot.close()
            self._client: Any = clickhouse_connect.get_client(dsn=url, database=database)
        else:
            if path is None:
                raise ValueError("give ClickHouseStore a chDB data directory (path=) or a server URL (url=)")
            self._client = clickhouse_connect.get_client(interface="chdb", path=path)
            self._client.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        self._t = f"`{database}`"
        # Reads get their own client and lock: a status query never waits behind a projector insert (chDB
        # serves two clients of one engine from two threads; a server, two connections).
        self._read_lock = threading.Lock()
        self._reader: Any = (
            clickhouse_connect.get_client(dsn=url, database=database)
            if url
            else clickhouse_connect.get_client(interface="chdb", path=path)
        )

    # -- schema --------------------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Apply numbered migrations in order, each once; safe to call at every start."""
        with self._lock:
            c = self._client
            c.command(
                f"CREATE TABLE IF NOT EXISTS {self._t}.schema_migrations "
                "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
                "ENGINE = MergeTree ORDER BY version"
            )
            done = {r[0] for r in c.query(f"SELECT version FROM {self._t}.schema_migrations").result_rows}
            folder = resources.files("tickflow.projections") / "migrations"  # package data, in a wheel too
            for entry in sorted(folder.iterdir(), key=lambda p: p.name):
                if not entry.name.endswith(".sql"):
                    continue
                version = int(entry.name.split("_", 1)[0])
                if version in done:
                    continue
                sql = entry.read_text()
                for statement in _statements(sql):
                    c.command(statement.replace("{db}", self._t))  # migrations name tables as {db}.<table>
                c.insert(f"{self._t}.schema_migrations", [[version, entry.name]], column_names=["version", "name"])
        self.drop_legacy_ttl()  # not a numbered migration: the clause is there only where an old set_ttl put it

    # -- writes --------------------------------------------------------------------------------------------

    def write(self, batch: ProjectionBatch) -> None:
        # Reads run concurrently with this (their own client), so the order is what a reader can observe: the
        # log's rows first, then the facts, and the status rows (runs, stacks) last — a run seen as completed
        # has all of its events, steps and LLM calls visible. Each table's facts are exactly-once regardless
        # (the projector skips offsets at or below each table's watermark).
        with self._lock:
            for table in WRITE_ORDER:
                rows = getattr(batch, table)
                if rows:
                    self._client.insert(
                        f"{self._t}.{table}", [r.as_tuple() for r in rows], column_names=_INSERT_COLUMNS[table]
                    )

    def watermarks(self) -> dict[str, dict[int, int]]:
        marks: dict[str, dict[int, int]] = {}
        for table in FACT_TABLES:
            rows = self._query(f"SELECT partition, max(offset) FROM {self._t}.{table} GROUP BY partition")
            marks[table] = {int(p): int(o) for p, o in rows}
        return marks

    # -- reads ---------------------------------------------------------------------------------------------

    def _query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._read_lock:
            return list(self._reader.query(sql, parameters=params or {}).result_rows)

    def _run_select(self) -> str:
        return f"SELECT {_RUN_SELECT} FROM {self._t}.runs FINAL"

    def runs_by_id(self, run_ids: Sequence[str]) -> dict[str, RunRow]:
        if not run_ids:
            return {}
        rows = self._query(f"{self._run_select()} WHERE run_id IN {{ids:Array(String)}}", {"ids": list(run_ids)})
        return {r[0]: _run_row(r) for r in rows}

    def steps_by_key(self, keys: Sequence[tuple[str, str, int]]) -> dict[tuple[str, str, int], StepRow]:
        if not keys:
            return {}
        rows = self._query(
            f"SELECT {_STEP_SELECT} FROM {self._t}.steps FINAL WHERE (run_id, path, attempt) IN "
            "{keys:Array(Tuple(String, String, UInt32))}",
            {"keys": [tuple(k) for k in keys]},
        )
        return {(r[0], r[2], r[4]): StepRow(*r) for r in rows}

    def ticks_by_key(self, keys: Sequence[tuple[str, int]]) -> dict[tuple[str, int], TickRow]:
        if not keys:
            return {}
        rows = self._query(
            f"SELECT {_TICK_SELECT} FROM {self._t}.ticks FINAL WHERE (stack_id, tick) IN "
            "{keys:Array(Tuple(String, UInt64))}",
            {"keys": [tuple(k) for k in keys]},
        )
        return {(r[0], r[1]): TickRow(*r) for r in rows}

    def stacks_by_id(self, stack_ids: Sequence[str]) -> dict[str, StackRow]:
        if not stack_ids:
            return {}
        rows = self._query(
            f"SELECT {_STACK_SELECT} FROM {self._t}.stacks FINAL WHERE stack_id IN {{ids:Array(String)}}",
            {"ids": list(stack_ids)},
        )
        return {r[0]: StackRow(*r) for r in rows}

    def run_steps(self, run_id: str) -> list[StepRow]:
        rows = self._query(
            f"SELECT {_STEP_SELECT} FROM {self._t}.steps FINAL WHERE run_id = {{run_id:String}} "
            "ORDER BY scheduled_at, path, attempt",
            {"run_id": run_id},
        )
        return [StepRow(*r) for r in rows]

    def list_stacks(self, *, status: str | None = None, limit: int = 100, offset: int = 0) -> list[StackRow]:
        clause = " WHERE status = {status:String}" if status is not None else ""
        rows = self._query(
            f"SELECT {_STACK_SELECT} FROM {self._t}.stacks FINAL{clause} ORDER BY stack_id "
            "LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
            {"status": status or "", "limit": int(limit), "offset": int(offset)},
        )
        return [StackRow(*r) for r in rows]

    def list_runs(self, query: RunQuery) -> list[RunRow]:
        where: list[str] = []
        params: dict[str, Any] = {"limit": query.limit, "offset": query.offset}
        if query.started_since_ms is not None:
            where.append("started_at >= fromUnixTimestamp64Milli({since:Int64}, 'UTC')")
            params["since"] = query.started_since_ms
        if query.status is not None:
            where.append("status = {status:String}")
            params["status"] = query.status
        if query.workflow is not None:
            where.append("workflow = {workflow:String}")
            params["workflow"] = query.workflow
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        page = "LIMIT {limit:UInt32} OFFSET {offset:UInt32}"
        sql = f"{self._run_select()}{clause} ORDER BY started_at DESC, run_id {page}"
        return [_run_row(r) for r in self._query(sql, params)]

    def run_events(self, run_id: str) -> list[EventRow]:
        rows = self._query(
            f"SELECT {_EVENT_SELECT} FROM {self._t}.events FINAL WHERE run_id = {{run_id:String}} ORDER BY seq",
            {"run_id": run_id},
        )
        return [EventRow(*r) for r in rows]

    def status_counts(self, workflow: str | None = None) -> dict[str, int]:
        if workflow is None:
            rows = self._query(f"SELECT status, count() FROM {self._t}.runs FINAL GROUP BY status")
        else:
            rows = self._query(
                f"SELECT status, count() FROM {self._t}.runs FINAL WHERE workflow = {{w:String}} GROUP BY status",
                {"w": workflow},
            )
        return {str(s): int(n) for s, n in rows}

    def event_count(self) -> int:
        return int(self._query(f"SELECT count() FROM {self._t}.events FINAL")[0][0])

    def table_counts(self) -> dict[str, int]:
        union = " UNION ALL ".join(f"SELECT '{table}', count() FROM {self._t}.{table} FINAL" for table in TABLE_COLUMNS)
        return {str(t): int(n) for t, n in self._query(union)}

    def first_offset(self, key: str) -> tuple[int, int] | None:
        rows = self._query(
            f"SELECT partition, offset FROM {self._t}.events WHERE run_id = {{k:String}} ORDER BY seq LIMIT 1",
            {"k": key},
        )
        return (int(rows[0][0]), int(rows[0][1])) if rows else None

    def vacuum(self, finished_before_ms: int) -> int:
        # Lightweight deletes: rows vanish from reads at once and from disk at the next merge. Only finished runs
        # go, so a run still in progress never loses its history. The runs row goes last: until then a vacuum
        # interrupted half-way finds the same runs again and finishes the job.
        finished = (
            f"SELECT run_id FROM {self._t}.runs FINAL WHERE status IN {{terminal:Array(String)}} "
            "AND finished_at > toDateTime64(0, 3) AND finished_at < fromUnixTimestamp64Milli({cutoff:Int64}, 'UTC')"
        )
        params = {"terminal": list(TERMINAL_STATUSES), "cutoff": int(finished_before_ms)}
        with self._lock:
            ids = [r[0] for r in self._client.query(finished, parameters=params).result_rows]
            for start in range(0, len(ids), 10_000):
                chunk = {"ids": ids[start : start + 10_000]}
                for table in VACUUM_ORDER:
                    self._client.command(f"DELETE FROM {self._t}.{table} WHERE run_id IN {{ids:Array(String)}}", chunk)
            self._client.command(  # a skipped tick started no run: it goes once it is as old as the cutoff
                f"DELETE FROM {self._t}.ticks WHERE run_id = '' AND due_at > toDateTime64(0, 3) "
                "AND due_at < fromUnixTimestamp64Milli({cutoff:Int64}, 'UTC')",
                {"cutoff": int(finished_before_ms)},
            )
            self._vacuum_stacks(int(finished_before_ms))
        return len(ids)

    def _vacuum_stacks(self, cutoff_ms: int) -> None:
        """Stacks deleted before the cutoff: their events, ticks and the threads only they wrote to, then the row."""
        deleted = (
            f"SELECT stack_id FROM {self._t}.stacks FINAL WHERE status = 'deleted' AND updated_at > toDateTime64(0, 3) "
            "AND updated_at < fromUnixTimestamp64Milli({cutoff:Int64}, 'UTC')"
        )
        stacks = [r[0] for r in self._client.query(deleted, parameters={"cutoff": cutoff_ms}).result_rows]
        if not stacks:
            return
        writers = self._client.query(
            f"SELECT DISTINCT thread_id, stack_id FROM {self._t}.messages WHERE thread_id IN "
            f"(SELECT thread_id FROM {self._t}.messages WHERE stack_id IN {{ids:Array(String)}})",
            parameters={"ids": stacks},
        ).result_rows
        threads = sorted(_threads_only_of(((str(t), str(st)) for t, st in writers), set(stacks)))
        for start in range(0, len(stacks), 10_000):
            chunk = stacks[start : start + 10_000]
            keys = {"ids": [stack_key(i) for i in chunk]}
            self._client.command(f"DELETE FROM {self._t}.events WHERE run_id IN {{ids:Array(String)}}", keys)
            self._client.command(f"DELETE FROM {self._t}.ticks WHERE stack_id IN {{ids:Array(String)}}", {"ids": chunk})
        for start in range(0, len(threads), 10_000):
            some = {"ids": threads[start : start + 10_000]}
            self._client.command(f"DELETE FROM {self._t}.messages WHERE thread_id IN {{ids:Array(String)}}", some)
        for start in range(0, len(stacks), 10_000):
            chunk_ids = {"ids": stacks[start : start + 10_000]}
            self._client.command(f"DELETE FROM {self._t}.stacks WHERE stack_id IN {{ids:Array(String)}}", chunk_ids)

    def drop_legacy_ttl(self) -> list[str]:
        """Remove the TTL clauses older versions put on ``events`` and ``runs`` (``TICKFLOW_CLICKHOUSE_TTL_DAYS``):
        the one on events expired rows by event time, so an old run still in flight lost its history. Retention is
        now the projector's periodic vacuum (``projections.retention``). Returns the tables it changed."""
        changed: list[str] = []
        with self._lock:
            for table in ("events", "runs"):
                rows = self._client.query(
                    "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                    parameters={"db": self.database, "t": table},
                ).result_rows
                if rows and " TTL " in f" {rows[0][0]} ":
                    self._client.command(f"ALTER TABLE {self._t}.{table} REMOVE TTL")
                    changed.append(table)
        return changed

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run a read query with bound parameters (for benchmarks, reports and tests)."""
        return self._query(sql.replace("{db}", self._t), params)

    @property
    def on_server(self) -> bool:
        """True for a ClickHouse server (by URL), False for embedded chDB."""
        return bool(self._url)

    def open_client(self, settings: dict[str, Any], dsn: str | None = None) -> Any:
        """A new clickhouse-connect client on this store's data, with this database as the default and
        ``settings`` applied in order (chDB: session ``SET``s; a server: sent with every request), connected as
        ``dsn``'s user when given (a server only). The caller closes it. ``projections.sql`` opens one per query
        so ``readonly=1`` can come last and lock the rest."""
        import clickhouse_connect

        if self._url:
            return clickhouse_connect.get_client(dsn=dsn or self._url, database=self.database, settings=settings)
        return clickhouse_connect.get_client(
            interface="chdb", path=self._path, database=self.database, settings=settings
        )

    # -- generations (projections.rebuild) -----------------------------------------------------------------

    @property
    def quoted_database(self) -> str:
        return self._t

    def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, INSERT … SELECT), e.g. dropping a retired generation."""
        with self._lock:
            self._client.command(sql, parameters=params or None)

    def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str]) -> None:
        """Insert rows into a table of this database (``projections.bulk``'s staging tables)."""
        with self._lock:
            self._client.insert(f"{self._t}.{table}", rows, column_names=list(columns))

    def raw_insert(self, table: str, columns: Sequence[str], data: bytes, *, fmt: str) -> None:
        """Insert data already in a ClickHouse input format (``projections.bulk`` stages the log this way)."""
        with self._lock:
            self._client.raw_insert(f"{self._t}.{table}", list(columns), data, fmt=fmt)

    @contextlib.contextmanager
    def lines_source(self, table: str, lines: bytes) -> Iterator[str]:
        """A table expression with one ``line String`` per line of ``lines``, for the INSERT … SELECT statements
        of one block (``projections.bulk``).

        Embedded, the lines go to a temporary file that ClickHouse reads with ``file()``: copying them into a
        table first cost 2 of the 2.5 CPU-seconds that staging a million records took. A server cannot read
        this machine's files, so there they are inserted into ``table`` (a Memory table), emptied afterwards.
        """
        if self._url:
            self.raw_insert(table, ["line"], lines, fmt="LineAsString")
            try:
                yield f"{self._t}.`{table}`"
            finally:
                self.command(f"TRUNCATE TABLE {self._t}.`{table}`")
            return
        with tempfile.NamedTemporaryFile(prefix="tickflow-lines-", suffix=".txt") as f:
            f.write(lines)
            f.flush()
            quoted = f.name.replace("\\", "\\\\").replace("'", "\\'")
            yield f"file('{quoted}', 'LineAsString', 'line String')"

    def sibling(self, database: str) -> ClickHouseStore:
        """Another store on the same ClickHouse (same chDB engine in this process) over ``database``."""
        other = ClickHouseStore(path=self._path, url=self._url, database=database)
        other.base_database = self.base_database
        return other

    def _pointer_table(self) -> str:
        self._client.command(f"CREATE DATABASE IF NOT EXISTS `{META_DATABASE}`")
        self._client.command(
            f"CREATE TABLE IF NOT EXISTS `{META_DATABASE}`.active_databases "
            "(base String, database String, version UInt64, switched_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree(version) ORDER BY base"
        )
        self._client.command(  # the database a swap replaced: where a rollback goes back to
            f"ALTER TABLE `{META_DATABASE}`.active_databases ADD COLUMN IF NOT EXISTS previous String DEFAULT ''"
        )
        return f"`{META_DATABASE}`.active_databases"

    def previous_database(self) -> str | None:
        """The generation the last swap replaced, if it still exists (``projections.rebuild.rollback``)."""
        with self._lock:
            table = self._pointer_table()
            rows = self._client.query(
                f"SELECT argMax(previous, version) AS previous FROM {table} WHERE base = {{b:String}} "
                "HAVING previous IN (SELECT name FROM system.databases) AND previous != {d:String}",
                parameters={"b": self.base_database, "d": self.database},
            ).result_rows
        return str(rows[0][0]) if rows and rows[0][0] else None

    def active_database(self) -> str:
        """The generation of ``base_database`` the last swap made active (itself when none, or when the
        pointed-to database is gone)."""
        with self._lock:
            table = self._pointer_table()
            rows = self._client.query(
                f"SELECT argMax(database, version) AS active FROM {table} WHERE base = {{b:String}} "
                "HAVING active IN (SELECT name FROM system.databases)",
                parameters={"b": self.base_database},
            ).result_rows
        return str(rows[0][0]) if rows and rows[0][0] else self.base_database

    def switch_database(self, database: str) -> None:
        """Point every later call (reads and writes) at ``database`` and persist the choice for restarts.

        Under the store's lock, so a query runs wholly on the old database or wholly on the new one.
        """
        with self._lock:
            table = self._pointer_table()
            self._client.insert(
                table,
                [[self.base_database, database, time.time_ns(), self.database]],
                column_names=["base", "database", "version", "previous"],
            )
            self.database, self._t = database, f"`{database}`"

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._client.close()


#: Where ``waits`` sits in a runs row as selected (``RUN_COLUMNS`` order).
_WAITS = RUN_COLUMNS.index("waits")


def _run_row(values: Sequence[Any]) -> RunRow:
    """A runs row as read. clickhouse-connect hands ``waits``, an array of named tuples, back as a list of dicts;
    the row holds (path, event) pairs in a tuple, like the fold that wrote it (rows compare equal, stay hashable)."""
    fields = list(values)
    fields[_WAITS] = tuple(
        (str(w["path"]), str(w["event"])) if isinstance(w, Mapping) else (str(w[0]), str(w[1])) for w in fields[_WAITS]
    )
    return RunRow(*fields)


def _threads_only_of(writers: Iterator[tuple[str, str]], stacks: set[str]) -> set[str]:
    """The memory threads whose every message was written for one of ``stacks`` (from (thread, stack) pairs):
    a thread another stack or a run outside stacks also wrote to is theirs too, and stays."""
    of: dict[str, bool] = {}
    for thread, stack in writers:
        of[thread] = of.get(thread, True) and stack in stacks
    return {t for t, only in of.items() if only}


def _statements(sql: str) -> list[str]:
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def open_store(*, path: str | None = None, url: str | None = None, database: str = "tickflow") -> ProjectionStore:
    """A ClickHouse store: server when ``url`` is set, embedded chDB at ``path`` otherwise."""
    store = ClickHouseStore(path=path, url=url, database=database)
    active = store.active_database()  # a rebuild swapped in another generation: keep using it after a restart
    if active != database:
        store.database, store._t = active, f"`{active}`"
    store.migrate()
    return store
