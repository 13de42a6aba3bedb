"""A finished run's three stages with the engine (``tickflow.core.retention``), and verify-engine's view of them:
a run whose state expired by the rule that applies to it (a tick run's is shorter) is expired, not missing."""

from __future__ import annotations

import dataclasses

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.runtime.test_quarantine import _finished_log, _records
from tickflow.core.retention import Retention
from tickflow.core.state import RunState, fold, shrink
from tickflow.events import Envelope
from tickflow.events.codec import encode
from tickflow.runtime.replay import compare_partition

RULES = Retention(state_ms=10_000, tick_state_ms=1_000, id_ms=100_000, full_state_ms=500)


def _as_tick(log: list[Envelope]) -> list[Envelope]:
    """The same run, started by a stack: its first event names the stack as its parent."""
    first = log[0]
    started = first.payload.model_copy(update={"parent_run_id": "stack:s1"})
    return [first.model_copy(update={"payload": started}), *log[1:]]


def test_a_finished_run_is_kept_full_then_shrunk_then_expired_and_its_id_stays_taken() -> None:
    run = fold("r1", _finished_log())
    end = run.ended_at_ms
    assert end is not None
    assert RULES.stage(run, end) == "keep" and RULES.due_ms(run) == end + 500
    assert RULES.stage(run, end + 500) == "shrink"
    small = shrink(run)
    assert RULES.stage(small, end + 500) == "keep" and RULES.due_ms(small) == end + 10_000
    assert RULES.stage(small, end + 10_000) == "expire" and RULES.stage(run, end + 10_000) == "expire"
    assert RULES.id_taken_until(run, end + 10_000) == end + 110_000


def test_a_tick_run_expires_sooner_and_leaves_no_id_behind() -> None:
    tick = fold("s1.t1", [e.model_copy(update={"key": "s1.t1"}) for e in _as_tick(_finished_log())])
    end = tick.ended_at_ms
    assert end is not None and RULES.is_tick(tick)
    assert RULES.stage(tick, end + 999) == "shrink" and RULES.stage(tick, end + 1_000) == "expire"
    assert RULES.due_ms(shrink(tick)) == end + 1_000
    assert RULES.id_taken_until(tick, end + 1_000) is None


def test_a_live_run_is_decided_at_its_own_deadline() -> None:
    live = RunState("r1", status="running")
    assert RULES.stage(live, 10**12) == "decide" and RULES.due_ms(live) == live.next_due_ms()


@given(st.integers(0, 20_000), st.integers(0, 20_000), st.integers(0, 20_000), st.booleans())
def test_the_stages_follow_each_other_in_order(full: int, kept: int, at: int, tick: bool) -> None:
    """Whatever the settings: once shrunk or expired, a run never goes back a stage as time passes, and its timer
    is never due before the moment its stage changes."""
    rules = dataclasses.replace(RULES, full_state_ms=full, state_ms=kept, tick_state_ms=kept // 2)
    log = _as_tick(_finished_log()) if tick else _finished_log()
    run = fold("r1", log)
    end = run.ended_at_ms
    assert end is not None
    order = {"keep": 0, "shrink": 1, "expire": 2}
    seen = [order[rules.stage(run, end + t)] for t in (0, at, at + 1, 2 * at + 1, 40_001)]
    assert seen == sorted(seen) and seen[-1] == 2
    due = rules.due_ms(run)
    assert due is not None and rules.stage(run, due - 1) == "keep" and rules.stage(run, due) != "keep"


def test_verify_engine_counts_a_tick_run_past_its_shorter_retention_as_expired() -> None:
    log = [e.model_copy(update={"key": "s1.t1"}) for e in _as_tick(_finished_log())]
    end = fold("s1.t1", log).ended_at_ms
    assert end is not None
    records = _records([(e.key, encode(e)) for e in log])
    report = compare_partition(0, {}, records, end + 2_000, RULES)  # past the tick's 1 s, within the run's 10 s
    assert (report.expired, report.missing_live) == (1, []), report
    plain = [e.model_copy(update={"key": "r9"}) for e in _finished_log()]
    report = compare_partition(0, {}, _records([(e.key, encode(e)) for e in plain]), end + 2_000, RULES)
    assert (report.expired, report.missing_live) == (0, ["r9"]), report
