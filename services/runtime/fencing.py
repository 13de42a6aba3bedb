"""Zombie fencing: every engine write goes through one transactional producer per owned input partition.

Why transactions, and why one producer per partition (see README, "Fencing"):

* The transactional id is derived from the input partition (``<engine group>.<partition>``), not from the process.
  Whoever starts a producer with that id bumps its epoch at the transaction coordinator, which aborts the previous
  holder's open transaction and refuses every later write of the previous epoch (``ProducerFenced``). So an engine
  that was paused past its session timeout, lost its partitions and then resumed can get nothing accepted: no
  event, task, cross-partition command or snapshot. aiokafka 0.14 speaks the v0 transaction protocol (no KIP-447
  group-generation check), which is why the id must follow the partition and not the process.
* A transaction also makes one loop turn's writes for a partition atomic: its events, the tasks and commands they
  imply, its snapshots and its dead letters become visible together or not at all. Readers use ``read_committed``.
* Input offsets are not sent to the group in the transaction (no ``send_offsets_to_transaction``: it costs two
  more coordinator round trips per commit, and aiokafka has an open bug in it, #1098). Instead ``commit`` takes the
  partition's applied-offsets note as the transaction's last record (``runtime/input_offsets.py``), and the engine
  commits the group's offsets with its consumer after the transactions they depend on committed; the group
  coordinator refuses a commit from an evicted member's old generation.

A failed transaction is never retried in place: the partition's cached state may be ahead of the log, so the engine
gives the partition up and rebuilds it from the log (or, when fenced, leaves it to its new owner).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, ProducerFenced
from aiokafka.partitioner import murmur2

from tickflow.events.connection import KafkaTarget
from tickflow.runtime.kafka import new_producer

__all__ = ["TRANSACTION_TIMEOUT_MS", "Fenced", "PartitionWriter", "TransactionFailed"]

log = logging.getLogger("tickflow.engine")

#: The default of how long the coordinator lets a transaction stay open before aborting it
#: (``TICKFLOW_TRANSACTION_TIMEOUT_MS``). Only matters when an engine dies with a transaction open and nobody takes
#: its partition over: until then, read_committed readers of the partitions it wrote to wait at that transaction.
#: A loop turn's transaction lives for milliseconds; one the coordinator aborts is not taken for a fence (see
#: ``Engine._still_owner``).
TRANSACTION_TIMEOUT_MS = 30_000


class TransactionFailed(RuntimeError):
    """A partition's transaction was not committed; its writes are aborted and its cached state is suspect."""

    def __init__(self, partition: int, cause: BaseException) -> None:
        super().__init__(f"partition {partition}: transaction not committed ({type(cause).__name__}: {cause})")
        self.partition = partition


class Fenced(TransactionFailed):
    """Another engine now holds this partition's transactional id: this one must stop writing for it."""


class PartitionWriter:
    """The transactional producer of one owned input partition; a transaction opens at the first send.

    Records are gathered into one batch per topic partition (aiokafka's batch API) and handed to the producer at
    ``flush`` (and at ``commit``): one future per batch instead of one per record, no metadata lookup per record —
    sending record by record was a third of a busy engine's time. A keyed record without a partition goes where
    Kafka's default partitioner puts it (murmur2 of the key), as every other producer of the topic does.
    """

    def __init__(
        self, kafka: KafkaTarget, transactional_id: str, partition: int, timeout_ms: int = TRANSACTION_TIMEOUT_MS
    ) -> None:
        self.partition = partition
        self.transactional_id = transactional_id
        self._producer: AIOKafkaProducer = new_producer(
            kafka, transactional_id=transactional_id, transaction_timeout_ms=timeout_ms
        )
        self._open = False
        self._sends: list[asyncio.Future[Any]] = []
        #: Batches being filled, by (topic, partition), with their record counts.
        self._filling: dict[tuple[str, int], tuple[Any, int]] = {}
        #: Batches handed to the producer in the open transaction: (topic, partition), future, records.
        self._submitted: list[tuple[tuple[str, int], asyncio.Future[Any], int]] = []
        #: Per (topic, partition): the offset after the last record of this writer's committed transactions.
        self.committed_end: dict[tuple[str, int], int] = {}
        self._partitions: dict[str, int] = {}  # partition count by topic, for keyed records
        self.transactions = 0  # committed so far

    async def start(self) -> None:
        """Register with the transaction coordinator; returns once any previous holder of the id is fenced off and
        its open transaction aborted, so a read of the log after this sees everything it will ever commit."""
        await self._producer.start()

    @property
    def open(self) -> bool:
        return self._open

    async def send(self, topic: str, value: bytes | None, key: bytes, partition: int | None = None) -> None:
        """Add a record to the open transaction (opening one if needed); it is sent at the next ``flush``.

        A send that fails at once (a record the client refuses, a topic it cannot learn) does not raise here: the
        failure is kept, so the transaction is aborted at ``commit`` and the partition rebuilt, instead of an
        exception leaving the partition with a transaction open and nobody to end it.
        """
        if not self._open:
            await self._producer.begin_transaction()
            self._open = True
        try:
            tp = (topic, partition if partition is not None else await self._partition_of(topic, key))
            batch, count = self._filling.get(tp) or (self._producer.create_batch(), 0)
            if batch.append(timestamp=None, key=key, value=value) is None:  # full: send it, start the next one
                self._filling[tp] = (batch, count)
                await self._submit(tp)
                batch, count = self._producer.create_batch(), 0
                batch.append(timestamp=None, key=key, value=value)  # a batch's first record always fits
            self._filling[tp] = (batch, count + 1)
        except (KafkaError, OSError, RuntimeError, ValueError, TypeError) as exc:
            self._failed(exc)

    async def flush(self) -> None:
        """Hand every batch being filled to the producer (its sender sends them while the caller goes on)."""
        for tp in list(self._filling):
            try:
                await self._submit(tp)
            except (KafkaError, OSError, RuntimeError, ValueError, TypeError) as exc:
                self._failed(exc)

    async def _submit(self, tp: tuple[str, int]) -> None:
        batch, count = self._filling.pop(tp)
        fut: asyncio.Future[Any] = await self._producer.send_batch(batch, tp[0], partition=tp[1])
        self._sends.append(fut)
        self._submitted.append((tp, fut, count))

    def _failed(self, exc: BaseException) -> None:
        fut = asyncio.get_running_loop().create_future()
        fut.set_exception(exc)
        self._sends.append(fut)

    async def _partition_of(self, topic: str, key: bytes) -> int:
        count = self._partitions.get(topic)
        if count is None:
            known = await self._producer.client._wait_on_metadata(topic)  # the producer's own lookup, once a topic
            count = self._partitions[topic] = len(known)
        return int((murmur2(key) & 0x7FFFFFFF) % count)

    async def acknowledged(self) -> None:
        """Send what is gathered and wait until the broker has every record of the open transaction (committed or
        not); raises nothing."""
        await self.flush()
        await asyncio.gather(*self._sends, return_exceptions=True)

    async def commit(self, last_record: tuple[str, bytes, bytes, int] | None = None) -> None:
        """Commit the open transaction, if any. Any failure aborts it and raises ``TransactionFailed``/``Fenced``.

        ``last_record`` (topic, value, key, partition) is added to the transaction just before it commits: the
        engine's note of the input offsets the transaction applies (see ``Engine``), so that note and the writes it
        speaks for become visible together or not at all.

        The writer stays open until the outcome is known. aiokafka commits a transaction even when one of its
        records failed for good; every send is checked first, so a transaction with a lost record is aborted
        instead of leaving a gap. A cancellation while the commit is in flight leaves the outcome unknown: the
        writer then stays open, so the engine commits no offset of its partition, and the next owner's writer settles
        the transaction.
        """
        if not self._open:
            return
        try:
            if last_record is not None:
                await self.send(*last_record)
            await self.flush()
            results = await asyncio.gather(*self._sends, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
            await self._producer.commit_transaction()
        except (KafkaError, OSError, RuntimeError, ValueError, TypeError) as exc:
            await self._abort_quietly()
            self._end()
            raise (Fenced if isinstance(exc, ProducerFenced) else TransactionFailed)(self.partition, exc) from exc
        for tp, fut, count in self._submitted:  # a batch's metadata carries its first record's offset
            self.committed_end[tp] = max(self.committed_end.get(tp, 0), fut.result().offset + count)
        self._end()
        self.transactions += 1

    def _end(self) -> None:
        self._sends, self._submitted, self._filling, self._open = [], [], {}, False

    async def _abort_quietly(self) -> None:
        try:
            await self._producer.abort_transaction()
        except Exception as exc:  # fenced or dead: the coordinator aborts it (new owner or timeout)
            log.debug("abort of %s failed: %r", self.transactional_id, exc)

    async def stop(self) -> None:
        """Close the producer. An open transaction is aborted by the coordinator (at the next owner's start)."""
        try:
            await self._producer.stop()
        except Exception as exc:  # a fenced producer's sender is already dead
            log.debug("stopping %s: %r", self.transactional_id, exc)
