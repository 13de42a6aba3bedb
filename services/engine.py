"""The engine: folds commands and worker results into each run's state and appends events to the log.

Durability without Kafka transactions (aiokafka's are old and have open bugs):

* The events topic is the state's only source of truth. When the engine is assigned a partition it rebuilds
  that partition's runs by folding the events partition from its first offset; the in-memory table is a
  cache of that fold and is dropped on revocation.
* Offsets of commands/results are committed only after every event and task they caused is acknowledged
  by the broker (acks=all, idempotent producer). A crash before that redelivers the inputs; the decider
  ignores inputs already applied (idempotent start, exactly-once result application by attempt).
* A crash may cut one decision's events short. After rebuilding, ``Recover`` emits what is missing, so the
  log gets neither a duplicate nor a gap at any (run, seq); in-flight tasks are re-sent (workers are
  at-least-once; their results are deduplicated by attempt).
* commands, results and events share their partition count and key, and the range assignor gives one
  engine the same partition numbers of both input topics, so exactly one engine owns a run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError

from events.codec import InvalidRecord, decode, encode
from events.envelope import Envelope
from events.schemas import StartRun, StepScheduled
from services.config import Settings
from services.decider import (
    Recover,
    RunState,
    SequenceError,
    Start,
    WorkerResult,
    evolve,
    run,
    task_for,
)
from services.kafka import DeadLetters, PendingSends, Rebalance, new_consumer, new_producer, read_partition
from services.workflow import Registry

__all__ = ["Engine"]

log = logging.getLogger("tickflow.engine")


def _now_ms() -> int:
    return int(time.time() * 1000)


class Engine:
    """One engine process (or one of many in the same consumer group)."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self.topics = settings.topics
        self.runs: dict[int, dict[str, RunState]] = defaultdict(dict)
        self.positions: dict[TopicPartition, int] = {}
        self.pending = PendingSends()
        self.recovered_partitions: set[int] = set()
        self.processed = 0
        self._spec_hashes = {name: spec.content_hash() for name, spec in registry.specs.items()}
        self._task: asyncio.Task[None] | None = None
        self._last_commit = 0.0
        # aiokafka hands out records of newly assigned partitions while the rebalance listener is still
        # running, and runs the listener in another task. This lock makes "recover a partition" and
        # "process a batch" mutually exclusive, so no record is ever decided against a half-built state.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.producer = new_producer(self.settings.bootstrap)
        await self.producer.start()
        self.dead_letters = DeadLetters(self.producer, self.topics.dead_letter, "engine")
        self.consumer = new_consumer(
            self.settings.bootstrap,
            group_id=self.topics.engine_group,
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_poll_interval_ms=300_000,
        )
        await self.consumer.start()
        self.consumer.subscribe(
            [self.topics.commands, self.topics.results],
            listener=Rebalance(on_revoked=self.on_revoked, on_assigned=self.on_assigned),
        )
        self._task = asyncio.create_task(self._loop(), name="tickflow-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            await self._commit()
        finally:
            await self.consumer.stop()
            await self.producer.stop()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    # -- main loop -----------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            batch = await self.consumer.getmany(timeout_ms=100, max_records=2_000)
            async with self._lock:
                assigned = self.consumer.assignment()
                await self._recover_missing({tp.partition for tp in assigned})
                now = _now_ms()
                for tp, records in batch.items():
                    if tp not in assigned:
                        continue  # fetched before a revocation: the new owner will process it
                    for record in records:
                        await self._handle(tp, record, now)
                    self.positions[tp] = records[-1].offset + 1
                    self.processed += len(records)
            if self.positions and time.monotonic() - self._last_commit >= interval:
                await self._commit()

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        # Commits never outrun durable state: every event/task caused by these offsets is acked first.
        await self.pending.drain()
        offsets = {tp: o for tp, o in self.positions.items() if only is None or tp in only}
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance got in first; the inputs will be redelivered and deduplicated by the decider.
                log.warning("offset commit skipped during a rebalance: %s", exc)
        self._last_commit = time.monotonic()

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], now: int) -> None:
        is_command = tp.topic == self.topics.commands
        try:
            env = decode(record.value, expect="command" if is_command else "result")
        except InvalidRecord as exc:
            self.pending.add(await self.dead_letters.send(record, str(exc), now))
            return
        if record.key != env.key.encode():
            reason = "record key must be the envelope key (the run id); it decides which engine owns the run"
            self.pending.add(await self.dead_letters.send(record, reason, now))
            return
        runs = self.runs[tp.partition]
        state = runs.get(env.key)
        if is_command:
            assert isinstance(env.payload, StartRun)
            spec = self.registry.spec(env.payload.workflow)
            if spec is None and state is None:
                known = ", ".join(sorted(self.registry.specs)) or "none"
                reason = f"unknown workflow {env.payload.workflow!r}; registered workflows: {known}"
                self.pending.add(await self.dead_letters.send(record, reason, now))
            decision = run(
                state or RunState(env.key),
                Start(env, spec, self._spec_hashes.get(env.payload.workflow, "")),
                now,
            )
        else:
            if state is None:
                reason = f"result for run {env.key!r}, which this engine partition does not know"
                self.pending.add(await self.dead_letters.send(record, reason, now))
                return
            decision = run(state, WorkerResult(env), now)
        if decision.events:
            runs[env.key] = decision.state
            await self._publish(decision.state, decision.events)

    async def _publish(self, state: RunState, events: list[Envelope]) -> None:
        key = state.run_id.encode()
        for event in events:
            self.pending.add(await self.producer.send(self.topics.events, encode(event), key=key))
        last = events[-1]
        if isinstance(last.payload, StepScheduled):  # a run waits after scheduling, so it is always last
            await self._send_task(state, last.occurred_at_ms, last.id)

    async def _send_task(self, state: RunState, occurred_at_ms: int, causation_id: str | None) -> bool:
        """Send the task of the attempt ``state`` waits for, if any; True when one was sent."""
        task = task_for(state, occurred_at_ms, causation_id)
        if task is None or state.spec is None:
            return False
        topic = self.topics.tasks(state.spec.steps[state.cursor].pool)
        self.pending.add(await self.producer.send(topic, encode(task), key=task.key.encode()))
        return True

    # -- partition ownership -------------------------------------------------------------------------------

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("engine owns partitions %s", sorted({tp.partition for tp in assigned}))
        async with self._lock:
            await self._recover_missing({tp.partition for tp in assigned})

    async def _recover_missing(self, partitions: set[int]) -> None:
        for partition in sorted(partitions - self.recovered_partitions):
            await self._recover(partition)
            self.recovered_partitions.add(partition)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            await self._commit(only=set(revoked))
            for tp in revoked:
                self.positions.pop(tp, None)
            for partition in {tp.partition for tp in revoked}:
                self.runs.pop(partition, None)
                self.recovered_partitions.discard(partition)

    async def _recover(self, partition: int) -> None:
        """Rebuild one partition's runs from the log, then finish what a crash may have cut short."""
        started = time.monotonic()
        records = await read_partition(self.settings.bootstrap, self.topics.events, partition)
        runs: dict[str, RunState] = {}
        for record in records:
            try:
                event = decode(record.value, expect="event")
            except InvalidRecord as exc:
                log.error("unreadable event at %s[%d]@%d: %s", record.topic, partition, record.offset, exc)
                continue
            state = runs.get(event.key) or RunState(event.key)
            if event.seq is None or event.seq <= state.seq:
                continue  # an already-applied copy
            try:
                runs[event.key] = evolve(state, event)
            except SequenceError as exc:
                log.error("log gap: %s", exc)
        self.runs[partition] = runs
        now = _now_ms()
        healed = redispatched = 0
        for run_id, state in list(runs.items()):
            if state.terminal:
                continue
            decision = run(state, Recover(causation_id=f"recover/{partition}"), now)
            if decision.events:
                healed += 1
                runs[run_id] = decision.state
                await self._publish(decision.state, decision.events)
            elif await self._send_task(state, now, f"recover/{partition}"):
                redispatched += 1  # healing above already sent the task of any step it scheduled
        await self.pending.drain()
        log.info(
            "partition %d recovered: %d events, %d runs, %d healed, %d tasks re-sent in %.2fs",
            partition,
            len(records),
            len(runs),
            healed,
            redispatched,
            time.monotonic() - started,
        )
