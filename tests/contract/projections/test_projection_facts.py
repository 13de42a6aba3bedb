"""The analytics tables on every store: the rows do not depend on how the log was cut into batches, on cold
caches between batches, or on batches redelivered after a crash; on ClickHouse the per-minute rollups count every
fact exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.contract.projecting import project
from tickflow.events import Envelope, ErrorInfo, RunCompleted, RunStarted, SequenceNode, StepNode, WorkflowSpec
from tickflow.events.agents import (
    LlmCallAttempted,
    MessageAppended,
    StackCreated,
    StackPaused,
    TickFinished,
    TickFired,
    TickSkipped,
    stack_key,
)
from tickflow.events.schemas import Payload, StepCompleted, StepFailed, StepScheduled
from tickflow.projections.fold import Record
from tickflow.projections.store import ClickHouseStore, MemoryStore, ProjectionStore

SPEC = WorkflowSpec(name="wf", root=SequenceNode(name="main", nodes=(StepNode(name="a", fn="wf.a"),)))
T0 = 1_700_000_000_000


def _history(key: str, payloads: list[Payload], partition: int, t0: int = T0) -> list[Record]:
    return [
        (partition, i, Envelope.wrap(p, id=f"{key}/{i + 1}", key=key, seq=i + 1, occurred_at_ms=t0 + 1000 * i))
        for i, p in enumerate(payloads)
    ]


def scenario() -> list[Record]:
    """A run with a retried step, two LLM attempts (the second a fallback) and a memory message; a stack with a
    finished tick, a skipped one and a budget pause. Run on partition 0, stack on partition 1, interleaved."""
    error = ErrorInfo(type="ValueError", message="flaky")
    run = _history(
        "r1",
        [
            RunStarted(workflow="wf", spec_hash=SPEC.content_hash(), spec=SPEC, input={}),
            StepScheduled(path="a", step="a", attempt=1, pool="default"),
            StepFailed(path="a", step="a", attempt=1, error=error, will_retry=True, duration_ms=12.5),
            StepScheduled(path="a", step="a", attempt=2, pool="default"),
            LlmCallAttempted(
                path="a",
                call=0,
                attempt=1,
                agent="planner",
                stack_id="s1",
                provider="groq",
                model="m1",
                outcome="rate_limited",
                http_status=429,
                latency_ms=30.0,
            ),
            LlmCallAttempted(
                path="a",
                call=0,
                attempt=2,
                agent="planner",
                stack_id="s1",
                provider="local",
                model="m2",
                outcome="ok",
                tokens_in=100,
                tokens_out=20,
                cost_usd=0.002,
                latency_ms=80.0,
                fallback=True,
            ),
            MessageAppended(
                thread_id="s1/planner",
                message_id="m-1",
                role="assistant",
                content="plan",
                agent="planner",
                stack_id="s1",
                embedding=[0.6, 0.8],
                embedder="offline-hash",
            ),
            StepCompleted(path="a", step="a", attempt=2, output=1, duration_ms=40.0),
            RunCompleted(output=1),
        ],
        partition=0,
    )
    stack = _history(
        stack_key("s1"),
        [
            StackCreated(stack_id="s1", workflow="wf", interval_s=10, budget_tokens=100),
            TickFired(tick=1, run_id="r1", due_at_ms=T0 - 50),
            TickSkipped(tick=2, due_at_ms=T0 + 10_000, reason="tick 1 still running"),
            TickFinished(tick=1, run_id="r1", status="completed", tokens=120, cost_usd=0.002),
            StackPaused(by="budget", reason="120 tokens used of a budget of 100"),
        ],
        partition=1,
    )
    merged = [r for pair in zip(run, stack, strict=False) for r in pair] + run[len(stack) :]
    return merged


def contents(store: ProjectionStore) -> dict[str, Any]:
    return {
        "counts": store.table_counts(),
        "run": store.runs_by_id(["r1"]),
        "steps": store.run_steps("r1"),
        "stacks": store.stacks_by_id(["s1"]),
        "ticks": store.ticks_by_key([("s1", 1), ("s1", 2)]),
    }


def test_rows_of_every_table(store: ProjectionStore) -> None:
    project(store, scenario())
    assert store.table_counts() == {
        "events": 14,
        "runs": 1,
        "steps": 2,
        "llm_calls": 2,
        "stacks": 1,
        "ticks": 2,
        "messages": 1,
    }
    first, second = store.run_steps("r1")
    assert (first.attempt, first.status, first.error_type, first.will_retry) == (1, "failed", "ValueError", 1)
    assert (second.attempt, second.status, second.duration_ms, second.workflow) == (2, "completed", 40.0, "wf")
    assert second.scheduled_at_ms == T0 + 3000 and second.finished_at_ms == T0 + 7000
    stack = store.stacks_by_id(["s1"])["s1"]
    assert (stack.status, stack.paused_by, stack.tokens_used, stack.ticks_fired, stack.ticks_skipped) == (
        "paused",
        "budget",
        120,
        1,
        1,
    )
    assert (stack.last_run_id, stack.last_run_status, stack.budget_tokens) == ("r1", "completed", 100)
    ticks = store.ticks_by_key([("s1", 1), ("s1", 2)])
    assert (ticks[("s1", 1)].status, ticks[("s1", 1)].lag_ms, ticks[("s1", 1)].tokens) == ("completed", 1050.0, 120)
    assert ticks[("s1", 1)].fired_at_ms == T0 + 1000 and ticks[("s1", 2)].status == "skipped"


def test_batches_cold_caches_and_redeliveries_change_nothing(store: ProjectionStore) -> None:
    records = scenario()
    one = MemoryStore()
    project(one, records)
    for cut in (3, 7, 11):  # a crash after each of these batches: the next batch starts before the cut again
        project(store, records[:cut])
        project(store, records[max(0, cut - 4) : cut + 2])
    project(store, records)
    assert contents(store) == contents(one)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 14), st.integers(0, 14)), min_size=1, max_size=6))
def test_any_replay_schedule_gives_the_rows_of_one_pass(windows: list[tuple[int, int]]) -> None:
    """Whatever ranges get (re)projected, with a cold cache each time, once the whole log has been seen the tables
    equal a single pass — as long as each batch starts at or before the committed position (as Kafka redelivers)."""
    records = scenario()
    reference = MemoryStore()
    project(reference, records)
    store = MemoryStore()
    committed = 0
    for a, b in windows:
        start = min(a, committed)  # redelivery starts at or before the committed offset, never after it
        end = max(start, b)
        project(store, records[start:end])
        committed = max(committed, end)
    project(store, records[committed:])
    assert contents(store) == contents(reference)


def test_rollups_count_each_fact_once_after_redeliveries(tmp_path: Path) -> None:
    store = ClickHouseStore(path=str(tmp_path / "ch"))
    store.migrate()
    records = scenario()
    project(store, records[:9])
    project(store, records[:12])  # redelivered: the first 9 were inserted but not committed
    project(store, records)
    project(store, records)
    runs = store.query("SELECT sum(started), sum(completed), sum(failed) FROM {db}.runs_per_minute WHERE workflow='wf'")
    assert runs == [(1, 1, 0)]
    llm = store.query(
        "SELECT sum(calls), sum(errors), sum(fallbacks), sum(tokens_in), sum(tokens_out) FROM {db}.llm_usage_per_minute"
    )
    assert llm == [(2, 1, 1, 100, 20)]
    steps = store.query(
        "SELECT sum(attempts), sum(failures), quantilesTDigestMerge(0.5, 0.9, 0.99)(latency)[3] "
        "FROM {db}.step_latency_per_minute WHERE workflow = 'wf' AND step = 'a'"
    )
    assert steps[0][:2] == (2, 1) and 12.0 <= steps[0][2] <= 40.0
    store.close()
