"""A step worker's concurrency, as its pool's latest ``SetPoolConcurrency`` on the control topic sets it.

The control topic is compacted and read without a consumer group: every worker of the pool reads all its partitions
from the start, so a worker started late still learns the latest limit, and one whose read fails keeps the limit it
has and tries again. Kept apart from ``runtime.worker.StepWorker``: it is a consumer of its own, with its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.schemas import SetPoolConcurrency
from tickflow.runtime.kafka import new_consumer
from tickflow.settings import Settings

__all__ = ["CONTROL_READY_TIMEOUT_S", "CONTROL_RETRY_S", "PoolControl"]

log = logging.getLogger("tickflow.worker")
CONTROL_RETRY_S = 5.0
#: How long ``start`` waits to learn the pool's concurrency before running anything with the configured one.
CONTROL_READY_TIMEOUT_S = 5.0


class PoolControl:
    """Follows one pool's ``SetPoolConcurrency`` and hands each newest limit to ``apply``."""

    def __init__(self, settings: Settings, pool: str, apply: Callable[[int], None]) -> None:
        """``apply``: what changes the worker's concurrency (``StepWorker.set_concurrency``)."""
        self.settings = settings
        self.pool = pool
        self.topic = settings.topics.control
        self._apply = apply
        #: Set once the limit the topic held at start is applied (or there is none to learn, or it cannot be read).
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Follow the topic from now on; returns once the pool's current limit is applied, or after
        ``CONTROL_READY_TIMEOUT_S`` (a slow control topic must not keep the worker down)."""
        self._task = asyncio.create_task(self._loop(), name=f"tickflow-control-{self.pool}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), CONTROL_READY_TIMEOUT_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        """Follow this pool's ``SetPoolConcurrency``. Without a group, every worker reads all partitions of the
        compacted topic from the start, so a late starter gets the latest limit. It subscribes only once the
        topic exists, so the broker never auto-creates it uncompacted."""
        while True:
            consumer = new_consumer(self.settings.kafka, group_id=None, auto_offset_reset="earliest")
            try:
                await consumer.start()
                while self.topic not in await consumer.topics():
                    self._ready.set()  # nothing to learn yet: the configured concurrency stands
                    await asyncio.sleep(CONTROL_RETRY_S)
                consumer.subscribe([self.topic])
                await self._follow(consumer)
            except Exception as exc:
                self._ready.set()
                log.warning("cannot read %s (%s); retrying in %.0fs", self.topic, exc, CONTROL_RETRY_S)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
            await asyncio.sleep(CONTROL_RETRY_S)

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        end: dict[TopicPartition, int] | None = None
        while True:
            batch = await consumer.getmany(timeout_ms=1_000 if self._ready.is_set() else 100)
            limits = [limit for records in batch.values() for r in records if (limit := self.limit_in(r))]
            if limits:
                self._apply(limits[-1])  # only the newest matters; older ones were replayed history
            if not self._ready.is_set() and (assigned := consumer.assignment()):
                end = end or await consumer.end_offsets(list(assigned))
                if all([await consumer.position(tp) >= offset for tp, offset in end.items()]):
                    self._ready.set()

    def limit_in(self, record: ConsumerRecord[bytes, bytes]) -> int | None:
        """The concurrency a control record sets for this pool; None for another pool's, a tombstone, or
        anything else."""
        if record.value is None:
            return None  # a tombstone: compaction will drop the key; the current limit stays
        try:
            env = decode(record.value, expect="control")
        except InvalidRecord as exc:
            log.warning("skipping control record %s[%d]@%d: %s", record.topic, record.partition, record.offset, exc)
            return None
        payload = env.payload
        return payload.limit if isinstance(payload, SetPoolConcurrency) and payload.pool == self.pool else None
