"""Pure mapping from log events to the analytics rows: step attempts, LLM calls, stacks, ticks, messages.

Imports only ``events``. Fact rows (steps, LLM calls, ticks, messages) carry the (partition, offset) of the event
they came from, which is how the projector inserts each fact exactly once (see ``projections.projector``). Rows
that change over time (a step attempt, a tick, a stack) are versioned by the seq of the event that produced them,
and their tables keep the highest version.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from tickflow.events.agents import (
    STACK_PREFIX,
    LlmCallAttempted,
    MessageAppended,
    StackCreated,
    StackDeleted,
    StackPaused,
    StackPlayed,
    StackUpdated,
    TickFinished,
    TickFired,
    TickSkipped,
)
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import StepCompleted, StepFailed, StepScheduled
from tickflow.projections.rows import fast_replace

__all__ = [
    "LLM_CALL_COLUMNS",
    "MESSAGE_COLUMNS",
    "STACK_COLUMNS",
    "STEP_COLUMNS",
    "TICK_COLUMNS",
    "LlmCallRow",
    "MessageRow",
    "StackRow",
    "StepRow",
    "TickRow",
    "llm_call_row",
    "message_row",
    "stack_row",
    "step_key",
    "step_row",
    "tick_row",
]


class _Row:
    __slots__ = ()

    def as_tuple(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class StepRow(_Row):
    """One attempt of one step: scheduled, then completed or failed (a lost worker fails it as StepTimeout)."""

    run_id: str
    workflow: str
    path: str
    step: str
    attempt: int
    pool: str = ""
    status: str = "scheduled"
    scheduled_at_ms: int = 0
    finished_at_ms: int = 0
    duration_ms: float = 0.0
    worker: str = ""
    error_type: str = ""
    error_message: str = ""
    will_retry: int = 0
    version: int = 0
    partition: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class LlmCallRow(_Row):
    """One LLM call attempt. ``price_known`` 0: ``cost_usd`` is unknown, not 0 (the model had no price);
    ``price_illustrative`` 1: the cost is a sample figure, not money spent; ``usage_estimated`` 1: the token
    counts are tickflow's estimate (the provider reported none). Added last, as migration 004 added them."""

    run_id: str
    seq: int
    workflow: str
    path: str
    call: int
    attempt: int
    agent: str
    stack_id: str
    provider: str
    model: str
    tokens_in: int
    tokens_out: int
    cost_usd: float
    latency_ms: float
    outcome: str
    error_type: str
    error_message: str
    http_status: int
    fallback: int
    started_at_ms: int
    occurred_at_ms: int
    partition: int
    offset: int
    price_known: int = 1
    price_illustrative: int = 0
    usage_estimated: int = 0


@dataclass(frozen=True, slots=True)
class StackRow(_Row):
    """A stack as the board shows it: settings, play state, and running totals of its ticks."""

    stack_id: str
    name: str = ""
    workflow: str = ""
    status: str = "playing"
    paused_by: str = ""
    pause_reason: str = ""
    interval_s: float = 10.0
    priority: int = 0
    overlap: str = "skip"
    budget_tokens: int = -1
    budget_cost_usd: float = -1.0
    tokens_used: int = 0
    cost_used_usd: float = 0.0
    ticks_fired: int = 0
    ticks_skipped: int = 0
    ticks_failed: int = 0
    last_tick: int = 0
    last_run_id: str = ""
    last_run_status: str = ""
    last_tick_at_ms: int = 0
    created_at_ms: int = 0
    updated_at_ms: int = 0
    last_seq: int = 0


@dataclass(frozen=True, slots=True)
class TickRow(_Row):
    stack_id: str
    tick: int
    run_id: str = ""
    status: str = "fired"
    reason: str = ""
    due_at_ms: int = 0
    fired_at_ms: int = 0
    finished_at_ms: int = 0
    lag_ms: float = 0.0
    tokens: int = 0
    cost_usd: float = 0.0
    idle: int = 0
    version: int = 0
    partition: int = 0
    offset: int = 0


@dataclass(frozen=True, slots=True)
class MessageRow(_Row):
    thread_id: str
    message_id: str
    run_id: str
    seq: int
    stack_id: str
    agent: str
    role: str
    content: str
    embedding: list[float]
    embedder: str
    created_at_ms: int
    partition: int
    offset: int


STEP_COLUMNS = tuple(f.name for f in fields(StepRow))
LLM_CALL_COLUMNS = tuple(f.name for f in fields(LlmCallRow))
STACK_COLUMNS = tuple(f.name for f in fields(StackRow))
TICK_COLUMNS = tuple(f.name for f in fields(TickRow))
MESSAGE_COLUMNS = tuple(f.name for f in fields(MessageRow))
_STACK_FIELDS = frozenset(STACK_COLUMNS)


def step_key(run_id: str, path: str, attempt: int) -> tuple[str, str, int]:
    return (run_id, path, attempt)


def step_row(prev: StepRow | None, event: Envelope, workflow: str, partition: int, offset: int) -> StepRow | None:
    """The attempt's row after ``event``, or None when the event is not about a step attempt."""
    p = event.payload
    seq = event.seq or 0
    at = event.occurred_at_ms
    if isinstance(p, StepScheduled):
        return StepRow(
            run_id=event.key,
            workflow=workflow,
            path=p.path,
            step=p.step,
            attempt=p.attempt,
            pool=p.pool,
            scheduled_at_ms=at,
            version=seq,
            partition=partition,
            offset=offset,
        )
    if not isinstance(p, StepCompleted | StepFailed):
        return None
    row = prev or StepRow(run_id=event.key, workflow=workflow, path=p.path, step=p.step, attempt=p.attempt)
    if seq <= row.version:
        return row
    done = fast_replace(
        row,
        finished_at_ms=at,
        duration_ms=p.duration_ms,
        worker=p.worker,
        version=seq,
        partition=partition,
        offset=offset,
    )
    if isinstance(p, StepCompleted):
        return fast_replace(done, status="completed")
    return fast_replace(
        done,
        status="failed",
        error_type=p.error.type,
        error_message=p.error.message,
        will_retry=int(p.will_retry),
    )


def llm_call_row(event: Envelope, workflow: str, partition: int, offset: int) -> LlmCallRow | None:
    p = event.payload
    if not isinstance(p, LlmCallAttempted):
        return None
    return LlmCallRow(
        run_id=event.key,
        seq=event.seq or 0,
        workflow=workflow,
        path=p.path,
        call=p.call,
        attempt=p.attempt,
        agent=p.agent,
        stack_id=p.stack_id,
        provider=p.provider,
        model=p.model,
        tokens_in=p.tokens_in,
        tokens_out=p.tokens_out,
        cost_usd=p.cost_usd,
        latency_ms=p.latency_ms,
        outcome=p.outcome,
        error_type=p.error.type if p.error else "",
        error_message=p.error.message if p.error else "",
        http_status=p.http_status or 0,
        fallback=int(p.fallback),
        started_at_ms=p.started_at_ms or event.occurred_at_ms,
        occurred_at_ms=event.occurred_at_ms,
        partition=partition,
        offset=offset,
        price_known=int(p.price_known),
        price_illustrative=int(p.price_illustrative),
        usage_estimated=int(p.usage_estimated),
    )


def message_row(event: Envelope, partition: int, offset: int) -> MessageRow | None:
    p = event.payload
    if not isinstance(p, MessageAppended):
        return None
    return MessageRow(
        thread_id=p.thread_id,
        message_id=p.message_id,
        run_id=event.key,
        seq=event.seq or 0,
        stack_id=p.stack_id,
        agent=p.agent,
        role=p.role,
        content=p.content,
        embedding=list(p.embedding or ()),
        embedder=p.embedder,
        created_at_ms=event.occurred_at_ms,
        partition=partition,
        offset=offset,
    )


def stack_row(prev: StackRow | None, event: Envelope) -> StackRow | None:
    """The stack's board row after ``event`` (None for events of other entities); older seqs change nothing."""
    if not event.key.startswith(STACK_PREFIX):
        return None
    row = prev or StackRow(stack_id=event.key[len(STACK_PREFIX) :])
    seq = event.seq or 0
    if seq <= row.last_seq:
        return row
    return fast_replace(row, last_seq=seq, updated_at_ms=event.occurred_at_ms, **_stack_row_changes(row, event))


def _stack_row_changes(row: StackRow, event: Envelope) -> dict[str, Any]:
    """The fields ``event`` changes besides the version (one replace per event keeps the fold cheap)."""
    p = event.payload
    if isinstance(p, StackCreated):
        return dict(
            name=p.name,
            workflow=p.workflow,
            status="playing" if p.playing else "paused",
            interval_s=p.interval_s,
            priority=p.priority,
            overlap=p.overlap,
            budget_tokens=-1 if p.budget_tokens is None else p.budget_tokens,
            budget_cost_usd=-1.0 if p.budget_cost_usd is None else p.budget_cost_usd,
            created_at_ms=event.occurred_at_ms,
        )
    if isinstance(p, StackUpdated):  # the settings it changes that the board shows (None: unchanged)
        return {k: v for k, v in p.model_dump(exclude_none=True).items() if k in _STACK_FIELDS}
    if isinstance(p, StackPaused):
        return dict(status="paused", paused_by=p.by, pause_reason=p.reason)
    if isinstance(p, StackPlayed):
        return dict(status="playing", paused_by="", pause_reason="")
    if isinstance(p, StackDeleted):
        return dict(status="deleted")
    if isinstance(p, TickFired):
        return dict(
            ticks_fired=row.ticks_fired + 1,
            last_tick=p.tick,
            last_run_id=p.run_id,
            last_run_status="running",
            last_tick_at_ms=event.occurred_at_ms,
        )
    if isinstance(p, TickSkipped):
        return dict(ticks_skipped=row.ticks_skipped + 1)
    if isinstance(p, TickFinished):
        return dict(
            tokens_used=row.tokens_used + p.tokens,
            cost_used_usd=row.cost_used_usd + p.cost_usd,
            ticks_failed=row.ticks_failed + (p.status != "completed"),
            last_run_status=p.status if p.tick == row.last_tick else row.last_run_status,
        )
    return {}


def tick_row(prev: TickRow | None, event: Envelope, partition: int, offset: int) -> TickRow | None:
    """The tick's row after ``event``, or None when the event is not about a tick."""
    p = event.payload
    seq = event.seq or 0
    at = event.occurred_at_ms
    stack_id = event.key[len(STACK_PREFIX) :]
    if isinstance(p, TickFired):
        return TickRow(
            stack_id=stack_id,
            tick=p.tick,
            run_id=p.run_id,
            status="queued" if p.queued else "fired",
            due_at_ms=p.due_at_ms,
            fired_at_ms=at,
            lag_ms=float(max(0, at - p.due_at_ms)),
            version=seq,
            partition=partition,
            offset=offset,
        )
    if isinstance(p, TickSkipped):
        return TickRow(
            stack_id=stack_id,
            tick=p.tick,
            status="skipped",
            reason=p.reason,
            due_at_ms=p.due_at_ms,
            version=seq,
            partition=partition,
            offset=offset,
        )
    if isinstance(p, TickFinished):
        row = prev or TickRow(stack_id=stack_id, tick=p.tick, run_id=p.run_id)
        if seq <= row.version:
            return row
        return fast_replace(
            row,
            status=p.status,
            finished_at_ms=at,
            tokens=p.tokens,
            cost_usd=p.cost_usd,
            idle=int(p.idle),
            version=seq,
            partition=partition,
            offset=offset,
        )
    return None
