"""Step workers: run registered functions for one pool and report each attempt's result.

Execution is at-least-once: a task's offset is committed only after its result has been acknowledged by the
broker, and only up to the lowest task still running in that partition (tasks finish out of order when
``concurrency`` > 1). A redelivered task runs again with the same idempotency key; the engine applies only
the first result of an attempt.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import traceback
from collections import defaultdict
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition

from events.codec import InvalidRecord, decode, encode
from events.envelope import Envelope
from events.schemas import ErrorInfo, RunStep, StepErrored, StepSucceeded
from events.topics import DEFAULT_POOL
from services.config import Settings
from services.errors import NonRetryableError
from services.kafka import DeadLetters, PendingSends, Rebalance, new_consumer, new_producer
from services.workflow import Registry, StepContext

__all__ = ["StepWorker"]

log = logging.getLogger("tickflow.worker")
TRACEBACK_LIMIT = 8_000


def _now_ms() -> int:
    return int(time.time() * 1000)


class _Offsets:
    """Per-partition bookkeeping so commits cover only tasks whose results are already sent."""

    def __init__(self) -> None:
        self.running: dict[TopicPartition, set[int]] = defaultdict(set)
        self.fetched: dict[TopicPartition, int] = {}

    def begin(self, tp: TopicPartition, offset: int) -> None:
        self.running[tp].add(offset)
        self.fetched[tp] = offset + 1

    def done(self, tp: TopicPartition, offset: int) -> None:
        self.running[tp].discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        return {tp: min(self.running[tp]) if self.running[tp] else end for tp, end in self.fetched.items()}


class StepWorker:
    """Consumes ``tasks.<pool>``, runs up to ``concurrency`` steps at once, produces results."""

    def __init__(
        self, settings: Settings, registry: Registry, pool: str = DEFAULT_POOL, concurrency: int | None = None
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.pool = pool
        self.concurrency = concurrency or settings.worker_concurrency
        self.topics = settings.topics
        self.name = f"{socket.gethostname()}:{os.getpid()}:{pool}"
        self.offsets = _Offsets()
        self.pending = PendingSends()
        self.executed = 0
        self._slots = asyncio.Semaphore(self.concurrency)
        self._inflight: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_commit = 0.0

    async def start(self) -> None:
        self.producer = new_producer(self.settings.bootstrap)
        await self.producer.start()
        self.dead_letters = DeadLetters(self.producer, self.topics.dead_letter, f"worker:{self.pool}")
        self.consumer = new_consumer(self.settings.bootstrap, group_id=self.topics.worker_group(self.pool))
        await self.consumer.start()
        self.consumer.subscribe([self.topics.tasks(self.pool)], listener=Rebalance(on_revoked=self.on_revoked))
        self._task = asyncio.create_task(self._loop(), name=f"tickflow-worker-{self.pool}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._drain_inflight()
        try:
            await self._commit()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def _loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=1_000)
            for tp, records in batch.items():
                for record in records:
                    await self._slots.acquire()  # backpressure: never more than `concurrency` steps at once
                    self.offsets.begin(tp, record.offset)
                    t = asyncio.create_task(self._execute(tp, record))
                    self._inflight.add(t)
                    t.add_done_callback(self._inflight.discard)
            if time.monotonic() - self._last_commit >= interval:
                await self._commit()

    async def _commit(self) -> None:
        await self.pending.drain()  # results first, then the offsets of the tasks that produced them
        offsets = self.offsets.committable()
        if offsets:
            await self.consumer.commit(offsets)
        self._last_commit = time.monotonic()

    async def _drain_inflight(self) -> None:
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=30)

    async def _execute(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            try:
                env = decode(record.value, expect="task")
            except InvalidRecord as exc:
                self.pending.add(await self.dead_letters.send(record, str(exc), _now_ms()))
            else:
                result = await self._run(env)
                self.pending.add(await self.producer.send(self.topics.results, result, key=record.key))
                self.executed += 1
            # Only now may the commit pass this offset; if sending raised, it stays uncommitted and the task
            # is redelivered after a restart.
            self.offsets.done(tp, record.offset)
        except Exception:
            log.exception("could not report task %s[%d]@%d", tp.topic, tp.partition, record.offset)
        finally:
            self._slots.release()

    async def _run(self, env: Envelope) -> bytes:
        task = env.payload
        assert isinstance(task, RunStep)
        ctx = StepContext(
            run_id=env.key,
            workflow=task.workflow,
            step=task.step,
            attempt=task.attempt,
            idempotency_key=task.idempotency_key,
        )
        started = time.perf_counter()
        try:
            call = self.registry.call(task.fn, task.input, ctx)
            output: Any = await (asyncio.wait_for(call, task.timeout_s) if task.timeout_s else call)
            payload: StepSucceeded | StepErrored = StepSucceeded(
                step=task.step,
                index=task.index,
                attempt=task.attempt,
                output=output,
                duration_ms=(time.perf_counter() - started) * 1000,
                worker=self.name,
            )
            result = self._wrap(env, payload)
            return encode(result)
        except Exception as exc:  # a step body may raise anything; report it, never crash the worker
            retryable = not isinstance(exc, NonRetryableError | LookupError | InvalidRecord)
            if isinstance(exc, TimeoutError):
                message = f"step {task.step!r} exceeded its timeout of {task.timeout_s}s"
            elif isinstance(exc, InvalidRecord):
                message = f"step {task.step!r} returned an output that cannot be recorded: {exc}"
            else:
                message = str(exc) or type(exc).__name__
            error = ErrorInfo(
                type=type(exc).__name__,
                message=message[:60_000],
                traceback="".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:],
            )
            failed = StepErrored(
                step=task.step,
                index=task.index,
                attempt=task.attempt,
                error=error,
                retryable=retryable,
                duration_ms=(time.perf_counter() - started) * 1000,
                worker=self.name,
            )
            return encode(self._wrap(env, failed))

    @staticmethod
    def _wrap(task: Envelope, payload: StepSucceeded | StepErrored) -> Envelope:
        return Envelope.wrap(
            payload,
            # Deterministic id: a re-executed attempt reports under the same id.
            id=f"{task.id}/result",
            key=task.key,
            occurred_at_ms=_now_ms(),
            causation_id=task.id,
            correlation_id=task.correlation_id,
        )

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._drain_inflight()
        await self._commit()
        for tp in revoked:
            self.offsets.fetched.pop(tp, None)
            self.offsets.running.pop(tp, None)
