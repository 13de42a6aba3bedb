"""Where agent steps read memory from: the ``messages`` projection, directly or through the API.

In embedded mode (chDB) only the process running the projector and the API may open the ClickHouse data, so a
worker in another process reads memory over HTTP (``GET /threads/{id}/messages``, ``POST /memory/recall``) at
``Settings.api_url``. When the API runs in the worker's own process, its router registers the store here
(:func:`register_local_store`, keyed by topic prefix) and agent steps query it directly, without a loopback
HTTP hop. Writes never happen here: messages enter memory only as ``MessageAppended`` events in the log.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

import httpx

from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.projections import memory as queries
from tickflow.projections.memory import MemoryMessage

__all__ = [
    "HttpMemory",
    "MemoryReadFailed",
    "MemoryReader",
    "StoreMemory",
    "local_store",
    "register_local_store",
]

#: Stores of APIs hosted in this process, by topic prefix (weak: a stopped node's store goes with it).
_LOCAL: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()


class MemoryReadFailed(TickflowError):
    """Memory could not be read (API down, store error); the agent step fails and its retry policy applies."""

    code = ErrorCode.UNAVAILABLE


class MemoryReader(Protocol):
    """A thread's recent window and semantic recall, as :mod:`projections.memory` defines them."""

    async def recent(self, thread_id: str, limit: int) -> list[MemoryMessage]: ...

    async def recall(self, thread_id: str, embedding: Sequence[float], k: int, *, exclude_ids: Sequence[str] = (),
                     embedder: str | None = None) -> list[MemoryMessage]: ...


def register_local_store(prefix: str, store: Any) -> None:
    """Make ``store`` the memory source of agent steps of ``prefix`` running in this process."""
    _LOCAL[prefix] = store


def local_store(prefix: str) -> Any:
    """The store an API of this process registered for ``prefix``, or None."""
    return _LOCAL.get(prefix)


class StoreMemory:
    """Reads the projection store of this process (queries run in a thread: the client is synchronous)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __repr__(self) -> str:
        return f"StoreMemory({type(self._store).__name__})"

    async def recent(self, thread_id: str, limit: int) -> list[MemoryMessage]:
        try:
            return await asyncio.to_thread(queries.recent_messages, self._store, thread_id, limit)
        except queries.MemoryUnavailable:
            raise
        except Exception as exc:
            raise MemoryReadFailed(f"reading the recent messages of thread {thread_id!r} failed: {exc}") from None

    async def recall(self, thread_id: str, embedding: Sequence[float], k: int, *, exclude_ids: Sequence[str] = (),
                     embedder: str | None = None) -> list[MemoryMessage]:
        try:
            return await asyncio.to_thread(
                queries.recall, self._store, thread_id, embedding, k, exclude_ids=exclude_ids, embedder=embedder
            )
        except queries.MemoryUnavailable:
            raise
        except Exception as exc:
            raise MemoryReadFailed(f"recall in thread {thread_id!r} failed: {exc}") from None


class HttpMemory:
    """Reads memory through the tickflow API (the process that owns the ClickHouse data)."""

    def __init__(self, api_url: str, *, token: str | None = None, timeout_s: float = 10.0) -> None:
        self.api_url = api_url
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=api_url, headers=headers, timeout=timeout_s)

    def __repr__(self) -> str:
        return f"HttpMemory({self.api_url!r})"

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise MemoryReadFailed(
                f"{what}: the tickflow API at {self.api_url} did not answer ({type(exc).__name__}); it serves agent "
                "memory to workers in other processes — check that a process runs the api role"
            ) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise MemoryReadFailed(f"{what}: the API answered {response.status_code}: {str(detail)[:500]}")
        return response.json()

    async def recent(self, thread_id: str, limit: int) -> list[MemoryMessage]:
        data = await self._call("GET", f"/threads/{thread_id}/messages", f"reading thread {thread_id!r}",
                                params={"limit": limit})
        return [MemoryMessage(**m) for m in data["messages"]]

    async def recall(self, thread_id: str, embedding: Sequence[float], k: int, *, exclude_ids: Sequence[str] = (),
                     embedder: str | None = None) -> list[MemoryMessage]:
        body = {"thread_id": thread_id, "embedding": list(embedding), "k": k, "exclude_ids": list(exclude_ids),
                "embedder": embedder}
        data = await self._call("POST", "/memory/recall", f"recall in thread {thread_id!r}", json=body)
        return [MemoryMessage(**m) for m in data["messages"]]
