"""Eager dispatch's bookkeeping (``tickflow.runtime.eager``), with a worker that runs nothing by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tickflow.events import Envelope
from tickflow.events.schemas import RunStep, StepSucceeded
from tickflow.runtime.eager import EagerDispatch, Returned

Reply = Callable[[Envelope | None, bool], None]


class FakeWorker:
    def __init__(self, pool: str = "default", slots: int = 2) -> None:
        self.pool = pool
        self.slots = slots
        self.replies: dict[str, tuple[int, Reply]] = {}
        self.scheduled: dict[str, asyncio.Future[None]] = {}
        self.cancelled: list[str] = []

    def run_eager(self, task: Envelope, owner: int, reply: Reply, scheduled: asyncio.Future[None]) -> bool:
        assert isinstance(task.payload, RunStep)
        if len(self.replies) >= self.slots:
            return False
        self.replies[task.payload.idempotency_key] = (owner, reply)
        self.scheduled[task.payload.idempotency_key] = scheduled
        return True

    def cancel(self, key: str) -> None:
        self.cancelled.append(key)

    def drop_eager(self, owner: int) -> None:
        for key, (o, reply) in list(self.replies.items()):
            if o == owner:
                del self.replies[key]
                reply(None, False)  # handed over: nothing to report

    def finish(self, key: str, result: Envelope | None, lost: bool = False) -> None:
        _, reply = self.replies.pop(key)
        reply(result, lost)


def task(run: str, path: str = "s1") -> Envelope:
    step = RunStep(workflow="w", step=path, path=path, fn="f", attempt=1, input=1, idempotency_key=f"{run}/{path}/1")
    return Envelope.wrap(step, id=f"{run}/task/{path}", key=run, occurred_at_ms=1)


def result(of: Envelope) -> Envelope:
    payload = of.payload
    assert isinstance(payload, RunStep)
    done = StepSucceeded(path=payload.path, step=payload.step, attempt=1, worker="w", output=2, duration_ms=0.1)
    return Envelope.wrap(done, id=f"{of.id}/result", key=of.key, occurred_at_ms=2)


async def test_no_local_worker_of_the_pool_declines() -> None:
    eager = EagerDispatch()
    eager.attach(FakeWorker("other"))
    assert not eager.serves("default")
    assert not eager.offer(0, "default", task("r1"))
    assert eager.in_flight == 0


async def test_results_come_back_in_order_and_full_slots_decline() -> None:
    eager, worker = EagerDispatch(), FakeWorker(slots=2)
    eager.attach(worker)
    a, b, c = task("r1"), task("r2"), task("r3")
    assert eager.offer(0, "default", a) and eager.offer(1, "default", b)
    assert not eager.offer(1, "default", c)  # no free slot: the engine writes its record to the topic
    assert (eager.in_flight, eager.dispatched, eager.declined) == (2, 2, 1)
    assert not await eager.wait(0.01)
    worker.finish("r2/s1/1", result(b))
    worker.finish("r1/s1/1", result(a))
    assert await eager.wait(0.01)
    assert eager.take() == [Returned(1, "default", b, result(b)), Returned(0, "default", a, result(a))]
    assert eager.in_flight == 0 and not eager.ready


async def test_a_lost_attempt_comes_back_as_its_task_and_a_quiet_end_not_at_all() -> None:
    eager, worker = EagerDispatch(), FakeWorker()
    eager.attach(worker)
    a, b = task("r1"), task("r2")
    eager.offer(3, "default", a)
    eager.offer(3, "default", b)
    worker.finish("r1/s1/1", None, lost=True)  # stopped with its worker: the engine sends the task to the topic
    worker.finish("r2/s1/1", None)  # cancelled, expired, or reported on the results topic
    assert eager.take() == [Returned(3, "default", a, None)]
    assert (eager.in_flight, eager.lost) == (0, 1)


async def test_dropping_a_partition_stops_its_attempts_only() -> None:
    eager, worker = EagerDispatch(), FakeWorker(slots=3)
    eager.attach(worker)
    eager.offer(0, "default", task("r1"))
    eager.offer(1, "default", task("r2"))
    eager.drop(0)
    assert list(worker.replies) == ["r2/s1/1"]
    assert eager.in_flight == 1 and eager.take() == []


async def test_a_restarted_worker_replaces_the_old_one() -> None:
    eager, old, new = EagerDispatch(), FakeWorker(), FakeWorker()
    eager.attach(old)
    eager.attach(new)
    eager.detach(old)  # detaching the replaced worker leaves the new one
    assert eager.offer(0, "default", task("r1"))
    assert "r1/s1/1" in new.replies
    eager.cancel("default", "r1/s1/1")
    assert new.cancelled == ["r1/s1/1"]


async def test_an_attempt_learns_when_the_transaction_that_scheduled_it_commits() -> None:
    """Its journal's checkpoints wait for that commit; a turn's attempts share it, the next turn's get a new one,
    and a dropped partition's never commits (its next owner schedules the attempts again)."""
    eager, worker = EagerDispatch(), FakeWorker(slots=5)
    eager.attach(worker)
    for run, partition in [("r1", 0), ("r2", 0), ("r3", 1)]:
        eager.offer(partition, "default", task(run))
    first, same, other = (worker.scheduled[f"{r}/s1/1"] for r in ("r1", "r2", "r3"))
    assert first is same and first is not other and not first.done()
    eager.committed({0})
    assert first.done() and not other.done()
    eager.offer(0, "default", task("r4"))
    assert not worker.scheduled["r4/s1/1"].done()  # the next turn's transaction
    eager.drop(1)
    eager.committed({0, 1})
    assert worker.scheduled["r4/s1/1"].done() and not other.done()


async def test_the_engine_learns_which_partitions_have_attempts_waiting_for_their_scheduling() -> None:
    """What the engine resolves at a turn's end where no transaction is open: a recovered run's step, handed over
    without a write, was scheduled by a transaction already in the log."""
    eager, worker = EagerDispatch(), FakeWorker(slots=5)
    eager.attach(worker)
    assert eager.awaiting() == set()
    eager.offer(3, "default", task("r1"))
    assert eager.awaiting() == {3}
    eager.committed({3})
    assert eager.awaiting() == set() and worker.scheduled["r1/s1/1"].done()


@pytest.mark.parametrize("pool", ["default", "gpu"])
def test_serves_exactly_the_attached_pools(pool: str) -> None:
    eager = EagerDispatch()
    eager.attach(FakeWorker(pool))
    assert eager.serves(pool) and not eager.serves("elsewhere")
