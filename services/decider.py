"""The pure heart of tickflow: ``decide`` what happens next, ``evolve`` a run's state by one event.

Nothing here reads a clock, draws a random number, invents an id or touches I/O: time arrives as ``now_ms``
with each input, event ids derive from (run id, seq), and the only import is ``events``. That is what makes
the engine's in-memory state a cache of the log: folding ``evolve`` over a run's events always rebuilds it.

Why ``advance`` is separate: the engine may crash after only a prefix of one decision's events reached the
log. ``advance`` derives the follow-up (schedule the next step, finish the run) from state alone, so a
``Recover`` input after a restart emits exactly what is still missing — never a duplicate, never a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import singledispatch
from typing import Any, Literal

from events.envelope import Envelope, event_id
from events.schemas import (
    ErrorInfo,
    Event,
    RunCompleted,
    RunFailed,
    RunRejected,
    RunStarted,
    RunStep,
    StartRun,
    StepCompleted,
    StepErrored,
    StepFailed,
    StepScheduled,
    StepSucceeded,
)
from events.spec import WorkflowSpec

__all__ = [
    "Decision",
    "Recover",
    "RunState",
    "SequenceError",
    "Start",
    "WorkerResult",
    "decide",
    "evolve",
    "fold",
    "run",
    "task_for",
]

RunStatus = Literal["new", "running", "completed", "failed", "rejected"]
StepStatus = Literal["scheduled", "completed", "retry_pending", "exhausted"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "rejected"})


class SequenceError(ValueError):
    """An event does not follow its run's last seq: the log has a gap or the fold skipped one."""


@dataclass(frozen=True, slots=True)
class RunState:
    """Everything the decider needs to know about one run, rebuilt by folding its events."""

    run_id: str
    seq: int = 0
    status: RunStatus = "new"
    workflow: str = ""
    spec_hash: str = ""
    spec: WorkflowSpec | None = None
    input: Any = None
    cursor: int = -1
    attempt: int = 0
    step_status: StepStatus | None = None
    step_input: Any = None
    last_output: Any = None
    error: ErrorInfo | None = None
    started_at_ms: int = 0
    updated_at_ms: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


# --- inputs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """A StartRun command, with the spec the engine resolved for it (None: unknown workflow)."""

    command: Envelope
    spec: WorkflowSpec | None
    spec_hash: str = ""


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """A StepSucceeded or StepErrored record from a worker."""

    result: Envelope


@dataclass(frozen=True, slots=True)
class Recover:
    """Re-derive whatever a crash may have cut off after the last event that reached the log."""

    causation_id: str | None = None


Input = Start | WorkerResult | Recover


@dataclass(frozen=True, slots=True)
class Decision:
    events: list[Envelope]
    state: RunState


# --- evolve ---------------------------------------------------------------------------------------------


def evolve(state: RunState, event: Envelope) -> RunState:
    """Apply one event; events must arrive in seq order with no gaps."""
    if event.seq != state.seq + 1:
        raise SequenceError(f"run {state.run_id}: expected seq {state.seq + 1}, got {event.seq}")
    moved = replace(state, seq=event.seq, updated_at_ms=event.occurred_at_ms)
    payload = event.payload
    if not isinstance(payload, Event):
        raise TypeError(f"{event.type} is a {event.kind}, not an event")
    return _apply(payload, moved, event)


@singledispatch
def _apply(payload: Event, state: RunState, event: Envelope) -> RunState:
    raise TypeError(f"no evolve rule for {type(payload).__name__}")


@_apply.register
def _(p: RunStarted, s: RunState, e: Envelope) -> RunState:
    return replace(
        s,
        status="running",
        workflow=p.workflow,
        spec_hash=p.spec_hash,
        spec=p.spec,
        input=p.input,
        started_at_ms=e.occurred_at_ms,
    )


@_apply.register
def _(p: RunRejected, s: RunState, e: Envelope) -> RunState:
    return replace(s, status="rejected", workflow=p.workflow, error=ErrorInfo(type="RunRejected", message=p.reason))


@_apply.register
def _(p: StepScheduled, s: RunState, e: Envelope) -> RunState:
    return replace(s, cursor=p.index, attempt=p.attempt, step_status="scheduled", step_input=p.input)


@_apply.register
def _(p: StepCompleted, s: RunState, e: Envelope) -> RunState:
    return replace(s, step_status="completed", last_output=p.output)


@_apply.register
def _(p: StepFailed, s: RunState, e: Envelope) -> RunState:
    return replace(s, step_status="retry_pending" if p.will_retry else "exhausted", error=p.error)


@_apply.register
def _(p: RunCompleted, s: RunState, e: Envelope) -> RunState:
    return replace(s, status="completed", last_output=p.output)


@_apply.register
def _(p: RunFailed, s: RunState, e: Envelope) -> RunState:
    return replace(s, status="failed", error=p.error)


def fold(run_id: str, events: list[Envelope]) -> RunState:
    """Rebuild a run's state from its events (the replay the engine's cache must always equal)."""
    state = RunState(run_id=run_id)
    for event in events:
        state = evolve(state, event)
    return state


# --- decide ---------------------------------------------------------------------------------------------


class _Emitter:
    """Collects events, folding each into the state as it is emitted so later rules see it."""

    def __init__(self, state: RunState, now_ms: int, causation_id: str | None) -> None:
        self.state = state
        self.now_ms = now_ms
        self.causation_id = causation_id
        self.events: list[Envelope] = []

    def emit(self, payload: Event) -> None:
        seq = self.state.seq + 1
        event = Envelope.wrap(
            payload,
            id=event_id(self.state.run_id, seq),
            key=self.state.run_id,
            seq=seq,
            occurred_at_ms=self.now_ms,
            causation_id=self.causation_id,
            correlation_id=self.state.run_id,
        )
        self.state = evolve(self.state, event)
        self.events.append(event)


def run(state: RunState, input: Input, now_ms: int) -> Decision:
    """Decide and evolve in one pass: the emitted events and the state they lead to."""
    if isinstance(input, Start):
        em = _Emitter(state, now_ms, input.command.id)
        _on_start(em, input)
    elif isinstance(input, WorkerResult):
        em = _Emitter(state, now_ms, input.result.id)
        _on_result(em, input.result)
    else:
        em = _Emitter(state, now_ms, input.causation_id)
    _advance(em)
    return Decision(em.events, em.state)


def decide(state: RunState, input: Input, now_ms: int) -> list[Envelope]:
    """The events that ``input`` causes for the run in ``state`` at time ``now_ms``."""
    return run(state, input, now_ms).events


def _on_start(em: _Emitter, start: Start) -> None:
    if em.state.status != "new":
        return  # idempotent start: the run id already exists
    command = start.command.payload
    assert isinstance(command, StartRun)
    if start.spec is None:
        em.emit(
            RunRejected(
                workflow=command.workflow,
                reason=f"unknown workflow {command.workflow!r}: no engine has it registered",
            )
        )
        return
    em.emit(
        RunStarted(
            workflow=command.workflow,
            spec_hash=start.spec_hash or start.spec.content_hash(),
            spec=start.spec,
            input=command.input,
        )
    )


def _on_result(em: _Emitter, result: Envelope) -> None:
    s, p = em.state, result.payload
    assert isinstance(p, StepSucceeded | StepErrored)
    # Exactly-once application: only the attempt the run is waiting for counts; duplicates and late
    # results of earlier attempts are dropped here.
    if s.status != "running" or s.step_status != "scheduled" or (p.index, p.attempt) != (s.cursor, s.attempt):
        return
    if isinstance(p, StepSucceeded):
        em.emit(
            StepCompleted(
                step=p.step,
                index=p.index,
                attempt=p.attempt,
                output=p.output,
                duration_ms=p.duration_ms,
                worker=p.worker,
            )
        )
        return
    assert s.spec is not None
    max_attempts = s.spec.steps[p.index].retry.max_attempts
    em.emit(
        StepFailed(
            step=p.step,
            index=p.index,
            attempt=p.attempt,
            error=p.error,
            will_retry=p.retryable and p.attempt < max_attempts,
            duration_ms=p.duration_ms,
            worker=p.worker,
        )
    )


def _advance(em: _Emitter) -> None:
    """Emit the follow-up that the state alone implies; a no-op when the run is waiting or finished."""
    s = em.state
    if s.status != "running" or s.spec is None:
        return
    steps = s.spec.steps
    if s.cursor == -1:
        em.emit(StepScheduled(step=steps[0].name, index=0, attempt=1, pool=steps[0].pool, input=s.input))
    elif s.step_status == "completed":
        nxt = s.cursor + 1
        if nxt < len(steps):
            step = steps[nxt]
            em.emit(StepScheduled(step=step.name, index=nxt, attempt=1, pool=step.pool, input=s.last_output))
        else:
            em.emit(RunCompleted(output=s.last_output))
    elif s.step_status == "retry_pending":
        step = steps[s.cursor]
        em.emit(
            StepScheduled(step=step.name, index=s.cursor, attempt=s.attempt + 1, pool=step.pool, input=s.step_input)
        )
    elif s.step_status == "exhausted":
        assert s.error is not None
        em.emit(RunFailed(error=s.error, step=steps[s.cursor].name))


# --- tasks ----------------------------------------------------------------------------------------------


def task_for(state: RunState, occurred_at_ms: int, causation_id: str | None = None) -> Envelope | None:
    """The worker task of the attempt the run waits for (None when it waits for none).

    The engine sends it right after the StepScheduled event, and sends it again after a restart (workers
    are at-least-once); its id is the attempt's idempotency key, identical both times.
    """
    if state.status != "running" or state.step_status != "scheduled" or state.spec is None:
        return None
    spec = state.spec.steps[state.cursor]
    key = f"{state.run_id}/{state.cursor}/{state.attempt}"
    return Envelope.wrap(
        RunStep(
            workflow=state.workflow,
            step=spec.name,
            fn=spec.fn,
            index=state.cursor,
            attempt=state.attempt,
            input=state.step_input,
            idempotency_key=key,
            timeout_s=spec.timeout_s,
        ),
        id=key,
        key=state.run_id,
        occurred_at_ms=occurred_at_ms,
        causation_id=causation_id,
        correlation_id=state.run_id,
    )
