"""Agent stacks: an entity that ticks every N seconds and runs a workflow per tick. Event-sourced and pure.

A stack ``stack:<id>`` is keyed (and so owned) like a run. Its ticks are not a cron: the next tick's due time
is part of the stack's state, folded from its events, and the engine fires it from its timer heap like any run
timer — so ticks survive restarts, fire once (a fired tick is an event), and never depend on a Faust timer.

Each tick starts a run ``<id>.t<n>`` as a child of the stack: the run reports its end with ``ChildFinished``
(status, tokens, cost), which the stack logs as ``TickFinished`` and counts against its budget. Rules:

- **No overlap.** While a tick's run is going, a due tick is skipped (``overlap="skip"``, counted) or queued
  (``overlap="queue"``, at most one; it fires when the running one ends).
- **Idle backoff.** A run whose output has ``"idle": true`` had nothing to do; the next interval doubles per idle
  tick in a row, up to ``idle_backoff_max_s``. A busy tick resets it.
- **Phase.** The first tick is due at a per-stack offset within the interval (a hash of the id), so 10,000 stacks
  created together spread their ticks instead of firing at once.
- **Late engine.** If ticks were missed (the engine was down), one fires and the schedule re-anchors on now.
- **Budgets.** When the tokens or cost used reach the budget, the stack pauses itself with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from tickflow.core.state import SequenceError, remaining
from tickflow.events.agents import (
    STACK_PREFIX,
    CreateStack,
    DeleteStack,
    PauseStack,
    PlayStack,
    StackCreated,
    StackDeleted,
    StackPaused,
    StackPlayed,
    StackUpdated,
    TickFinished,
    TickFired,
    TickQueued,
    TickSkipped,
    UpdateStack,
    stack_key,
)
from tickflow.events.envelope import Envelope, event_id
from tickflow.events.schemas import ChildFinished, Event, StartRun

__all__ = [
    "COMMANDED",
    "StackDecision",
    "StackState",
    "decide_stack",
    "evolve_stack",
    "is_stack",
    "new_stack",
    "stack_id_of",
    "stack_recovery",
    "tick_run_id",
]

_TICK_PATH = "tick/"


def is_stack(key: str) -> bool:
    return key.startswith(STACK_PREFIX)


def stack_id_of(run_input: Any) -> str:
    """The stack a run belongs to: a stack tick's run input is ``{"stack_id": …, "tick": n, "input": …}``."""
    if isinstance(run_input, Mapping) and isinstance(run_input.get("stack_id"), str) and "tick" in run_input:
        return str(run_input["stack_id"])
    return ""


def tick_run_id(stack_id: str, tick: int) -> str:
    return f"{stack_id}.t{tick}"


@dataclass(frozen=True, slots=True)
class StackState:
    key: str
    seq: int = 0
    exists: bool = False
    deleted: bool = False
    name: str = ""
    workflow: str = ""
    input: Any = None
    interval_s: float = 10.0
    priority: int = 0
    overlap: str = "skip"
    idle_backoff_max_s: float = 0.0
    budget_tokens: int | None = None
    budget_cost_usd: float | None = None
    playing: bool = False
    paused_by: str = ""
    last_tick: int = 0
    #: (tick, run id) of the tick whose run is going.
    running: tuple[int, str] | None = None
    #: (tick, due) of a tick waiting for the running one to end (overlap="queue").
    queued: tuple[int, int] | None = None
    last_due_ms: int = 0
    next_due_ms: int | None = None
    idle_streak: int = 0
    tokens_used: int = 0
    cost_used_usd: float = 0.0
    #: Ids of the last ``COMMAND_WINDOW`` commands that changed the stack (oldest first): the same command sent
    #: again (a client's retry under one idempotency key) is recognised and changes nothing.
    commands: tuple[str, ...] = ()

    @property
    def stack_id(self) -> str:
        return self.key[len(STACK_PREFIX) :]

    @property
    def live(self) -> bool:
        return self.exists and not self.deleted

    def interval_ms(self) -> int:
        """The interval until the next tick: the base one, doubled per idle tick in a row up to the cap."""
        base = int(self.interval_s * 1000)
        cap = int(self.idle_backoff_max_s * 1000)
        if self.idle_streak == 0 or cap <= base:
            return base
        return min(base << min(self.idle_streak, 30), cap)

    def timer_due_ms(self) -> int | None:
        """When the engine must wake this stack: its next tick, if it is playing."""
        return self.next_due_ms if self.live and self.playing else None


#: How many command ids a stack remembers (``StackState.commands``).
COMMAND_WINDOW = 16
#: The events a user's command causes (a budget pause is caused by a tick's report, also a command).
COMMANDED = (StackCreated, StackUpdated, StackPaused, StackPlayed, StackDeleted)


def _phase_ms(key: str, interval_ms: int) -> int:
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % max(1, interval_ms)


def _advance(s: StackState, due_ms: int, at_ms: int) -> int:
    """The due time after the tick due at ``due_ms`` (handled at ``at_ms``): keep the rhythm, or re-anchor."""
    following = due_ms + s.interval_ms()
    return following if following > at_ms else at_ms + s.interval_ms()


def evolve_stack(state: StackState, event: Envelope) -> StackState:
    if event.seq != state.seq + 1:
        raise SequenceError(f"stack {state.key}: expected seq {state.seq + 1}, got {event.seq}")
    s = replace(state, seq=event.seq)
    p, at = event.payload, event.occurred_at_ms
    if isinstance(p, COMMANDED) and event.causation_id is not None:
        s = replace(s, commands=(*s.commands, event.causation_id)[-COMMAND_WINDOW:])
    if isinstance(p, StackCreated):
        # A re-created stack keeps its tick numbers and the run of a tick still going (so ticks never overlap).
        fresh = StackState(key=s.key, seq=s.seq, last_tick=s.last_tick, running=s.running, commands=s.commands)
        settings = p.model_dump(exclude={"stack_id", "playing"})
        created = replace(fresh, exists=True, playing=p.playing, **settings)
        return replace(created, next_due_ms=at + _phase_ms(s.key, created.interval_ms()))
    if isinstance(p, StackUpdated):
        changes = {k: v for k, v in p.model_dump(exclude_unset=True).items() if v is not None}
        updated = replace(s, **changes)
        if "interval_s" in changes and updated.next_due_ms is not None:
            updated = replace(updated, next_due_ms=min(updated.next_due_ms, at + updated.interval_ms()))
        return updated
    if isinstance(p, StackPaused):
        return replace(s, playing=False, paused_by=p.by)
    if isinstance(p, StackPlayed):
        return replace(s, playing=True, paused_by="", next_due_ms=at)
    if isinstance(p, StackDeleted):
        return replace(s, deleted=True, playing=False, next_due_ms=None, queued=None)
    if isinstance(p, TickFired):
        if p.queued:  # the queued tick: its due time already moved the schedule on
            return replace(s, running=(p.tick, p.run_id), queued=None, last_tick=max(s.last_tick, p.tick))
        return replace(
            s,
            running=(p.tick, p.run_id),
            last_tick=p.tick,
            last_due_ms=p.due_at_ms,
            next_due_ms=_advance(s, p.due_at_ms, at),
        )
    if isinstance(p, TickQueued):
        return replace(
            s,
            queued=(p.tick, p.due_at_ms),
            last_tick=p.tick,
            last_due_ms=p.due_at_ms,
            next_due_ms=_advance(s, p.due_at_ms, at),
        )
    if isinstance(p, TickSkipped):
        return replace(s, last_tick=p.tick, last_due_ms=p.due_at_ms, next_due_ms=_advance(s, p.due_at_ms, at))
    if isinstance(p, TickFinished):
        done = replace(
            s,
            running=None if s.running is not None and s.running[0] == p.tick else s.running,
            tokens_used=s.tokens_used + p.tokens,
            cost_used_usd=s.cost_used_usd + p.cost_usd,
            idle_streak=s.idle_streak + 1 if p.idle else 0,
        )
        if done.next_due_ms is not None and done.last_due_ms:
            # The next tick is due one (backed-off, or again normal) interval after this tick's own due time.
            later = done.last_due_ms + done.interval_ms()
            done = replace(done, next_due_ms=max(done.next_due_ms, later) if p.idle else min(done.next_due_ms, later))
        return done
    raise TypeError(f"no stack rule for {event.type}")


@dataclass(frozen=True, slots=True)
class StackDecision:
    events: list[Envelope]
    state: StackState
    #: StartRun commands of fired ticks.
    starts: list[Envelope]
    #: Why a command was refused (it goes to the dead-letter topic), if it was.
    refused: str | None = None


def _start(state: StackState, tick: int, run_id: str, at_ms: int, causation_id: str) -> Envelope:
    command = StartRun(
        workflow=state.workflow,
        input={"stack_id": state.stack_id, "tick": tick, "input": state.input},
        parent_run_id=state.key,
        parent_path=f"{_TICK_PATH}{tick}",
        priority=state.priority,
        # The tick may spend what is left of the stack's budget: its LLM steps stop before passing it.
        budget_tokens=remaining(state.budget_tokens, state.tokens_used),
        budget_cost_usd=remaining(state.budget_cost_usd, state.cost_used_usd),
    )
    return Envelope.wrap(
        command,
        id=f"{run_id}/start",
        key=run_id,
        occurred_at_ms=at_ms,
        causation_id=causation_id,
        correlation_id=state.key,
    )


class _Emitter:
    """Appends events to the stack's log, folding each into the state as it goes."""

    def __init__(self, state: StackState, now_ms: int, causation_id: str) -> None:
        self.state, self.now_ms, self.causation_id = state, now_ms, causation_id
        self.events: list[Envelope] = []
        self.starts: list[Envelope] = []

    def emit(self, payload: Event) -> None:
        s = self.state
        env = Envelope.wrap(
            payload,
            id=event_id(s.key, s.seq + 1),
            key=s.key,
            seq=s.seq + 1,
            occurred_at_ms=self.now_ms,
            causation_id=self.causation_id,
            correlation_id=s.key,
        )
        self.state = evolve_stack(s, env)
        self.events.append(env)

    def fire(self, tick: int, due: int, queued: bool = False) -> None:
        run_id = tick_run_id(self.state.stack_id, tick)
        self.emit(TickFired(tick=tick, run_id=run_id, due_at_ms=due, queued=queued))
        self.starts.append(_start(self.state, tick, run_id, self.now_ms, self.causation_id))

    def decision(self, refused: str | None = None) -> StackDecision:
        return StackDecision(self.events, self.state, self.starts, refused)


def decide_stack(
    state: StackState, command: Envelope | None, now_ms: int, known_workflows: frozenset[str] | None = None
) -> StackDecision:
    """What a command to the stack (or, with ``command`` None, its timer) causes."""
    em = _Emitter(state, now_ms, command.id if command is not None else f"timer/{now_ms}")
    p = command.payload if command is not None else None
    if command is not None and command.id in state.commands:
        return em.decision()  # the same command again: it was taken once
    if p is None:
        _on_timer(em)
    elif isinstance(p, CreateStack):
        if known_workflows is not None and p.workflow not in known_workflows:
            known = ", ".join(sorted(known_workflows)) or "none"
            return em.decision(f"unknown workflow {p.workflow!r}; registered workflows: {known}")
        if not state.live:
            em.emit(StackCreated(stack_id=state.stack_id, **p.model_dump()))
    elif isinstance(p, ChildFinished):
        _on_tick_finished(em, p)
    elif not state.live:
        return em.decision(f"{type(p).__name__}: there is no stack {state.stack_id!r}; create it first")
    elif isinstance(p, UpdateStack):
        if known_workflows is not None and p.workflow is not None and p.workflow not in known_workflows:
            return em.decision(f"unknown workflow {p.workflow!r}")
        em.emit(StackUpdated(**p.model_dump(exclude_unset=True)))
    elif isinstance(p, PauseStack):
        if state.playing:
            em.emit(StackPaused(by="user", reason=p.reason))
    elif isinstance(p, PlayStack):
        if not state.playing:
            em.emit(StackPlayed())
    elif isinstance(p, DeleteStack):
        em.emit(StackDeleted(reason=p.reason))
    else:
        return em.decision(f"{type(p).__name__} cannot be sent to a stack ({state.key!r})")
    return em.decision()


def _on_timer(em: _Emitter) -> None:
    s = em.state
    due = s.next_due_ms
    if not (s.live and s.playing and due is not None and due <= em.now_ms):
        return  # early, paused or gone: nothing fires
    tick = s.last_tick + 1
    if s.running is None:
        em.fire(tick, due)
    elif s.overlap == "queue" and s.queued is None:
        em.emit(TickQueued(tick=tick, due_at_ms=due))
    else:
        why = "a tick is already queued" if s.queued else f"tick {s.running[0]} is still running"
        em.emit(TickSkipped(tick=tick, due_at_ms=due, reason=why))


def _on_tick_finished(em: _Emitter, p: ChildFinished) -> None:
    running = em.state.running
    number = p.path[len(_TICK_PATH) :] if p.path.startswith(_TICK_PATH) else ""
    if running is None or not number.isdigit() or int(number) != running[0]:
        return  # a repeated report of an earlier tick
    idle = isinstance(p.output, dict) and p.output.get("idle") is True
    em.emit(
        TickFinished(
            tick=running[0], run_id=p.child_run_id, status=p.status, tokens=p.tokens, cost_usd=p.cost_usd, idle=idle
        )
    )
    over = _over_budget(em.state)
    if not over and p.error is not None and p.error.type == "BudgetExceeded":  # stopped before passing it
        over = f"tick {running[0]} stopped before an LLM call that could pass the budget: {p.error.message}"[:1_000]
    if over and em.state.playing:
        em.emit(StackPaused(by="budget", reason=over))
    s = em.state
    if s.queued is not None and s.playing and s.live:
        em.fire(s.queued[0], s.queued[1], queued=True)


def _over_budget(s: StackState) -> str:
    if s.budget_tokens is not None and s.tokens_used >= s.budget_tokens:
        return f"token budget reached: {s.tokens_used} tokens used of {s.budget_tokens}"
    if s.budget_cost_usd is not None and s.cost_used_usd >= s.budget_cost_usd:
        return f"cost budget reached: ${s.cost_used_usd:.6f} used of ${s.budget_cost_usd:.6f}"
    return ""


def stack_recovery(state: StackState, now_ms: int) -> list[Envelope]:
    """After a restart: re-send the StartRun of the tick whose run is going (a no-op if the run exists)."""
    if state.running is None:
        return []
    tick, run_id = state.running
    return [_start(state, tick, run_id, now_ms, f"recover/{state.key}")]


def new_stack(stack_id: str) -> StackState:
    return StackState(key=stack_key(stack_id))
