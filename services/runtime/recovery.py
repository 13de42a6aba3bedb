"""Rebuilding a partition's state: its snapshots parsed, then its log folded on top of them.

Both functions are pure apart from reading claim-checked snapshot blobs, and touch no engine state, so the engine
runs them in a thread while its loop keeps serving other partitions and sending heartbeats (see ``Engine._recover``).

Nothing is skipped silently. A run whose log cannot be folded (an event that cannot be read, a seq gap, an event
its state cannot take) is quarantined: its last good state is set aside with the reason, later events of it are
only counted, and the engine decides nothing for it until an operator's ``RunReleased`` (a ``ReleaseRun``
command) says from which state it resumes. Continuing from the stale state instead would write seqs the log
already has. A slot or stack whose log has a gap keeps its last good state (their events are re-derivable
bookkeeping), so neither can crash-loop recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord

from tickflow.core.slots import SlotState, evolve_slot, is_slot
from tickflow.core.stacks import StackState, evolve_stack, is_stack
from tickflow.core.state import RunState, SequenceError, evolve
from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.connection import KafkaTarget
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import RunQuarantined, RunReleased
from tickflow.events.topics import TopicNames, is_run_id
from tickflow.runtime.claimcheck import BlobStore
from tickflow.runtime.kafka import partition_batches
from tickflow.runtime.snapshots import (
    APPLIED_KEY,
    BLOB_REFERENCE_PREFIX,
    CHECKPOINT_KEY,
    Gone,
    Quarantine,
    Snapshot,
    decode_applied,
    decode_snapshot,
)

__all__ = [
    "RECOVERY_THREADS",
    "Quarantine",
    "Rebuilt",
    "SnapshotReader",
    "fold_log",
    "parse_snapshots",
    "quarantine_note",
    "rebuild_partition",
]

log = logging.getLogger("tickflow.engine")
#: Folding recovered partitions runs here, not in the default executor the API's reads use: a burst of status
#: reads never delays a partition's recovery, nor a recovery the reads (two threads: this box has two cores).
RECOVERY_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="tickflow-recovery")


@dataclass
class Rebuilt:
    """One partition's state as its snapshots and log make it, and what it took to get there."""

    runs: dict[str, RunState]
    slots: dict[str, SlotState]
    stacks: dict[str, StackState]
    gone: dict[str, int]
    held: dict[str, Quarantine]
    checkpoint: int | None
    #: Per input topic role (commands, results): the offset up to which the partition's committed transactions
    #: applied their inputs; recovery resumes reading there, so no input is applied twice.
    applied: dict[str, int]
    events_read: int
    read_s: float
    fold_s: float
    started: float = field(default_factory=time.monotonic)


async def rebuild_partition(kafka: KafkaTarget, topics: TopicNames, blobs: BlobStore, partition: int) -> Rebuilt:
    """Read a partition's snapshots and the events after their checkpoint, and fold them (in threads, so the caller's
    loop keeps turning). Call it only once the partition's previous writer is fenced (``runtime/fencing.py``).

    Both are folded a batch at a time as they are read: memory holds the partition's state and one batch, never the
    state topic's history (every snapshot round writes each changed state again, and compaction keeps the old
    versions until the cleaner reaches their segment) nor the whole log when there is no checkpoint.
    """
    started = time.monotonic()
    loop = asyncio.get_running_loop()
    fold_s = 0.0  # the rest of the time is reading
    snapshots = SnapshotReader(partition, blobs)
    async with contextlib.aclosing(partition_batches(kafka, topics.state, partition)) as batches:
        async for batch in batches:
            began = time.monotonic()
            await loop.run_in_executor(RECOVERY_THREADS, snapshots.feed, batch)
            fold_s += time.monotonic() - began
    began = time.monotonic()
    await loop.run_in_executor(RECOVERY_THREADS, snapshots.finish)  # reads the claim-checked snapshots still current
    fold_s += time.monotonic() - began
    runs, slots, stacks, gone, checkpoint = snapshots.result()
    held = snapshots.held if snapshots.usable else {}  # set aside before the checkpoint: still held
    events = 0
    async with contextlib.aclosing(partition_batches(kafka, topics.events, partition, start=checkpoint)) as batches:
        async for batch in batches:
            began = time.monotonic()
            await loop.run_in_executor(RECOVERY_THREADS, fold_log, partition, batch, runs, slots, stacks, gone, held)
            fold_s += time.monotonic() - began
            events += len(batch)
    read_s = time.monotonic() - started - fold_s
    return Rebuilt(runs, slots, stacks, gone, held, checkpoint, snapshots.applied, events, read_s, fold_s, started)


def quarantine_note(run_id: str, q: Quarantine, now_ms: int) -> Envelope:
    """The ``RunQuarantined`` the engine writes (once) for a run it set aside, so the run's status says why."""
    note = RunQuarantined(reason=q.reason, last_good_seq=q.state.seq, highest_seq=q.highest_seq)
    return Envelope.wrap(
        note, id=f"{run_id}/{q.highest_seq}/quarantined", key=run_id, occurred_at_ms=now_ms, correlation_id=run_id
    )


def parse_snapshots(
    partition: int, records: list[ConsumerRecord[bytes, bytes]], blobs: BlobStore
) -> tuple[dict[str, RunState], dict[str, SlotState], dict[str, StackState], dict[str, int], int | None]:
    """The partition's snapshots, its taken ids, and the events offset they cover (None: fold the whole log)."""
    reader = SnapshotReader(partition, blobs)
    reader.feed(records)
    return reader.result()


class SnapshotReader:
    """Folds a state partition's records, in order, a batch at a time, into its snapshots, its taken ids, and the
    events offset they cover (None: fold the whole log).

    An unreadable snapshot or checkpoint makes it give up on the snapshots (the whole log is folded instead), but
    ids marked gone are kept: they are what keeps an id from reuse. Pure apart from reading claim-checked blobs, so
    recovery runs it in a thread.

    A snapshot stored in the blob store is read only if it is still its key's latest record when the partition has
    been fed (``finish``): every round writes a big state again, and the blob sweep (``runtime.blobsweep``) deletes
    the blobs of the versions a later record replaced, which compaction may not have removed from the topic yet.
    """

    def __init__(self, partition: int, blobs: BlobStore) -> None:
        self.partition = partition
        self.blobs = blobs
        self.runs: dict[str, RunState] = {}
        self.slots: dict[str, SlotState] = {}
        self.stacks: dict[str, StackState] = {}
        self.gone: dict[str, int] = {}
        #: Runs quarantined when the snapshots were written (until an operator's release).
        self.held: dict[str, Quarantine] = {}
        self.checkpoint: int | None = None
        #: The latest applied-input offsets (``APPLIED_KEY``); kept even when the snapshots are given up.
        self.applied: dict[str, int] = {}
        self.usable = True
        #: Keys whose latest record so far is a reference to a snapshot in the blob store (read by ``finish``).
        self._deferred: dict[str, bytes] = {}

    def finish(self) -> None:
        """Read the claim-checked snapshots that are still their key's latest record (call once fed)."""
        deferred, self._deferred = self._deferred, {}
        for key, raw in deferred.items():
            if not self.usable:
                return
            try:
                snap = decode_snapshot(raw, self.blobs)
            except ValueError as exc:
                self._give_up(exc)
                return
            self._apply(key, snap)

    def result(
        self,
    ) -> tuple[dict[str, RunState], dict[str, SlotState], dict[str, StackState], dict[str, int], int | None]:
        self.finish()
        if not self.usable:
            return {}, {}, {}, self.gone, None
        return self.runs, self.slots, self.stacks, self.gone, self.checkpoint

    def feed(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        """Fold the next records. Once the snapshots are given up only the applied offsets are still read."""
        for record in records:
            if self.usable or record.key == APPLIED_KEY:
                self._fold(record)

    def _give_up(self, exc: ValueError) -> None:
        log.error("ignoring snapshots of partition %d, folding the whole log: %s", self.partition, exc)
        self.usable = False
        self.runs, self.slots, self.stacks, self.held, self._deferred = {}, {}, {}, {}, {}

    def _fold(self, record: ConsumerRecord[bytes, bytes]) -> None:
        if record.key == APPLIED_KEY:
            if record.value is not None:
                try:
                    self.applied = decode_applied(record.value)
                except ValueError as exc:  # the next one replaces it; meanwhile the group's offsets are used
                    log.error("partition %d: %s", self.partition, exc)
            return
        if record.key == CHECKPOINT_KEY:
            if record.value is not None:
                try:
                    value = decode_snapshot(record.value)
                except ValueError as exc:
                    self._give_up(exc)
                    return
                self.checkpoint = value if isinstance(value, int) else self.checkpoint
            return
        key = (record.key or b"").decode()
        self._deferred.pop(key, None)  # replaced by this record, whatever it is
        if record.value is None:  # a tombstone: the state (or, later, the id marker) is gone for good
            self.runs.pop(key, None)
            self.slots.pop(key, None)
            self.stacks.pop(key, None)
            self.gone.pop(key, None)
            self.held.pop(key, None)
            return
        if record.value.startswith(BLOB_REFERENCE_PREFIX):  # read at the end, if no later record replaces it
            for table in (self.runs, self.slots, self.stacks, self.held):
                table.pop(key, None)
            self._deferred[key] = record.value
            return
        try:
            snap = decode_snapshot(record.value, self.blobs)
        except ValueError as exc:
            self._give_up(exc)
            return
        self._apply(key, snap)

    def _apply(self, key: str, snap: Snapshot | Gone | int) -> None:
        if isinstance(snap, Gone):
            self.runs.pop(key, None)
            self.held.pop(key, None)
            self.gone[key] = snap.until_ms
        elif isinstance(snap, Quarantine):
            self.runs.pop(key, None)
            self.held[key] = snap
        elif isinstance(snap, RunState):
            self.held.pop(key, None)
            self.runs[key] = snap
        elif isinstance(snap, SlotState):
            self.slots[key] = snap
        elif isinstance(snap, StackState):
            self.stacks[key] = snap


def fold_log(
    partition: int,
    records: list[ConsumerRecord[bytes, bytes]],
    runs: dict[str, RunState],
    slots: dict[str, SlotState],
    stacks: dict[str, StackState],
    gone: dict[str, int],
    quarantined: dict[str, Quarantine] | None = None,
) -> dict[str, Quarantine]:
    """Fold a partition's events on top of its snapshots, in place; returns the runs quarantined (see the module
    docstring), which are no longer in ``runs``. Pure (no engine state): it runs in a thread."""
    held = {} if quarantined is None else quarantined
    for record in records:
        where = f"events[{partition}]@{record.offset}"
        try:
            event = decode(record.value, expect="event")
        except InvalidRecord as exc:
            key = (record.key or b"").decode("utf-8", "replace")
            if key in held:  # it may have held a seq: a release must skip past it too
                held[key].highest_seq += 1
                held[key].skipped += 1
            elif _is_run(key) and key not in gone:
                seq = (runs[key].seq if key in runs else 0) + 1  # the seq it most likely held
                _quarantine(runs, held, key, f"the event at {where} cannot be read: {exc}", seq)
            else:
                log.error("unreadable event at %s (key %r), not of a run: %s", where, key[:100], exc)
            continue
        try:
            if is_slot(event.key):
                slot = slots.get(event.key) or SlotState(event.key)
                if event.seq is not None and event.seq > slot.seq:
                    slots[event.key] = evolve_slot(slot, event)
                continue
            if is_stack(event.key):
                stack = stacks.get(event.key) or StackState(event.key)
                if event.seq is not None and event.seq > stack.seq:
                    stacks[event.key] = evolve_stack(stack, event)
                continue
        except (ValueError, TypeError) as exc:  # a gap or a foreign event: keep the entity as it was, go on
            log.error("log gap at %s: %s", where, exc)
            continue
        if event.key in gone:
            continue  # a finished run whose state expired: only its id is kept
        if event.key in held:
            _while_quarantined(runs, held, event)
            continue
        state = runs.get(event.key) or RunState(event.key)
        if event.seq is None or event.seq <= state.seq:
            continue  # an already-applied copy, or a note about the run (RunQuarantined)
        try:
            runs[event.key] = evolve(state, event)
        except (SequenceError, KeyError, TypeError, ValueError) as exc:
            _quarantine(runs, held, event.key, f"the event at {where} cannot be folded: {exc}", event.seq)
    return held


def _is_run(key: str) -> bool:
    return is_run_id(key) and not is_slot(key) and not is_stack(key)


def _quarantine(runs: dict[str, RunState], held: dict[str, Quarantine], key: str, reason: str, seq: int) -> None:
    state = runs.pop(key, None) or RunState(key)  # the engine logs the quarantines still held after the fold
    held[key] = Quarantine(state=state, reason=reason[:900], highest_seq=max(seq, state.seq))


def _while_quarantined(runs: dict[str, RunState], held: dict[str, Quarantine], event: Envelope) -> None:
    """An event of a quarantined run: a release lifts the quarantine; anything else is only counted."""
    q = held[event.key]
    if isinstance(event.payload, RunQuarantined):
        q.announced = True
        return
    if event.seq is None:
        return
    q.highest_seq = max(q.highest_seq, event.seq)
    payload = event.payload
    if isinstance(payload, RunReleased) and payload.resumed_from_seq == q.state.seq:
        runs[event.key] = evolve(q.state, event)
        del held[event.key]
        return
    q.skipped += 1
