"""Streamed LLM deltas on the tokens topic: the worker's publisher, and the reader behind ``GET /runs/{id}/tokens``.

The tokens topic is for watching, not for truth. A worker sends what a model streams while a step runs, and the
step's result still records the whole reply once, in the log, like before; a lost delta costs a watcher a few
words and nobody else anything. So the publisher never makes a model call wait for Kafka: a stream's deltas
are coalesced for ``FLUSH_S`` (one record per stream per 50 ms rather than one per token), queued in a bounded
queue, and shipped by one task in order; a full queue drops records and counts them.

Records are keyed by run id, so one run's chunks sit in one partition, in the order they were sent (the
producer is idempotent). A reader assigns that partition alone, starts at the run's start time (or strictly
after the offset a client last got) and keeps the run's records; the offsets are the SSE ids to resume from.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from tickflow.events.agents import LlmTokens
from tickflow.events.codec import InvalidRecord, decode, encode
from tickflow.events.connection import KafkaTarget
from tickflow.events.envelope import MAX_ID_CHARS, Envelope
from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.events.schemas import RunStep
from tickflow.events.topics import partition_key
from tickflow.runtime.kafka import new_consumer
from tickflow.runtime.live import FETCH_WAIT_MS, partition_of

__all__ = [
    "FLUSH_S",
    "MAX_CHUNK_CHARS",
    "MAX_QUEUED",
    "StepTokens",
    "TokenChunk",
    "TokenPublisher",
    "TokenReader",
    "TokensUnavailable",
]

log = logging.getLogger("tickflow.tokens")

#: How long a stream's deltas are gathered into one record: fast enough to read as live, few enough records.
FLUSH_S = 0.05
#: A stream's buffer is sent at once when it holds this many characters.
MAX_CHUNK_CHARS = 16_000
#: Records waiting for the producer; beyond this the publisher drops (and counts) rather than slow a model call.
MAX_QUEUED = 10_000


class TokenPublisher:
    """One per worker process: a bounded queue of encoded records and the one task that sends them in order."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, *, flush_s: float = FLUSH_S,
                 max_queued: int = MAX_QUEUED) -> None:
        self.topic = topic
        self.flush_s = flush_s
        self.sent = self.dropped = self.failed = 0
        self._producer = producer
        self._queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(max_queued)
        #: Deliveries not yet counted, oldest first. Swept, not called back: a callback per record costs the event
        #: loop a scheduled handle each, at thousands of chunks a second.
        self._deliveries: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._counting = threading.Lock()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._send_loop(), name=f"tickflow-tokens-{self.topic}")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Send what is queued (for up to ``timeout_s``), then stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout_s)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._count_delivered()

    def listener(self, task_env: Envelope, task: RunStep) -> StepTokens:
        """The listener of one step attempt (``tickflow.llm.listening`` makes the router hear it)."""
        return StepTokens(self, task_env, task)

    def put(self, key: bytes, value: bytes) -> None:
        try:
            self._queue.put_nowait((key, value))
        except asyncio.QueueFull:
            self.dropped += 1

    def metric_values(self) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
        self._count_delivered()
        yield "counter", "tickflow_tokens_records_sent", "Token chunk records handed to Kafka.", {}, float(self.sent)
        yield "counter", "tickflow_tokens_records_dropped", "Token chunks dropped: the send queue was full.", {}, \
            float(self.dropped)
        yield "counter", "tickflow_tokens_records_failed", "Token chunks Kafka refused.", {}, float(self.failed)

    async def _send_loop(self) -> None:
        while True:
            key, value = await self._queue.get()
            try:
                self._deliveries.append(await self._producer.send(self.topic, value, key=key))
            except Exception as exc:  # best effort: a watcher misses a few words
                self.failed += 1
                log.warning("could not send a token chunk to %s: %r", self.topic, exc)
            finally:
                self._queue.task_done()
            self._count_delivered()

    def _count_delivered(self) -> None:
        """Count the deliveries the broker answered for, in order (a partition's records are answered in order;
        across partitions, one still waiting holds the count of later ones back a little). Under a lock: a
        ``/metrics`` scrape calls it from the metrics server's thread, and a look-then-pop raced by the loop could
        pop a delivery still pending."""
        deliveries = self._deliveries
        with self._counting:
            while deliveries and deliveries[0].done():
                delivery = deliveries.popleft()
                if delivery.cancelled() or delivery.exception() is not None:
                    self.failed += 1
                else:
                    self.sent += 1


class StepTokens:
    """The token listener of one step attempt: numbers its LLM requests (``stream`` 1, 2, …)."""

    def __init__(self, publisher: TokenPublisher, task_env: Envelope, task: RunStep) -> None:
        self.publisher = publisher
        self.task_env = task_env
        self.task = task
        self.streams = 0
        self.execution = uuid.uuid4().hex[:12]
        base = task_env.id
        if len(base) > MAX_ID_CHARS - 40:  # room for "/tokens/<execution>/<stream>.<index>"
            base = hashlib.sha256(base.encode()).hexdigest()
        self._id_base = f"{base}/tokens/{self.execution}"

    def open(self, *, provider: str, model: str) -> _Stream:
        self.streams += 1
        return _Stream(self, self.streams, provider, model)


class _Stream:
    """One request's deltas, gathered for ``FLUSH_S`` and sent as numbered ``LlmTokens`` chunks."""

    def __init__(self, owner: StepTokens, number: int, provider: str, model: str) -> None:
        self._owner = owner
        self._number = number
        self._provider = provider
        self._model = model
        self._index = 0
        self._tool: str | None = None
        self._parts: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False

    def text(self, delta: str) -> None:
        self._add(None, delta)

    def tool(self, name: str, delta: str) -> None:
        self._add(name, delta)

    def close(self, outcome: str, finish_reason: str | None) -> None:
        if not self._closed:
            self._flush(outcome=outcome, finish_reason=finish_reason)
            self._closed = True

    def _add(self, tool: str | None, delta: str) -> None:
        if self._closed:
            return
        if tool != self._tool and (self._parts or self._tool is not None):
            self._flush()  # one chunk holds one kind of text: the reply, or one tool's arguments
        self._tool = tool
        while delta:
            room = MAX_CHUNK_CHARS - self._size
            self._parts.append(delta[:room])
            self._size += min(len(delta), room)
            delta = delta[room:]
            if self._size >= MAX_CHUNK_CHARS:
                self._flush()
                self._tool = tool
        if self._parts and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._owner.publisher.flush_s, self._flush)

    def _flush(self, *, outcome: str | None = None, finish_reason: str | None = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        done = outcome is not None
        if not self._parts and not done and self._tool is None:
            return
        owner = self._owner
        task, env = owner.task, owner.task_env
        payload = LlmTokens(
            path=task.path, step=task.step, step_attempt=task.attempt, execution=owner.execution, stream=self._number,
            provider=self._provider, model=self._model, index=self._index, text="".join(self._parts),
            tool=self._tool, done=done, outcome=cast(Any, outcome), finish_reason=finish_reason,
        )
        self._parts, self._size, self._tool = [], 0, None
        record = Envelope.wrap(
            payload,
            id=f"{owner._id_base}/{self._number}.{self._index}",
            key=env.key,
            occurred_at_ms=int(time.time() * 1000),
            causation_id=env.id,
            correlation_id=env.correlation_id,
        )
        self._index += 1
        try:
            raw = encode(record)
        except InvalidRecord as exc:
            log.warning("dropped a token chunk of %s: %s", env.key, exc)
            return
        owner.publisher.put(partition_key(env.key), raw)


class TokensUnavailable(TickflowError):
    """The tokens topic does not exist (no role of this version has started yet)."""

    code = ErrorCode.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class TokenChunk:
    """One chunk as a reader delivers it: where it is in the topic, and what it says."""

    offset: int
    at_ms: int
    payload: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {**self.payload, "offset": self.offset, "at_ms": self.at_ms}


class TokenReader:
    """Tails one run's chunks in its partition of the tokens topic, from ``since_ms`` or strictly after ``after``."""

    def __init__(self, *, kafka: KafkaTarget, topic: str, partitions: int, key: str, after: int | None = None,
                 since_ms: int | None = None) -> None:
        self.key = key
        self.tp = TopicPartition(topic, partition_of(key, partitions))
        self.topic = topic
        self._key_bytes = partition_key(key)
        self._kafka = kafka
        self._after = after
        self._since_ms = since_ms
        self._consumer: AIOKafkaConsumer | None = None

    async def open(self) -> None:
        consumer = new_consumer(self._kafka, group_id=None, fetch_max_wait_ms=FETCH_WAIT_MS,
                                max_partition_fetch_bytes=1024 * 1024, auto_offset_reset="latest")
        self._consumer = consumer
        await consumer.start()
        tp = self.tp
        if tp.topic not in await consumer.topics():
            raise TokensUnavailable(f"the tokens topic {tp.topic!r} does not exist yet; every tickflow role creates it "
                                    "when it starts (tickflow serve, up, worker…)")
        consumer.assign([tp])
        begin = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if self._after is not None:
            start = self._after + 1
        elif self._since_ms is not None:
            found = (await consumer.offsets_for_times({tp: max(self._since_ms, 0)}))[tp]
            start = found.offset if found is not None else end
        else:
            start = begin
        consumer.seek(tp, min(max(start, begin), end))

    async def caught_up(self) -> bool:
        """Whether every chunk written so far was read."""
        consumer, tp = self._opened()
        end: int = (await consumer.end_offsets([tp]))[tp]
        position: int = await consumer.position(tp)
        return position >= end

    async def next_batch(self, timeout_ms: int = 1_000) -> list[TokenChunk]:
        """The run's next chunks in topic order; empty after ``timeout_ms`` without one."""
        consumer, tp = self._opened()
        batch = await consumer.getmany(tp, timeout_ms=timeout_ms, max_records=1_000)
        return [chunk for record in batch.get(tp, []) if (chunk := self._accept(record)) is not None]

    async def close(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    def _opened(self) -> tuple[AIOKafkaConsumer, TopicPartition]:
        if self._consumer is None:
            raise RuntimeError("TokenReader.open() must be awaited before reading")
        return self._consumer, self.tp

    def _accept(self, record: ConsumerRecord[bytes, bytes]) -> TokenChunk | None:
        if record.key != self._key_bytes:
            return None
        try:
            env = decode(record.value, expect="token")
        except InvalidRecord as exc:
            log.warning("skipping an unreadable token chunk at %s@%d: %s", self.topic, record.offset, exc)
            return None
        if env.key != self.key:
            return None
        return TokenChunk(offset=record.offset, at_ms=env.occurred_at_ms, payload=env.payload.model_dump(mode="json"))
