"""Live updates: a run's (or a stack's) events as Server-Sent Events, read from the log; a run's LLM tokens.

``GET /runs/{run_id}/live`` and ``GET /stacks/{stack_id}/live`` send each event as an SSE message whose
``id`` is its offset in the events topic, ``event`` its type and ``data`` its JSON (seq, type,
occurred_at_ms, causation_id, payload, offset). A browser's ``EventSource`` reconnects by itself with
``Last-Event-ID`` and the stream continues strictly after that offset: nothing lost, nothing repeated.

A run's stream ends after its terminal event (RunCompleted, RunFailed, RunCancelled, RunRejected) unless
``?follow=true``. A reconnect after the end is answered 204, which tells ``EventSource`` to stop retrying.
A stream opened before the run's first event exists (right after ``POST /runs``) waits for it instead of
answering 404: the log, not the projection, decides what exists. Stack streams never end by themselves.

``GET /runs/{run_id}/tokens`` streams what the run's LLM calls stream, read from the tokens topic the same way
(ids are tokens-topic offsets); it ends once the run has ended and every chunk was sent.

Each stream owns one Kafka consumer (see ``tickflow.runtime.live`` for its cost), so the router caps how many are
open at once (503 above the cap) and how many one client address holds (429 above ``streams_per_client``: one
client cannot take every slot); ``GET /live/streams`` shows the count. The slots are the app's (``StreamSlots``,
made by ``create_api``): every stream route of one API process shares them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Protocol, TypeVar

import anyio
import orjson
from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from tickflow.api.deps import ApiDeps, Deps, app_state, authorize
from tickflow.events.connection import KafkaTarget
from tickflow.events.schemas import RUN_TERMINAL_EVENTS
from tickflow.runtime.live import LiveReader
from tickflow.runtime.tokens import TokenReader, TokensUnavailable

__all__ = ["MAX_STREAMS", "PING_S", "StreamSlots", "router", "stream_slots"]

R = TypeVar("R", LiveReader, TokenReader)

log = logging.getLogger("tickflow.api.live")

#: Open streams per API process. Each holds a consumer (two broker connections, a fetch buffer of up to
#: 1 MiB, ~4 idle fetches a second), so a few hundred are cheap and tens of thousands are not.
MAX_STREAMS = 256

#: Keep-alive comment interval: below the idle timeouts of common proxies (30 to 60 s).
PING_S = 10.0

#: A client that stops reading for this long is dropped, so a stuck socket cannot hold a slot forever.
SEND_TIMEOUT_S = 30.0

#: The key prefix of agent-stack entities on the run topics.
STACK_PREFIX = "stack:"


class StreamSlots:
    """How many streams are open, in all and per client address; refuses beyond the limits instead of queueing
    (a queued stream is useless). One per app, shared by its stream routes."""

    def __init__(self, limit: int, per_client: int) -> None:
        self.limit = limit
        self.per_client = per_client
        self.open = 0
        self._by_client: dict[str, int] = {}

    def take(self, client: str) -> str | None:
        """None when a slot was taken for ``client``; else which limit was hit (``"all"`` or ``"client"``)."""
        if self.open >= self.limit:
            return "all"
        if self._by_client.get(client, 0) >= self.per_client:
            return "client"
        self.open += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1
        return None

    def give(self, client: str) -> None:
        self.open -= 1
        left = self._by_client.get(client, 1) - 1
        if left > 0:
            self._by_client[client] = left
        else:
            self._by_client.pop(client, None)


class _Reader(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...


class _LiveResponse(EventSourceResponse):
    """An SSE response that closes its reader and frees its slot however it ends: the stream finished, the
    client left, a send timed out, or the body never started (a HEAD request, a client gone before the
    first byte) — cases where a generator's ``finally`` would never run."""

    def __init__(self, messages: AsyncIterator[ServerSentEvent], reader: _Reader, release: Callable[[], None],
                 **kwargs: Any) -> None:
        super().__init__(messages, **kwargs)
        self._reader = reader
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                with anyio.move_on_after(5, shield=True):  # the request may be cancelled: close regardless
                    await self._reader.close()
            finally:
                self._release()


async def _messages(reader: LiveReader) -> AsyncIterator[ServerSentEvent]:
    while True:
        for event in await reader.next_batch():
            data = orjson.dumps(event.as_dict()).decode()
            yield ServerSentEvent(data=data, event=event.type, id=str(event.offset))
        if reader.finished:
            return


async def _token_messages(reader: TokenReader, ended: Callable[[], Awaitable[bool]],
                          follow: bool) -> AsyncIterator[ServerSentEvent]:
    """Chunks as they come; without ``follow``, the stream ends once the run has ended and every chunk written
    by then was sent (checked when the topic is quiet, at most once a second)."""
    while True:
        chunks = await reader.next_batch()
        for chunk in chunks:
            yield ServerSentEvent(data=orjson.dumps(chunk.as_dict()).decode(), event="tokens", id=str(chunk.offset))
        if not chunks and not follow and await ended() and await reader.caught_up():
            # Said out loud, because a stream that sent nothing has no id to reconnect with, and EventSource would
            # otherwise reconnect from the start for ever.
            yield ServerSentEvent(data="{}", event="end")
            return


async def _run_started_ms(deps: ApiDeps, run_id: str) -> int:
    """Where a run's chunks begin: a second before it started (clocks of hosts differ a little), as the projection
    or this API's read-your-writes cache knows it, else a minute ago (a run this API has not seen yet)."""
    row = (await asyncio.to_thread(deps.store.runs_by_id, [run_id])).get(run_id)
    if row is not None and row.started_at_ms:
        return max(row.started_at_ms - 1_000, 0)
    if (accepted := deps.accepted.get(run_id)) is not None:
        return max(accepted[1] - 1_000, 0)
    return int(time.time() * 1000) - 60_000


def _client(request: Request) -> str:
    """The address a stream is counted against (the peer's; behind a proxy, the proxy's)."""
    return request.client.host if request.client is not None else "?"


def _kafka_of(deps: ApiDeps) -> KafkaTarget:
    if deps.kafka is None:
        raise HTTPException(503, "this API was started without Kafka, so it cannot stream the log")
    return deps.kafka


def _resume_point(header: str | None, after: int | None) -> int | None:
    """``Last-Event-ID`` wins over ``?after=``: a browser reconnects to the same URL (with its original
    ``after``) and sends the id of the last event it got in the header."""
    if header is None or not header.strip():
        return after
    try:
        value = int(header.strip())
    except ValueError:
        value = -1
    if value < 0:
        raise HTTPException(
            400, f"Last-Event-ID must be the id of an event this stream sent (an events-topic offset), got {header!r}"
        )
    return value


def stream_slots(request: Request) -> StreamSlots:
    """The stream slots of the app serving ``request``."""
    return app_state(request, "stream_slots", StreamSlots)


#: A route's parameter for its app's stream slots.
Slots = Annotated[StreamSlots, Depends(stream_slots)]

#: Every route here needs the credentials.
router = APIRouter(dependencies=[Depends(authorize)])


async def _serve(
    slots: StreamSlots,
    deps: ApiDeps,
    client: str,
    topic: str,
    instead: str,
    build: Callable[[], Awaitable[R]],
    finished: Callable[[R], Awaitable[bool]],
    messages: Callable[[R], AsyncIterator[ServerSentEvent]],
) -> Response:
    """One SSE stream under the shared cap: 503 above it; the reader ``build`` makes is opened (and closed again
    if anything fails, a Kafka error being a 503); 204 when ``finished`` says a reconnect came after the end."""
    full = slots.take(client)
    if full is not None:
        status, detail = (
            (503, f"{slots.limit} live streams are already open, the most this API process serves; close one or "
                  "retry later")
            if full == "all"
            else (429, f"this client already holds {slots.per_client} live streams "
                       "(TICKFLOW_API_STREAMS_PER_CLIENT); close one first")
        )
        raise HTTPException(status, detail + instead, headers={"Retry-After": "5"})

    def release() -> None:
        slots.give(client)

    reader: R | None = None
    try:
        reader = await build()
        await reader.open()
        done = await finished(reader)
    except BaseException as exc:
        if reader is not None:
            with anyio.move_on_after(5, shield=True):
                await reader.close()
        release()
        if isinstance(exc, KafkaError | TokensUnavailable):
            log.warning("a stream could not read %s: %r", topic, exc)
            raise HTTPException(
                503, f"cannot read the topic {topic} at {deps.kafka}: {exc}; check that Kafka is up"
            ) from None
        raise
    if done:  # a reconnect after the end: 204 makes EventSource stop retrying
        try:
            await reader.close()
        finally:
            release()
        return Response(status_code=204)
    return _LiveResponse(messages(reader), reader, release, ping=PING_S, send_timeout=SEND_TIMEOUT_S)


async def _event_stream(
    request: Request,
    deps: ApiDeps,
    slots: StreamSlots,
    key: str,
    instead: str,
    after: int | None,
    from_seq: int | None,
    follow: bool,
    terminal: frozenset[str],
) -> Response:
    """The events of entity ``key`` (a run, a stack) from the resumption point on, under the shared cap."""
    resume = _resume_point(request.headers.get("last-event-id"), after)

    async def build() -> LiveReader:
        first = await asyncio.to_thread(deps.store.first_offset, key)
        since_ms = None if first is not None else await _run_started_ms(deps, key)
        return LiveReader(
            kafka=_kafka_of(deps),
            topic=deps.topics.events,
            partitions=deps.topics.partitions,
            key=key,
            after=resume,
            from_seq=from_seq,
            first=first,
            terminal=terminal,
            follow=follow,
            since_ms=since_ms,
        )

    async def finished(reader: LiveReader) -> bool:
        return reader.finished

    return await _serve(slots, deps, _client(request), deps.topics.events, instead, build, finished, _messages)


_AFTER = Query(default=None, ge=0, description="Continue strictly after this event offset (like Last-Event-ID).")
_FROM_SEQ = Query(default=None, ge=1, description="Only events with seq >= from_seq.")


@router.get("/runs/{run_id}/live", response_class=EventSourceResponse)
async def run_live(
    request: Request,
    deps: Deps,
    slots: Slots,
    run_id: str,
    after: int | None = _AFTER,
    from_seq: int | None = _FROM_SEQ,
    follow: bool = Query(default=False, description="Keep streaming after the run's terminal event."),
) -> Response:
    """The run's events as Server-Sent Events, from its first event (or the resumption point) on,
    ending after its terminal event unless ``follow``."""
    instead = f", or poll GET /runs/{run_id}/events"
    return await _event_stream(request, deps, slots, run_id, instead, after, from_seq, follow, RUN_TERMINAL_EVENTS)


@router.get("/stacks/{stack_id}/live", response_class=EventSourceResponse)
async def stack_live(
    request: Request,
    deps: Deps,
    slots: Slots,
    stack_id: str,
    after: int | None = _AFTER,
    from_seq: int | None = _FROM_SEQ,
) -> Response:
    """The agent stack's events as Server-Sent Events; a stack lives on, so the stream never ends by itself."""
    key = f"{STACK_PREFIX}{stack_id}"
    return await _event_stream(request, deps, slots, key, "", after, from_seq, True, frozenset())


@router.get("/runs/{run_id}/tokens", response_class=EventSourceResponse)
async def run_tokens(
    request: Request,
    deps: Deps,
    slots: Slots,
    run_id: str,
    after: int | None = Query(
        default=None, ge=0, description="Continue strictly after this tokens-topic offset (like Last-Event-ID)."
    ),
    since_ms: int | None = Query(
        default=None, ge=0, le=10**14, description="Start at chunks written since (default: the run's start)."
    ),
    follow: bool = Query(default=False, description="Keep streaming after the run has ended."),
) -> Response:
    """What the run's LLM calls stream, as it streams, as Server-Sent Events: each message is one ``LlmTokens``
    chunk (``event: tokens``; data: path, step, step_attempt, execution, stream, provider, model, index, text,
    tool, done, outcome, finish_reason, at_ms, offset), its ``id`` the chunk's tokens-topic offset to resume
    from. Ends with an ``end`` message once the run has ended and every chunk was sent, unless ``follow``. The
    tokens topic keeps chunks for hours only (``tokens_retention_ms``); each reply is recorded whole in the run's
    events."""
    resume = _resume_point(request.headers.get("last-event-id"), after)

    async def run_ended() -> bool:
        row = (await asyncio.to_thread(deps.store.runs_by_id, [run_id])).get(run_id)
        return row is not None and row.terminal

    async def build() -> TokenReader:
        start = since_ms if since_ms is not None else await _run_started_ms(deps, run_id)
        return TokenReader(kafka=_kafka_of(deps), topic=deps.topics.tokens, partitions=deps.topics.partitions,
                           key=run_id, after=resume, since_ms=start)

    async def finished(reader: TokenReader) -> bool:
        return resume is not None and not follow and await run_ended() and await reader.caught_up()

    def messages(reader: TokenReader) -> AsyncIterator[ServerSentEvent]:
        return _token_messages(reader, run_ended, follow)

    return await _serve(slots, deps, _client(request), deps.topics.tokens, "", build, finished, messages)


@router.get("/live/streams")
async def live_streams(slots: Slots) -> dict[str, int]:
    """How many live streams this API process has open, and its cap."""
    return {"open": slots.open, "max": slots.limit}
