"""One contract for every ProjectionStore: the in-memory twin and real ClickHouse (embedded chDB)."""

from __future__ import annotations

from pathlib import Path

from tests.contract.projecting import project as project_records
from tickflow.events import (
    Envelope,
    ErrorInfo,
    RunCompleted,
    RunFailed,
    RunStarted,
    SequenceNode,
    StepNode,
    WorkflowSpec,
)
from tickflow.events.schemas import NodeCompleted, StepCompleted, StepScheduled, WaitStarted
from tickflow.projections.queries import RunQuery
from tickflow.projections.rows import RUN_COLUMNS
from tickflow.projections.store import ClickHouseStore, ProjectionStore

SPEC = WorkflowSpec(name="wf", root=SequenceNode(name="main", nodes=(StepNode(name="a", fn="wf.a"),)))


def events_for(run_id: str, *, fail: bool = False, t0: int = 1_700_000_000_000) -> list[Envelope]:
    start = RunStarted(workflow="wf", spec_hash=SPEC.content_hash(), spec=SPEC, input={"n": 1})
    end = (
        RunFailed(error=ErrorInfo(type="ValueError", message='it\'s "bad"; DROP TABLE runs'))
        if fail
        else RunCompleted(output=[1, 2])
    )
    return [
        Envelope.wrap(p, id=f"{run_id}/{i}", key=run_id, seq=i, occurred_at_ms=t0 + i)
        for i, p in enumerate([start, end], start=1)
    ]


def project(
    store: ProjectionStore, envelopes: list[Envelope], offset0: int = 0, *, skip_projected: bool = True
) -> None:
    project_records(store, [(0, offset0 + i, env) for i, env in enumerate(envelopes)], skip_projected=skip_projected)


def test_write_then_read_a_run(store: ProjectionStore) -> None:
    project(store, events_for("r1"))
    row = store.runs_by_id(["r1"])["r1"]
    assert (row.status, row.workflow, row.output, row.last_seq) == ("completed", "wf", "[1,2]", 2)
    assert row.started_at_ms == 1_700_000_000_001 and row.finished_at_ms == 1_700_000_000_002
    assert [e.type for e in store.run_events("r1")] == ["RunStarted", "RunCompleted"]


def test_duplicate_batches_are_invisible(store: ProjectionStore) -> None:
    evs = events_for("r1")
    project(store, evs)
    # The same batch again, as after a crash between insert and offset commit, even without the watermark.
    project(store, evs, skip_projected=False)
    project(store, evs[:1], skip_projected=False)  # and an older version of the run row
    assert store.event_count() == 2
    assert store.status_counts() == {"completed": 1}
    assert store.runs_by_id(["r1"])["r1"].status == "completed"


def test_list_filter_and_paginate(store: ProjectionStore) -> None:
    for i in range(5):
        project(store, events_for(f"r{i}", fail=i % 2 == 1, t0=1_700_000_000_000 + i * 10))
    assert store.status_counts() == {"completed": 3, "failed": 2}
    assert store.status_counts(workflow="nope") == {}
    failed = store.list_runs(RunQuery(status="failed"))
    assert {r.run_id for r in failed} == {"r1", "r3"}
    assert failed[0].error_message == 'it\'s "bad"; DROP TABLE runs'
    page1 = store.list_runs(RunQuery(limit=2))
    page2 = store.list_runs(RunQuery(limit=2, offset=2))
    assert [r.run_id for r in page1] == ["r4", "r3"] and [r.run_id for r in page2] == ["r2", "r1"]
    recent = store.list_runs(RunQuery(started_since_ms=1_700_000_000_000 + 21))  # r2 started at +21 (t0 + 1)
    assert [r.run_id for r in recent] == ["r4", "r3", "r2"]
    since = RunQuery(status="failed", started_since_ms=1_700_000_000_000 + 22)
    assert [r.run_id for r in store.list_runs(since)] == ["r3"]
    assert [r.run_id for r in store.list_runs(RunQuery(workflow="wf", limit=1))] == ["r4"]


def test_parameters_are_bound_not_spliced(store: ProjectionStore) -> None:
    project(store, events_for("r1"))
    assert store.list_runs(RunQuery(workflow="wf' OR 1=1 --")) == []
    # A status is one of RUN_STATUSES once validated; the store binds it all the same.
    assert store.list_runs(RunQuery.model_construct(status="completed' OR 1=1 --")) == []
    assert store.runs_by_id(["r1' OR '1'='1"]) == {}
    assert store.run_events("x'; DROP TABLE events; --") == []
    assert store.event_count() == 2


def test_vacuum_removes_only_finished_runs_older_than_the_cutoff(store: ProjectionStore) -> None:
    t0 = 1_700_000_000_000
    project(store, events_for("old", t0=t0) + events_for("new", t0=t0 + 86_400_000))
    running = [e for e in events_for("live", t0=t0) if e.type == "RunStarted"]
    project(store, running, offset0=10)
    assert store.vacuum(finished_before_ms=t0 + 3_600_000) == 1
    assert set(store.runs_by_id(["old", "new", "live"])) == {"new", "live"}
    assert store.run_events("old") == [] and len(store.run_events("new")) == 2
    assert store.vacuum(finished_before_ms=t0 + 3_600_000) == 0  # idempotent


def test_a_waiting_run_reads_back_with_its_waits(store: ProjectionStore) -> None:
    """The open waits (an array of (path, event) on ClickHouse) come back as the fold wrote them, and a waiting run
    is found by its status."""
    t0 = 1_700_000_000_000
    payloads = [
        RunStarted(workflow="wf", spec_hash=SPEC.content_hash(), spec=SPEC, input=None),
        StepScheduled(path="a", step="a", attempt=1, pool="default"),
        StepCompleted(path="a", step="a", attempt=1, duration_ms=1.0),
        WaitStarted(path="p/legal", event="legal"),
        WaitStarted(path="p/finance", event="finance"),
    ]
    project(store, [Envelope.wrap(p, id=f"w/{i}", key="w", seq=i, occurred_at_ms=t0 + i)
                    for i, p in enumerate(payloads, 1)])
    row = store.runs_by_id(["w"])["w"]
    assert (row.status, row.waiting_for, row.waiting_path, row.current_step) == ("waiting", "legal", "p/legal", "")
    assert row.waits == (("p/legal", "legal"), ("p/finance", "finance"))
    assert [r.run_id for r in store.list_runs(RunQuery(status="waiting"))] == ["w"]
    assert store.status_counts() == {"waiting": 1}
    resumed = Envelope.wrap(NodeCompleted(path="p/legal", output=1), id="w/6", key="w", seq=6, occurred_at_ms=t0 + 6)
    project(store, [resumed], offset0=5)
    row = store.runs_by_id(["w"])["w"]
    assert (row.status, row.waits) == ("waiting", (("p/finance", "finance"),))


def test_migration_006_marks_the_waiting_runs_of_an_older_database(tmp_path: Path) -> None:
    """Rows projected before the ``waiting`` status knew the event a running run waited for: once migrated they
    read ``waiting``; the others keep their status, and every row stays readable."""
    store = ClickHouseStore(path=str(tmp_path / "ch"))
    try:
        store.migrate()
        store.command("DELETE FROM {db}.schema_migrations WHERE version = 6".replace("{db}", store.quoted_database))
        old = {"run_id": "old", "workflow": "wf", "status": "running", "waiting_for": "approve", "last_seq": 3}
        busy = {"run_id": "busy", "workflow": "wf", "status": "running", "current_step": "a", "last_seq": 2}
        for row in (old, busy):
            store.insert("runs", [list(row.values())], list(row))
        store.migrate()
        rows = store.runs_by_id(["old", "busy"])
        assert (rows["old"].status, rows["old"].waiting_for, rows["old"].waits) == ("waiting", "approve", ())
        assert (rows["busy"].status, rows["busy"].current_step) == ("running", "a")
        assert len(RUN_COLUMNS) == len(store.query("DESCRIBE TABLE {db}.runs")) - 1  # every column but projected_at
    finally:
        store.close()
