"""The stacks demo, short (5 stacks x 20 s, a tick every 5 s), on the real broker and chDB: every number of its
report — read from ClickHouse — is recounted from the Kafka events topic, the source of truth."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.harness import read_topic, settings_for
from tickflow.demo import OFFLINE_LABEL, registry
from tickflow.demo.runner import SMALL_BUDGET_TOKENS, demo_settings, drive_stacks, print_report
from tickflow.events.envelope import Envelope
from tickflow.node import Node

pytestmark = pytest.mark.integration


def _p(e: Envelope) -> Any:
    return e.payload


async def test_the_stacks_demo_reports_what_the_log_says(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    settings = demo_settings(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()))
    node = Node(settings, registry)
    await node.start()
    try:
        out = io.StringIO()
        report = await drive_stacks(node, stacks=5, seconds=20, interval=5, out=out)
        print_report(report, out)
    finally:
        await node.stop()
    text = out.getvalue()
    assert OFFLINE_LABEL in text and "Report (read from ClickHouse" in text
    assert "\r" in text and "ticks" in text  # the live progress line, updated in place

    log = [e for _, _, e in await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)]
    batch = report.batch
    stack_events = sorted((e for e in log if e.key.startswith(f"stack:{batch}-")), key=lambda e: (e.key, e.seq))
    run_events = [e for e in log if e.key.startswith(f"{batch}-")]
    by_type = Counter(e.type for e in stack_events)

    # Ticks: fired, skipped, finished by status, idle — and every tick's run result is visible (drained).
    assert report.ticks_fired == by_type["TickFired"] >= 5, (report.ticks, by_type)
    assert report.ticks.get("skipped", 0) == by_type["TickSkipped"]
    finished = [_p(e) for e in stack_events if e.type == "TickFinished"]
    assert Counter(f.status for f in finished) == Counter(
        {s: n for s, n in report.ticks.items() if s not in ("skipped", "fired", "queued")}
    )
    assert len(finished) == report.ticks_fired == report.visible  # nothing left running; all visible
    assert report.ticks_idle == sum(f.idle for f in finished)
    assert by_type["StackDeleted"] == 5  # the demo cleans up: no stack keeps ticking after it

    # Runs and LLM usage, attempt by attempt.
    assert report.runs.get("completed", 0) == sum(e.type == "RunCompleted" for e in run_events) > 0
    attempts = [_p(e) for e in run_events if e.type == "LlmCallAttempted"]
    assert report.llm_attempts == dict(Counter(a.outcome for a in attempts))
    assert report.llm_calls == len({(e.key, _p(e).path, _p(e).call) for e in run_events
                                    if e.type == "LlmCallAttempted"})
    assert report.tokens_in == sum(a.tokens_in for a in attempts) > 0
    assert report.tokens_out == sum(a.tokens_out for a in attempts) > 0
    assert report.tick_tokens == sum(f.tokens for f in finished) == report.tokens_in + report.tokens_out
    # Cost: the offline models carry the demo's illustrative price, so the figure is non-zero and says what it is.
    assert all(a.price_known and a.price_illustrative for a in attempts)
    assert report.cost_usd == pytest.approx(sum(a.cost_usd for a in attempts)) and report.cost_usd > 0
    assert (report.attempts_price_unknown, report.attempts_price_illustrative) == (0, len(attempts))
    (cost_line,) = [line for line in text.splitlines() if line.lstrip().startswith("tokens ")]
    assert f"cost ${report.cost_usd:.6f} (illustrative:" in cost_line, cost_line
    print(cost_line)
    assert set(report.llm_by_agent) <= {"planner", "builder", "communicator", "communicator_pai", "reviewer"}
    # Stack s001 ticks stack_tick_pai: its communicator, a Pydantic AI agent, is on the ledger beside the native ones.
    assert report.llm_by_agent.get("communicator_pai", (0, 0))[0] > 0, report.llm_by_agent
    assert report.tool_calls == sum(e.type == "StepCompleted" and _p(e).path.endswith(".tool") for e in run_events)
    assert report.tool_calls > 0  # the builder's run_tests: the tool loop ran

    # Latency: fired → run finished, per tick from the log; the report's percentiles are among those values, and
    # fired → visible is never earlier than fired → finished.
    fired_at = {_p(e).run_id: e.occurred_at_ms for e in stack_events if e.type == "TickFired"}
    ended_at = {e.key: e.occurred_at_ms for e in run_events if e.type in ("RunCompleted", "RunFailed")}
    engine = sorted(ended_at[r] - fired_at[r] for r in fired_at)
    assert report.engine_ms[0] in engine and report.engine_ms[1] in engine, (report.engine_ms, engine)
    v50, v99, vmax = report.visible_ms
    assert 0 < v50 <= v99 <= vmax < 60_000
    assert v50 >= report.engine_ms[0] and v99 >= report.engine_ms[1]

    # Budgets: a stack is reported paused by its budget exactly when the log paused it, and the budget held before
    # each LLM call: a paused stack used at most its budget (it stopped before the call that could pass it).
    paused = {e.key.removeprefix("stack:"): _p(e).reason for e in stack_events
              if e.type == "StackPaused" and _p(e).by == "budget"}
    reported = dict(report.budget_paused)
    assert set(reported) == set(paused) and all(reported[sid].endswith(why) for sid, why in paused.items())
    tokens = Counter[str]()
    for e in stack_events:
        if e.type == "TickFinished":
            tokens[e.key.removeprefix("stack:")] += _p(e).tokens
    for sid in paused:
        assert tokens[sid] <= SMALL_BUDGET_TOKENS, (sid, tokens[sid], paused[sid])
        assert f"{tokens[sid]:,} of {SMALL_BUDGET_TOKENS:,} tokens" in reported[sid]
    top = {sid: used for sid, used, _, _ in report.top_stacks}
    assert top == {sid: tokens[sid] for sid in top} and len(top) == 5
