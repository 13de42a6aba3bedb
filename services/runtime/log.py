"""The event log as an interface: append a run's events, read a partition back from its first offset.

``KafkaEventLog`` is the real one (the events topic); ``MemoryEventLog`` is its twin for tests. Both place a
key on a partition with Kafka's murmur2 rule, so a run's events always land together and in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from aiokafka.partitioner import murmur2

from tickflow.events.codec import decode, encode
from tickflow.events.connection import KafkaTarget
from tickflow.events.envelope import Envelope
from tickflow.runtime.kafka import new_producer, read_partition

__all__ = ["EventLog", "KafkaEventLog", "MemoryEventLog", "partition_of"]


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partitioner (murmur2, as in the Java client) for a run id."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


class EventLog(Protocol):
    partitions: int

    async def append(self, events: Sequence[Envelope]) -> None:
        """Durably append events (acknowledged before returning), keeping their order per key."""

    async def read(self, partition: int) -> list[Envelope]:
        """Every event of one partition, from its first retained offset up to now."""


class MemoryEventLog:
    def __init__(self, partitions: int = 8) -> None:
        self.partitions = partitions
        self._parts: list[list[bytes]] = [[] for _ in range(partitions)]

    async def append(self, events: Sequence[Envelope]) -> None:
        for e in events:
            self._parts[partition_of(e.key, self.partitions)].append(encode(e))

    async def read(self, partition: int) -> list[Envelope]:
        return [decode(raw) for raw in self._parts[partition]]


class KafkaEventLog:
    def __init__(self, kafka: KafkaTarget, topic: str, partitions: int) -> None:
        self.kafka, self.topic, self.partitions = kafka, topic, partitions
        self._producer = new_producer(kafka)
        self._started = False

    async def append(self, events: Sequence[Envelope]) -> None:
        if not self._started:
            await self._producer.start()
            self._started = True
        futures = [await self._producer.send(self.topic, encode(e), key=e.key.encode()) for e in events]
        for fut in futures:
            await fut

    async def read(self, partition: int) -> list[Envelope]:
        return [decode(r.value) for r in await read_partition(self.kafka, self.topic, partition)]

    async def close(self) -> None:
        if self._started:
            await self._producer.stop()
