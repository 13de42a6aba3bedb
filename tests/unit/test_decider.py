"""The decider, tested with explicit time and no I/O."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    Envelope,
    ErrorInfo,
    RetryPolicy,
    RunStep,
    StartRun,
    StepErrored,
    StepScheduled,
    StepSpec,
    StepSucceeded,
    WorkflowSpec,
)
from services.decider import Recover, RunState, Start, WorkerResult, decide, fold, run, task_for

SPEC = WorkflowSpec(
    name="wf",
    steps=(
        StepSpec(name="a", fn="wf.a"),
        StepSpec(name="b", fn="wf.b", retry=RetryPolicy(max_attempts=2)),
        StepSpec(name="c", fn="wf.c"),
    ),
)


def start(run_id: str = "r1", value: Any = 1) -> Start:
    cmd = Envelope.wrap(StartRun(workflow="wf", input=value), id=f"cmd-{run_id}", key=run_id, occurred_at_ms=1)
    return Start(cmd, SPEC)


def ok(state: RunState, output: Any = None, attempt: int | None = None) -> WorkerResult:
    env = Envelope.wrap(
        StepSucceeded(
            step=SPEC.steps[state.cursor].name,
            index=state.cursor,
            attempt=attempt or state.attempt,
            output=output,
            duration_ms=1.0,
        ),
        id=f"res-{state.run_id}-{state.cursor}-{attempt or state.attempt}",
        key=state.run_id,
        occurred_at_ms=2,
    )
    return WorkerResult(env)


def err(state: RunState, retryable: bool = True) -> WorkerResult:
    env = Envelope.wrap(
        StepErrored(
            step=SPEC.steps[state.cursor].name,
            index=state.cursor,
            attempt=state.attempt,
            error=ErrorInfo(type="ValueError", message="boom"),
            retryable=retryable,
            duration_ms=1.0,
        ),
        id=f"err-{state.run_id}-{state.cursor}-{state.attempt}",
        key=state.run_id,
        occurred_at_ms=2,
    )
    return WorkerResult(env)


def types(events: list[Envelope]) -> list[str]:
    return [e.type for e in events]


def test_start_schedules_first_step_with_run_input() -> None:
    d = run(RunState("r1"), start(value={"x": 1}), now_ms=100)
    assert types(d.events) == ["RunStarted", "StepScheduled"]
    assert [e.seq for e in d.events] == [1, 2]
    assert [e.id for e in d.events] == ["r1/1", "r1/2"]
    assert all(e.occurred_at_ms == 100 for e in d.events)
    assert d.state.status == "running" and d.state.cursor == 0
    scheduled = d.events[1].payload
    assert isinstance(scheduled, StepScheduled) and scheduled.input == {"x": 1}


def test_happy_path_pipes_outputs_and_completes() -> None:
    s = run(RunState("r1"), start(value=1), 0).state
    d = run(s, ok(s, output=2), 1)
    assert types(d.events) == ["StepCompleted", "StepScheduled"]
    assert isinstance(d.events[1].payload, StepScheduled) and d.events[1].payload.input == 2
    s = d.state
    s = run(s, ok(s, output=3), 2).state
    d = run(s, ok(s, output=4), 3)
    assert types(d.events) == ["StepCompleted", "RunCompleted"]
    assert d.state.status == "completed" and d.state.last_output == 4 and d.state.seq == 8


def test_start_is_idempotent() -> None:
    s = run(RunState("r1"), start(), 0).state
    assert decide(s, start(), 5) == []


def test_duplicate_and_stale_results_are_ignored() -> None:
    s = run(RunState("r1"), start(), 0).state
    first = ok(s, output="x")
    s2 = run(s, first, 1).state
    assert decide(s2, first, 2) == []  # redelivered result of step a
    stale = ok(s2, attempt=7)
    assert decide(s2, stale, 2) == []  # an attempt the run is not waiting for


def test_retry_then_exhaust_fails_the_run() -> None:
    s = run(RunState("r1"), start(), 0).state
    s = run(s, ok(s), 1).state  # step b (max 2 attempts) is next
    d = run(s, err(s), 2)
    assert types(d.events) == ["StepFailed", "StepScheduled"]
    assert d.state.attempt == 2
    d = run(d.state, err(d.state), 3)
    assert types(d.events) == ["StepFailed", "RunFailed"]
    assert d.state.status == "failed" and d.state.error is not None and d.state.error.message == "boom"


def test_non_retryable_error_fails_without_retry() -> None:
    s = run(RunState("r1"), start(), 0).state
    s = run(s, ok(s), 1).state
    assert types(decide(s, err(s, retryable=False), 2)) == ["StepFailed", "RunFailed"]


def test_unknown_workflow_is_rejected() -> None:
    cmd = Envelope.wrap(StartRun(workflow="nope"), id="c", key="r9", occurred_at_ms=1)
    d = run(RunState("r9"), Start(cmd, None), 0)
    assert types(d.events) == ["RunRejected"]
    assert d.state.status == "rejected" and "unknown workflow 'nope'" in (d.state.error.message or "")


def test_recover_completes_a_decision_cut_short_by_a_crash() -> None:
    s = run(RunState("r1"), start(), 0).state
    full = run(s, ok(s, output=9), 1)
    # only StepCompleted reached the log before the crash
    after_crash = fold("r1", [*refold_events(s), full.events[0]])
    healed = decide(after_crash, Recover(), 5)
    assert types(healed) == ["StepScheduled"]
    assert healed[0].seq == full.events[1].seq
    assert healed[0].payload == full.events[1].payload
    assert decide(full.state, Recover(), 5) == []


def refold_events(state: RunState) -> list[Envelope]:
    return run(RunState(state.run_id), start(state.run_id), 0).events


def test_tasks_carry_idempotency_key_and_function() -> None:
    d = run(RunState("r1"), start(), 0)
    task = task_for(d.state, d.events[1].occurred_at_ms, d.events[1].id)
    assert task is not None
    assert isinstance(task.payload, RunStep)
    assert task.payload.fn == "wf.a" and task.id == "r1/0/1" == task.payload.idempotency_key
    again = task_for(d.state, 50)
    assert again is not None and again.id == task.id and again.payload.input == task.payload.input


# --- properties -----------------------------------------------------------------------------------------

Action = st.tuples(st.sampled_from(["ok", "err", "fatal", "dup", "stale", "recover", "restart"]), st.integers(0, 99))


def play(actions: list[tuple[str, int]]) -> tuple[RunState, list[Envelope]]:
    state, log = run(RunState("p"), start("p"), 0).state, []
    log.extend(run(RunState("p"), start("p"), 0).events)
    last: WorkerResult | None = None
    for now, (action, value) in enumerate(actions, start=1):
        if state.terminal:
            break
        if action == "ok":
            last = inp = ok(state, output=value)
        elif action == "err":
            last = inp = err(state)
        elif action == "fatal":
            inp = err(state, retryable=False)
        elif action == "dup" and last is not None:
            inp = last
        elif action == "stale":
            inp = ok(state, attempt=state.attempt + 5)
        elif action == "restart":
            inp = start("p")
        else:
            inp = Recover()
        d = run(state, inp, now)
        log.extend(d.events)
        state = d.state
    return state, log


@settings(max_examples=300, deadline=None)
@given(st.lists(Action, max_size=30))
def test_refolding_emitted_events_reproduces_the_state(actions: list[tuple[str, int]]) -> None:
    state, log = play(actions)
    assert fold("p", log) == state
    assert [e.seq for e in log] == list(range(1, len(log) + 1))  # no gaps, no duplicates
    assert len({e.id for e in log}) == len(log)


@settings(max_examples=200, deadline=None)
@given(st.lists(Action, max_size=30))
def test_replay_is_deterministic(actions: list[tuple[str, int]]) -> None:
    assert play(actions) == play(actions)


@settings(max_examples=200, deadline=None)
@given(st.lists(Action, max_size=30), st.integers(min_value=0, max_value=60))
def test_a_crash_after_any_prefix_heals_to_the_same_log(actions: list[tuple[str, int]], cut: int) -> None:
    """Losing the tail of the log then recovering never duplicates a seq nor leaves a run stuck."""
    _, log = play(actions)
    prefix = log[: min(cut, len(log))]
    if not prefix:
        return
    state = fold("p", prefix)
    healed = decide(state, Recover(), 999)
    refolded = fold("p", prefix + healed)
    assert decide(refolded, Recover(), 1000) == []
    assert refolded.terminal or refolded.step_status == "scheduled"
