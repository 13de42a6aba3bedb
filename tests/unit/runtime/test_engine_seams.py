"""The engine's seams between a transaction, the input offsets and recovery, with the real ``Engine`` and
``PartitionWriter`` (only the broker is faked: a consumer that hands out records and a producer whose commit the
test controls).

* A graceful stop never commits an offset past a transaction whose outcome is not known to be a commit.
* Every transaction ends with the partition's applied-offsets note, and recovery resumes reading after it, so an
  input a committed transaction applied is never applied again, whatever the group's offsets say.
* A partition whose recovery fails is retried alone and parked, visibly; the others keep being served.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaTimeoutError

import tickflow.runtime.fencing as fencing
import tickflow.runtime.ownership as ownership
from tickflow.events import Envelope, StartRun, encode
from tickflow.runtime.engine import Engine
from tickflow.runtime.fencing import PartitionWriter, TransactionFailed
from tickflow.runtime.kafka import DeadLetters
from tickflow.runtime.partition import Partition
from tickflow.runtime.recovery import Rebuilt
from tickflow.runtime.snapshots import APPLIED_KEY
from tickflow.settings import Settings
from tickflow.workflow import Registry

COMMANDS, RESULTS = TopicPartition("t.commands", 0), TopicPartition("t.results", 0)


def _start_record(offset: int, run_id: str) -> ConsumerRecord[bytes, bytes]:
    value = encode(Envelope.wrap(StartRun(workflow="nowhere"), id=f"start/{run_id}", key=run_id, occurred_at_ms=1))
    key = run_id.encode()
    return ConsumerRecord("t.commands", 0, offset, 0, 0, key, value, None, len(key), len(value), ())  # type: ignore[arg-type]


class FakeConsumer:
    """Hands out the given batches once each, then nothing; records what is committed and sought."""

    def __init__(self, batches: list[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: dict[TopicPartition, int] = {}
        self.committed_offsets: dict[TopicPartition, int | None] = {COMMANDS: None, RESULTS: None}
        self.paused: set[TopicPartition] = set()
        self.stopped = False

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> Any:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    def assignment(self) -> set[TopicPartition]:
        return {COMMANDS, RESULTS}

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets[tp]

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks[tp] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks[tp] = 0

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def stop(self) -> None:
        self.stopped = True


class SlowProducer:
    """A transactional producer whose commit waits until the test settles it (commits, or fails)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.committing = asyncio.Event()
        self.outcome: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.aborted = 0

    async def begin_transaction(self) -> None:
        return None

    async def send(self, topic: str, value: bytes | None, key: bytes, partition: int | None = None) -> Any:
        self.sent.append((topic, value, key))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    async def flush(self) -> None:
        return None  # every record's future is settled at once

    async def commit_transaction(self) -> None:
        self.committing.set()
        await asyncio.shield(self.outcome)  # as aiokafka: a cancelled caller does not stop the commit

    async def abort_transaction(self) -> None:
        self.aborted += 1

    async def stop(self) -> None:
        return None


def _writer(settings: Settings, producer: SlowProducer) -> PartitionWriter:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fencing, "new_producer", lambda *args, **kwargs: producer)
        return PartitionWriter(settings.kafka, "t.engine.0", 0)


def _engine(tmp_path: Path, consumer: FakeConsumer, producer: SlowProducer) -> Engine:
    """An engine serving partition 0 (as if recovered) through a writer on ``producer``."""
    engine = Engine(Settings(state_dir=tmp_path, prefix="t", partitions=1), Registry())
    engine.consumer = consumer  # type: ignore[assignment]
    engine.dead_letters = DeadLetters(None, engine.topics.dead_letter, "engine")
    served = engine.partitions[0] = Partition(0)
    served.writer = _writer(engine.settings, producer)
    served.go_live()
    engine._start_recovery = lambda partition: None  # type: ignore[method-assign]
    return engine


@pytest.mark.parametrize("committed", [True, False])
async def test_a_stop_during_a_commit_waits_for_its_outcome_and_commits_no_offset_past_an_abort(
    tmp_path: Path, committed: bool
) -> None:
    """SIGTERM lands while a turn's transaction is being committed. The stop waits for the turn to end: if the
    transaction committed, its inputs' offsets are committed; if it failed, none is (the inputs are read again).
    Before, the stop cancelled the loop inside the commit and then committed the turn's offsets anyway."""
    consumer = FakeConsumer([{COMMANDS: [_start_record(0, "a"), _start_record(1, "b")]}])
    producer = SlowProducer()
    engine = _engine(tmp_path, consumer, producer)
    engine._task = asyncio.create_task(engine._loop())
    await asyncio.wait_for(producer.committing.wait(), 5)
    stopping = asyncio.create_task(engine.stop())
    await asyncio.sleep(0.2)
    assert not stopping.done(), "the stop must wait for the transaction's outcome"
    if committed:
        producer.outcome.set_result(None)
    else:
        producer.outcome.set_exception(KafkaTimeoutError())
    await asyncio.wait_for(stopping, 5)
    offsets = {c.get(COMMANDS) for c in consumer.commits}
    assert offsets == ({2} if committed else set()), consumer.commits
    assert consumer.stopped


async def test_every_transaction_ends_with_the_offsets_it_applies(tmp_path: Path) -> None:
    """The applied-offsets note is the transaction's last record, on the partition's state topic."""
    consumer = FakeConsumer([{COMMANDS: [_start_record(4, "a")]}, {COMMANDS: [_start_record(5, "b")]}])
    producer = SlowProducer()
    producer.outcome.set_result(None)
    engine = _engine(tmp_path, consumer, producer)
    engine.offsets.recovered(0, {"results": 9})
    engine._task = asyncio.create_task(engine._loop())
    for _ in range(100):
        if engine.offsets.committable.get(COMMANDS) == 6:
            break
        await asyncio.sleep(0.02)
    await engine.stop()
    notes = [orjson.loads(v or b"") for t, v, k in producer.sent if k == APPLIED_KEY and t == "t.state"]
    assert notes[-2:] == [{"applied": {"results": 9, "commands": 5}}, {"applied": {"results": 9, "commands": 6}}]
    assert producer.sent[-1][2] == APPLIED_KEY
    assert engine.offsets.applied[0] == {"results": 9, "commands": 6}


async def test_recovery_resumes_after_the_inputs_a_committed_transaction_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between a transaction and the offset commit: the group's offset (7) lags the applied note (42), so
    recovery seeks past it — a redelivered ResumeRun is never applied twice. Where the note is behind (results),
    the group's offset wins."""
    built = Rebuilt({}, {}, {}, {}, {}, None, {"commands": 42, "results": 3}, 0, 0.0, 0.0)

    async def rebuild(*args: Any) -> Rebuilt:
        return built

    monkeypatch.setattr(ownership, "rebuild_partition", rebuild)
    consumer = FakeConsumer([])
    consumer.committed_offsets = {COMMANDS: 7, RESULTS: 11}
    engine = _engine(tmp_path, consumer, SlowProducer())
    recovering = engine.partitions[0] = Partition(0)
    await engine._rebuild(recovering, _writer(engine.settings, SlowProducer()), 0.0)
    assert consumer.seeks == {COMMANDS: 42, RESULTS: 11}
    assert engine.recovered_partitions == {0} and engine.offsets.applied[0] == {"commands": 42, "results": 3}


async def test_a_partition_whose_recovery_fails_is_retried_alone_and_parked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, one partition's recovery error ended the engine's loop: every partition was rebuilt again, and a
    deterministic error was a restart loop. Now it is retried with backoff and shows as parked."""
    attempts = 0

    async def failing(part: Partition) -> None:
        nonlocal attempts
        attempts += 1
        raise ValueError("a snapshot this code cannot read")

    monkeypatch.setattr(ownership, "RECOVERY_RETRY_FIRST_S", 0.01)
    consumer = FakeConsumer([])
    engine = Engine(Settings(state_dir=tmp_path, prefix="t", partitions=1), Registry())
    engine.consumer = consumer  # type: ignore[assignment]
    engine._recover = failing  # type: ignore[method-assign]
    engine._task = asyncio.create_task(engine._loop())
    engine._start_recovery(0)
    for _ in range(200):
        if engine.partitions[0].parked is not None:
            break
        await asyncio.sleep(0.01)
    assert "a snapshot this code cannot read" in (engine.partitions[0].parked or "")
    assert attempts >= ownership.PARK_AFTER
    assert not engine._task.done(), "the loop keeps serving the other partitions"
    metrics = {name: value for _, name, _, _, value in engine.metric_values()}
    assert metrics["tickflow_engine_partitions_parked"] == 1
    assert "cannot read" in engine.status()["parked"]["0"]  # what /stats and the System page show
    await engine.stop()
    assert engine.partitions[0].recovery is None


async def test_a_send_that_raises_at_once_aborts_its_transaction_instead_of_sticking(tmp_path: Path) -> None:
    """A send the client refuses at once (a full buffer): before, the exception left the partition's transaction
    open with nobody to end it; now it is kept as a failed record, the commit aborts, and the partition is rebuilt."""

    class Refusing(SlowProducer):
        async def send(self, topic: str, value: bytes | None, key: bytes, partition: int | None = None) -> Any:
            raise KafkaTimeoutError()

    producer = Refusing()
    writer = _writer(Settings(state_dir=tmp_path, prefix="t"), producer)
    fut = await writer.send("t.events", b"x", b"k", 0)
    assert fut.done() and isinstance(fut.exception(), KafkaTimeoutError)
    with pytest.raises(fencing.TransactionFailed):
        await writer.commit()
    assert producer.aborted == 1 and not writer.open and not producer.committing.is_set()


async def test_a_turn_stops_deciding_well_before_the_transaction_timeout(tmp_path: Path) -> None:
    """A slow batch (each decision 0.1 s here) is cut at a quarter of the transaction timeout (1 s here): the rest of
    the batch is read again next turn, so no transaction stays open long enough for the coordinator to abort it."""
    records = [_start_record(offset, f"r{offset}") for offset in range(10)]
    consumer = FakeConsumer([{COMMANDS: records}])
    producer = SlowProducer()
    producer.outcome.set_result(None)
    engine = _engine(tmp_path, consumer, producer)
    engine.settings = engine.settings.with_(transaction_timeout_ms=1_000)
    handle = engine._handle

    async def slow(part: Partition, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], now: int) -> None:
        await asyncio.sleep(0.1)
        await handle(part, tp, record, now)

    engine._handle = slow  # type: ignore[method-assign]
    engine._task = asyncio.create_task(engine._loop())
    for _ in range(100):
        if COMMANDS in consumer.seeks:
            break
        await asyncio.sleep(0.05)
    await engine.stop()
    cut = consumer.seeks[COMMANDS]
    assert 1 <= cut <= 4, cut  # about 0.25 s of 0.1 s decisions
    assert engine.offsets.committable[COMMANDS] == cut  # what was decided is committed; the rest is read again


class LosingProducer(SlowProducer):
    """Loses the second record it is given: the broker refused it for good (aiokafka commits anyway)."""

    async def send(self, topic: str, value: bytes | None, key: bytes, partition: int | None = None) -> Any:
        fut = await super().send(topic, value, key, partition)
        if len(self.sent) == 2:
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(KafkaTimeoutError())
        return fut


async def test_a_transaction_with_a_lost_record_is_aborted_not_committed(tmp_path: Path) -> None:
    producer = LosingProducer()
    producer.outcome.set_result(None)
    writer = _writer(Settings(state_dir=tmp_path), producer)
    for i in range(3):
        await writer.send("t.events", b"e%d" % i, b"run-1", 0)
    with pytest.raises(TransactionFailed):
        await writer.commit(("t.events", b"note", b"applied", 0))
    assert producer.aborted == 1 and not producer.committing.is_set() and not writer.open
