"""Per-key concurrency: the slot entity of one (workflow, key), event-sourced like a run. Pure.

Runs that share a concurrency key may live on different partitions, so no engine sees all of them. Each key
therefore gets its own entity, ``slot:<workflow>:<key>``, keyed (and so owned) like a run: runs send it
``AcquireSlot`` and ``ReleaseSlot`` commands, it logs ``SlotGranted`` / ``SlotQueued`` / ``SlotReleased`` on
the events topic and answers ``AdmitRun``. Waiting runs are admitted by priority, then in arrival order.

Every message is idempotent, so recovery simply re-sends: a queued run asks again (a no-op if it is known),
a finished run releases again (a no-op if it holds nothing), the entity re-admits its holders (a no-op for a
run already admitted).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tickflow.core.state import SequenceError
from tickflow.events.envelope import Envelope, event_id
from tickflow.events.schemas import AcquireSlot, AdmitRun, Event, ReleaseSlot, SlotGranted, SlotQueued, SlotReleased
from tickflow.events.topics import SLOT_PREFIX

__all__ = ["SlotState", "admissions", "decide_slot", "evolve_slot", "is_slot", "slot_id"]


def slot_id(workflow: str, key: str) -> str:
    return f"{SLOT_PREFIX}{workflow}:{key}"


def is_slot(entity_id: str) -> bool:
    return entity_id.startswith(SLOT_PREFIX)


@dataclass(frozen=True, slots=True)
class SlotState:
    slot: str
    seq: int = 0
    holders: tuple[str, ...] = ()
    #: (priority, arrival, run id), unsorted; the next admitted is the max priority, min arrival.
    queue: tuple[tuple[int, int, str], ...] = ()
    arrivals: int = 0


def evolve_slot(state: SlotState, event: Envelope) -> SlotState:
    if event.seq != state.seq + 1:
        raise SequenceError(f"slot {state.slot}: expected seq {state.seq + 1}, got {event.seq}")
    s = replace(state, seq=event.seq)
    p = event.payload
    if isinstance(p, SlotGranted):
        return replace(s, holders=(*s.holders, p.run_id), queue=tuple(q for q in s.queue if q[2] != p.run_id))
    if isinstance(p, SlotQueued):
        return replace(s, queue=(*s.queue, (p.priority, s.arrivals, p.run_id)), arrivals=s.arrivals + 1)
    if isinstance(p, SlotReleased):
        return replace(
            s,
            holders=tuple(h for h in s.holders if h != p.run_id),
            queue=tuple(q for q in s.queue if q[2] != p.run_id),
        )
    raise TypeError(f"no slot rule for {event.type}")


def decide_slot(state: SlotState, command: Envelope, now_ms: int) -> tuple[list[Envelope], SlotState]:
    """The slot events a command causes, and the state after them."""
    out: list[Envelope] = []

    def emit(payload: Event) -> None:
        nonlocal state
        seq = state.seq + 1
        env = Envelope.wrap(
            payload,
            id=event_id(state.slot, seq),
            key=state.slot,
            seq=seq,
            occurred_at_ms=now_ms,
            causation_id=command.id,
            correlation_id=state.slot,
        )
        state = evolve_slot(state, env)
        out.append(env)

    p = command.payload
    if isinstance(p, AcquireSlot):
        known = p.run_id in state.holders or any(q[2] == p.run_id for q in state.queue)
        if not known:
            emit(SlotGranted(run_id=p.run_id) if len(state.holders) < p.limit else SlotQueued(**_queued(p)))
    elif isinstance(p, ReleaseSlot):
        if p.run_id in state.holders:
            emit(SlotReleased(run_id=p.run_id))
            if state.queue:
                _, _, nxt = max(state.queue, key=lambda q: (q[0], -q[1]))
                emit(SlotGranted(run_id=nxt))
        elif any(q[2] == p.run_id for q in state.queue):
            emit(SlotReleased(run_id=p.run_id))
    return out, state


def _queued(p: AcquireSlot) -> dict[str, object]:
    return {"run_id": p.run_id, "priority": p.priority}


def admissions(state: SlotState, events: list[Envelope] | None, now_ms: int) -> list[Envelope]:
    """``AdmitRun`` commands: for the grants in ``events``, or (``events`` None, after recovery) every holder."""
    runs = (
        [e.payload.run_id for e in events if isinstance(e.payload, SlotGranted)]
        if events is not None
        else list(state.holders)
    )
    return [
        Envelope.wrap(
            AdmitRun(slot=state.slot),
            id=f"{state.slot}/admit/{run_id}",
            key=run_id,
            occurred_at_ms=now_ms,
            correlation_id=run_id,
        )
        for run_id in runs
    ]
