"""``POST /sql``: read-only SQL over the projections, for analysts.

The query runs in ClickHouse under ``readonly=1`` with row, time and memory limits, values travel only as
bound ``{name:Type}`` parameters, and functions that reach outside the database are refused (see
``projections.sql`` for what each layer stops and why). A refused or failing query is a 400 carrying
ClickHouse's message; on the in-memory store, which has no SQL engine, the endpoint answers 501.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, JsonValue

from tickflow.api.deps import ApiDeps
from tickflow.projections.sql import MAX_PARAMS, MAX_QUERY_CHARS, ReadOnlySql, SqlError, SqlUnavailable

__all__ = ["SqlRequest", "SqlResponse", "build_router"]


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
        runner: ReadOnlySql | None = ReadOnlySql(deps.store)
        unavailable = ""
    except SqlUnavailable as exc:
        runner, unavailable = None, str(exc)

    @router.post(
        "/sql",
        response_model=SqlResponse,
        dependencies=deps.guard,
        responses={
            400: {"description": "Refused or failed query; detail says why."},
            501: {"description": "No SQL engine."},
        },
    )
    async def sql(body: SqlRequest) -> SqlResponse:
        """Run one read-only statement over the projections and return its columns, types and rows."""
        if runner is None:
            raise HTTPException(501, unavailable)
        try:
            result = await asyncio.to_thread(
                runner.run, body.query, body.params, max_rows=body.max_rows, timeout_s=body.timeout_s
            )
        except SqlError as exc:
            raise HTTPException(400, str(exc)) from None
        return SqlResponse(
            columns=result.columns,
            types=result.types,
            rows=result.rows,
            truncated=result.truncated,
            elapsed_ms=result.elapsed_ms,
        )

    return router
