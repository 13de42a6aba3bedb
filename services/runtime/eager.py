"""Eager local dispatch: a step whose pool has a worker in the engine's own process is handed over in memory.

Temporal's eager activities, within tickflow's log-first rules. In the default ``tickflow up`` the engine and a
worker of every pool share a process; sending each task through the tasks topic and each result back through the
results topic costs two Kafka round trips, a fetch wake-up each and most of the broker's work per step. So the
engine offers a ``RunStep`` to the local worker of its pool first:

* The decision's events go to the log first, exactly as before (``StepScheduled`` in the partition's open
  transaction); only the task record is not written when a local slot takes it. A worker with no free slot, or a
  pool with no worker here, gets the record on the topic as before (remote workers keep the topics).
* The result comes back here, and the engine decides it in the same turn, inside the same transaction: the next
  step of a run does not wait for a commit. What a client or another partition sees still waits for the commit
  (read_committed), and a crash before it aborts the whole turn: the partition is rebuilt from the log and its
  recovery re-sends every task in flight, so a body runs again (at least once, as always) and a result is applied
  once (the decider keeps only the attempt it waits for).
* An attempt that ends without a result anyone waits for — its worker stopped (a role restart) — comes back as
  *lost*: the engine sends its task record to the topic then. A partition the engine drops (revoked, given up)
  has its eager attempts stopped: its next owner re-sends them.
* A result that paid for LLM calls goes through the results topic instead (after its journal's checkpoints, which
  the engine reads there), so a call's cost is never logged after its run ended.
* A journal checkpoint is the one record an eager body writes before its result: it waits for the commit of the
  turn that scheduled the step (``scheduled``). Written earlier, a crash could abort that turn while the checkpoint
  stayed: the rebuilt run would not know the step (so the engine would drop the checkpoint), and the step's re-run
  would take the journaled answer without paying (so its cost would never be logged).

Off with ``TICKFLOW_EAGER_DISPATCH=false``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from tickflow.events.envelope import Envelope

__all__ = ["EagerDispatch", "LocalWorker", "Returned"]


class LocalWorker(Protocol):
    """What eager dispatch needs of a step worker (``runtime.worker.StepWorker``)."""

    pool: str

    def run_eager(
        self, task: Envelope, owner: int, reply: Callable[[Envelope | None, bool], None],
        scheduled: asyncio.Future[None],
    ) -> bool: ...

    def cancel(self, key: str) -> None: ...

    def drop_eager(self, owner: int) -> None: ...


class Returned(NamedTuple):
    """An eager attempt's result, or (``result`` None) its task, lost, to be sent to the topic instead."""

    partition: int
    pool: str
    task: Envelope
    result: Envelope | None


class EagerDispatch:
    """The engine's side of eager dispatch: the local workers by pool, and the results they hand back."""

    def __init__(self) -> None:
        self._workers: dict[str, LocalWorker] = {}
        self._returned: deque[Returned] = deque()
        self._arrived = asyncio.Event()
        #: Per engine partition, done when the open transaction (the one that scheduled its new eager attempts)
        #: commits.
        self._scheduled: dict[int, asyncio.Future[None]] = {}
        #: Eager attempts handed over and not yet returned.
        self.in_flight = 0
        self.dispatched = 0
        self.declined = 0  # offers no local slot took: their records went to the topic
        self.lost = 0

    def attach(self, worker: LocalWorker) -> None:
        """``worker`` serves its pool from now on (a restarted worker replaces the old one)."""
        self._workers[worker.pool] = worker

    def detach(self, worker: LocalWorker) -> None:
        if self._workers.get(worker.pool) is worker:
            del self._workers[worker.pool]

    def serves(self, pool: str) -> bool:
        return pool in self._workers

    def offer(self, partition: int, pool: str, task: Envelope) -> bool:
        """Hand ``task`` (a ``RunStep`` of an engine partition) to the local worker of its pool, if it has room."""
        worker = self._workers.get(pool)
        if worker is None:
            return False

        def reply(result: Envelope | None, lost: bool) -> None:
            self.in_flight -= 1
            if result is None and not lost:
                return  # nothing to report (cancelled, handed over, expired, or reported on the results topic)
            self.lost += lost
            self._returned.append(Returned(partition, pool, task, result))
            self._arrived.set()

        scheduled = self._scheduled.get(partition)
        if scheduled is None:
            scheduled = self._scheduled[partition] = asyncio.get_running_loop().create_future()
        if not worker.run_eager(task, partition, reply, scheduled):
            self.declined += 1
            return False
        self.in_flight += 1
        self.dispatched += 1
        return True

    def cancel(self, pool: str, key: str) -> None:
        """A ``CancelStep``: the local worker drops or cancels attempt ``key`` if it has it (the record still goes
        to the topic, for a worker elsewhere)."""
        worker = self._workers.get(pool)
        if worker is not None:
            worker.cancel(key)

    def committed(self, partitions: Iterable[int]) -> None:
        """The open transactions of ``partitions`` committed: the steps they scheduled are in the log."""
        for partition in partitions:
            scheduled = self._scheduled.pop(partition, None)
            if scheduled is not None and not scheduled.done():
                scheduled.set_result(None)

    def awaiting(self) -> set[int]:
        """The partitions whose new eager attempts wait to learn that their scheduling committed."""
        return set(self._scheduled)

    def drop(self, partition: int) -> None:
        """The engine no longer serves ``partition``: its eager attempts stop, unreported (and never learn that
        their scheduling committed: the partition's next owner schedules them again)."""
        self._scheduled.pop(partition, None)
        for worker in list(self._workers.values()):
            worker.drop_eager(partition)

    def take(self) -> list[Returned]:
        """Everything handed back since the last call, in arrival order."""
        out = list(self._returned)
        self._returned.clear()
        self._arrived.clear()
        return out

    @property
    def ready(self) -> bool:
        return bool(self._returned)

    async def wait(self, timeout_s: float | None) -> bool:
        """Wait until something is handed back (at most ``timeout_s``); whether it was."""
        if self._returned:
            return True
        if timeout_s is not None and timeout_s <= 0:
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout_s)
        return bool(self._returned)
