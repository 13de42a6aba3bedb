"""Query routes over the projections: a run's timeline, the stack board, and analytics from the rollups.

Reads only; every parameter is validated here and bound in SQL by ``projections``. Analytics need ClickHouse:
on the in-memory store they answer 501 saying so.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from tickflow.api.deps import ApiProblem, Deps, authorize
from tickflow.api.runs import run_status
from tickflow.events.errors import ErrorCode
from tickflow.projections import analytics
from tickflow.projections.analytics import AnalyticsUnavailable
from tickflow.projections.facts import StackRow, StepRow
from tickflow.projections.store import ProjectionStore

__all__ = ["router"]

DAY_MS = 86_400_000
MAX_WINDOW_MS = 366 * DAY_MS


def _step(row: StepRow) -> dict[str, Any]:
    data = {f: getattr(row, f) for f in row.__dataclass_fields__ if f not in ("partition", "offset", "version")}
    data["will_retry"] = bool(row.will_retry)
    return data


def _stack(row: StackRow, costs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    data = {f: getattr(row, f) for f in row.__dataclass_fields__}
    data["budget_tokens"] = None if row.budget_tokens < 0 else row.budget_tokens
    data["budget_cost_usd"] = None if row.budget_cost_usd < 0 else row.budget_cost_usd
    # cost_used_usd counts an unknown price as 0: say how many attempts that hides, and which figures are samples
    qualifiers = costs.get(row.stack_id, {})
    unknown = qualifiers.get("calls_price_unknown", 0)
    data["calls_price_unknown"] = unknown
    data["calls_price_illustrative"] = qualifiers.get("calls_price_illustrative", 0)
    data["cost_complete"] = unknown == 0
    return data


async def _stack_costs(store: ProjectionStore, stack_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The stacks' cost qualifiers (``analytics.stack_costs``); none on a store without rollups."""
    if not stack_ids:
        return {}
    try:
        costs: dict[str, dict[str, Any]] = await asyncio.to_thread(analytics.stack_costs, store, stack_ids)
    except AnalyticsUnavailable:
        return {}
    return costs


def _window(since_ms: int | None, until_ms: int | None) -> tuple[int, int]:
    until = until_ms if until_ms is not None else int(time.time() * 1000) + 60_000
    since = since_ms if since_ms is not None else until - DAY_MS
    if until <= since:
        raise HTTPException(422, f"until_ms ({until}) must be after since_ms ({since})")
    if until - since > MAX_WINDOW_MS:
        raise HTTPException(422, "the window is longer than 366 days: narrow since_ms/until_ms")
    return since, until


async def _analytics(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except AnalyticsUnavailable as exc:
        raise HTTPException(501, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


_SINCE = Query(default=None, ge=0, le=10**14, description="Window start, epoch ms (default: 24 h before until).")
_UNTIL = Query(default=None, ge=0, le=10**14, description="Window end, epoch ms (default: now).")
_BUCKET = Query(default="hour", description="Time bucket of each row; 'total' sums the window.")


#: Every route here needs the credentials.
router = APIRouter(dependencies=[Depends(authorize)])


@router.get("/runs/{run_id}/timeline")
async def run_timeline(deps: Deps, run_id: str) -> dict[str, Any]:
    """The run's status, every attempt of every step with its timings and errors, and its LLM calls."""
    rows = await asyncio.to_thread(deps.store.runs_by_id, [run_id])
    if run_id not in rows:
        raise ApiProblem(
            404,
            ErrorCode.RUN_NOT_FOUND,
            f"no run {run_id!r} is visible: check the id, or wait until its start is visible",
        )
    steps = await asyncio.to_thread(deps.store.run_steps, run_id)
    try:
        calls = await asyncio.to_thread(analytics.run_llm_calls, deps.store, run_id)
    except AnalyticsUnavailable:
        calls = []
    return {
        "run": run_status(rows[run_id]).model_dump(),
        "steps": [_step(s) for s in steps],
        "llm_calls": calls,
    }


@router.get("/stacks")
async def list_stacks(
    deps: Deps,
    status: Literal["playing", "paused", "deleted"] | None = Query(default=None),
    limit: int = Query(default=100, ge=1, le=10_000),
    offset: int = Query(default=0, ge=0, le=10_000_000),
) -> list[dict[str, Any]]:
    """The stack board: every stack's play state, settings, budget use and last tick."""
    rows = await asyncio.to_thread(deps.store.list_stacks, status=status, limit=limit, offset=offset)
    costs = await _stack_costs(deps.store, [r.stack_id for r in rows])
    return [_stack(r, costs) for r in rows]


@router.get("/stacks/{stack_id}")
async def get_stack(deps: Deps, stack_id: str, ticks: int = Query(default=20, ge=0, le=1000)) -> dict[str, Any]:
    rows = await asyncio.to_thread(deps.store.stacks_by_id, [stack_id])
    if stack_id not in rows:
        raise ApiProblem(
            404,
            ErrorCode.STACK_NOT_FOUND,
            f"no stack {stack_id!r} is visible: check the id, or wait for its creation",
        )
    try:
        recent = await asyncio.to_thread(analytics.stack_ticks, deps.store, stack_id, ticks) if ticks else []
    except AnalyticsUnavailable:
        recent = []
    costs = await _stack_costs(deps.store, [stack_id])
    return {"stack": _stack(rows[stack_id], costs), "ticks": recent}


@router.get("/analytics/usage")
async def usage(
    deps: Deps,
    by: Literal["model", "provider", "agent", "stack"] = Query(default="model"),
    since_ms: int | None = _SINCE,
    until_ms: int | None = _UNTIL,
    bucket: Literal["minute", "hour", "day", "total"] = _BUCKET,
) -> list[dict[str, Any]]:
    """LLM calls, errors, fallbacks, tokens and cost per model, provider, agent or stack over time.

    ``cost_usd`` covers the attempts with a known price; ``calls_price_unknown`` counts the rest (then
    ``cost_complete`` is false and the cost is a lower bound), ``cost_illustrative_usd`` is the part of it
    priced with illustrative (sample) prices."""
    since, until = _window(since_ms, until_ms)
    result: list[dict[str, Any]] = await _analytics(
        analytics.usage, deps.store, by=by, since_ms=since, until_ms=until, bucket=bucket
    )
    return result


@router.get("/analytics/runs")
async def run_rates(
    deps: Deps,
    workflow: str | None = Query(default=None, max_length=128),
    since_ms: int | None = _SINCE,
    until_ms: int | None = _UNTIL,
    bucket: Literal["minute", "hour", "day", "total"] = _BUCKET,
) -> list[dict[str, Any]]:
    """Runs started/completed/failed/cancelled per workflow over time, with the failure rate."""
    since, until = _window(since_ms, until_ms)
    result: list[dict[str, Any]] = await _analytics(
        analytics.run_rates, deps.store, since_ms=since, until_ms=until, bucket=bucket, workflow=workflow
    )
    return result


@router.get("/analytics/steps")
async def step_latency(
    deps: Deps,
    workflow: str | None = Query(default=None, max_length=128),
    step: str | None = Query(default=None, max_length=128),
    since_ms: int | None = _SINCE,
    until_ms: int | None = _UNTIL,
) -> list[dict[str, Any]]:
    """Step latency percentiles (p50/p90/p99) and failure rates per workflow and step."""
    since, until = _window(since_ms, until_ms)
    result: list[dict[str, Any]] = await _analytics(
        analytics.step_latency, deps.store, since_ms=since, until_ms=until, workflow=workflow, step=step
    )
    return result


@router.get("/analytics/errors")
async def error_rates(deps: Deps, since_ms: int | None = _SINCE, until_ms: int | None = _UNTIL) -> dict[str, Any]:
    """Where things fail over the window: runs per workflow, steps per step, LLM calls per model."""
    since, until = _window(since_ms, until_ms)
    result: dict[str, Any] = await _analytics(analytics.error_rates, deps.store, since_ms=since, until_ms=until)
    return result

