"""A failed send is never forgotten: no offset is committed over an event or task the broker did not take.

Workers and triggers keep their sends in ``PendingSends`` (sticky failure); the engine writes in transactions
(``runtime/fencing.py``), and a transaction that fails gives its partition up instead."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaTimeoutError

from tickflow.runtime.engine import Engine
from tickflow.runtime.fencing import Fenced, TransactionFailed
from tickflow.runtime.kafka import PendingSends, SendFailed
from tickflow.runtime.partition import Partition
from tickflow.settings import Settings
from tickflow.workflow import Registry


def _future(error: BaseException | None = None) -> asyncio.Future[Any]:
    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    if error is None:
        fut.set_result(None)
    else:
        fut.set_exception(error)
    return fut


async def test_a_failed_send_fails_every_later_drain() -> None:
    pending = PendingSends()
    pending.add(_future())
    pending.add(_future(KafkaTimeoutError()))
    pending.add(_future())
    with pytest.raises(SendFailed, match="KafkaTimeoutError"):
        await pending.drain()
    pending.add(_future())
    with pytest.raises(SendFailed):  # sticky: the lost record is still lost
        await pending.drain()


class RecordingConsumer:
    def __init__(self, owned: set[TopicPartition], member: bool = True) -> None:
        self.owned = owned
        self.member = member  # in the group's current generation (False: evicted, its commits refused)
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return self.owned

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    async def committed(self, tp: TopicPartition) -> int:
        return 7

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if not self.member:
            raise CommitFailedError("the group rebalanced: this member is not in the current generation")
        self.commits.append(offsets)


def _served(engine: Engine, writer: FailingWriter) -> None:
    """``engine`` serves ``writer``'s partition (as if recovered), writing through it."""
    part = engine.partitions[writer.partition] = Partition(writer.partition)
    part.writer = writer  # type: ignore[assignment]
    part.go_live()


class FailingWriter:
    """A partition writer whose open transaction cannot commit (a lost record, or a newer owner's fence)."""

    def __init__(self, partition: int, failure: TransactionFailed | None) -> None:
        self.partition, self.failure, self.open, self.stopped = partition, failure, True, False

    async def commit(self, last_record: object = None) -> None:
        self.open = False
        if self.failure is not None:
            raise self.failure

    async def stop(self) -> None:
        self.stopped = True


@pytest.mark.parametrize("fenced", [False, True])
async def test_the_engine_commits_no_offset_over_a_failed_transaction(tmp_path: Path, fenced: bool) -> None:
    """The partition whose transaction failed is given up: its offsets stay where they were committed, its inputs
    are read again from there, and it is rebuilt from the log (unless a newer owner fenced it). Others commit."""
    engine = Engine(Settings(state_dir=tmp_path, prefix="t"), Registry())
    inputs = {p: [TopicPartition("t.commands", p), TopicPartition("t.results", p)] for p in (0, 1)}
    consumer = RecordingConsumer({tp for tps in inputs.values() for tp in tps}, member=not fenced)
    engine.consumer = consumer  # type: ignore[assignment]
    rebuilt: list[int] = []
    engine._start_recovery = rebuilt.append  # type: ignore[method-assign]
    failure = (Fenced if fenced else TransactionFailed)(0, KafkaTimeoutError())
    broken, healthy = FailingWriter(0, failure), FailingWriter(1, None)
    _served(engine, broken)
    _served(engine, healthy)
    for tps in inputs.values():
        for tp in tps:
            engine.offsets.handled(tp, 10)  # handled in the turn whose transaction now ends
    await engine._commit()
    if not fenced:
        assert consumer.commits == [{tp: 10 for tp in inputs[1]}]  # partition 0's offsets are not committed
    assert {tp: consumer.seeks[tp] for tp in inputs[0]} == {tp: 7 for tp in inputs[0]}
    assert set(inputs[0]) <= consumer.paused and broken.stopped
    assert engine.partitions[0].writer is None and engine.recovered_partitions == {1}
    assert rebuilt == ([] if fenced else [0])
    assert (engine.fenced, engine.given_up) == ((1, 0) if fenced else (0, 1))


async def test_a_revocation_whose_last_transaction_fails_commits_nothing_of_it_and_lets_it_go(
    tmp_path: Path,
) -> None:
    """Handing a partition over: its last transaction fails, so its offsets are not committed, and it is not
    rebuilt here (the new owner rebuilds it from the log, where nothing of the aborted turn is visible)."""
    engine = Engine(Settings(state_dir=tmp_path, prefix="t"), Registry())
    inputs = [TopicPartition("t.commands", 0), TopicPartition("t.results", 0)]
    consumer = RecordingConsumer(set(inputs))
    engine.consumer = consumer  # type: ignore[assignment]
    rebuilt: list[int] = []
    engine._start_recovery = rebuilt.append  # type: ignore[method-assign]
    writer = FailingWriter(0, TransactionFailed(0, KafkaTimeoutError()))
    _served(engine, writer)
    for tp in inputs:
        engine.offsets.handled(tp, 10)
    await engine.on_revoked(set(inputs))
    assert consumer.commits == [] and rebuilt == [] and writer.stopped
    assert engine.partitions == {} and engine.given_up == 1


async def test_a_transaction_aborted_for_its_timeout_is_not_taken_for_a_fence(tmp_path: Path) -> None:
    """aiokafka reports the coordinator's abort of a transaction past its timeout as ``ProducerFenced``. The group
    still gives the partition to this engine (a no-op commit of its offset succeeds), so it is rebuilt with a new
    writer; before, it was given up as fenced and stayed paused for good while the engine was a healthy member."""
    engine = Engine(Settings(state_dir=tmp_path, prefix="t"), Registry())
    inputs = [TopicPartition("t.commands", 0), TopicPartition("t.results", 0)]
    consumer = RecordingConsumer(set(inputs), member=True)
    engine.consumer = consumer  # type: ignore[assignment]
    rebuilt: list[int] = []
    engine._start_recovery = rebuilt.append  # type: ignore[method-assign]
    _served(engine, FailingWriter(0, Fenced(0, KafkaTimeoutError())))
    await engine._commit()
    assert rebuilt == [0] and (engine.fenced, engine.given_up) == (0, 1)
    assert consumer.commits == [{inputs[0]: 7}]  # the ownership check: the committed offset, unchanged
