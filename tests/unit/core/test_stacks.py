"""The stack entity, pure: ticks fire from state at their due time, never overlap, back off when idle, stop at
the budget; a refold of the emitted events always equals the state the decisions produced."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tickflow.core.stacks import StackState, decide_stack, evolve_stack, new_stack, stack_recovery
from tickflow.events import Envelope
from tickflow.events.agents import CreateStack, DeleteStack, PauseStack, PlayStack, TickFired, UpdateStack, stack_key
from tickflow.events.schemas import ChildFinished, ErrorInfo, Payload, StartRun

T0 = 1_700_000_000_000
WORKFLOWS = frozenset({"tick_wf", "other"})


class Stack:
    """Drives one stack through the pure decider and keeps every event, like the engine would."""

    def __init__(self, **settings: Any) -> None:
        self.state = new_stack("s1")
        self.log: list[Envelope] = []
        self.starts: list[Envelope] = []
        self.n = 0
        self.send(CreateStack(workflow="tick_wf", interval_s=10, **settings), T0)

    def send(self, payload: Payload | None, now: int, id: str | None = None) -> list[str]:
        self.n += 1
        command = (
            None
            if payload is None
            else Envelope.wrap(payload, id=id or f"c{self.n}", key=stack_key("s1"), occurred_at_ms=now)
        )
        decision = decide_stack(self.state, command, now, WORKFLOWS)
        assert decision.refused is None, decision.refused
        self.state = decision.state
        self.log += decision.events
        self.starts += decision.starts
        return [e.type for e in decision.events]

    def timer(self, now: int) -> list[str]:
        return self.send(None, now)

    def finish(self, now: int, *, tokens: int = 0, idle: bool = False, status: str = "completed",
               error: ErrorInfo | None = None) -> list[str]:
        assert self.state.running is not None
        tick, run_id = self.state.running
        done = ChildFinished(
            path=f"tick/{tick}",
            child_run_id=run_id,
            status=status,  # type: ignore[arg-type]
            output={"idle": idle},
            tokens=tokens,
            error=error,
        )
        return self.send(done, now)

    def refold(self) -> StackState:
        state = new_stack("s1")
        for event in self.log:
            state = evolve_stack(state, event)
        return state


def test_ticks_fire_at_their_due_time_and_start_a_child_run() -> None:
    s = Stack()
    due = s.state.next_due_ms
    assert due is not None and T0 <= due < T0 + 10_000  # a per-stack phase within the first interval
    assert s.timer(due - 1) == []  # never early
    assert s.timer(due) == ["TickFired"]
    start = s.starts[-1]
    assert isinstance(start.payload, StartRun) and start.key == "s1.t1"
    assert start.payload.parent_run_id == stack_key("s1") and start.payload.parent_path == "tick/1"
    assert start.payload.input == {"stack_id": "s1", "tick": 1, "input": None}
    assert s.state.next_due_ms == due + 10_000
    assert s.timer(due) == []  # fired once


def test_no_overlap_skip_then_queue() -> None:
    s = Stack()
    due = s.state.next_due_ms or 0
    s.timer(due)
    assert s.timer(due + 10_000) == ["TickSkipped"] and s.state.last_tick == 2
    assert s.finish(due + 12_000) == ["TickFinished"]
    assert s.timer(due + 20_000) == ["TickFired"] and s.state.running == (3, "s1.t3")

    q = Stack(overlap="queue")
    due = q.state.next_due_ms or 0
    q.timer(due)
    assert q.timer(due + 10_000) == ["TickQueued"]
    assert q.timer(due + 20_000) == ["TickSkipped"]  # one queued at most
    assert q.finish(due + 21_000) == ["TickFinished", "TickFired"]  # the queued tick fires at once
    fired = q.log[-1].payload
    assert isinstance(fired, TickFired) and (fired.tick, fired.queued) == (2, True)


def test_idle_backoff_doubles_up_to_the_cap_and_resets() -> None:
    s = Stack(idle_backoff_max_s=35)
    due = s.state.next_due_ms or 0
    gaps = []
    now = due
    for idle in (True, True, True, False, True):
        s.timer(now)
        s.finish(now + 100, idle=idle)
        nxt = s.state.next_due_ms or 0
        gaps.append(nxt - now)
        now = nxt
    assert gaps == [20_000, 35_000, 35_000, 10_000, 20_000]


def test_budget_pauses_the_stack_with_the_reason() -> None:
    s = Stack(budget_tokens=150)
    due = s.state.next_due_ms or 0
    s.timer(due)
    assert s.finish(due + 10, tokens=100) == ["TickFinished"]
    s.timer(due + 10_000)
    assert s.finish(due + 10_010, tokens=100) == ["TickFinished", "StackPaused"]
    assert not s.state.playing and s.state.paused_by == "budget"
    assert "200 tokens used of 150" in s.log[-1].payload.reason  # type: ignore[attr-defined]
    assert s.timer(due + 20_000) == []  # paused: no tick
    s.send(UpdateStack(budget_tokens=1000), due + 21_000)
    assert s.send(PlayStack(), due + 21_000) == ["StackPlayed"]
    assert s.timer(due + 21_000) == ["TickFired"]  # play ticks at once


def test_each_tick_may_spend_what_is_left_and_a_tick_stopped_by_it_pauses_the_stack() -> None:
    """The budget holds before each LLM call (the tick run's own check), not only when a tick ends: the stack hands
    each tick what is left of its budget, and pauses when a tick stopped before a call that could pass it."""
    s = Stack(budget_tokens=1_000, budget_cost_usd=2.0)
    due = s.state.next_due_ms or 0
    s.timer(due)
    assert (s.starts[-1].payload.budget_tokens, s.starts[-1].payload.budget_cost_usd) == (1_000, 2.0)
    s.finish(due + 10, tokens=700)
    s.timer(due + 10_000)
    assert s.starts[-1].payload.budget_tokens == 300  # what is left
    stopped = ErrorInfo(type="BudgetExceeded", message="LLM step 'plan' was not called: …")
    assert s.finish(due + 10_010, tokens=250, status="failed", error=stopped) == ["TickFinished", "StackPaused"]
    assert s.state.paused_by == "budget" and s.state.tokens_used == 950  # under the budget, and paused
    assert "stopped before an LLM call" in s.log[-1].payload.reason  # type: ignore[attr-defined]
    assert s.refold() == s.state


def test_a_command_sent_again_with_the_same_id_is_taken_once() -> None:
    """A client retrying Play, Pause or Create under one idempotency key: the retry changes nothing, even after
    other commands changed the stack meanwhile (a retried Play must not fire an extra tick, a retried Create must
    not bring a deleted stack back)."""
    s = Stack()
    assert s.send(PauseStack(), T0 + 1, id="pause-1") == ["StackPaused"]
    assert s.send(PlayStack(), T0 + 2, id="play-1") == ["StackPlayed"]
    assert s.timer(T0 + 2) == ["TickFired"]
    assert s.send(PauseStack(), T0 + 3, id="pause-2") == ["StackPaused"]
    assert s.send(PlayStack(), T0 + 4, id="play-1") == []  # the retry: still paused, no second tick
    assert s.send(DeleteStack(), T0 + 5, id="delete-1") == ["StackDeleted"]
    assert s.send(CreateStack(workflow="tick_wf"), T0 + 6, id="c1") == []  # the first create, again
    assert s.state.deleted and s.state.commands[-3:] == ("play-1", "pause-2", "delete-1")
    assert s.refold() == s.state


def test_pause_play_delete_and_refusals() -> None:
    s = Stack()
    assert s.send(PauseStack(reason="night"), T0 + 1) == ["StackPaused"]
    assert s.send(PauseStack(), T0 + 2) == []  # idempotent
    assert s.timer(T0 + 60_000) == []
    assert s.send(PlayStack(), T0 + 60_000) == ["StackPlayed"]
    assert s.send(DeleteStack(), T0 + 60_001) == ["StackDeleted"]
    assert s.timer(T0 + 120_000) == []
    gone = decide_stack(s.state, Envelope.wrap(PlayStack(), id="x", key=stack_key("s1"), occurred_at_ms=1), T0)
    assert gone.refused and "create it first" in gone.refused
    unknown = decide_stack(
        new_stack("s2"),
        Envelope.wrap(CreateStack(workflow="nope"), id="y", key=stack_key("s2"), occurred_at_ms=1),
        T0,
        WORKFLOWS,
    )
    assert unknown.refused and "unknown workflow 'nope'" in unknown.refused and not unknown.events


def test_a_late_engine_fires_once_and_re_anchors() -> None:
    s = Stack()
    due = s.state.next_due_ms or 0
    assert s.timer(due + 95_000) == ["TickFired"]  # nine intervals missed: one tick, not ten
    assert s.state.next_due_ms == due + 105_000


def test_recovery_re_sends_the_running_tick_start() -> None:
    s = Stack()
    s.timer(s.state.next_due_ms or 0)
    again = stack_recovery(s.refold(), T0 + 50_000)
    assert [e.id for e in again] == [s.starts[-1].id]  # same id: the engine deduplicates the start


ACTIONS = st.lists(
    st.tuples(
        st.sampled_from(["timer", "finish", "idle", "pause", "play", "update", "delete", "create"]),
        st.integers(0, 30_000),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ACTIONS, st.sampled_from(["skip", "queue"]), st.booleans())
def test_refold_equals_state_and_ticks_never_overlap(
    actions: list[tuple[str, int]], overlap: str, budget: bool
) -> None:
    s = Stack(overlap=overlap, idle_backoff_max_s=40, budget_tokens=500 if budget else None)
    now = T0
    for action, dt in actions:
        now += dt
        if action in ("finish", "idle"):
            if s.state.running is not None:
                s.finish(now, tokens=60, idle=action == "idle")
            continue
        payload: Payload | None = {
            "timer": None,
            "pause": PauseStack(),
            "play": PlayStack(),
            "update": UpdateStack(interval_s=5),
            "delete": DeleteStack(),
            "create": CreateStack(workflow="tick_wf", interval_s=10, overlap=overlap),  # type: ignore[arg-type]
        }[action]
        if payload is not None and not s.state.live and action != "create":
            continue
        s.send(payload, now)
        assert s.state == s.refold()
    assert s.state == s.refold()
    # Never two tick runs at once: between two TickFired there is a TickFinished of the first.
    running = None
    for e in s.log:
        if e.type == "TickFired":
            assert running is None, f"tick {e.payload.tick} fired while {running} was running"  # type: ignore[attr-defined]
            running = e.payload.tick  # type: ignore[attr-defined]
        elif e.type == "TickFinished" and e.payload.tick == running:  # type: ignore[attr-defined]
            running = None
    if budget:
        assert s.state.tokens_used < 500 + 60 or not s.state.playing or s.state.paused_by != "budget"
