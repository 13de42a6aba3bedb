"""The partitions an engine owns: their assignment, recovery, give-up and revocation (``Engine`` inherits it).

An owned partition goes through: assigned (its inputs paused) → recovering (its snapshots and log folded in the
background, never inside the rebalance callback) → live (its state installed, its inputs resumed at the offsets
its committed transactions applied) → given up (a failed transaction: dropped and rebuilt, unless a newer owner
fenced it) or revoked (its last transaction committed, then dropped). A partition whose recovery keeps failing is
retried alone with backoff and shown as parked; the others keep serving.

Each owned partition's state and stage live on its ``Partition`` (``runtime/partition.py``), in ``Engine.partitions``;
this mixin holds the transitions between those stages and the invariants they carry, and keeps what the engine
tracks per partition elsewhere (input offsets, snapshot debt, timers, eager attempts) in step with them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError

from tickflow.core.decider import Recover, RunState
from tickflow.core.retention import Retention
from tickflow.core.slots import admissions
from tickflow.core.stacks import StackDecision, stack_recovery
from tickflow.events.codec import encode
from tickflow.events.topics import TopicNames
from tickflow.runtime.claimcheck import BlobStore
from tickflow.runtime.eager import EagerDispatch
from tickflow.runtime.fencing import Fenced, PartitionWriter, TransactionFailed
from tickflow.runtime.input_offsets import InputOffsets
from tickflow.runtime.partition import Partition
from tickflow.runtime.recovery import Rebuilt, quarantine_note, rebuild_partition
from tickflow.runtime.snapshot_rounds import SnapshotRounds
from tickflow.runtime.timers import Timers
from tickflow.settings import Settings

__all__ = ["PARK_AFTER", "RECOVERY_RETRY_FIRST_S", "RECOVERY_RETRY_MAX_S", "PartitionOwnership"]

log = logging.getLogger("tickflow.engine")

#: A partition whose recovery fails is retried alone, after a backoff doubling from the first to the most; after
#: ``PARK_AFTER`` failures in a row it counts as parked (metric, /stats) while it keeps being retried.
RECOVERY_RETRY_FIRST_S = 0.5
RECOVERY_RETRY_MAX_S = 60.0
PARK_AFTER = 3


def _now_ms() -> int:
    return int(time.time() * 1000)


class PartitionOwnership:
    """Assignment, recovery, give-up and revocation of the engine's partitions (see the module docstring)."""

    # What the engine provides (``runtime/engine.py``).
    settings: Settings
    topics: TopicNames
    consumer: AIOKafkaConsumer
    blobs: BlobStore
    eager: EagerDispatch | None
    retention: Retention
    timers: Timers
    snapshots: SnapshotRounds
    offsets: InputOffsets
    #: Every partition this engine owns, by number, from its assignment until its revocation.
    partitions: dict[int, Partition]
    fenced: int
    given_up: int
    recoveries: int
    recoveries_started: int
    resent: int
    _stopping: bool
    _lock: asyncio.Lock
    _forget: Callable[[Partition, RunState, int], None]
    # The engine's own ways of deciding and publishing (their signatures are the engine's).
    _publish: Callable[..., Awaitable[None]]
    _apply_slot: Callable[..., Awaitable[None]]
    _apply_stack: Callable[..., Awaitable[None]]
    _decide: Callable[..., Awaitable[bool]]
    _end_transactions: Callable[..., Awaitable[None]]
    _commit: Callable[..., Awaitable[None]]

    @property
    def recovered_partitions(self) -> set[int]:
        """The partitions this engine serves now: rebuilt and installed (one being revoked until it is dropped)."""
        return {number for number, part in self.partitions.items() if part.live}

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """Pause the new partitions' inputs and rebuild them in the background; return at once (see ``_recover``)."""
        busy = {number for number, part in self.partitions.items() if part.live or part.recovery is not None}
        partitions = {tp.partition for tp in assigned} - busy
        log.info("engine owns partitions %s", sorted({tp.partition for tp in assigned}))
        if partitions:
            self.consumer.pause(*self._inputs(partitions))
        for partition in sorted(partitions):
            self._start_recovery(partition)

    def _start_recovery(self, partition: int) -> None:
        part = self.partitions.get(partition)
        if part is None:
            part = self.partitions[partition] = Partition(partition)
        part.recovering(asyncio.create_task(self._recover_guarded(part), name=f"tickflow-recover-{partition}"))
        self.recoveries_started += 1

    async def _recover_guarded(self, part: Partition) -> None:
        """Recover a partition, retrying it alone with backoff while it fails: the other partitions keep being
        served. After ``PARK_AFTER`` failures in a row it is parked (visible in /metrics and /stats) and still
        retried, every ``RECOVERY_RETRY_MAX_S`` at most, until it recovers or is revoked."""
        failures = 0
        try:
            while True:
                try:
                    await self._recover(part)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    delay = min(RECOVERY_RETRY_FIRST_S * 2 ** (failures - 1), RECOVERY_RETRY_MAX_S)
                    log.exception("recovery of partition %d failed (%d in a row); retrying in %.1f s",
                                  part.number, failures, delay)
                    if failures >= PARK_AFTER:
                        part.parked = f"{type(exc).__name__}: {exc}"[:1_000]
                    await asyncio.sleep(delay)
                    if self._stopping or part.number not in {tp.partition for tp in self.consumer.assignment()}:
                        return
                    continue
                part.parked = None
                return
        finally:
            part.recovery_ended(asyncio.current_task())

    def _inputs(self, partitions: set[int]) -> list[TopicPartition]:
        return [tp for p in sorted(partitions) for tp in self.offsets.inputs(p)]

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in revoked})
        parts = [part for number in numbers if (part := self.partitions.get(number)) is not None]
        for part in parts:
            part.stop_recovery()  # not rebuilt yet: nothing of it was installed or sent
        async with self._lock:
            for part in parts:
                part.revoking = True  # a failed last transaction is not rebuilt here
            try:
                await self._commit(only=set(revoked))
            finally:
                for part in parts:
                    part.revoking = False
            writers = [self._drop(part) for part in parts]
            for part in parts:
                # A recovery started while this waited for the lock (a give-up) stays: it finds the revocation itself.
                if part.recovery is None:
                    self.partitions.pop(part.number, None)
        await asyncio.gather(*(w.stop() for w in writers if w is not None))

    def _drop(self, part: Partition) -> PartitionWriter | None:
        """Forget everything of a partition this engine no longer serves; returns its writer, to be stopped. Its
        steps running in this process's workers (eager dispatch) stop: whoever rebuilds it re-sends them."""
        if self.eager is not None:
            self.eager.drop(part.number)
        self.offsets.drop(part.number)
        self.timers.drop_partition(part.runs)
        self.timers.drop_partition(part.stacks)
        self.timers.drop_partition(part.gone)
        self.snapshots.drop(part.number)
        return part.drop()

    async def _recover(self, part: Partition) -> None:
        """Rebuild one partition's runs from the log, then finish what a crash may have cut short.

        Runs as a task of its own, never inside the rebalance callback: aiokafka sends no heartbeats while that
        callback runs, so a fold longer than the session timeout there would get this engine evicted (two writers,
        or a revoke/recover loop re-sending every task in flight). The partition's inputs stay paused until its
        state is installed; reading the log and folding it happen outside the lock (the fold in a thread), so the
        other partitions keep being served and the heartbeats keep flowing.
        """
        started = time.monotonic()
        # Fence the previous owner first: once this writer is registered, nothing it left open can still commit,
        # so the reads below see every write of the partition that will ever be visible.
        writer = PartitionWriter(
            self.settings.kafka,
            f"{self.topics.engine_group}.{part.number}",
            part.number,
            timeout_ms=self.settings.transaction_timeout_ms,
        )
        try:
            await writer.start()
        except BaseException:
            await writer.stop()
            raise
        try:
            await self._rebuild(part, writer, started)
        except BaseException:
            if part.writer is not writer:
                await writer.stop()
            raise

    async def _rebuild(self, part: Partition, writer: PartitionWriter, started: float) -> None:
        partition = part.number
        built = await rebuild_partition(self.settings.kafka, self.topics, self.blobs, partition)
        inputs = self._inputs({partition})
        committed = {tp: await self.consumer.committed(tp) for tp in inputs}  # read after the old writer is fenced
        async with self._lock:
            if partition not in {tp.partition for tp in self.consumer.assignment()}:
                await writer.stop()
                return  # revoked while it was being rebuilt: the new owner rebuilds it
            part.install(writer, built)
            try:
                summary = await self._install(part, built)
            except BaseException:  # nothing half installed stays behind: the retry starts from scratch
                self._drop(part)
                raise
            if part.writer is None:
                return  # its healing transaction failed: given up (and being rebuilt again unless fenced)
            self.offsets.recovered(partition, built.applied)
            for tp in inputs:  # no input a committed transaction applied is read (and applied) again
                start = self.offsets.resume_at(tp, committed[tp])
                if start > 0:
                    self.consumer.seek(tp, start)
            part.go_live()
            self.recoveries += 1
            self.consumer.resume(*inputs)
        took = time.monotonic() - started
        log.info(
            "partition %d recovered: %d events after offset %s, %s in %.2fs (read %.2fs, fold %.2fs, install %.2fs)",
            partition,
            built.events_read,
            built.checkpoint,
            summary,
            took,
            built.read_s,
            built.fold_s,
            took - (built.started - started) - built.read_s - built.fold_s,
        )

    async def _install(self, part: Partition, built: Rebuilt) -> str:
        """Make a rebuilt partition (its state taken by ``Partition.install``) the live one: expire what is due, arm
        timers, heal and re-send in-flight work.

        Each newly quarantined run gets a ``RunQuarantined`` note in the log (once), so its status says why.
        """
        now = _now_ms()
        partition = part.number
        runs, slots, stacks, gone = part.runs, part.slots, part.stacks, part.gone
        for run_id, q in part.quarantined.items():
            log.error(
                "run %s quarantined at seq %d: %s; `tickflow release %s` resumes it from there",
                run_id,
                q.state.seq,
                q.reason,
                run_id,
            )
            if not q.announced:
                note = quarantine_note(run_id, q, now)
                await self._publish(part, [(self.topics.events, encode(note), run_id.encode())])
                q.announced = True
        expired = [run_id for run_id, state in runs.items() if self.retention.stage(state, now) == "expire"]
        self.snapshots.drop(partition)  # whatever it owed before is covered by what follows
        for run_id in expired:
            self._forget(part, runs.pop(run_id), now)
        for run_id, until in gone.items():
            self.timers.arm(partition, run_id, until)  # an elapsed one is forgotten at the next timer check
        # The next snapshot covers everything rebuilt here, so its checkpoint can move past this fold.
        self.snapshots.owe_all(partition, [*runs, *slots, *stacks, *part.quarantined])
        for slot in slots.values():
            await self._apply_slot(part, slot, [], admissions(slot, None, now))
        for stack in stacks.values():  # a missed tick fires at once; a running tick's start is re-sent
            await self._apply_stack(part, StackDecision([], stack, []), stack_recovery(stack, now))
        healed, resent_before = 0, self.resent
        for state in list(runs.values()):
            healed += await self._decide(part, state, Recover(f"recover/{partition}"), now, recovering=True)
        await self._end_transactions({partition})
        return (
            f"{len(runs)} runs ({len(expired)} expired), {healed} healed, "
            f"{self.resent - resent_before} messages re-sent"
        )

    async def _give_up(self, part: Partition, failure: TransactionFailed) -> None:
        """Stop serving a partition whose transaction failed: its writes were aborted, so its cached state may be
        ahead of the log, and the inputs of that turn must be read again.

        Fenced: another engine holds the partition now (this one was paused past its session timeout, or lost a
        race with a rebalance); its consumer learns that at its next heartbeat and rejoins. Anything else (a
        broker fault): this engine still owns the partition, so it rebuilds it from the log at once.
        """
        writer = self._drop(part)  # first: nothing of the aborted turn may be committed, whatever follows
        part.give_up()
        partition = part.number
        fenced = isinstance(failure, Fenced) and not await self._still_owner(partition)
        if fenced:
            self.fenced += 1
            log.warning(
                "partition %d: fenced by a newer owner; it is given up without writing more: %s", partition, failure
            )
        elif isinstance(failure, Fenced):  # the coordinator aborted it (its timeout), and the group says it is ours
            self.given_up += 1
            log.error(
                "partition %d: its transaction was aborted by the coordinator (past its timeout), not by a new owner; "
                "rebuilding it with a new writer: %s",
                partition,
                failure,
            )
        else:
            self.given_up += 1
            log.error("partition %d: a transaction failed; rebuilding it from the log: %s", partition, failure)
        inputs = self._inputs({partition})
        owned = set(self.consumer.assignment())
        self.consumer.pause(*(tp for tp in inputs if tp in owned))
        if writer is not None:
            await writer.stop()
        for tp in inputs:  # the aborted turn's inputs are read again, from the last committed offsets
            if tp in owned:
                committed = await self.consumer.committed(tp)
                if committed is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, committed)
        if not fenced and not self._stopping and not part.revoking and partition in {tp.partition for tp in owned}:
            self._start_recovery(partition)

    async def _still_owner(self, partition: int) -> bool:
        """Whether the group still gives this engine ``partition``, asked of the group coordinator itself.

        aiokafka reports a transaction the coordinator aborted for its timeout as ``ProducerFenced``, as it does a
        newer owner's fence. Only the group knows which: a commit of the partition's committed offset (changing
        nothing) succeeds only for a member of the current generation that owns it. A zombie (evicted past its
        session) is refused and rejoins; a healthy owner rebuilds the partition instead of leaving it paused."""
        tp = TopicPartition(self.topics.commands, partition)
        if tp not in self.consumer.assignment():
            return False
        try:
            committed = await self.consumer.committed(tp)
            await self.consumer.commit({tp: committed or 0})
        except (KafkaError, IllegalStateError) as exc:
            log.info("partition %d: the group no longer gives it to this engine (%s)", partition, exc)
            return False
        return True
