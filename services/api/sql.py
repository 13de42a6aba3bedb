"""``POST /sql``: read-only SQL over the projections, for analysts.

The query runs in ClickHouse under ``readonly=1`` with row, time and memory limits, values travel only as
bound ``{name:Type}`` parameters, and functions that reach outside the database are refused (see
``projections.sql`` for what each layer stops and why). A refused or failing query is a 400 carrying
ClickHouse's message; on the in-memory store, which has no SQL engine, the endpoint answers 501.

Queries have a budget of their own: at most ``sql_concurrency`` run at once, each on a thread of the SQL pool,
and the rest wait on an asyncio semaphore — not on a thread of the default executor, which the status reads
use (``GET /runs/{id}`` must stay fast while analysts run minute-long queries). At most ``QUEUE_PER_SLOT`` queries
per slot wait; beyond that the answer is 429 at once.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from tickflow.api.deps import ApiDeps
from tickflow.projections.sql import MAX_PARAMS, MAX_QUERY_CHARS, ReadOnlySql, SqlError, SqlUnavailable

__all__ = ["QUEUE_PER_SLOT", "SqlRequest", "SqlResponse", "build_router"]

#: Queries that may wait per running one before the endpoint answers 429.
QUEUE_PER_SLOT = 8


class SqlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: str = Field(
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="One read statement (SELECT, WITH, EXPLAIN, DESCRIBE, SHOW, EXISTS). Tables resolve in "
        "tickflow's database; `{db}.runs` names it explicitly. Reference parameters as `{name:Type}`.",
        examples=["SELECT status, count() FROM runs FINAL WHERE workflow = {wf:String} GROUP BY status"],
    )
    params: dict[str, JsonValue] = Field(
        default_factory=dict,
        max_length=MAX_PARAMS,
        description="Values of the query's `{name:Type}` placeholders; bound by ClickHouse, never spliced in.",
    )
    max_rows: int = Field(default=1_000, ge=1, le=100_000, description="Rows returned at most; more sets truncated.")
    timeout_s: float = Field(default=10.0, gt=0, le=60, description="ClickHouse stops the query after this.")


class SqlResponse(BaseModel):
    columns: list[str]
    types: list[str] = Field(description="ClickHouse type of each column, e.g. UInt64, DateTime64(3, 'UTC').")
    rows: list[list[Any]]
    truncated: bool = Field(description="True when the result had more than max_rows rows.")
    elapsed_ms: float


def build_router(deps: ApiDeps) -> APIRouter:
    router = APIRouter(tags=["sql"])
    try:
        runner: ReadOnlySql | None = ReadOnlySql(deps.store, reader_url=deps.sql_url)
        unavailable = ""
    except SqlUnavailable as exc:
        runner, unavailable = None, str(exc)
    pool = ThreadPoolExecutor(max_workers=deps.sql_concurrency, thread_name_prefix="tickflow-sql")
    slots = asyncio.Semaphore(deps.sql_concurrency)
    admitted = 0  # running or waiting

    @router.post(
        "/sql",
        response_model=SqlResponse,
        dependencies=deps.guard,
        responses={
            400: {"description": "Refused or failed query; detail says why."},
            429: {"description": "Too many queries running and waiting; try again shortly."},
            501: {"description": "No SQL engine."},
        },
    )
    async def sql(body: SqlRequest) -> SqlResponse:
        """Run one read-only statement over the projections and return its columns, types and rows."""
        nonlocal admitted
        if runner is None:
            raise HTTPException(501, unavailable)
        if admitted >= deps.sql_concurrency * (1 + QUEUE_PER_SLOT):
            raise HTTPException(429, f"{admitted} queries are running or waiting (TICKFLOW_API_SQL_CONCURRENCY="
                                f"{deps.sql_concurrency}): try again when some have finished")
        admitted += 1
        try:
            async with slots:
                call = functools.partial(
                    runner.run, body.query, body.params, max_rows=body.max_rows, timeout_s=body.timeout_s
                )
                result = await asyncio.get_running_loop().run_in_executor(pool, call)
        except SqlError as exc:
            raise HTTPException(400, str(exc)) from None
        finally:
            admitted -= 1
        return SqlResponse(
            columns=result.columns,
            types=result.types,
            rows=result.rows,
            truncated=result.truncated,
            elapsed_ms=result.elapsed_ms,
        )

    return router
