"""The engine: folds commands and worker results into each run's state and appends events to the log.

Durability and fencing:

* Every write goes through the owned input partition's transactional producer (``runtime/fencing.py``), one
  transaction per partition per loop turn: a turn's events, tasks, commands, snapshots and dead letters become
  visible together or not at all, and an engine that lost a partition (paused past its session timeout, then
  resumed) is fenced off by the new owner: nothing it writes after that is ever visible to a reader.
* The events topic is the state's only source of truth. When the engine is assigned a partition it rebuilds
  that partition's runs from its snapshots and the events after their checkpoint, in the background with the
  partition's inputs paused (never inside the rebalance callback, where no heartbeats flow); the in-memory table
  is a cache of that fold and is dropped on revocation.
* Every input is applied once (``runtime/input_offsets.py``): each transaction ends with the partition's note of
  the input offsets it applies (on the state topic), and recovery resumes reading after it; offsets are committed
  to the group only after the transactions of every event and task they caused committed. A stop (SIGTERM) lets
  the loop finish its turn, never cancelling it inside a commit. A transaction that fails is aborted and its
  partition is rebuilt from the log (its cached state may be ahead of it); one that failed because the coordinator
  aborted it for its timeout is told apart from a newer owner's fence by asking the group.
* After rebuilding, ``Recover`` emits whatever a decision still owes (a run cut short by a crash in an older
  version, a timer due meanwhile), and in-flight tasks are re-sent (workers are at-least-once; their results are
  deduplicated by attempt), so the log gets neither a duplicate nor a gap at any (run, seq).
* commands, results and events share their partition count and key, and the range assignor gives one
  engine the same partition numbers of both input topics, so exactly one engine owns a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import CommitFailedError, IllegalStateError

from tickflow.core.decider import (
    Decision,
    Fork,
    Input,
    Recover,
    RunState,
    Signal,
    Start,
    WorkerResult,
    refuse,
    release,
    run,
)
from tickflow.core.retention import Retention
from tickflow.core.slots import SlotState, admissions, decide_slot, is_slot
from tickflow.core.stacks import StackDecision, StackState, decide_stack, is_stack
from tickflow.core.state import shrink
from tickflow.events.codec import InvalidRecord, RecordTooLarge, decode, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import (
    AcquireSlot,
    CancelStep,
    ErrorInfo,
    ForkRun,
    ReleaseRun,
    ReleaseSlot,
    RunStep,
    StartRun,
)
from tickflow.metrics import DECISION_SECONDS, observe_ticks
from tickflow.runtime import engine_status
from tickflow.runtime.blobstores import open_blob_store
from tickflow.runtime.claimed_inputs import claimed_fork, claimed_signal
from tickflow.runtime.decision_records import DecisionRecords, Local, Record
from tickflow.runtime.decision_traces import DecisionTraces
from tickflow.runtime.eager import EagerDispatch, Returned
from tickflow.runtime.fencing import PartitionWriter, TransactionFailed
from tickflow.runtime.input_offsets import InputOffsets
from tickflow.runtime.kafka import DeadLetters, Rebalance, new_consumer
from tickflow.runtime.ownership import PartitionOwnership
from tickflow.runtime.partition import Partition
from tickflow.runtime.recovery import Quarantine
from tickflow.runtime.refusals import held_input, key_mismatch, unknown_workflow, unusable_id
from tickflow.runtime.snapshot_rounds import SnapshotRounds
from tickflow.runtime.snapshots import Snapshot, encode_gone
from tickflow.runtime.timers import Timers
from tickflow.settings import Settings
from tickflow.workflow import Registry

__all__ = ["CRASH_POINTS", "Capture", "CrashHook", "Engine"]

#: Where a fault test may stop the engine: after a decision's state is cached and before anything is sent; after
#: its first event is sent (so mid-fork, mid-start); after its events and before the messages they imply; with a
#: turn's records all acknowledged by the broker but their transaction not yet committed; after the transactions
#: committed and before the offsets are; after one snapshot of a round, before the round's checkpoint.
CRASH_POINTS = ("cached", "mid-events", "events-sent", "txn-open", "before-commit", "mid-snapshot")
CrashHook = Callable[[str, str], None]
Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]

log = logging.getLogger("tickflow.engine")
SNAPSHOT_CHUNK = 100  # snapshots written per loop turn during a round


#: How long ``stop`` waits for the loop to reach a turn boundary before cancelling it (committing no offset then).
STOP_TIMEOUT_S = 30.0

#: The share of the transaction timeout one turn may spend deciding its batch; the rest waits for the next turn.
TURN_SHARE = 0.25

#: How often a turn deciding steps handed back in memory looks for new inputs on Kafka meanwhile.
EAGER_POLL_S = 0.002

#: Records handled between two looks at the timers within one batch (ticks and sleeps fire on time under load).
TIMER_CHECK_EVERY = 200
#: Inputs, results or timers handled between two yields to the event loop within a turn. The worker of this process
#: shares the loop: a turn of 2,000 inputs decided without a yield (~0.3 s) would hold back every step body, LLM
#: stream and timer of the process, and inflate every latency behind it. A yield costs one loop iteration (~20 µs).
YIELD_EVERY = 50


def _now_ms() -> int:
    return int(time.time() * 1000)


class Capture(NamedTuple):
    """The engine's live run states at one moment (``Engine.capture``)."""

    runs: dict[int, dict[str, RunState]]
    taken_at_ms: int
    #: Per partition: the events offset after the last event of those states.
    events_end: dict[int, int]


class Engine(PartitionOwnership):
    """One engine process (or one of many in the same consumer group). Its partitions' assignment, recovery,
    give-up and revocation are ``PartitionOwnership``'s (``runtime/ownership.py``); each owned partition's state
    is its ``Partition`` (``runtime/partition.py``), to which the loop routes the partition's records."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        *,
        crash: CrashHook | None = None,
        eager: EagerDispatch | None = None,
    ) -> None:
        """``crash`` is for fault tests only: called at each named crash point (see ``CRASH_POINTS``) with the point
        and the key it concerns, it may kill the process there, deterministically, to prove recovery from it.
        ``eager``: the workers of this process, to hand steps to in memory (``runtime/eager.py``)."""
        self.settings = settings
        self.eager = eager
        self._crash = crash
        self.registry = registry
        self.topics = settings.topics
        #: Where snapshots too big for a record go (the claim-check store every process shares).
        self.blobs = open_blob_store(settings)
        #: Every partition this engine owns (recovering, live or given up), by number: its state and its stage.
        self.partitions: dict[int, Partition] = {}
        self.ticks_fired = 0
        #: What each partition owes the state topic (changed states, id markers, tombstones), and the round writing it.
        self.snapshots = SnapshotRounds(self.topics.state, self.blobs, crash=crash)
        #: Input offsets: handled in this turn, applied by committed transactions, committable to the group.
        self.offsets = InputOffsets(self.topics.commands, self.topics.results, self.topics.state)
        #: Partitions given up after a failed transaction: fenced by a new owner, or rebuilt from the log.
        self.fenced = self.given_up = 0
        #: Partition recoveries started and finished (more than the partitions owned means a rebalance loop).
        self.recoveries_started = self.recoveries = 0
        self.traces = DecisionTraces()
        #: How each decision becomes records (``runtime/decision_records.py``).
        self.records = DecisionRecords(self.topics, self.traces, eager)
        self._stopping = False
        self.timers = Timers()
        self.processed: int = 0
        self.inputs: Counter[str] = Counter()  # commands and results consumed, by type (for /metrics)
        self.events_out: Counter[str] = Counter()  # events appended, by type
        self.dead_lettered: int = 0
        self.resent = 0  # messages re-sent by recoveries (tasks in flight, child starts, parent reports)
        self.timer_firings: int = 0
        self.retention = Retention(
            state_ms=int(settings.state_retention_s * 1000),
            tick_state_ms=int(settings.tick_run_retention_s * 1000),
            id_ms=int(settings.run_id_retention_s * 1000),
            full_state_ms=int(settings.finished_state_s * 1000),
        )
        self.shrunk: int = 0  # finished runs shrunk to their tombstone-sized state (see ``_fire_timers``)
        self._spec_hashes = {
            (name, version): spec.content_hash()
            for name, versions in registry.versions.items()
            for version, spec in versions.items()
        }
        self._workflows = frozenset(registry.specs)
        self._task: asyncio.Task[None] | None = None
        self._last_commit = 0.0
        # aiokafka hands out records of newly assigned partitions while the rebalance listener is still
        # running, and runs the listener in another task. This lock makes "recover a partition" and
        # "process a batch" mutually exclusive, so no record is ever decided against a half-built state.
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self.dead_letters = DeadLetters(None, self.topics.dead_letter, "engine")  # written by partition writers
        self.consumer = new_consumer(
            self.settings.kafka,
            group_id=self.topics.engine_group,
            partition_assignment_strategy=(RangePartitionAssignor,),
            max_poll_interval_ms=300_000,
            session_timeout_ms=self.settings.session_timeout_ms,
        )
        await self.consumer.start()
        self.consumer.subscribe(
            [self.topics.commands, self.topics.results],
            listener=Rebalance(on_revoked=self.on_revoked, on_assigned=self.on_assigned),
        )
        self._task = asyncio.create_task(self._loop(), name="tickflow-engine")

    async def stop(self) -> None:
        """Stop at a turn boundary: the loop finishes its turn (its transactions end), recoveries not yet installing
        are cancelled, and only offsets whose transactions committed are committed.

        Never by cancelling the loop mid-turn: a cancellation inside a transaction's commit leaves its outcome
        unknown, and committing the turn's offsets after it would skip inputs whose effects the broker then aborts.
        Only a loop stuck longer than ``STOP_TIMEOUT_S`` is cancelled, and then no offset is committed at all (the
        inputs since the last commit are read again and recognised by the applied offsets).
        """
        self._stopping = True
        clean = True
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:
                log.error("the engine loop did not reach a turn boundary in %.0f s; stopping it anyway", STOP_TIMEOUT_S)
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
                clean = False
            except Exception:  # its failure is the supervisor's to report; what it left open is never committed
                clean = False
        async with self._lock:  # no recovery is installing its partition now: the others can be dropped safely
            recovering = [part.recovery for part in self.partitions.values() if part.recovery is not None]
            for task in recovering:
                task.cancel()
        await asyncio.gather(*recovering, return_exceptions=True)
        try:
            if clean:
                async with self._lock:
                    await self._commit()
        finally:
            await self.consumer.stop()
            writers = self._writers()
            for part in self.partitions.values():
                part.writer = None  # nothing is written for it any more; its state stays readable
            await asyncio.gather(*(w.stop() for w in writers.values()))

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    # -- main loop -----------------------------------------------------------------------------------------

    async def _loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while not self._stopping:
            due = self.timers.next_due()
            wait_ms = 100 if due is None else max(0, min(100, due - _now_ms()))
            batch = await self._next_batch(wait_ms)
            if self._stopping:
                return  # the batch is not handled: its offsets are not positions, so it is read again
            async with self._lock:
                # No transaction is open between two turns: snapshot blobs are written now, never inside one.
                await self.snapshots.prepare(SNAPSHOT_CHUNK, self._state_of)
                # A turn's transactions stay far below their timeout: past this, the batch's rest waits a turn.
                turn_ends = time.monotonic() + self.settings.transaction_timeout_ms / 1000 * TURN_SHARE
                await self._handle_batch(batch, turn_ends)
                if self.eager is not None:
                    await self._send_notes_early()
                    await self._eager_turn(self.eager, turn_ends)
                await self._fire_timers(_now_ms())
                if self.snapshots.due(self.settings.snapshot_interval_s):
                    await self._begin_snapshot_round()
                await self.snapshots.write_prepared(self._writers())
                await self._end_transactions()  # this turn's writes become visible, or the partition is rebuilt
            if self.offsets.committable and time.monotonic() - self._last_commit >= interval:
                async with self._lock:
                    await self._commit()

    async def _next_batch(self, wait_ms: int) -> Batch:
        """The next inputs, waiting at most ``wait_ms``; with eager attempts out, also woken by their results."""
        eager = self.eager
        if eager is None or not eager.in_flight or wait_ms == 0:
            batch: Batch = await self.consumer.getmany(
                timeout_ms=0 if eager and eager.ready else wait_ms, max_records=2_000
            )
            return batch
        fetch = asyncio.ensure_future(self.consumer.getmany(timeout_ms=wait_ms, max_records=2_000))
        returned = asyncio.ensure_future(eager.wait(wait_ms / 1000))
        await asyncio.wait((fetch, returned), return_when=asyncio.FIRST_COMPLETED)
        returned.cancel()
        if fetch.done():
            fetched: Batch = fetch.result()
            return fetched
        fetch.cancel()  # safe: a getmany waiting for data has taken no record yet
        with contextlib.suppress(asyncio.CancelledError):
            await fetch
        return {}

    async def _handle_batch(self, batch: Batch, turn_ends: float) -> None:
        assigned = self.consumer.assignment()
        now = _now_ms()
        handled = 0
        for tp, records in batch.items():
            if tp not in assigned:
                continue  # fetched before a revocation: the new owner will process it
            part = self.partitions.get(tp.partition)
            if part is None or not part.live:
                self.consumer.seek(tp, records[0].offset)  # fetched before its pause: read it again later
                continue
            done = 0
            for record in records:
                if time.monotonic() > turn_ends:
                    self.consumer.seek(tp, record.offset)  # the rest in the next turn
                    break
                await self._handle(part, tp, record, now)
                done += 1
                handled += 1
                if handled % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                if handled % TIMER_CHECK_EVERY == 0:  # a big batch must not hold due timers back
                    now = _now_ms()
                    await self._fire_timers(now)
            if done:
                self.offsets.handled(tp, records[done - 1].offset + 1)
                self.processed += done

    async def _send_notes_early(self) -> None:
        """Add the applied-offsets note of each open transaction now, not at its commit: a turn that goes on deciding
        steps handed back in memory overlaps the note's round trips with that work, and its commit then only ends
        the transaction. A turn that handles more inputs later sends a newer note (the last one written counts)."""
        for partition in self.offsets.partitions_handled():
            part = self.partitions.get(partition)
            note = self.offsets.note(partition)
            if part is not None and part.writing and note is not None and part.early_note != note:
                await part.require_writer().send(*note)
                part.early_note = note

    async def _eager_turn(self, eager: EagerDispatch, turn_ends: float) -> None:
        """Decide what the local workers hand back, within this turn's transactions, while they keep handing back.

        A run of quick steps goes from step to step in memory, its events queued in the open transaction, and its
        turn commits once it has nothing left in flight here (or the turn reached ``eager_turn_ms``; or nothing
        came back within ``eager_linger_ms``: a slow body's result is decided in a later turn). Inputs that arrive
        meanwhile join the turn, so at load one commit carries many runs' steps.
        """
        s = self.settings
        until = min(turn_ends, time.monotonic() + s.eager_turn_ms / 1000)
        polled = time.monotonic()
        while True:
            for i, returned in enumerate(eager.take(), 1):
                await self._returned(returned)
                if i % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            now = time.monotonic()
            if now >= until:
                return
            if now - polled >= EAGER_POLL_S or not eager.in_flight:  # a poll costs more than deciding a step
                polled = now
                batch = await self.consumer.getmany(timeout_ms=0, max_records=2_000)
                if batch:
                    await self._handle_batch(batch, until)
                    continue
            if not eager.in_flight or not await eager.wait(min(s.eager_linger_ms / 1000, until - time.monotonic())):
                return

    async def _returned(self, returned: Returned) -> None:
        """Decide one eager attempt's result; send a lost attempt's task to the topic. Dropped when the partition is
        no longer served here, or was rebuilt since (then its recovery re-sent the task: the decider keeps only
        the attempt it waits for, so a result that still matches is applied once either way)."""
        partition, pool, task, result = returned
        part = self.partitions.get(partition)
        if part is None or not part.live or part.revoking:
            return
        state = part.runs.get(task.key)
        if state is None or task.key in part.quarantined:
            return
        if result is None:
            await self._publish(part, [(self.topics.tasks(pool), encode(task), task.key.encode())])
            return
        self.inputs[result.type] += 1
        await self._decide(part, state, WorkerResult(result), _now_ms())

    async def _fire_timers(self, now: int) -> None:
        for i, (partition, run_id) in enumerate(self.timers.pop_due(now), 1):
            if i % YIELD_EVERY == 0:
                await asyncio.sleep(0)
            part = self.partitions.get(partition)
            if part is None:
                continue  # no longer owned: its new owner armed its own timers
            if is_stack(run_id):
                stack = part.stacks.get(run_id)
                if stack is not None:
                    await self._apply_stack(part, decide_stack(stack, None, now))
                continue
            state = part.runs.get(run_id)
            if state is None:
                until = part.gone.get(run_id)
                if until is not None and now >= until:  # the id is forgotten at last: compaction drops its marker
                    del part.gone[run_id]
                    self.snapshots.expired[partition][run_id] = None
                continue
            stage = self.retention.stage(state, now)
            if stage == "decide":
                self.timer_firings += 1
                await self._decide(part, state, Recover(causation_id=f"timer/{now}"), now)
            elif stage == "expire":
                del part.runs[run_id]
                self.snapshots.dirty[partition].discard(run_id)
                self._forget(part, state, now)
            elif stage == "shrink":
                # Its last events, report and slot release were committed long ago: keep only what answers
                # late inputs (a few hundred bytes), in memory and, at the next snapshot, on the state topic.
                small = shrink(state)
                part.runs[run_id] = small
                self.snapshots.dirty[partition].add(run_id)
                self.traces.forget(run_id)
                self.shrunk += 1
                self._arm(partition, small)
            else:
                self._arm(partition, state)

    def _forget(self, part: Partition, state: RunState, now: int) -> None:
        """A finished run's state leaves memory and the state topic; its id stays taken (a ``Gone`` marker) for
        ``run_id_retention_s`` more, except a tick run's (see ``core.retention``)."""
        self.traces.forget(state.run_id)
        until = self.retention.id_taken_until(state, now)
        if until is None:
            self.snapshots.expired[part.number][state.run_id] = None
            return
        part.gone[state.run_id] = until
        self.snapshots.expired[part.number][state.run_id] = encode_gone(until)
        self.timers.arm(part.number, state.run_id, until)

    def _arm(self, partition: int, state: RunState) -> None:
        self.timers.arm(partition, state.run_id, self.retention.due_ms(state))

    async def _end_transactions(self, only: set[int] | None = None) -> None:
        """Commit the open transaction of every partition (of ``only``); give up each partition whose one fails.

        Each transaction ends with its partition's applied-offsets note (``APPLIED_KEY``), and the offsets handled
        for a partition become committable (``positions``) only once its transaction committed, or when the turn
        wrote nothing for it.
        """
        parts = self.offsets.partitions_handled() | {p for p, part in self.partitions.items() if part.writing}
        if only is not None:
            parts &= only
        open_ = [
            (part, part.require_writer())
            for p in sorted(parts)
            if (part := self.partitions.get(p)) is not None and part.writing
        ]
        if open_ and self._crash is not None:  # a fault test: let the broker hold every record first, uncommitted
            await asyncio.gather(*(w.acknowledged() for _, w in open_))
            self._crash_point("txn-open", "")
        notes = {part.number: self.offsets.note(part.number) for part, _ in open_}
        for part, _ in open_:  # already in the transaction: not again
            note = notes[part.number]
            if note is not None and part.take_early_note(note):
                notes[part.number] = None
        results = await asyncio.gather(*(w.commit(notes[part.number]) for part, w in open_), return_exceptions=True)
        for (part, _), result in zip(open_, results, strict=True):
            if isinstance(result, TransactionFailed):
                parts.discard(part.number)
                await self._give_up(part, result)
            elif isinstance(result, BaseException):
                raise result
        for partition in parts:
            self.offsets.committed(partition)
        if self.eager is not None:
            # With no transaction open, what scheduled a partition's eager attempts is in the log already: a
            # recovered run's step, re-sent in memory without a write, must not wait for the partition's next commit.
            self.eager.committed(parts | {p for p in self.eager.awaiting() if not self._writing(p)})

    def _writing(self, partition: int) -> bool:
        part = self.partitions.get(partition)
        return part is not None and part.writing

    def _writers(self) -> dict[int, PartitionWriter]:
        """The writer of every partition that has one (installed and not dropped), by partition."""
        return {number: part.writer for number, part in self.partitions.items() if part.writer is not None}

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        # Commits never outrun durable state: the transactions of every event/task these offsets caused commit first.
        await self._end_transactions(None if only is None else {tp.partition for tp in only})
        offsets = {tp: o for tp, o in self.offsets.committable.items() if only is None or tp in only}
        if offsets:
            self._crash_point("before-commit", "")
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance got in first; the inputs will be redelivered and deduplicated by the decider.
                log.warning("offset commit skipped during a rebalance: %s", exc)
        self._last_commit = time.monotonic()

    async def _handle(
        self, part: Partition, tp: TopicPartition, record: ConsumerRecord[bytes, bytes], now: int
    ) -> None:
        """Decide one input of ``part`` (live): refused to the dead-letter topic, or applied to its run, slot or
        stack."""
        is_command = tp.topic == self.topics.commands
        try:
            env = decode(record.value, expect="command" if is_command else "result")
        except InvalidRecord as exc:
            await self._dead_letter(record, str(exc), now)
            return
        self.inputs[env.type] += 1
        if (reason := key_mismatch(record.key, env)) is not None:
            await self._dead_letter(record, reason, now)
            return
        if is_slot(env.key):
            await self._handle_slot(part, record, env, now)
            return
        if is_stack(env.key):
            stack = part.stacks.get(env.key) or StackState(env.key)
            stacked = decide_stack(stack, env, now, self._workflows)
            if stacked.refused:
                await self._dead_letter(record, stacked.refused, now)
            await self._apply_stack(part, stacked, record=record)
            return
        held = part.quarantined.get(env.key)
        if held is not None or isinstance(env.payload, ReleaseRun):
            await self._quarantined_input(part, record, env, held, now)
            return
        state = part.runs.get(env.key)
        if state is None and (problem := unusable_id(env, part.gone)):
            await self._dead_letter(record, problem, now)
            return
        if isinstance(env.payload, AcquireSlot | ReleaseSlot):
            reason = f"{env.type} must be keyed by a slot id ('slot:<workflow>:<key>'), not {env.key!r}"
            await self._dead_letter(record, reason, now)
            return
        if isinstance(env.payload, StartRun):
            spec = self.registry.spec(env.payload.workflow, env.payload.version)
            if spec is None and state is None:
                await self._dead_letter(record, unknown_workflow(self.registry, env.payload), now)
            spec_hash = self._spec_hashes.get((spec.name, spec.version), "") if spec is not None else ""
            start = Start(env, spec, spec_hash)
            await self._decide(part, state or RunState(env.key), start, now, record)
            return
        if isinstance(env.payload, ForkRun):
            fork = await claimed_fork(env, self.blobs)  # a claim-checked history is read off the loop
            await self._decide(part, state or RunState(env.key), fork, now, record)
        elif state is None:
            what = "command" if is_command else "result"
            reason = f"{env.type} {what} for run {env.key!r}, which this engine partition does not know"
            await self._dead_letter(record, reason, now)
        elif is_command:
            signal = await claimed_signal(env, state, self.blobs)  # a resume's claim-checked payload, for its schema
            await self._decide(part, state, signal, now, record)
        else:
            await self._decide(part, state, WorkerResult(env), now, record)

    async def _quarantined_input(
        self, part: Partition, record: ConsumerRecord[bytes, bytes], env: Envelope, held: Quarantine | None, now: int
    ) -> None:
        """An input for a quarantined run is refused (with how to release the run); a ``ReleaseRun`` releases it.

        A release resumes the run from its last good state, after the highest seq its log holds; the tasks it has
        in flight are sent again (their results were refused meanwhile) and whatever is due is decided at once.
        """
        if held is None:
            reason = f"run {env.key!r} is not quarantined; ReleaseRun only releases a run recovery set aside"
            await self._dead_letter(record, reason, now)
            return
        if not isinstance(env.payload, ReleaseRun):
            await self._dead_letter(record, held_input(env, held), now)
            return
        decision = release(held.state, held.highest_seq, env, now)
        del part.quarantined[env.key]
        log.warning("run %s released by %s: resumes from seq %d", env.key, env.id, held.state.seq)
        records, local = self._run_records(decision, now, recovering=True)  # re-sends its work in flight
        await self._publish_run(part, decision, records, local)
        await self._decide(part, decision.state, Recover(causation_id=env.id), now)

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], reason: str, now: int) -> None:
        """Refuse an input: its dead letter is written in its partition's transaction, with the turn's other writes."""
        value, key = self.dead_letters.letter(record, reason, now)
        await self.partitions[record.partition].require_writer().send(self.topics.dead_letter, value, key)
        self.dead_lettered += 1

    async def _handle_slot(
        self, part: Partition, record: ConsumerRecord[bytes, bytes], env: Envelope, now: int
    ) -> None:
        if not isinstance(env.payload, AcquireSlot | ReleaseSlot):
            reason = f"{env.type} cannot be sent to a slot entity ({env.key!r}); send AcquireSlot or ReleaseSlot"
            await self._dead_letter(record, reason, now)
            return
        events, state = decide_slot(part.slots.get(env.key) or SlotState(env.key), env, now)
        await self._apply_slot(part, state, events, admissions(state, events, now))

    async def _apply_slot(
        self, part: Partition, state: SlotState, events: list[Envelope], admits: list[Envelope]
    ) -> None:
        try:
            records = self.records.encoded(events, [(self.topics.commands, admit) for admit in admits])
        except InvalidRecord as exc:  # slot records are small and bounded: this would be a bug, not an input
            log.error("slot %s: a decision cannot be recorded and is dropped: %s", state.slot, exc)
            return
        if events:
            part.slots[state.slot] = state
            self.snapshots.dirty[part.number].add(state.slot)
            self.events_out.update(e.type for e in events)
        await self._publish(part, records)

    async def _apply_stack(
        self,
        part: Partition,
        decision: StackDecision,
        extra: list[Envelope] | None = None,
        record: ConsumerRecord[bytes, bytes] | None = None,
    ) -> None:
        """Publish a stack's events, then the StartRun of each fired tick; cache it; arm its next tick.

        A decision whose records do not all encode (a stack input too big to go into its tick's start) is neither
        cached nor sent: its command goes to the dead-letter topic with the reason, and the stack stays as it was.
        """
        state = decision.state
        starts = [*decision.starts, *(extra or [])]
        try:
            records = self.records.encoded(decision.events, [(self.topics.commands, start) for start in starts])
        except InvalidRecord as exc:
            reason = f"stack {state.key!r}: this command's effects cannot be recorded: {exc}"
            if record is not None:
                await self._dead_letter(record, reason, _now_ms())
            else:
                log.error("%s", reason)
            return
        if decision.events:
            part.stacks[state.key] = state
            self.snapshots.dirty[part.number].add(state.key)
            self.events_out.update(e.type for e in decision.events)
            observe_ticks(decision.events)
        await self._publish(part, records)
        self.ticks_fired += len(decision.starts)
        self.timers.arm(part.number, state.key, state.timer_due_ms())

    async def _decide(
        self,
        part: Partition,
        state: RunState,
        input: Input,
        now: int,
        record: ConsumerRecord[bytes, bytes] | None = None,
        *,
        recovering: bool = False,
    ) -> bool:
        """Decide ``input`` for the run in ``state`` and publish the decision; return whether it emitted events.

        Nothing is cached or sent before every record of the decision is known to encode within the limits. A
        decision that cannot be recorded (an output too big for the log, a value nested too deep) is replaced by
        ``refuse``: the run fails, or a start is rejected, with the reason, and the input that caused it goes to
        the dead-letter topic. An exception of the decider itself is handled the same way, so no single input can
        stop the engine.
        """
        with self.traces.span(part.number, state.run_id, input):
            cause = _causation(input)
            start = input.command.payload if isinstance(input, Start) else None
            assert start is None or isinstance(start, StartRun)
            started = time.perf_counter()
            try:
                decision = run(state, input, now, self.registry)
                records, local = self._run_records(decision, now, recovering)
                DECISION_SECONDS.observe(time.perf_counter() - started)
            except InvalidRecord as exc:
                kind = "PayloadTooLarge" if isinstance(exc, RecordTooLarge) else "InvalidRecord"
                error = ErrorInfo(type=kind, message=str(exc)[:10_000])
            except Exception as exc:  # a decider bug must cost one run, not the engine (and every restart after it)
                log.exception("run %s: the decider failed on %s", state.run_id, type(input).__name__)
                message = f"the engine could not decide this input: {exc!r}"[:10_000]
                error = ErrorInfo(type="EngineError", message=message)
            else:
                await self._publish_run(part, decision, records, local)
                return bool(decision.events)
            if record is not None:
                reason = f"run {state.run_id!r}: {error.type}: {error.message}"
                await self._dead_letter(record, reason, now)
            decision = refuse(state, error, now, cause, start)
            try:
                records, local = self._run_records(decision, now, recovering)
            except InvalidRecord as exc:  # cannot happen with bounded failure events; never let it stop the engine
                log.error("run %s: even its failure cannot be recorded: %s", state.run_id, exc)
                return False
            await self._publish_run(part, decision, records, local)
            return bool(decision.events)

    def _run_records(self, decision: Decision, now: int, recovering: bool) -> tuple[list[Record], Local]:
        """A run decision's records and its tasks a local worker may take (``DecisionRecords``); counts the messages
        a recovery sends again."""
        outs, resent = self.records.outbound(decision, now, recovering)
        self.resent += resent
        return self.records.of_run(decision, outs)

    async def _publish_run(self, part: Partition, decision: Decision, records: list[Record], local: Local) -> None:
        """Cache the new state, publish its records (events first), re-arm its timer."""
        state = decision.state
        if decision.events:
            part.runs[state.run_id] = state
            self.snapshots.dirty[part.number].add(state.run_id)
            self.events_out.update(e.type for e in decision.events)
            self._crash_point("cached", state.run_id)
        await self._publish(part, records, local)
        self._arm(part.number, state)

    async def _publish(self, part: Partition, records: list[Record], local: Local | None = None) -> None:
        """Send encoded records in order (events first); events go to the owned partition of the events topic.

        A task in ``local`` is offered to this process's worker of its pool after the decision's events are sent:
        a ``RunStep`` it takes is not written to the topic; a ``CancelStep`` reaches it and the topic both."""
        events = 0
        writer = part.require_writer()
        for i, (topic, value, record_key) in enumerate(records):
            if local and i in local and self.eager is not None:
                pool, task = local[i]
                if isinstance(task.payload, RunStep) and self.eager.offer(part.number, pool, task):
                    continue
                if isinstance(task.payload, CancelStep):
                    self.eager.cancel(pool, task.payload.idempotency_key)
            if topic == self.topics.events:
                if events == 1:
                    self._crash_point("mid-events", record_key)
                fut = await writer.send(topic, value, record_key, part.number)
                # A partition's records are acked in send order, so its last send carries its highest offset.
                part.last_event_send = fut
                events += 1
            else:
                if events:  # the decision's first message, after its events
                    self._crash_point("events-sent", record_key)
                    events = 0
                await writer.send(topic, value, record_key)

    def _crash_point(self, point: str, key: str | bytes) -> None:
        """A named crash point (``CRASH_POINTS``); costs one comparison unless a test installed a hook."""
        if self._crash is not None:
            self._crash(point, key.decode() if isinstance(key, bytes) else key)

    def metric_values(self) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
        """This engine's counters and levels for /metrics (``tickflow.metrics.RoleCollector`` reads them)."""
        return engine_status.metric_values(self)

    def status(self) -> dict[str, Any]:
        """What ``/stats`` and the dashboard's System page show of this engine (``engine_status.status``)."""
        return engine_status.status(self)

    async def capture(self) -> Capture:
        """A copy of the live run states of every recovered partition, the time it was taken (epoch ms), and the
        events offset each partition's log must reach to hold every seq of those states.

        For comparing with a refold of the log. Taken under the lock, so between two batches: no decision is
        half applied, and every later decision is made at or after that time. States are immutable, so a
        shallow copy of each table is a consistent snapshot. Returns once the last event sent to each
        partition before the copy is acknowledged. A ``read_committed`` reader may still stop short of it for a
        moment: a transaction's commit markers reach the partition shortly after its commit returns, so a reader
        waits for ``events_end`` (see ``verify_engine``).
        """
        async with self._lock:
            live = [part for _, part in sorted(self.partitions.items()) if part.live]
            runs = {part.number: dict(part.runs) for part in live}
            taken_at = _now_ms()
            ends = {part.number: part.events_end or 0 for part in live}
            sends = [(part.number, part.last_event_send) for part in live if part.last_event_send is not None]
        if sends:  # shielded: awaiting must never cancel the engine's own futures
            acked = await asyncio.gather(*(asyncio.shield(f) for _, f in sends))
            for (partition, _), metadata in zip(sends, acked, strict=True):
                ends[partition] = max(ends[partition], metadata.offset + 1)
        return Capture(runs, taken_at, ends)

    # -- snapshots -------------------------------------------------------------------------------------------

    async def _begin_snapshot_round(self) -> None:
        """Start writing the states changed since the last round (``SnapshotRounds`` writes them in chunks)."""
        await self._end_transactions()  # every event decided so far is committed: the last sends know their offsets
        for part in self.partitions.values():
            part.settle_events_end()
        ends = {number: part.events_end for number, part in self.partitions.items() if part.events_end is not None}
        self.snapshots.begin(self.recovered_partitions, ends)

    def _state_of(self, partition: int, key: str) -> Snapshot | None:
        """What the state topic keeps for ``key`` of ``partition`` (``Partition.state_of``); None once not owned."""
        part = self.partitions.get(partition)
        return None if part is None else part.state_of(key)


def _causation(input: Input) -> str | None:
    """The id of the record a decision answers (its events' causation id)."""
    if isinstance(input, Start | Signal | Fork):
        return input.command.id
    if isinstance(input, WorkerResult):
        return input.result.id
    return input.causation_id
