"""Event-triggered starts: records on a named topic start a workflow, the record as its input.

A trigger is a rule registered with ``Registry.trigger(topic, workflow)``. The trigger role consumes those
topics (its own consumer group per deployment) and produces one ``StartRun`` per record. The run id is
derived from the record's coordinates — ``<trigger>.<partition>.<offset>`` — so a record redelivered after a
crash starts no second run: the engine's start is idempotent by run id. Offsets are committed only after
the StartRun commands they caused are acknowledged.

The run's input is ``{"topic", "partition", "offset", "key", "value", "timestamp_ms"}``; ``value`` is the
record's JSON if it parses, else its UTF-8 text. A record too big to become a command goes to the
dead-letter topic with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

from tickflow.events.codec import InvalidRecord, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import StartRun
from tickflow.runtime.kafka import DeadLetters, PendingSends, Rebalance, consumer_lag, new_consumer, new_producer
from tickflow.settings import Settings
from tickflow.workflow import Registry, Trigger

__all__ = ["TriggerRole", "trigger_input", "trigger_run_id"]

log = logging.getLogger("tickflow.triggers")


def trigger_run_id(trigger: Trigger, partition: int, offset: int) -> str:
    """The run a record starts; derived from its coordinates so a redelivery is a no-op."""
    return f"{trigger.name}.{partition}.{offset}"


def trigger_input(record: ConsumerRecord[bytes, bytes]) -> dict[str, Any]:
    raw = record.value or b""
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw.decode(errors="replace")
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode(errors="replace") if record.key else None,
        "value": value,
        "timestamp_ms": record.timestamp,
    }


class TriggerRole:
    """Consumes every trigger topic of the registry and starts the workflows their rules name."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.by_topic: dict[str, list[Trigger]] = {}
        for trig in registry.triggers:
            self.by_topic.setdefault(trig.topic, []).append(trig)
        self.started = 0
        self.dead_lettered = 0
        self.pending = PendingSends()
        self.positions: dict[TopicPartition, int] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def start(self) -> None:
        s = self.settings
        self.producer = new_producer(s.kafka)
        await self.producer.start()
        self.dead_letters = DeadLetters(self.producer, s.topics.dead_letter, "trigger")
        self.consumer = new_consumer(s.kafka, group_id=f"{s.topics.prefix}.trigger")
        await self.consumer.start()
        self.consumer.subscribe(sorted(self.by_topic), listener=Rebalance(on_revoked=self._on_revoked))
        self._task = asyncio.create_task(self._loop(), name="tickflow-triggers")

    def metric_values(self) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
        """Its counters and levels for /metrics (``tickflow.metrics.RoleCollector`` reads them)."""
        role = {"role": "trigger"}
        yield "counter", "tickflow_trigger_runs_started", "Runs started by triggers.", role, float(self.started)
        refused = float(self.dead_lettered)
        yield "counter", "tickflow_trigger_dead_letters", "Records refused to the dead-letter topic.", role, refused
        if hasattr(self, "consumer"):
            yield from consumer_lag("trigger", self.consumer, self.positions)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._commit()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    async def _loop(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=200, max_records=1_000)
            for tp, records in batch.items():
                for record in records:
                    await self._handle(record)
                self.positions[tp] = records[-1].offset + 1
            if batch:
                await self._commit()

    async def _handle(self, record: ConsumerRecord[bytes, bytes]) -> None:
        now = int(time.time() * 1000)
        for trig in self.by_topic.get(record.topic, []):
            run_id = trigger_run_id(trig, record.partition, record.offset)
            command = Envelope.wrap(
                StartRun(workflow=trig.workflow, input=trigger_input(record)),
                id=f"start/{run_id}",
                key=run_id,
                occurred_at_ms=now,
                correlation_id=run_id,
            )
            try:
                raw = encode(command)
            except InvalidRecord as exc:
                self.pending.add(await self.dead_letters.send(record, f"trigger {trig.name!r}: {exc}", now))
                self.dead_lettered += 1
                continue
            topic = self.settings.topics.commands
            self.pending.add(await self.producer.send(topic, raw, key=run_id.encode()))
            self.started += 1

    async def _commit(self) -> None:
        await self.pending.drain()  # the StartRuns first, then the offsets of the records that caused them
        if self.positions:
            try:
                await self.consumer.commit(dict(self.positions))
            except (CommitFailedError, IllegalStateError) as exc:  # a rebalance got in first: redelivered
                log.warning("offset commit skipped during a rebalance: %s", exc)

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._commit()
        for tp in revoked:
            self.positions.pop(tp, None)
