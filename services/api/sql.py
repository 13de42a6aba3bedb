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
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from tickflow.api.deps import app_state, authorize
from tickflow.projections.sql import MAX_PARAMS, MAX_QUERY_CHARS, ReadOnlySql, SqlError, SqlUnavailable
from tickflow.projections.store import ProjectionStore

__all__ = ["QUEUE_PER_SLOT", "SqlQueries", "SqlRequest", "SqlResponse", "router", "sql_queries"]

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


class SqlQueries:
    """How one API process (its app) runs analysts' queries: the runner (or why there is none: the in-memory
    store), a pool of ``concurrency`` threads of its own, the slots they take, and how many are admitted."""

    def __init__(self, store: ProjectionStore, *, reader_url: str | None, concurrency: int) -> None:
        try:
            self.runner: ReadOnlySql | None = ReadOnlySql(store, reader_url=reader_url)
            self.unavailable = ""
        except SqlUnavailable as exc:
            self.runner, self.unavailable = None, str(exc)
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="tickflow-sql")
        self.slots = asyncio.Semaphore(concurrency)
        self.admitted = 0  # running or waiting


def sql_queries(request: Request) -> SqlQueries:
    """The SQL runner of the app serving ``request``."""
    return app_state(request, "sql_queries", SqlQueries)


router = APIRouter(tags=["sql"], dependencies=[Depends(authorize)])


@router.post(
    "/sql",
    response_model=SqlResponse,
    responses={
        400: {"description": "Refused or failed query; detail says why."},
        429: {"description": "Too many queries running and waiting; try again shortly."},
        501: {"description": "No SQL engine."},
    },
)
async def sql(queries: Annotated[SqlQueries, Depends(sql_queries)], body: SqlRequest) -> SqlResponse:
    """Run one read-only statement over the projections and return its columns, types and rows."""
    runner = queries.runner
    if runner is None:
        raise HTTPException(501, queries.unavailable)
    if queries.admitted >= queries.concurrency * (1 + QUEUE_PER_SLOT):
        raise HTTPException(429, f"{queries.admitted} queries are running or waiting (TICKFLOW_API_SQL_CONCURRENCY="
                            f"{queries.concurrency}): try again when some have finished")
    queries.admitted += 1
    try:
        async with queries.slots:
            call = functools.partial(
                runner.run, body.query, body.params, max_rows=body.max_rows, timeout_s=body.timeout_s
            )
            result = await asyncio.get_running_loop().run_in_executor(queries.pool, call)
    except SqlError as exc:
        raise HTTPException(400, str(exc)) from None
    finally:
        queries.admitted -= 1
    return SqlResponse(
        columns=result.columns,
        types=result.types,
        rows=result.rows,
        truncated=result.truncated,
        elapsed_ms=result.elapsed_ms,
    )
