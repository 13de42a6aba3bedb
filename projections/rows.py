"""Pure mapping from log events to projection rows. Imports only ``events``; no clock, no I/O.

The ``runs`` row of a run is a fold of its events, like the engine's state but shaped for queries. It
carries ``last_seq`` as its version: the store keeps, per run, the row with the highest seq, so replaying or
re-inserting older events can never move a run's status backwards.

Its ``status`` says what the run does, one of ``RUN_STATUSES``: the engine's lifecycle (running, failing,
completed…), except that a running run suspended in a wait node reads ``waiting``: it goes on only once someone
resumes it (or the wait times out). ``waits`` lists the open waits, oldest first (a run in parallel branches may
wait in several); ``waiting_for`` and ``waiting_path`` name the first. ``current_step`` names the step in flight
(scheduled, or backing off before its next attempt) and is cleared when that attempt finishes: it never names a
finished step. With parallel steps it names the one scheduled last, and nothing once that one finished.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar, get_args

import orjson

from tickflow.events.envelope import Envelope
from tickflow.events.schemas import (
    NodeCompleted,
    NodeFailed,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunFailing,
    RunQuarantined,
    RunRejected,
    RunReleased,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    WaitStarted,
    WaitTimedOut,
)
from tickflow.events.spec import StepNode, WorkflowSpec, walk

__all__ = [
    "EVENT_COLUMNS",
    "IN_FLIGHT_STATUSES",
    "QUARANTINED",
    "RUN_COLUMNS",
    "RUN_STATUSES",
    "TERMINAL_STATUSES",
    "WAITING",
    "EventRow",
    "RunRow",
    "RunStatusName",
    "Wait",
    "event_row",
    "fast_replace",
    "json_text",
    "run_row",
    "step_count",
]

#: Every status a run's row holds, in the order of a run's life: accepted (``pending``, before its first event),
#: ``running``, ``waiting`` (suspended in a wait node until resumed), ``failing`` (compensating), one of the four
#: ends, or ``quarantined`` (its log cannot be folded; an operator releases it). Published: the API's ``RunStatus``,
#: the SDK, the CLI and the dashboard all take and show these names.
RunStatusName = Literal[
    "pending", "running", "waiting", "failing", "completed", "failed", "cancelled", "rejected", "quarantined"
]
RUN_STATUSES: tuple[RunStatusName, ...] = get_args(RunStatusName)
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "rejected")
#: A run still going on by itself or by a resume: what a deploy gate checks (``Client.check(in_flight=True)``).
IN_FLIGHT_STATUSES = ("running", "waiting", "failing")
#: The status of a running run suspended in a wait node.
WAITING = "waiting"
#: (path, event) of one open wait node: a ``ResumeRun`` of that event completes it.
Wait = tuple[str, str]

_T = TypeVar("_T")
_FIELDS: dict[type, tuple[str, ...]] = {}


def fast_replace(obj: _T, **changes: Any) -> _T:
    """``dataclasses.replace`` without its per-call overhead, which was two thirds of a projection fold.

    For the frozen, slotted row dataclasses here: no ``__post_init__``, no init-only fields.
    """
    cls = type(obj)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in fields(cls))  # type: ignore[arg-type]
    if not changes.keys() <= set(names):
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(set(changes) - set(names))}")
    new = object.__new__(cls)
    for name in names:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new


def json_text(value: Any) -> str:
    """A JSON value as the row columns hold it: orjson's text, empty for None."""
    return "" if value is None else orjson.dumps(value).decode()


def step_count(spec: WorkflowSpec) -> int:
    """How many step nodes a workflow has (a run's ``steps_total``)."""
    return sum(1 for n in walk(spec.root) if isinstance(n, StepNode))


@dataclass(frozen=True, slots=True)
class EventRow:
    """One row of the ``events`` table: the envelope, flattened, plus where it sits in the log."""

    run_id: str
    workflow: str
    seq: int
    event_id: str
    type: str
    schema_version: int
    occurred_at_ms: int
    causation_id: str
    correlation_id: str
    payload: str
    topic: str
    partition: int
    offset: int

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in EVENT_COLUMNS)


@dataclass(frozen=True, slots=True)
class RunRow:
    """One run's current status, as the ``runs`` table holds it."""

    run_id: str
    workflow: str = ""
    spec_hash: str = ""
    status: str = "pending"
    input: str = ""
    output: str = ""
    error_type: str = ""
    error_message: str = ""
    current_step: str = ""
    step_index: int = -1
    current_path: str = ""
    waiting_for: str = ""
    waiting_path: str = ""
    waits: tuple[Wait, ...] = ()
    attempt: int = 0
    steps_total: int = 0
    steps_completed: int = 0
    started_at_ms: int = 0
    updated_at_ms: int = 0
    finished_at_ms: int = 0
    last_seq: int = 0

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in RUN_COLUMNS)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


EVENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EventRow))
RUN_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunRow))


def event_row(event: Envelope, topic: str, partition: int, offset: int, workflow: str = "") -> EventRow:
    return EventRow(
        run_id=event.key,
        workflow=workflow,
        seq=event.seq or 0,
        event_id=event.id,
        type=event.type,
        schema_version=event.schema_version,
        occurred_at_ms=event.occurred_at_ms,
        causation_id=event.causation_id or "",
        correlation_id=event.correlation_id or "",
        payload=orjson.dumps(event.payload.model_dump(mode="json")).decode(),
        topic=topic,
        partition=partition,
        offset=offset,
    )


#: The status of a run whose log cannot be folded (``RunQuarantined``, or a seq gap the projection sees itself).
QUARANTINED = "quarantined"
_STATUS_FIELDS = ("status", "error_type", "error_message", "finished_at_ms")
#: No step in flight.
_NO_STEP: dict[str, Any] = {"current_step": "", "current_path": "", "attempt": 0}
#: No open wait.
_NO_WAIT: dict[str, Any] = {"waits": (), "waiting_for": "", "waiting_path": ""}


def _shown(lifecycle: str, waits: tuple[Wait, ...]) -> str:
    """The status a row shows for the engine's ``lifecycle`` status: ``waiting`` for a running run with open waits."""
    return WAITING if lifecycle == "running" and waits else lifecycle


def run_row(prev: RunRow | None, event: Envelope) -> RunRow:
    """The run's row after ``event``. Events at or below ``prev.last_seq`` (redeliveries) change nothing.

    A run is quarantined when the engine says so (``RunQuarantined``, which has no seq) or when its log skips a seq
    (an event that cannot be read, a lost one); it stays so, whatever follows, until an operator's ``RunReleased``.
    """
    row = prev or RunRow(run_id=event.key)
    p = event.payload
    if isinstance(p, RunQuarantined):
        return fast_replace(row, status=QUARANTINED, error_type="Quarantined", error_message=p.reason)
    seq = event.seq or 0
    if seq <= row.last_seq:
        return row
    if isinstance(p, RunReleased):
        cleared = {"error_type": "", "error_message": ""} if p.status == "running" else {}
        status = _shown(p.status, row.waits)
        return fast_replace(row, last_seq=seq, updated_at_ms=event.occurred_at_ms, status=status, **cleared)
    if prev is not None and seq > row.last_seq + 1 and row.status != QUARANTINED:
        reason = f"the log skips seq {row.last_seq + 1} to {seq - 1} of this run (unreadable or lost events)"
        return fast_replace(
            row,
            last_seq=seq,
            updated_at_ms=event.occurred_at_ms,
            status=QUARANTINED,
            error_type="Quarantined",
            error_message=reason,
        )
    changes = _run_row_changes(row, event)
    if row.status == QUARANTINED:  # it says why until it is released
        changes = {k: v for k, v in changes.items() if k not in _STATUS_FIELDS}
    return fast_replace(row, last_seq=seq, updated_at_ms=event.occurred_at_ms, **changes)


def _with_waits(row: RunRow, waits: tuple[Wait, ...]) -> dict[str, Any]:
    """The changes that make ``waits`` the row's open waits: the first is the one ``waiting_for`` names, and the
    status moves between ``running`` and ``waiting`` with them."""
    first_path, first_event = waits[0] if waits else ("", "")
    lifecycle = "running" if row.status == WAITING else row.status
    return dict(waits=waits, waiting_for=first_event, waiting_path=first_path, status=_shown(lifecycle, waits))


def _ended_wait(row: RunRow, path: str) -> dict[str, Any]:
    """The changes when node ``path`` finished (completed, failed or timed out): if it is an open wait, it is no
    longer one. A row projected before waits had paths (``waiting_for`` without ``waiting_path``, see migration 006)
    stops waiting at the first node that finishes, as the rule of that time had it."""
    if any(wait_path == path for wait_path, _ in row.waits):
        return _with_waits(row, tuple(w for w in row.waits if w[0] != path))
    if row.waiting_for and not row.waiting_path:
        return _with_waits(row, ())
    return {}


def _finished_step(row: RunRow, path: str, attempt: int) -> dict[str, Any]:
    """Clear the current step when the attempt that finished is the one it names (a parallel one may finish)."""
    return dict(_NO_STEP) if (path, attempt) == (row.current_path, row.attempt) else {}


def _run_row_changes(row: RunRow, event: Envelope) -> dict[str, Any]:
    """The fields ``event`` changes besides the version (one replace per event keeps the fold cheap)."""
    p = event.payload
    if isinstance(p, RunStarted):
        return dict(
            workflow=p.workflow,
            spec_hash=p.spec_hash,
            status="running",
            input=json_text(p.input),
            steps_total=step_count(p.spec),
            started_at_ms=event.occurred_at_ms,
        )
    if isinstance(p, RunRejected):
        return dict(
            workflow=p.workflow,
            status="rejected",
            error_type="RunRejected",
            error_message=p.reason,
            finished_at_ms=event.occurred_at_ms,
        )
    if isinstance(p, StepScheduled):
        return dict(current_step=p.step, current_path=p.path, attempt=p.attempt)
    if isinstance(p, StepCompleted):
        return dict(steps_completed=row.steps_completed + 1, **_finished_step(row, p.path, p.attempt))
    if isinstance(p, WaitStarted):
        # A run failing (compensating) takes no resume: a wait its compensation starts is not one it can leave.
        return {} if row.status == "failing" else _with_waits(row, (*row.waits, (p.path, p.event)))
    if isinstance(p, NodeCompleted | NodeFailed | WaitTimedOut):
        return _ended_wait(row, p.path)
    if isinstance(p, RunFailing):
        return dict(_NO_WAIT, status="failing", error_type=p.error.type, error_message=p.error.message)
    if isinstance(p, RunCancelled):
        return dict(
            _NO_WAIT,
            **_NO_STEP,
            status="cancelled",
            error_type="Cancelled",
            error_message=p.reason,
            finished_at_ms=event.occurred_at_ms,
        )
    if isinstance(p, StepFailed):
        finished = {} if p.will_retry else _finished_step(row, p.path, p.attempt)
        return dict(error_type=p.error.type, error_message=p.error.message, **finished)
    if isinstance(p, RunCompleted):
        return dict(
            _NO_WAIT,
            **_NO_STEP,
            status="completed",
            output=json_text(p.output),
            error_type="",
            error_message="",
            finished_at_ms=event.occurred_at_ms,
        )
    if isinstance(p, RunFailed):
        return dict(
            _NO_WAIT,
            **_NO_STEP,
            status="failed",
            error_type=p.error.type,
            error_message=p.error.message,
            finished_at_ms=event.occurred_at_ms,
        )
    return {}
