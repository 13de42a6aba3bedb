"""Retention on every store: ``vacuum`` and the projector's expiry take a finished run out of every per-run table
and never touch a run still in flight, however old; on ClickHouse, an old TTL clause that expired events by their
time is removed at start."""

from __future__ import annotations

from pathlib import Path

from tests.contract.projecting import project
from tests.contract.projections.test_projection_facts import SPEC, T0, _history, scenario
from tickflow.events import Envelope, RunStarted
from tickflow.events.agents import LlmCallAttempted, MessageAppended, StackDeleted, TickFired, stack_key
from tickflow.events.schemas import StepScheduled
from tickflow.projections.fold import Record
from tickflow.projections.retention import DAY_MS, expire
from tickflow.projections.store import ClickHouseStore, ProjectionStore


def in_flight() -> list[Record]:
    """``r2``: started (by tick 3 of stack s1) a year before ``scenario``'s run, an LLM call made, a step still
    running: its rows are the oldest in every table, and it has not finished."""
    old = T0 - 365 * DAY_MS
    run = _history(
        "r2",
        [
            RunStarted(workflow="wf", spec_hash=SPEC.content_hash(), spec=SPEC, input={}),
            StepScheduled(path="a", step="a", attempt=1, pool="default"),
            LlmCallAttempted(path="a", call=0, attempt=1, agent="planner", provider="local", model="m", outcome="ok"),
        ],
        partition=2,
        t0=old,
    )
    fired = TickFired(tick=3, run_id="r2", due_at_ms=old)
    tick = Envelope.wrap(fired, id=f"{stack_key('s1')}/6", key=stack_key("s1"), seq=6, occurred_at_ms=old)
    return [*run, (3, 0, tick)]


def test_expiry_takes_a_finished_run_out_of_every_table_and_keeps_one_in_flight(store: ProjectionStore) -> None:
    project(store, [*scenario(), *in_flight()])
    before = store.table_counts()
    assert before == {"events": 18, "runs": 2, "steps": 3, "llm_calls": 3, "stacks": 1, "ticks": 3, "messages": 1}

    # Fast-forward: a week after r1 finished, with a TTL of 8 days, nothing is due yet.
    assert expire(store, 8, now_ms=T0 + 7 * DAY_MS) == 0
    assert store.table_counts() == before

    # Thirty days on, with a TTL of 7 days: r1 (finished) leaves every per-run table; r2 (in flight for a year) stays.
    assert expire(store, 7, now_ms=T0 + 30 * DAY_MS) == 1
    assert store.runs_by_id(["r1", "r2"]).keys() == {"r2"}
    assert store.run_events("r1") == [] and store.run_steps("r1") == []
    assert [e.seq for e in store.run_events("r2")] == [1, 2, 3]
    assert [(s.path, s.status) for s in store.run_steps("r2")] == [("a", "scheduled")]
    assert store.ticks_by_key([("s1", 1), ("s1", 2), ("s1", 3)]).keys() == {("s1", 3)}  # r1's, a skipped one: gone
    after = store.table_counts()
    # The stack's own events and row stay (the stack lives on); the agent's memory thread stays (it is the stack's).
    assert after == {"events": 9, "runs": 1, "steps": 1, "llm_calls": 1, "stacks": 1, "ticks": 1, "messages": 1}
    assert store.stacks_by_id(["s1"]).keys() == {"s1"}

    assert expire(store, 7, now_ms=T0 + 3650 * DAY_MS) == 0  # still in flight ten years on: still there
    assert store.table_counts() == after


def test_a_legacy_event_time_ttl_is_removed_so_it_cannot_expire_a_run_in_flight(tmp_path: Path) -> None:
    """Older versions ran ``ALTER TABLE events MODIFY TTL occurred_at + N DAY`` (``set_ttl``): ClickHouse then
    deleted the events of any run older than N days, finished or not. Start removes that clause; the forced merge
    below (what ClickHouse would do on its own later) then deletes nothing."""
    store = ClickHouseStore(path=str(tmp_path / "ch"))
    store.migrate()
    store.command(f"ALTER TABLE {store.quoted_database}.events MODIFY TTL toDateTime(occurred_at) + INTERVAL 1 DAY")
    store.command(
        f"ALTER TABLE {store.quoted_database}.runs MODIFY TTL toDateTime(finished_at) + INTERVAL 1 DAY "
        "DELETE WHERE status IN ('completed', 'failed', 'cancelled', 'rejected')"
    )
    assert store.drop_legacy_ttl() == ["events", "runs"]
    assert store.drop_legacy_ttl() == []  # and only once
    project(store, in_flight())
    store.command(f"OPTIMIZE TABLE {store.quoted_database}.events FINAL")
    assert [e.seq for e in store.run_events("r2")] == [1, 2, 3]
    store.close()


def test_the_legacy_ttl_would_have_expired_it(tmp_path: Path) -> None:
    """The control for the test above: with the old clause left in place, the same merge deletes the run's
    history although the run has not finished."""
    store = ClickHouseStore(path=str(tmp_path / "ch"))
    store.migrate()
    store.command(f"ALTER TABLE {store.quoted_database}.events MODIFY TTL toDateTime(occurred_at) + INTERVAL 1 DAY")
    project(store, in_flight())
    store.command(f"OPTIMIZE TABLE {store.quoted_database}.events FINAL")
    assert store.run_events("r2") == []
    store.close()


def test_a_stack_deleted_before_the_cutoff_goes_with_its_events_ticks_and_own_threads(store: ProjectionStore) -> None:
    """``scenario``'s stack s1 wrote thread ``s1/planner`` alone (through r1); it also wrote to ``shared``, which a
    run outside any stack (r3, still in flight) wrote to as well: that thread is not the stack's alone, and stays."""
    deleted = Envelope.wrap(
        StackDeleted(reason="done with it"), id="stack:s1/6", key=stack_key("s1"), seq=6, occurred_at_ms=T0 + 20_000
    )
    r3 = _history(
        "r3",
        [
            RunStarted(workflow="wf", spec_hash=SPEC.content_hash(), spec=SPEC, input={}),
            MessageAppended(thread_id="shared", message_id="m-2", role="user", content="hi", stack_id="s1"),
            MessageAppended(thread_id="shared", message_id="m-3", role="user", content="hello", stack_id=""),
        ],
        partition=2,
    )
    project(store, [*scenario(), (1, 100, deleted), *r3])
    assert store.stacks_by_id(["s1"])["s1"].status == "deleted"
    assert store.table_counts()["messages"] == 3

    assert expire(store, 7, now_ms=T0 + 6 * DAY_MS) == 0  # deleted six days ago, TTL seven: all still there
    assert store.stacks_by_id(["s1"]).keys() == {"s1"}

    assert expire(store, 7, now_ms=T0 + 8 * DAY_MS) == 1  # r1; r3 is in flight
    assert store.stacks_by_id(["s1"]) == {} and store.run_events(stack_key("s1")) == []
    assert store.ticks_by_key([("s1", 1), ("s1", 2)]) == {}
    counts = store.table_counts()
    assert counts["messages"] == 2 and counts["stacks"] == 0 and counts["ticks"] == 0  # s1/planner went
    assert [e.seq for e in store.run_events("r3")] == [1, 2, 3]
