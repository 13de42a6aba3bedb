"""The bulk rebuild (ClickHouse derives the tables from the staged log) against the Python fold, on the real
broker and chDB: the same log must give the same rows in every table, odd records included."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.bench.rebuild import synthetic_log
from tests.unit.core.test_decider import Sim, a, b
from tickflow.core.decider import Recover
from tickflow.events import CancelRun, Envelope, ResumeRun, decode, encode
from tickflow.projections.models import RebuildReport
from tickflow.projections.rebuild import rebuild_database, table_checksums
from tickflow.projections.rows import RunRow, run_row
from tickflow.projections.store import ClickHouseStore
from tickflow.workflow import Flow, Workflow

pytestmark = pytest.mark.integration

GOLDEN_V1 = Path(__file__).resolve().parents[2] / "golden" / "v1_history.jsonl"


def odd_records() -> list[tuple[bytes | None, bytes | None]]:
    """Records a bulk path must not take at face value: older schema versions (the v1 golden history, upcast),
    a pretty-printed event (newlines), a tombstone, garbage, a command on the events topic, an escaped id."""
    v1 = [(orjson.loads(line)["key"].encode(), line) for line in GOLDEN_V1.read_bytes().splitlines() if line]
    pretty = orjson.loads(v1[0][1])
    pretty.update(id="pretty/1", key="pretty", correlation_id="pretty")
    escaped = orjson.loads(v1[0][1])
    escaped.update(id='quo"ted\\/1', key='quo"ted\\')
    return [
        *v1,
        (b"pretty", orjson.dumps(pretty, option=orjson.OPT_INDENT_2)),
        (escaped["key"].encode(), orjson.dumps(escaped)),
        (b"tombstone", None),
        (b"garbage", b"\x00not json at all"),
        (b"cmd", b'{"id":"c/1","kind":"command","type":"StartRun","key":"cmd","occurred_at_ms":1,"payload":{}}'),
    ]


async def produce(bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for key, value in records:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


@dataclass
class Both:
    """One log rebuilt both ways: the reports, every table's checksums, and what each database holds."""

    bulk: RebuildReport
    fold: RebuildReport
    bulk_sums: dict[str, tuple[int, int]]
    fold_sums: dict[str, tuple[int, int]]
    views: dict[str, dict[str, str]]  # database -> materialised view -> its SELECT (database name masked)
    tables: dict[str, set[str]]  # database -> table names


async def rebuild_both(
    bootstrap: str, prefix: str, tmp_path: Path, records: list[tuple[bytes | None, bytes | None]]
) -> Both:
    """Produce ``records`` to ``<prefix>.events``, then rebuild it with the bulk path and with the Python fold."""
    topic = f"{prefix}.events"
    await produce(bootstrap, topic, records)
    store = ClickHouseStore(path=str(tmp_path / "chdb"), database=prefix)
    try:
        return await asyncio.to_thread(_both, store, bootstrap, topic)
    finally:
        store.close()


def _both(store: ClickHouseStore, bootstrap: str, topic: str) -> Both:
    bulk = rebuild_database(store, kafka=bootstrap, topic=topic, database=f"{store.database}_bulk")
    fold = rebuild_database(store, kafka=bootstrap, topic=topic, database=f"{store.database}_fold", bulk=False)
    sums, views, tables = {}, {}, {}
    for db in (bulk.database, fold.database):
        other = store.sibling(db)
        try:
            sums[db] = table_checksums(other)
        finally:
            other.close()
        rows = store.query("SELECT name, engine, as_select FROM system.tables WHERE database = {db:String}", {"db": db})
        views[db] = {str(n): str(q).replace(db, "<db>") for n, engine, q in rows if engine == "MaterializedView"}
        tables[db] = {str(n) for n, _, _ in rows}
    return Both(bulk, fold, sums[bulk.database], sums[fold.database], views, tables)


async def test_bulk_rebuild_equals_the_python_fold_odd_records_included(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    records: list[tuple[bytes | None, bytes | None]] = list(synthetic_log(4_000, seed=11))
    records[100:100] = odd_records()
    both = await rebuild_both(kafka_bootstrap, prefix, tmp_path, records)
    bulk, fold, bulk_sums, fold_sums = both.bulk, both.fold, both.bulk_sums, both.fold_sums
    assert (bulk.method, fold.method) == ("bulk", "fold"), bulk.method_reason
    assert bulk.ok and fold.ok, (bulk.mismatches, fold.mismatches)
    assert bulk.invalid_records == fold.invalid_records == 3  # tombstone, garbage, command
    assert bulk.events == fold.events == len(records)
    assert bulk_sums["runs"][0] > 100 and bulk_sums["steps"][0] > 500 and bulk_sums["llm_calls"][0] > 0
    assert bulk_sums == fold_sums
    # the bulk path drops the materialised views for the load: they are back, as the migrations define them
    assert len(both.views[fold.database]) == 3
    assert both.views[bulk.database] == both.views[fold.database]
    tables = both.tables[bulk.database]
    assert not {t for t in tables if t.startswith("rebuild_")}, tables  # the staging tables are gone


async def test_a_record_clickhouse_finds_not_canonical_goes_through_the_codec(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    records: list[tuple[bytes | None, bytes | None]] = list(synthetic_log(500, seed=3))
    # Starts like the engine's records (the cheap check in Python) but its header is in another order.
    odd = orjson.loads(records[5][1] or b"{}")
    tail = orjson.dumps({k: v for k, v in odd.items() if k not in ("id", "kind", "type", "schema_version")})
    head = orjson.dumps({k: odd[k] for k in ("id", "kind", "type", "schema_version")})
    records[5] = (records[5][0], head[:-1] + b", " + tail[1:])
    both = await rebuild_both(kafka_bootstrap, prefix, tmp_path, records)
    bulk, fold, bulk_sums, fold_sums = both.bulk, both.fold, both.bulk_sums, both.fold_sums
    assert bulk.method == "bulk", bulk.method_reason
    assert bulk.ok and bulk.events == fold.events == len(records) and bulk_sums == fold_sums


async def test_a_log_the_bulk_path_cannot_vouch_for_is_folded_in_python(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    records: list[tuple[bytes | None, bytes | None]] = list(synthetic_log(500, seed=3))
    # A stack record in canonical form whose payload breaks its schema: the Python fold skips it as invalid;
    # the bulk path folds stack records in Python too, cannot skip a line ClickHouse already took, and refuses.
    at = next(i for i, (key, _) in enumerate(records) if key and key.startswith(b"stack:"))
    bad = orjson.loads(records[at][1] or b"{}")
    bad["payload"] = {"not": "a stack event"}
    records[at] = (records[at][0], orjson.dumps(bad))
    both = await rebuild_both(kafka_bootstrap, prefix, tmp_path, records)
    bulk, fold, bulk_sums, fold_sums = both.bulk, both.fold, both.bulk_sums, both.fold_sums
    assert bulk.method == "fold" and "stack record" in bulk.method_reason, bulk.method_reason
    assert bulk.ok and bulk.invalid_records == fold.invalid_records == 1 and bulk_sums == fold_sums


async def test_traced_records_rebuild_the_same_both_ways(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """Records written with tracing on carry a ``trace_parent`` after their payload: the bulk path takes them."""
    traced = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    records: list[tuple[bytes | None, bytes | None]] = []
    for key, value in synthetic_log(500, seed=5):
        env = decode(value)
        records.append((key, encode(env.model_copy(update={"trace_parent": traced}))))
    assert b'"trace_parent":' in (records[0][1] or b"")
    both = await rebuild_both(kafka_bootstrap, prefix, tmp_path, records)
    assert both.bulk.method == "bulk", both.bulk.method_reason
    assert both.bulk.ok and both.bulk.events == both.fold.events == len(records)
    assert both.bulk_sums == both.fold_sums


def waiting_histories() -> list[list[Envelope]]:
    """Runs as the engine logs them (driven through the decider), stopped where the status projection has the most
    to say: waiting after a finished step, parallel waits half resumed beside a finished branch, a wait timed out,
    a waiting run cancelled, a step backing off between attempts, a parallel step finished beside a running one."""
    after_step = Sim(Workflow("approval").step(a, name="draft").wait_for_event("approve").step(b), 1, run_id="w-1")
    after_step.ok("draft", 2)
    approvals = Flow().parallel(legal=Flow().wait_for_event("legal"), finance=Flow().wait_for_event("finance"))
    side = Flow().step(a, name="prepare")
    half = Sim(Workflow("two").parallel(approvals=approvals, side=side), 1, run_id="w-2")
    half.ok(half.tasks()[0], 1)
    half.signal(ResumeRun(event="legal"))
    timed_out = Sim(Workflow("late").wait_for_event("approve", timeout_s=10, on_timeout=Flow().step(b)), 1,
                    run_id="w-3")
    timed_out.apply(Recover(), now=1_000 + 10_000)
    cancelled = Sim(Workflow("gone").wait_for_event("approve"), 1, run_id="w-4")
    cancelled.signal(CancelRun(reason="not needed"))
    retrying = Sim(Workflow("flaky").step(a, name="charge", max_attempts=3, backoff_s=10, jitter=0), 1, run_id="w-5")
    retrying.err("charge", attempt=1, retryable=True)
    pair = Sim(Workflow("pair").parallel(left=Flow().step(a, name="l"), right=Flow().step(b, name="r")), 1,
               run_id="w-6")
    pair.ok(pair.tasks()[0], 1)
    return [sim.log for sim in (after_step, half, timed_out, cancelled, retrying, pair)]


async def test_waiting_runs_and_steps_in_flight_rebuild_the_same_both_ways(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """The bulk SQL derives open waits and the current step from the log as ``rows.run_row`` folds them."""
    histories = waiting_histories()
    expected: dict[str, RunRow] = {}
    for log in histories:
        row = None
        for event in log:
            row = run_row(row, event)
        assert row is not None
        expected[row.run_id] = row
    assert {r.status for r in expected.values()} == {"waiting", "running", "cancelled"}
    records: list[tuple[bytes | None, bytes | None]] = list(synthetic_log(300, seed=2))
    records += [(e.key.encode(), encode(e)) for log in histories for e in log]
    both = await rebuild_both(kafka_bootstrap, prefix, tmp_path, records)
    assert both.bulk.method == "bulk", both.bulk.method_reason
    assert both.bulk.ok and both.bulk_sums == both.fold_sums
    rebuilt = ClickHouseStore(path=str(tmp_path / "chdb"), database=both.bulk.database)
    try:
        assert rebuilt.runs_by_id(list(expected)) == expected
    finally:
        rebuilt.close()
