"""One contract for every ProjectionStore: the in-memory twin and real ClickHouse (embedded chDB)."""

from __future__ import annotations

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
from tickflow.projections.store import ProjectionStore

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
    failed = store.list_runs(status="failed")
    assert {r.run_id for r in failed} == {"r1", "r3"}
    assert failed[0].error_message == 'it\'s "bad"; DROP TABLE runs'
    page1 = store.list_runs(limit=2)
    page2 = store.list_runs(limit=2, offset=2)
    assert [r.run_id for r in page1] == ["r4", "r3"] and [r.run_id for r in page2] == ["r2", "r1"]
    recent = store.list_runs(started_since_ms=1_700_000_000_000 + 21)  # r2 started at +21 (t0 + 1)
    assert [r.run_id for r in recent] == ["r4", "r3", "r2"]
    assert [r.run_id for r in store.list_runs(status="failed", started_since_ms=1_700_000_000_000 + 22)] == ["r3"]


def test_parameters_are_bound_not_spliced(store: ProjectionStore) -> None:
    project(store, events_for("r1"))
    assert store.list_runs(status="completed' OR 1=1 --") == []
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
