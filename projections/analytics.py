"""Analytics over the per-minute rollups: tokens and cost, run rates, step latency percentiles, error rates.

Every query reads a rollup table (a few rows per minute), never the raw facts, so a dashboard refreshing every
few seconds costs the same after a billion events as after a thousand. Every value is a bound parameter; the
only text spliced into SQL comes from the fixed choices below (group-by columns, bucket functions).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from tickflow.events.errors import ErrorCode, TickflowError

__all__ = [
    "BUCKETS",
    "USAGE_GROUPS",
    "AnalyticsUnavailable",
    "Bucket",
    "UsageGroup",
    "error_rates",
    "run_llm_calls",
    "run_rates",
    "stack_costs",
    "stack_ticks",
    "step_latency",
    "usage",
]

Bucket = Literal["minute", "hour", "day", "total"]
UsageGroup = Literal["model", "provider", "agent", "stack"]

BUCKETS: dict[str, str] = {
    "minute": "minute",
    "hour": "toStartOfHour(minute)",
    "day": "toStartOfDay(minute)",
    "total": "toDateTime(0, 'UTC')",
}
USAGE_GROUPS: dict[str, str] = {"model": "model", "provider": "provider", "agent": "agent", "stack": "stack_id"}

_WINDOW = (
    "minute >= toStartOfMinute(fromUnixTimestamp64Milli({since:Int64}, 'UTC')) "
    "AND minute < fromUnixTimestamp64Milli({until:Int64}, 'UTC')"
)


class AnalyticsUnavailable(TickflowError):
    """The store cannot run analytics (the in-memory twin has no rollups)."""

    code = ErrorCode.UNAVAILABLE


class _Queryable(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


def _store(store: object) -> _Queryable:
    if not hasattr(store, "query"):
        raise AnalyticsUnavailable(
            "analytics need ClickHouse (embedded chDB or a server); this deployment uses the in-memory store"
        )
    return store


def _window(since_ms: int, until_ms: int) -> dict[str, Any]:
    if until_ms <= since_ms:
        raise ValueError(f"the window is empty: until ({until_ms}) must be after since ({since_ms})")
    return {"since": int(since_ms), "until": int(until_ms)}


def _ms(value: Any) -> int:
    return int(value.timestamp() * 1000)


def usage(
    store: object, *, by: UsageGroup, since_ms: int, until_ms: int, bucket: Bucket = "hour"
) -> list[dict[str, Any]]:
    """LLM calls, errors, fallbacks, tokens and cost per ``by`` (model, provider, agent or stack) and time bucket.

    ``cost_usd`` sums the attempts whose price is known; ``calls_price_unknown`` counts the others (models without
    a price: their cost is unknown, so ``cost_usd`` is a lower bound and ``cost_complete`` is False — a view
    shows "≥ $x + n calls at unknown price", never a bare $x). ``cost_illustrative_usd`` is the part of
    ``cost_usd`` priced with illustrative prices (a sample, not money spent; ``calls_price_illustrative`` of
    them), and ``calls_usage_estimated`` counts attempts whose token counts are tickflow's estimate.
    """
    if by not in USAGE_GROUPS:
        raise ValueError(f"cannot group usage by {by!r}; choose one of {sorted(USAGE_GROUPS)}")
    key, at = USAGE_GROUPS[by], BUCKETS[bucket]
    rows = _store(store).query(
        f"SELECT {at} AS bucket, {key} AS key, sum(calls), sum(errors), sum(fallbacks), sum(tokens_in), "
        "sum(tokens_out), sum(cost_usd), sum(latency_ms), sum(calls_price_unknown), sum(calls_price_illustrative), "
        f"sum(calls_usage_estimated), sum(cost_illustrative_usd) FROM {{db}}.llm_usage_per_minute WHERE {_WINDOW} "
        "GROUP BY bucket, key ORDER BY bucket, key",
        _window(since_ms, until_ms),
    )
    return [
        {
            "bucket_ms": _ms(b),
            by: k,
            "calls": int(calls),
            "errors": int(errors),
            "fallbacks": int(fallbacks),
            "tokens_in": int(tin),
            "tokens_out": int(tout),
            "cost_usd": round(float(cost), 9),
            "cost_complete": int(unknown) == 0,
            "calls_price_unknown": int(unknown),
            "calls_price_illustrative": int(illustrative),
            "cost_illustrative_usd": round(float(cost_illustrative), 9),
            "calls_usage_estimated": int(estimated),
            "avg_latency_ms": round(float(lat) / calls, 3) if calls else 0.0,
        }
        for b, k, calls, errors, fallbacks, tin, tout, cost, lat, unknown, illustrative, estimated, cost_illustrative
        in rows
    ]


def stack_costs(store: object, stack_ids: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per stack, over all time, what qualifies its cost: attempts at unknown price and at illustrative prices.

    The stacks board adds this to each stack's running cost (which counts an unknown price as 0), so a stack
    whose agents call an unpriced model reads "≥ $x + n calls at unknown price" and an illustrative figure is
    labelled as one. Stacks without such attempts are left out.
    """
    clause, params = "", {}
    if stack_ids is not None:
        clause, params = " AND stack_id IN {ids:Array(String)}", {"ids": list(stack_ids)}
    rows = _store(store).query(
        "SELECT stack_id, sum(calls_price_unknown) AS unknown, sum(calls_price_illustrative) AS illustrative "
        "FROM {db}.llm_usage_per_minute WHERE stack_id != '' "
        f"AND (calls_price_unknown > 0 OR calls_price_illustrative > 0){clause} GROUP BY stack_id",
        params,
    )
    return {
        str(sid): {"calls_price_unknown": int(unknown), "calls_price_illustrative": int(illustrative)}
        for sid, unknown, illustrative in rows
    }


def run_rates(
    store: object, *, since_ms: int, until_ms: int, bucket: Bucket = "hour", workflow: str | None = None
) -> list[dict[str, Any]]:
    """Runs started, completed, failed and cancelled per workflow and time bucket, with the failure rate."""
    params = _window(since_ms, until_ms)
    clause = ""
    if workflow is not None:
        clause, params["workflow"] = " AND workflow = {workflow:String}", workflow
    rows = _store(store).query(
        f"SELECT {BUCKETS[bucket]} AS bucket, workflow, sum(started), sum(completed), sum(failed), sum(cancelled) "
        f"FROM {{db}}.runs_per_minute WHERE {_WINDOW}{clause} GROUP BY bucket, workflow ORDER BY bucket, workflow",
        params,
    )
    out = []
    for b, wf, started, completed, failed, cancelled in rows:
        finished = int(completed) + int(failed) + int(cancelled)
        out.append(
            {
                "bucket_ms": _ms(b),
                "workflow": wf,
                "started": int(started),
                "completed": int(completed),
                "failed": int(failed),
                "cancelled": int(cancelled),
                "failure_rate": round(int(failed) / finished, 6) if finished else 0.0,
            }
        )
    return out


def step_latency(
    store: object, *, since_ms: int, until_ms: int, workflow: str | None = None, step: str | None = None
) -> list[dict[str, Any]]:
    """Per workflow and step: attempts, failures, failure rate and latency p50/p90/p99 (t-digest, ms)."""
    params = _window(since_ms, until_ms)
    clause = ""
    if workflow is not None:
        clause += " AND workflow = {workflow:String}"
        params["workflow"] = workflow
    if step is not None:
        clause += " AND step = {step:String}"
        params["step"] = step
    rows = _store(store).query(
        "SELECT workflow, step, sum(attempts), sum(failures), quantilesTDigestMerge(0.5, 0.9, 0.99)(latency) "
        f"FROM {{db}}.step_latency_per_minute WHERE {_WINDOW}{clause} GROUP BY workflow, step "
        "ORDER BY workflow, step",
        params,
    )
    return [
        {
            "workflow": wf,
            "step": st,
            "attempts": int(attempts),
            "failures": int(failures),
            "failure_rate": round(int(failures) / int(attempts), 6) if attempts else 0.0,
            "p50_ms": round(float(q[0]), 3),
            "p90_ms": round(float(q[1]), 3),
            "p99_ms": round(float(q[2]), 3),
        }
        for wf, st, attempts, failures, q in rows
    ]


def error_rates(store: object, *, since_ms: int, until_ms: int) -> dict[str, list[dict[str, Any]]]:
    """Where things fail, over one window: runs per workflow, step attempts per step, LLM calls per model."""
    runs = run_rates(store, since_ms=since_ms, until_ms=until_ms, bucket="total")
    steps = step_latency(store, since_ms=since_ms, until_ms=until_ms)
    llm = usage(store, by="model", since_ms=since_ms, until_ms=until_ms, bucket="total")
    return {
        "runs": [{k: r[k] for k in ("workflow", "started", "failed", "cancelled", "failure_rate")} for r in runs],
        "steps": [{k: s[k] for k in ("workflow", "step", "attempts", "failures", "failure_rate")} for s in steps],
        "llm": [
            {
                "model": m["model"],
                "calls": m["calls"],
                "errors": m["errors"],
                "fallbacks": m["fallbacks"],
                "error_rate": round(m["errors"] / m["calls"], 6) if m["calls"] else 0.0,
            }
            for m in llm
        ],
    }


def run_llm_calls(store: object, run_id: str) -> list[dict[str, Any]]:
    """Every LLM call attempt of a run, in log order (for the run's timeline).

    ``cost_usd`` is None when the model had no price (unknown is not $0); ``price_illustrative`` marks a sample
    price, ``usage_estimated`` token counts tickflow estimated because the provider reported none.
    """
    rows = _store(store).query(
        "SELECT seq, path, call, attempt, agent, provider, model, outcome, tokens_in, tokens_out, cost_usd, "
        "latency_ms, fallback, error_type, toUnixTimestamp64Milli(started_at), price_known, price_illustrative, "
        "usage_estimated FROM {db}.llm_calls FINAL WHERE run_id = {run_id:String} ORDER BY seq",
        {"run_id": run_id},
    )
    names = (
        "seq",
        "path",
        "call",
        "attempt",
        "agent",
        "provider",
        "model",
        "outcome",
        "tokens_in",
        "tokens_out",
        "cost_usd",
        "latency_ms",
        "fallback",
        "error_type",
        "started_at_ms",
        "price_known",
        "price_illustrative",
        "usage_estimated",
    )
    return [
        dict(zip(names, r, strict=True))
        | {
            "fallback": bool(r[12]),
            "cost_usd": r[10] if r[15] else None,
            "price_known": bool(r[15]),
            "price_illustrative": bool(r[16]),
            "usage_estimated": bool(r[17]),
        }
        for r in rows
    ]


def stack_ticks(store: object, stack_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """A stack's most recent ticks, newest first: when each was due and fired, its lag, run, outcome and usage."""
    rows = _store(store).query(
        "SELECT tick, run_id, status, reason, toUnixTimestamp64Milli(due_at), toUnixTimestamp64Milli(fired_at), "
        "toUnixTimestamp64Milli(finished_at), lag_ms, tokens, cost_usd, idle FROM {db}.ticks FINAL "
        "WHERE stack_id = {stack_id:String} ORDER BY tick DESC LIMIT {limit:UInt32}",
        {"stack_id": stack_id, "limit": int(limit)},
    )
    names = (
        "tick",
        "run_id",
        "status",
        "reason",
        "due_at_ms",
        "fired_at_ms",
        "finished_at_ms",
        "lag_ms",
        "tokens",
        "cost_usd",
        "idle",
    )
    return [dict(zip(names, r, strict=True)) | {"idle": bool(r[10])} for r in rows]
