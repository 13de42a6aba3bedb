"""Agent memory reads over the ``messages`` projection: a thread's recent window and top-k semantic recall.

Both read ``messages FINAL`` (a message reported twice collapses on ``(thread_id, message_id)``). Recall ranks a
thread's earlier messages by ``cosineDistance`` between their stored embedding and the query's, skips the ids
the caller already shows the model (the recent window), and only compares vectors of the query's length (and,
when named, of the same embedder), since distances between different embedding spaces mean nothing. Messages
with a zero vector (an empty text) have no direction and are never recalled. Every value is a bound parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from tickflow.events.errors import ErrorCode, TickflowError

__all__ = [
    "MAX_RECALL_K",
    "MAX_WINDOW",
    "THREAD_ID_PATTERN",
    "MemoryMessage",
    "MemoryUnavailable",
    "recall",
    "recent_messages",
]

#: Memory thread ids (no ``/``, so an id is one URL path segment).
THREAD_ID_PATTERN = r"^[A-Za-z0-9_.:@=+\-]{1,200}$"

#: Upper bounds of one read, so a caller cannot ask the API for a whole thread at once.
MAX_WINDOW = 1_000
MAX_RECALL_K = 100

_COLUMNS = (
    "message_id, thread_id, run_id, seq, stack_id, agent, role, content, embedder, "
    "toUnixTimestamp64Milli(created_at) AS created_ms"
)


class MemoryUnavailable(TickflowError):
    """The store cannot answer memory queries (the in-memory twin has no SQL engine)."""

    code = ErrorCode.UNAVAILABLE


class _Queryable(Protocol):
    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True, slots=True)
class MemoryMessage:
    """One remembered message; ``distance`` is its cosine distance to the query (recall only)."""

    message_id: str
    thread_id: str
    run_id: str
    seq: int
    stack_id: str
    agent: str
    role: str
    content: str
    embedder: str
    created_at_ms: int
    distance: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _store(store: object) -> _Queryable:
    if not hasattr(store, "query"):
        raise MemoryUnavailable(
            "agent memory needs ClickHouse (embedded chDB or a server); this deployment uses the in-memory store"
        )
    return store


def _message(row: tuple[Any, ...], distance: float | None = None) -> MemoryMessage:
    return MemoryMessage(
        message_id=str(row[0]),
        thread_id=str(row[1]),
        run_id=str(row[2]),
        seq=int(row[3]),
        stack_id=str(row[4]),
        agent=str(row[5]),
        role=str(row[6]),
        content=str(row[7]),
        embedder=str(row[8]),
        created_at_ms=int(row[9]),
        distance=distance,
    )


def recent_messages(store: object, thread_id: str, limit: int) -> list[MemoryMessage]:
    """The last ``limit`` messages of a thread, oldest first (order: when the engine logged them, then seq)."""
    if not 1 <= limit <= MAX_WINDOW:
        raise ValueError(f"limit must be between 1 and {MAX_WINDOW}, got {limit}")
    rows = _store(store).query(
        f"SELECT {_COLUMNS} FROM {{db}}.messages FINAL WHERE thread_id = {{thread:String}} "
        "ORDER BY created_at DESC, run_id DESC, seq DESC LIMIT {limit:UInt32}",
        {"thread": thread_id, "limit": int(limit)},
    )
    return [_message(r) for r in reversed(rows)]


def recall(
    store: object,
    thread_id: str,
    embedding: Sequence[float],
    k: int,
    *,
    exclude_ids: Sequence[str] = (),
    embedder: str | None = None,
) -> list[MemoryMessage]:
    """The ``k`` messages of the thread nearest to ``embedding`` (cosine distance, nearest first), leaving out
    ``exclude_ids``; only messages embedded with ``embedder`` (when given) and of the same dimension compete."""
    if not 1 <= k <= MAX_RECALL_K:
        raise ValueError(f"k must be between 1 and {MAX_RECALL_K}, got {k}")
    if not embedding:
        raise ValueError("the query embedding is empty: embed the query text first")
    where = [
        "thread_id = {thread:String}",
        "length(embedding) = {dim:UInt32}",
        "NOT has({exclude:Array(String)}, message_id)",
    ]
    params: dict[str, Any] = {
        "thread": thread_id,
        "dim": len(embedding),
        "exclude": list(exclude_ids),
        "k": int(k),
        "query": [float(x) for x in embedding],
    }
    if embedder:
        where.append("embedder = {embedder:String}")
        params["embedder"] = embedder
    rows = _store(store).query(
        f"SELECT {_COLUMNS}, cosineDistance(embedding, {{query:Array(Float32)}}) AS distance "
        f"FROM {{db}}.messages FINAL WHERE {' AND '.join(where)} AND isFinite(distance) "
        "ORDER BY distance ASC, created_at DESC, seq DESC LIMIT {k:UInt32}",
        params,
    )
    return [_message(r[:10], float(r[10])) for r in rows]
