"""Agent memory over HTTP: a thread's recent messages and semantic recall, read from the ``messages`` projection.

Workers in other processes read memory here (in embedded mode this process alone owns the ClickHouse data);
people and dashboards use the same routes to see what an agent remembers. Agent steps running in this same
process read the store directly instead (no loopback HTTP): ``create_api`` registers it for them.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from tickflow.api.deps import Deps, authorize
from tickflow.projections import memory as queries
from tickflow.projections.memory import THREAD_ID_PATTERN

__all__ = ["RecallRequest", "router"]


class RecallRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    thread_id: str = Field(pattern=THREAD_ID_PATTERN, description="The memory thread to search.")
    embedding: list[float] = Field(
        min_length=1, max_length=8192, description="The query vector, from the same embedder as the messages."
    )
    k: int = Field(default=5, ge=1, le=queries.MAX_RECALL_K, description="How many messages to return at most.")
    exclude_ids: list[str] = Field(
        default_factory=list, max_length=queries.MAX_WINDOW,
        description="Message ids to leave out (typically the recent window the agent already sees).",
    )
    embedder: str | None = Field(
        default=None, max_length=200, description="Only compare with messages embedded by this embedder."
    )


def _messages(rows: list[queries.MemoryMessage]) -> dict[str, Any]:
    return {"messages": [r.as_dict() for r in rows]}


async def _read(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except queries.MemoryUnavailable as exc:
        raise HTTPException(501, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


#: Every route here needs the credentials.
router = APIRouter(dependencies=[Depends(authorize)], tags=["memory"])


@router.get("/threads/{thread_id}/messages")
async def thread_messages(
    deps: Deps,
    thread_id: str = Path(pattern=THREAD_ID_PATTERN),
    limit: int = Query(default=20, ge=1, le=queries.MAX_WINDOW),
) -> dict[str, Any]:
    """The last ``limit`` messages of a memory thread, oldest first."""
    return _messages(await _read(queries.recent_messages, deps.store, thread_id, limit))


@router.post("/memory/recall")
async def recall(deps: Deps, body: RecallRequest) -> dict[str, Any]:
    """The ``k`` messages of the thread nearest to ``embedding`` by cosine distance, nearest first."""
    rows = await _read(
        queries.recall, deps.store, body.thread_id, body.embedding, body.k,
        exclude_ids=body.exclude_ids, embedder=body.embedder,
    )
    return _messages(rows)
