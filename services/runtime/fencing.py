"""Zombie fencing: every engine write goes through one transactional producer per owned input partition.

Why transactions, and why one producer per partition (see docs/guarantees.md, "Fencing"):

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

from tickflow.events.connection import KafkaTarget
from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.runtime.kafka import new_producer

__all__ = ["TRANSACTION_TIMEOUT_MS", "Fenced", "PartitionWriter", "TransactionFailed"]

log = logging.getLogger("tickflow.engine")

#: The default of how long the coordinator lets a transaction stay open before aborting it
#: (``TICKFLOW_TRANSACTION_TIMEOUT_MS``). Only matters when an engine dies with a transaction open and nobody takes
#: its partition over: until then, read_committed readers of the partitions it wrote to wait at that transaction.
#: A loop turn's transaction lives for milliseconds; one the coordinator aborts is not taken for a fence (see
#: ``Engine._still_owner``).
TRANSACTION_TIMEOUT_MS = 30_000


class TransactionFailed(TickflowError):
    """A partition's transaction was not committed; its writes are aborted and its cached state is suspect."""

    code = ErrorCode.UNAVAILABLE

    def __init__(self, partition: int, cause: BaseException) -> None:
        super().__init__(f"partition {partition}: transaction not committed ({type(cause).__name__}: {cause})")
        self.partition = partition


class Fenced(TransactionFailed):
    """Another engine now holds this partition's transactional id: this one must stop writing for it."""

    code = ErrorCode.CONFLICT


class PartitionWriter:
    """The transactional producer of one owned input partition; a transaction opens at the first send."""

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
        self.transactions = 0  # committed so far

    async def start(self) -> None:
        """Register with the transaction coordinator; returns once any previous holder of the id is fenced off and
        its open transaction aborted, so a read of the log after this sees everything it will ever commit."""
        await self._producer.start()

    @property
    def open(self) -> bool:
        return self._open

    async def send(
        self, topic: str, value: bytes | None, key: bytes, partition: int | None = None
    ) -> asyncio.Future[Any]:
        """Add a record to the open transaction (opening one if needed); the future resolves when the broker has it.

        A send that fails at once (a full buffer, a record the client refuses) does not raise here: the failure is
        kept as the record's future, so the transaction is aborted at ``commit`` and the partition rebuilt, instead of
        an exception leaving the partition with a transaction open and nobody to end it.
        """
        if not self._open:
            await self._producer.begin_transaction()
            self._open = True
        try:
            fut: asyncio.Future[Any] = await self._producer.send(topic, value, key=key, partition=partition)
        except (KafkaError, OSError, RuntimeError, ValueError, TypeError) as exc:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
        self._sends.append(fut)
        return fut

    async def acknowledged(self) -> None:
        """Wait until the broker has every record of the open transaction (committed or not); raises nothing."""
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
            failed = await self._delivery_failure()
            if failed is not None:
                raise failed
            await self._producer.commit_transaction()
        except (KafkaError, OSError, RuntimeError, ValueError, TypeError) as exc:
            await self._abort_quietly()
            self._sends, self._open = [], False
            raise (Fenced if isinstance(exc, ProducerFenced) else TransactionFailed)(self.partition, exc) from exc
        self._sends, self._open = [], False
        self.transactions += 1

    async def _delivery_failure(self) -> BaseException | None:
        """Wait until the broker answered for every record of the open transaction; the first failure, if any.

        One wait per producer batch (``flush``), then a plain look at each record's future: a gather over every
        record's future costs a callback per record, a measurable share of the engine's CPU at thousands of records a
        second. aiokafka settles a batch's records together with the batch.
        """
        await self._producer.flush()
        pending = [f for f in self._sends if not f.done()]
        if pending:  # not expected; never commit past a record whose outcome is unknown
            await asyncio.wait(pending)
        for fut in self._sends:
            if fut.cancelled():
                cancelled: BaseException = KafkaError(f"a record of partition {self.partition}'s transaction was "
                                                      "cancelled")
                return cancelled
            exc: BaseException | None = fut.exception()
            if exc is not None:
                return exc
        return None

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
