"""What a run's status row says it does: ``waiting`` (with the event and the wait node's path) while it is suspended
in a wait node, and a ``current_step`` that only ever names the step in flight.

The runs are driven through the real decider (``tests.unit.core.test_decider.Sim``), so the histories are the
engine's own; after every decision the projected row must agree with the engine's state: the same open waits
(``core.state.waiting_on``) in the same order, and ``waiting`` exactly when the engine's run is running with one.
"""

from __future__ import annotations

from typing import Any

from tests.unit.core.test_decider import Sim, a, b
from tickflow.core.decider import Recover
from tickflow.core.state import waiting_on
from tickflow.events import CancelRun, Envelope, ErrorInfo, ResumeRun
from tickflow.events.schemas import (
    NodeCompleted,
    RunQuarantined,
    RunReleased,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    WaitStarted,
)
from tickflow.events.spec import SequenceNode, StepNode, WorkflowSpec
from tickflow.projections.rows import RUN_STATUSES, RunRow, run_row
from tickflow.workflow import Flow, Workflow


def projected(sim: Sim) -> RunRow:
    """The run's row after its whole log, folded from nothing (as a rebuild does)."""
    row = None
    for event in sim.log:
        row = run_row(row, event)
    assert row is not None
    return row


def agrees(sim: Sim) -> RunRow:
    """The row agrees with the engine's state: its open waits, oldest first, and its status."""
    row = projected(sim)
    waits = waiting_on(sim.state)
    assert row.waits == tuple(waits.items())
    assert row.status == ("waiting" if sim.state.status == "running" and waits else sim.state.status)
    assert (row.waiting_path, row.waiting_for) == next(iter(waits.items()), ("", ""))
    return row


def resume(sim: Sim, event: str, payload: Any = None) -> None:
    sim.signal(ResumeRun(event=event, payload=payload))


def test_a_run_waiting_for_approval_after_a_finished_step_says_so() -> None:
    sim = Sim(Workflow("approval").step(a, name="draft").wait_for_event("approve").step(b, name="ship"), 1)
    row = agrees(sim)
    assert (row.status, row.current_step, row.current_path, row.attempt) == ("running", "draft", "draft", 1)
    sim.ok("draft", 2)
    row = agrees(sim)
    assert row.status == "waiting"
    assert (row.waiting_for, row.waiting_path) == ("approve", "approve")
    assert (row.current_step, row.current_path, row.attempt) == ("", "", 0)  # draft has finished: nothing runs
    resume(sim, "nope")  # refused: the run still waits, unchanged
    assert agrees(sim).status == "waiting"
    resume(sim, "approve", {"ok": True})
    row = agrees(sim)
    assert (row.status, row.waiting_for, row.waiting_path, row.current_step) == ("running", "", "", "ship")
    sim.ok("ship", 3)
    row = agrees(sim)
    assert (row.status, row.current_step, row.waits) == ("completed", "", ())


def test_parallel_waits_keep_the_run_waiting_until_the_last_is_resumed() -> None:
    approvals = Flow().parallel(legal=Flow().wait_for_event("legal"), finance=Flow().wait_for_event("finance"))
    side = Flow().step(a, name="prepare").step(b, name="notify")
    sim = Sim(Workflow("w").parallel(approvals=approvals, side=side).step(a, name="ship"), 1)
    row = agrees(sim)
    assert row.status == "waiting" and len(row.waits) == 2 and row.current_step == "prepare"
    first_path, first_event = row.waits[0]
    assert (row.waiting_path, row.waiting_for) == (first_path, first_event)
    assert {event for _, event in row.waits} == {"legal", "finance"}
    assert all(path.endswith(event) for path, event in row.waits)
    sim.ok(next(p for p in sim.tasks() if p.endswith("prepare")), 1)
    sim.ok(next(p for p in sim.tasks() if p.endswith("notify")), 1)  # the side branch completes: no wait ends
    row = agrees(sim)
    assert row.status == "waiting" and len(row.waits) == 2 and row.current_step == ""
    resume(sim, first_event)
    row = agrees(sim)
    assert row.status == "waiting" and len(row.waits) == 1 and row.waiting_for != first_event
    resume(sim, row.waiting_for)
    row = agrees(sim)
    assert (row.status, row.waits, row.current_step) == ("running", (), "ship")


def test_a_timed_out_wait_no_longer_waits() -> None:
    sim = Sim(Workflow("w").wait_for_event("approve", timeout_s=10, on_timeout=Flow().step(b)), 1)
    assert agrees(sim).status == "waiting"
    sim.apply(Recover(), now=1_000 + 10_000)
    row = agrees(sim)
    assert (row.status, row.waiting_for, row.current_step) == ("running", "", "approve.on_timeout")
    strict = Sim(Workflow("w").wait_for_event("approve", timeout_s=10), 1)
    strict.apply(Recover(), now=1_000 + 10_000)
    assert agrees(strict).status == "failed"


def test_a_cancelled_run_waits_for_nothing() -> None:
    sim = Sim(Workflow("w").step(a, name="draft").wait_for_event("approve"), 1)
    sim.ok("draft", 1)
    sim.signal(CancelRun(reason="no longer needed"))
    row = agrees(sim)
    assert (row.status, row.waiting_for, row.waits, row.current_step) == ("cancelled", "", (), "")


def test_current_step_names_the_step_in_flight_through_its_retries_and_nothing_once_it_finished() -> None:
    sim = Sim(Workflow("w").step(a, name="charge", max_attempts=2, backoff_s=10, jitter=0), 1)
    sim.err("charge", attempt=1, retryable=True)  # backing off: still the step in progress
    row = agrees(sim)
    assert (row.current_step, row.current_path, row.attempt) == ("charge", "charge", 1)
    sim.apply(Recover(), now=10_000_000)  # the backoff is over: attempt 2
    row = agrees(sim)
    assert (row.current_step, row.attempt) == ("charge", 2)
    sim.err("charge", attempt=2, retryable=True)  # the last attempt: it fails for good
    row = agrees(sim)
    assert (row.status, row.current_step, row.current_path, row.attempt) == ("failed", "", "", 0)


def test_a_parallel_step_finishing_leaves_the_step_scheduled_after_it_named() -> None:
    sim = Sim(Workflow("w").parallel(left=Flow().step(a, name="l"), right=Flow().step(b, name="r")), 1)
    left, right = sim.tasks()
    assert agrees(sim).current_path == right  # the latest scheduled
    sim.ok(left, 1)
    assert agrees(sim).current_path == right  # the other one finished: this one still runs
    sim.ok(right, 2)
    assert agrees(sim).current_step == ""


# --- rules the decider's histories do not reach --------------------------------------------------------


SPEC = WorkflowSpec(name="wf", root=SequenceNode(name="main", nodes=(StepNode(name="a", fn="wf.a"),)))


def _events(*payloads: Any) -> list[Envelope]:
    return [
        Envelope.wrap(p, id=f"r/{i}", key="r", seq=i, occurred_at_ms=1_000 + i) for i, p in enumerate(payloads, 1)
    ]


def _fold(events: list[Envelope], row: RunRow | None = None) -> RunRow:
    for event in events:
        row = run_row(row, event)
    assert row is not None
    return row


def test_a_quarantined_run_says_so_and_waits_again_once_released() -> None:
    events = _events(
        RunStarted(workflow="wf", spec_hash=SPEC.content_hash(), spec=SPEC, input=None),
        WaitStarted(path="approve", event="approve"),
    )
    row = _fold(events)
    assert row.status == "waiting"
    held = _fold([Envelope.wrap(RunQuarantined(reason="bad", last_good_seq=2, highest_seq=4), id="q", key="r",
                                occurred_at_ms=1)], row)
    assert (held.status, held.waiting_for, held.waiting_path) == ("quarantined", "approve", "approve")
    released = Envelope.wrap(RunReleased(resumed_from_seq=2, status="running"), id="rel", key="r", seq=5,
                             occurred_at_ms=9)
    assert run_row(held, released).status == "waiting"


def test_a_row_projected_before_wait_paths_were_recorded_stops_waiting_when_a_node_finishes() -> None:
    """Rows written before the upgrade know the event a run waits for but not the wait's path (migration 006
    marks them ``waiting``): the next node to finish ends that wait, as the old rule did."""
    legacy = RunRow(run_id="r", workflow="wf", status="waiting", waiting_for="approve", last_seq=2)
    row = run_row(legacy, Envelope.wrap(NodeCompleted(path="approve", output=1), id="r/3", key="r", seq=3,
                                        occurred_at_ms=5))
    assert (row.status, row.waiting_for, row.waits) == ("running", "", ())


def test_steps_of_another_attempt_do_not_clear_the_current_one() -> None:
    error = ErrorInfo(type="ValueError", message="flaky")
    events = _events(
        RunStarted(workflow="wf", spec_hash=SPEC.content_hash(), spec=SPEC, input=None),
        StepScheduled(path="a", step="a", attempt=1, pool="default"),
        StepFailed(path="a", step="a", attempt=1, error=error, will_retry=True, duration_ms=1.0),
        StepScheduled(path="a", step="a", attempt=2, pool="default"),
    )
    row = _fold(events)
    assert (row.current_step, row.attempt, row.error_message) == ("a", 2, "flaky")
    done = _fold(_events(*[e.payload for e in events], StepCompleted(path="a", step="a", attempt=2, duration_ms=1.0)))
    assert (done.current_step, done.attempt, done.steps_completed) == ("", 0, 1)


def test_every_status_a_row_can_hold_is_a_published_one() -> None:
    assert set(RUN_STATUSES) == {
        "pending", "running", "waiting", "failing", "completed", "failed", "cancelled", "rejected", "quarantined",
    }
