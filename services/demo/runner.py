"""The demo. Default: the seed ADR's scenario — N agent stacks x 4 agents ticking every few seconds for about a
minute — with a live progress line and a report read from ClickHouse. ``--scenario orders``: N order runs.

Stacks scenario, in order: start every role in this process (engine, worker, projector, API); create the stacks
through the SDK; let them tick for ``seconds``; delete them (no new ticks, the running ones finish); wait until
every fired tick's run result is visible in ClickHouse; then report from ClickHouse alone. Every number in the
report is a SQL query over the projections, so it can be checked against the log (``tests/integration/
test_demo.py`` does: it counts the same things in the Kafka events topic).

Tick → visible latency, precisely: for each finished tick, ``runs.projected_at`` of the tick run's terminal row
(ClickHouse's ``now64(3)`` when the projector inserted the row saying completed/failed — the moment a query can
first see the result) minus ``ticks.fired_at`` (the ``TickFired`` event's ``occurred_at``, the engine's clock
when it fired the tick). Both clocks are this machine's wall clock (one process). It splits into fired → run
finished (``runs.finished_at``, the engine) and run finished → visible (the projector's batch and insert).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

from tickflow.client import Client
from tickflow.demo.pydantic_stack import PAI_EVERY
from tickflow.demo.workflows import (
    AGENTS,
    GOALS,
    OFFLINE_LABEL,
    registry,
    stack_tick_pai,
    write_demo_llm_config,
)
from tickflow.node import Node
from tickflow.settings import Settings

__all__ = [
    "StackReport",
    "demo_settings",
    "drive_stacks",
    "print_report",
    "run_demo",
    "run_stacks_demo",
    "stack_report",
]

#: Stack ids of every demo start with this; a batch is ``demo-<MMDDHHMMSS>``.
BATCH_PREFIX = "demo-"
#: Every BUDGET_EVERY-th stack (from index BUDGET_OFFSET) gets a small token budget, so budget pauses show.
BUDGET_EVERY, BUDGET_OFFSET = 20, 3
#: The small budget, in tokens: a tick uses ~500-1,500 tokens of the offline model (growing with memory), so a
#: budgeted stack pauses after about three ticks.
SMALL_BUDGET_TOKENS = 2_500


def demo_settings(settings: Settings) -> Settings:
    """The settings the stacks demo runs with: its own offline LLM configuration, every pool the agents use, and
    (unless ``TICKFLOW_WORKER_CONCURRENCY`` says otherwise) 64 steps at once per worker, because LLM steps spend
    most of their time waiting for the (simulated) model, not on the CPU."""
    path = write_demo_llm_config(settings.state_dir / "demo" / "llm.json")
    concurrency = settings.worker_concurrency if "TICKFLOW_WORKER_CONCURRENCY" in os.environ else 64
    return settings.with_(llm_config=path, pools=tuple(sorted(set(settings.pools) | registry.pools())),
                          worker_concurrency=concurrency)


# --- stacks scenario ----------------------------------------------------------------------------------------


async def run_stacks_demo(settings: Settings, *, stacks: int, seconds: float, interval: float,
                          out: TextIO = sys.stdout, keep_serving: bool = False) -> StackReport:
    """Start a node, run the stacks scenario on it, print the report; returns the report.

    The dashboard is served by the node's API all along; with ``keep_serving`` it stays up after the report
    until Ctrl-C, so the run can still be looked at."""
    t0 = time.monotonic()
    node = Node(demo_settings(settings), registry)
    await node.start()
    try:
        started_s = time.monotonic() - t0
        print(f"  dashboard: {node.settings.api_url}/ui/board (live stacks board; runs, analytics, system pages)",
              file=out)
        report = await drive_stacks(node, stacks=stacks, seconds=seconds, interval=interval, out=out)
        report.timings = {"node start": started_s, **report.timings, "end to end": time.monotonic() - t0}
        print_report(report, out)
        if keep_serving:
            print(f"\nThe dashboard stays up at {node.settings.api_url}/ui until Ctrl-C.", file=out, flush=True)
            await asyncio.Event().wait()
        else:
            print(f"\nTo look at it again: tickflow up, then open {node.settings.api_url}/ui", file=out)
        return report
    finally:
        await node.stop()


async def drive_stacks(node: Node, *, stacks: int, seconds: float, interval: float,
                       out: TextIO = sys.stdout) -> StackReport:
    """Create ``stacks`` stacks on a started node, let them tick ``seconds``, drain, and read the report."""
    if stacks < 1 or seconds <= 0 or interval < 1:
        raise ValueError("the demo needs at least 1 stack, seconds > 0 and an interval of at least 1 s")
    batch = f"{BATCH_PREFIX}{time.strftime('%m%d%H%M%S')}"
    s = node.settings
    print(f"tickflow demo: {stacks} agent stacks x {len(AGENTS)} agents ({', '.join(a.name for a in AGENTS)}), "
          f"one tick every {interval:g} s each, for {seconds:g} s", file=out)
    print(f"  models: {OFFLINE_LABEL} (offline/tool-then-answer, offline/echo; simulated 20-250 ms latency and "
          "3 % simulated 503s)", file=out)
    stale = await asyncio.to_thread(_delete_stale_stacks, node, s)
    if stale:
        print(f"  deleted {stale} stacks left playing by an interrupted earlier demo", file=out)
    t0 = time.monotonic()
    ids = await asyncio.to_thread(_create_stacks, s, batch, stacks, interval)
    timings = {"create stacks": time.monotonic() - t0}
    budgeted = sum(1 for i in range(stacks) if i % BUDGET_EVERY == BUDGET_OFFSET)
    pai = sum(1 for i in range(stacks) if _workflow_of(i) == "stack_tick_pai")
    print(f"  created {stacks} stacks '{batch}-sNNN' in {timings['create stacks']:.1f}s ({budgeted} with a "
          f"{SMALL_BUDGET_TOKENS:,}-token budget; {pai} whose communicator is a Pydantic AI agent, "
          "communicator_pai); ticking…", file=out)
    deleted = False
    try:
        t_run = time.monotonic()
        while (elapsed := time.monotonic() - t_run) < seconds:
            await _progress(node, batch, elapsed, out)
            await asyncio.sleep(min(1.0, max(0.0, seconds - elapsed)))
        await _progress(node, batch, time.monotonic() - t_run, out)
        timings["ticking"] = time.monotonic() - t_run
        t_drain = time.monotonic()
        await asyncio.to_thread(_delete_stacks, s, ids)
        deleted = True
        drained = await _drain(node, batch, stacks, timeout_s=max(60.0, 3 * interval), out=out, t_run=t_run)
        timings["drain"] = time.monotonic() - t_drain
        print(file=out)
        if not drained:
            print("  warning: some ticks were still running at the drain deadline; they show as running", file=out)
    finally:
        if not deleted:  # Ctrl-C or an error: do not leave 100 stacks ticking in this prefix
            await asyncio.to_thread(_delete_stacks, s, ids)
    t_report = time.monotonic()
    report = await asyncio.to_thread(stack_report, node.store, batch)
    timings["report queries"] = time.monotonic() - t_report
    report.timings.update(timings)
    report.stacks_created, report.seconds, report.interval = stacks, seconds, interval
    return report


def _stack_id(batch: str, i: int) -> str:
    return f"{batch}-s{i:03d}"


def _workflow_of(i: int) -> str:
    """Stack ``i``'s tick workflow: one stack in ``PAI_EVERY`` has its communicator written with Pydantic AI."""
    return "stack_tick_pai" if stack_tick_pai is not None and i % PAI_EVERY == 1 else "stack_tick"


def _create_stacks(settings: Settings, batch: str, count: int, interval: float, callers: int = 8) -> list[str]:
    """Create the stacks from ``callers`` threads through the SDK, as a dashboard's users would."""

    def share(k: int) -> list[str]:
        made = []
        with Client(settings.api_url, token=settings.api_token) as c:
            for i in range(k, count, callers):
                sid = _stack_id(batch, i)
                budget = SMALL_BUDGET_TOKENS if i % BUDGET_EVERY == BUDGET_OFFSET else None
                c.create_stack(sid, _workflow_of(i), name=f"team {i}", interval_s=interval, overlap="skip",
                               idle_backoff_max_s=4 * interval, budget_tokens=budget,
                               input={"goal": GOALS[i % len(GOALS)]})
                made.append(sid)
        return made

    with ThreadPoolExecutor(callers) as pool:
        return sorted(sid for ids in pool.map(share, range(callers)) for sid in ids)


def _delete_stacks(settings: Settings, ids: list[str], callers: int = 8) -> None:
    def share(k: int) -> None:
        with Client(settings.api_url, token=settings.api_token) as c:
            for sid in ids[k::callers]:
                c.delete_stack(sid)

    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(share, range(callers)))


def _delete_stale_stacks(node: Node, settings: Settings) -> int:
    """Delete demo stacks an interrupted earlier demo left playing (the engine would keep ticking them)."""
    rows = node.store.query(
        "SELECT stack_id FROM {db}.stacks FINAL WHERE startsWith(stack_id, {p:String}) AND status != 'deleted'",
        {"p": BATCH_PREFIX},
    )
    ids = [str(r[0]) for r in rows]
    if ids:
        _delete_stacks(settings, ids)
    return len(ids)


#: The live line's counts. Fact tables are read without FINAL (the projector inserts each fact once, and a failed
#: step attempt's row is written once), which keeps this once-a-second query cheap; the report uses FINAL.
_PROGRESS_SQL = """
SELECT
  (SELECT countIf(status != 'skipped') FROM {db}.ticks FINAL WHERE startsWith(stack_id, {b:String})),
  (SELECT countIf(status IN ('fired', 'queued')) FROM {db}.ticks FINAL WHERE startsWith(stack_id, {b:String})),
  (SELECT countIf(status = 'completed') FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String})),
  (SELECT countIf(status IN ('failed', 'rejected', 'cancelled')) FROM {db}.runs FINAL
     WHERE startsWith(run_id, {b:String})),
  (SELECT uniqExact(run_id, path, call) FROM {db}.llm_calls WHERE startsWith(stack_id, {b:String})),
  (SELECT sum(tokens_in + tokens_out) FROM {db}.llm_calls WHERE startsWith(stack_id, {b:String})),
  (SELECT countIf(outcome != 'ok') FROM {db}.llm_calls WHERE startsWith(stack_id, {b:String})),
  (SELECT countIf(status = 'failed') FROM {db}.steps WHERE startsWith(run_id, {b:String}))
"""


async def _progress(node: Node, batch: str, elapsed: float, out: TextIO, note: str = "") -> tuple[int, ...]:
    """Print the one-line progress (read from ClickHouse, like everything the demo shows) in place."""
    row = (await asyncio.to_thread(node.store.query, _PROGRESS_SQL, {"b": batch}))[0]
    fired, running, completed, failed, calls, tokens, llm_errors, step_errors = (int(v or 0) for v in row)
    out.write(
        f"\r  {elapsed:5.1f}s · ticks {fired:>5,} fired ({running:>3} running) · runs {completed:>5,} done"
        f"{f' {failed} failed' if failed else ''} · LLM calls {calls:>6,} · tokens {tokens:>9,} · errors "
        f"{llm_errors + step_errors:>3}{note}   "
    )
    out.flush()
    return fired, running, completed, failed


async def _drain(node: Node, batch: str, stacks: int, *, timeout_s: float, out: TextIO, t_run: float) -> bool:
    """Wait until every stack's deletion is in ClickHouse (so is every tick fired before it: a stack's events are
    ordered), no tick of the batch is running, and every tick run's result is in ClickHouse."""
    deadline = time.monotonic() + timeout_s
    query = (
        "SELECT (SELECT countIf(status = 'deleted') FROM {db}.stacks FINAL WHERE startsWith(stack_id, {b:String})), "
        "       (SELECT countIf(status IN ('fired', 'queued')) FROM {db}.ticks FINAL "
        "        WHERE startsWith(stack_id, {b:String})), "
        "       (SELECT countIf(status IN ('completed', 'failed', 'cancelled', 'rejected')) FROM {db}.ticks FINAL "
        "        WHERE startsWith(stack_id, {b:String})), "
        "       (SELECT countIf(status IN ('completed', 'failed', 'cancelled', 'rejected')) FROM {db}.runs FINAL "
        "        WHERE startsWith(run_id, {b:String}))"
    )
    while time.monotonic() < deadline:
        await _progress(node, batch, time.monotonic() - t_run, out, " · draining")
        row = (await asyncio.to_thread(node.store.query, query, {"b": batch}))[0]
        deleted, running, ticks_done, runs_done = (int(v) for v in row)
        if deleted == stacks and running == 0 and ticks_done == runs_done:
            return True
        await asyncio.sleep(0.5)
    return False


# --- the report: ClickHouse only ------------------------------------------------------------------------------


@dataclass
class StackReport:
    """What the stacks demo reports; every field comes from a ClickHouse query (see ``stack_report``)."""

    batch: str
    ticks: dict[str, int] = field(default_factory=dict)  # by status: completed, failed, skipped, fired (running)…
    ticks_fired: int = 0
    ticks_idle: int = 0
    tick_lag_ms: tuple[float, float] = (0.0, 0.0)
    runs: dict[str, int] = field(default_factory=dict)
    run_duration_ms: tuple[float, float] = (0.0, 0.0)
    llm_calls: int = 0
    llm_attempts: dict[str, int] = field(default_factory=dict)  # by outcome
    llm_by_agent: dict[str, tuple[int, int]] = field(default_factory=dict)  # agent -> (calls, tokens)
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    attempts_price_unknown: int = 0
    attempts_price_illustrative: int = 0
    tick_tokens: int = 0
    visible: int = 0
    visible_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)  # p50, p99, max of fired → run result visible
    engine_ms: tuple[float, float] = (0.0, 0.0)  # p50, p99 of fired → run finished
    projector_ms: tuple[float, float] = (0.0, 0.0)  # p50, p99 of run finished → visible
    steps_completed: int = 0
    steps_failed: int = 0
    step_failures: list[tuple[str, str, int]] = field(default_factory=list)  # (step, error, count)
    run_failures: list[tuple[str, int]] = field(default_factory=list)
    budget_paused: list[tuple[str, str]] = field(default_factory=list)  # (stack, "used of budget (over): reason")
    top_stacks: list[tuple[str, int, int, str]] = field(default_factory=list)  # (stack, tokens, ticks, paused_by)
    tool_calls: int = 0
    stacks_created: int = 0
    seconds: float = 0.0
    interval: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


def _f(v: Any) -> float:
    return float(v) if v is not None and v == v else 0.0  # NaN (quantile of nothing) → 0


def stack_report(store: Any, batch: str) -> StackReport:
    """Read the report of ``batch`` from ClickHouse (``FINAL`` everywhere: the latest version of each row)."""
    p = {"b": batch}

    def q(sql: str) -> list[tuple[Any, ...]]:
        return list(store.query(sql, p))

    r = StackReport(batch=batch)
    r.ticks = {str(s): int(n) for s, n in q(
        "SELECT status, count() FROM {db}.ticks FINAL WHERE startsWith(stack_id, {b:String}) GROUP BY status")}
    r.ticks_fired = sum(n for s, n in r.ticks.items() if s != "skipped")
    (idle, lag50, lag99, tick_tokens), = q(
        "SELECT countIf(idle = 1), quantileExactIf(0.5)(lag_ms, status != 'skipped'), "
        "quantileExactIf(0.99)(lag_ms, status != 'skipped'), sum(tokens) "
        "FROM {db}.ticks FINAL WHERE startsWith(stack_id, {b:String})")
    r.ticks_idle, r.tick_lag_ms, r.tick_tokens = int(idle), (_f(lag50), _f(lag99)), int(tick_tokens)
    r.runs = {str(s): int(n) for s, n in q(
        "SELECT status, count() FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String}) GROUP BY status")}
    (d50, d99), = q(
        "SELECT quantileExact(0.5)(ms), quantileExact(0.99)(ms) FROM (SELECT toUnixTimestamp64Milli(finished_at) - "
        "toUnixTimestamp64Milli(started_at) AS ms FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String}) "
        "AND status IN ('completed', 'failed'))")
    r.run_duration_ms = (_f(d50), _f(d99))
    (calls, tin, tout, cost, unknown, illustrative), = q(
        "SELECT uniqExact(run_id, path, call), sum(tokens_in), sum(tokens_out), sum(cost_usd), "
        "countIf(price_known = 0), countIf(price_illustrative = 1) "
        "FROM {db}.llm_calls FINAL WHERE startsWith(stack_id, {b:String})")
    r.llm_calls, r.tokens_in, r.tokens_out, r.cost_usd = int(calls), int(tin), int(tout), float(cost)
    r.attempts_price_unknown, r.attempts_price_illustrative = int(unknown), int(illustrative)
    r.llm_attempts = {str(o): int(n) for o, n in q(
        "SELECT outcome, count() FROM {db}.llm_calls FINAL WHERE startsWith(stack_id, {b:String}) "
        "GROUP BY outcome ORDER BY count() DESC")}
    r.llm_by_agent = {str(a): (int(c), int(t)) for a, c, t in q(
        "SELECT agent, uniqExact(run_id, path, call), sum(tokens_in + tokens_out) FROM {db}.llm_calls FINAL "
        "WHERE startsWith(stack_id, {b:String}) GROUP BY agent")}
    (n, v50, v99, vmax, e50, e99, p50, p99), = q(
        "SELECT count(), quantileExact(0.5)(visible), quantileExact(0.99)(visible), max(visible), "
        "quantileExact(0.5)(engine), quantileExact(0.99)(engine), quantileExact(0.5)(projector), "
        "quantileExact(0.99)(projector) FROM ("
        "  SELECT toUnixTimestamp64Milli(r.projected_at) - toUnixTimestamp64Milli(t.fired_at) AS visible,"
        "         toUnixTimestamp64Milli(r.finished_at) - toUnixTimestamp64Milli(t.fired_at) AS engine,"
        "         toUnixTimestamp64Milli(r.projected_at) - toUnixTimestamp64Milli(r.finished_at) AS projector"
        "  FROM (SELECT run_id, fired_at FROM {db}.ticks FINAL WHERE startsWith(stack_id, {b:String})"
        "        AND status IN ('completed', 'failed')) AS t"
        "  INNER JOIN (SELECT run_id, finished_at, projected_at FROM {db}.runs FINAL"
        "        WHERE startsWith(run_id, {b:String}) AND status IN ('completed', 'failed')) AS r"
        "  ON r.run_id = t.run_id)")
    r.visible, r.visible_ms = int(n), (_f(v50), _f(v99), _f(vmax))
    r.engine_ms, r.projector_ms = (_f(e50), _f(e99)), (_f(p50), _f(p99))
    (steps_ok, tools, steps_failed), = q(
        "SELECT countIf(status = 'completed'), countIf(status = 'completed' AND endsWith(step, '.tool')), "
        "countIf(status = 'failed') "
        "FROM {db}.steps FINAL WHERE startsWith(run_id, {b:String})")
    r.steps_completed, r.tool_calls, r.steps_failed = int(steps_ok), int(tools), int(steps_failed)
    r.step_failures = [(str(s), str(m), int(c)) for s, m, c in q(
        "SELECT step, error_type || ': ' || substring(error_message, 1, 100) AS e, count() FROM {db}.steps FINAL "
        "WHERE startsWith(run_id, {b:String}) AND status = 'failed' GROUP BY step, e ORDER BY count() DESC LIMIT 5")]
    r.run_failures = [(str(m), int(c)) for m, c in q(
        "SELECT substring(error_message, 1, 120) AS m, count() FROM {db}.runs FINAL WHERE startsWith(run_id, "
        "{b:String}) AND status IN ('failed', 'rejected', 'cancelled') GROUP BY m ORDER BY count() DESC LIMIT 5")]
    r.budget_paused = [(str(s), f"{int(used):,} of {int(budget):,} tokens ({int(used) - int(budget):+,}): {why}")
                       for s, used, budget, why in q(
        "SELECT stack_id, tokens_used, budget_tokens, pause_reason FROM {db}.stacks FINAL "
        "WHERE startsWith(stack_id, {b:String}) AND paused_by = 'budget' ORDER BY stack_id")]
    r.top_stacks = [(str(s), int(t), int(k), str(by)) for s, t, k, by in q(
        "SELECT s.stack_id, s.tokens_used, s.ticks_fired, s.paused_by FROM {db}.stacks AS s FINAL "
        "WHERE startsWith(s.stack_id, {b:String}) ORDER BY s.tokens_used DESC, s.stack_id LIMIT 5")]
    return r


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f} %" if total else "—"


def _cost_text(r: StackReport) -> str:
    """The report's cost as the views show it: unknown prices as a lower bound, illustrative ones labelled."""
    text = f"${r.cost_usd:.6f}"
    if r.attempts_price_unknown:
        n = r.attempts_price_unknown
        text = f"≥ {text} + {n:,} attempt{'s' if n != 1 else ''} at unknown price"
    if r.attempts_price_illustrative:
        text += (f" (illustrative: {r.attempts_price_illustrative:,} attempts priced with the demo's made-up price "
                 "for its offline models; nobody is charged)")
    return text


def print_report(r: StackReport, out: TextIO = sys.stdout) -> None:
    """Print the report (numbers from ``stack_report``; the timings are the demo's own wall clock)."""
    w = out.write
    t = r.ticks
    finished = t.get("completed", 0) + t.get("failed", 0) + t.get("cancelled", 0)
    w(f"\nReport (read from ClickHouse; stacks '{r.batch}-s*'; {OFFLINE_LABEL}):\n")
    w(f"  ticks      fired {r.ticks_fired:,} · skipped {t.get('skipped', 0):,} (the previous tick still running) · "
      f"completed {t.get('completed', 0):,} · failed {t.get('failed', 0):,} · still running "
      f"{t.get('fired', 0) + t.get('queued', 0):,}\n")
    w(f"             idle {r.ticks_idle:,} of {finished:,} finished ({_pct(r.ticks_idle, finished)}: the planner "
      f"said work=idle → the next interval doubles) · fire lag after due p50 {r.tick_lag_ms[0]:.0f} ms, "
      f"p99 {r.tick_lag_ms[1]:.0f} ms\n")
    runs = " · ".join(f"{s} {n:,}" for s, n in sorted(r.runs.items()))
    w(f"  runs       {runs or 'none'} · duration p50 {r.run_duration_ms[0]:,.0f} ms, p99 "
      f"{r.run_duration_ms[1]:,.0f} ms · steps completed {r.steps_completed:,} (tool calls {r.tool_calls:,})\n")
    attempts = " · ".join(f"{o} {n:,}" for o, n in r.llm_attempts.items())
    w(f"  LLM calls  {r.llm_calls:,} · attempts by outcome: {attempts or 'none'}\n")
    agents = " · ".join(f"{a} {c:,} calls/{tok:,} tok" for a, (c, tok) in sorted(r.llm_by_agent.items()))
    w(f"             by agent: {agents}\n")
    w(f"  tokens     in {r.tokens_in:,} · out {r.tokens_out:,} · cost {_cost_text(r)}\n")
    w(f"  tick → visible  p50 {r.visible_ms[0]:,.0f} ms · p99 {r.visible_ms[1]:,.0f} ms · max "
      f"{r.visible_ms[2]:,.0f} ms over {r.visible:,} ticks (TickFired → the run's final row in ClickHouse)\n")
    w(f"                  = fired → run finished p50 {r.engine_ms[0]:,.0f} / p99 {r.engine_ms[1]:,.0f} ms "
      f"+ finished → visible p50 {r.projector_ms[0]:,.0f} / p99 {r.projector_ms[1]:,.0f} ms\n")
    failed_attempts = sum(n for o, n in r.llm_attempts.items() if o != "ok")
    runs_failed = sum(n for s, n in r.runs.items() if s in ("failed", "rejected", "cancelled"))
    w(f"  errors     LLM attempts failed {failed_attempts:,} (retried by the router) · step attempts failed "
      f"{r.steps_failed:,} · runs failed {runs_failed:,}\n")
    for step, error, n in r.step_failures:
        w(f"             step {step}: {n} x {error}\n")
    for message, n in r.run_failures:
        w(f"             run: {n} x {message}\n")
    w(f"  budget     {len(r.budget_paused)} stacks paused by their token budget\n")
    for sid, why in r.budget_paused[:5]:
        w(f"             {sid}: {why}\n")
    w("  top stacks by tokens\n")
    for sid, tokens, ticks, by in r.top_stacks:
        w(f"             {sid}  {tokens:>8,} tokens  {ticks:>3} ticks{'  (paused by ' + by + ')' if by else ''}\n")
    w("  timings    " + " · ".join(f"{k} {v:.1f}s" for k, v in r.timings.items()) + "\n")
    if r.top_stacks:
        w(f"\nTry: tickflow up   (in another shell)   then   tickflow stack show {r.top_stacks[0][0]}   or   "
          f"tickflow analytics usage --by agent\n")


# --- orders scenario --------------------------------------------------------------------------------------------


def _start_all(settings: Settings, count: int, batch: str, callers: int = 8) -> list[str]:
    """Start the runs from ``callers`` threads, each with its own SDK client, as concurrent users would."""
    items = [{"sku": "tea", "qty": 2, "price": 3.5}, {"sku": "cup", "qty": 1, "price": 9.0}]

    def share(k: int) -> list[str]:
        with Client(settings.api_url, token=settings.api_token) as c:
            return [
                c.start("order", {"id": f"{batch}-{i}", "items": items}, run_id=f"{batch}-{i:05d}")
                for i in range(k, count, callers)
            ]

    with ThreadPoolExecutor(callers) as pool:
        return [rid for ids in pool.map(share, range(callers)) for rid in ids]


async def run_demo(settings: Settings, count: int) -> None:
    """The orders scenario: ``count`` five-step order runs through the API, then a summary from ClickHouse."""
    node = Node(settings, registry)
    await node.start()
    batch = f"orders-{time.strftime('%H%M%S')}"
    try:
        t0 = time.monotonic()
        print(f"tickflow demo: starting {count} 'order' runs (5 steps each) through the API on {settings.api_url}")
        await asyncio.to_thread(_start_all, settings, count, batch)
        started_s = time.monotonic() - t0
        q = "SELECT status, count() FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String}) GROUP BY status"
        done = 0
        while True:
            rows = dict(await asyncio.to_thread(node.store.query, q, {"b": batch}))
            done = sum(rows.get(s, 0) for s in ("completed", "failed", "rejected"))
            elapsed = time.monotonic() - t0
            sys.stdout.write(
                f"\r  {done:>6}/{count} finished · {rows.get('running', 0):>5} running · "
                f"{rows.get('completed', 0):>6} completed · {rows.get('failed', 0):>4} failed · {elapsed:5.1f}s"
            )
            sys.stdout.flush()
            if done >= count or elapsed > 300:
                break
            await asyncio.sleep(0.25)
        total_s = time.monotonic() - t0
        print()
        await _summary(node, batch, count, started_s, total_s)
    finally:
        await node.stop()


async def _summary(node: Node, batch: str, count: int, started_s: float, total_s: float) -> None:
    store = node.store
    p = {"b": batch}
    statuses = await asyncio.to_thread(
        store.query,
        "SELECT status, count(), quantile(0.5)(finished_at - started_at), quantile(0.99)(finished_at - started_at) "
        "FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String}) GROUP BY status ORDER BY status",
        p,
    )
    events = await asyncio.to_thread(
        store.query,
        "SELECT type, count() FROM {db}.events FINAL WHERE startsWith(run_id, {b:String}) GROUP BY type ORDER BY type",
        p,
    )
    errors = await asyncio.to_thread(
        store.query,
        "SELECT error_message, count() FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String}) "
        "AND status = 'failed' GROUP BY error_message ORDER BY count() DESC LIMIT 3",
        p,
    )
    ev = dict(events)
    print(f"\nSummary (read from ClickHouse, runs '{batch}-*'):")
    print(f"  started {count} runs in {started_s:.1f}s; all finished in {total_s:.1f}s")
    for status, n, p50, p99 in statuses:
        print(
            f"  {status:<10} {n:>6} runs   duration p50 {float(p50) * 1000:7.1f} ms   p99 {float(p99) * 1000:7.1f} ms"
        )
    steps = ev.get("StepCompleted", 0)
    print(
        f"  steps completed {steps}, step attempts failed {ev.get('StepFailed', 0)} "
        f"({steps / total_s:,.0f} durable steps/s end to end); events in the log {sum(ev.values())}"
    )
    for message, n in errors:
        print(f"  failure: {n} x {message}")
    print(f"\nTry: tickflow up   (in another shell)   then   tickflow status {batch}-00000 --events")
