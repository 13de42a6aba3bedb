"""What each owned partition owes the state topic, and the rounds that write it (see ``runtime/snapshots.py``).

The engine marks a key dirty whenever it caches a new state (run, slot or stack) and records an id marker or a
tombstone when a finished run's state expires. Every ``snapshot_interval_s`` a round begins: it takes what each
partition owes at that moment and writes it in chunks between two batches, so a round of 10,000 changed runs never
stalls the loop (and the timers) for a second. A partition whose list is done gets its markers, then its
checkpoint: the events offset taken when the round began. Every state changed before that offset is in the round,
and one snapshotted later is only newer (recovery skips the seqs it already has).

A state that cannot be written (``snapshot_record`` returns None) stays owed to the next round, and its partition's
checkpoint stays where it was until it is written: the checkpoint never passes an event whose run's latest state
is not in a snapshot.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from tickflow.runtime.claimcheck import BlobStore
from tickflow.runtime.snapshots import CHECKPOINT_KEY, Snapshot, encode_checkpoint, snapshot_record

__all__ = ["SnapshotRounds", "StateOf", "StateWriter"]

#: The live state of a key in a partition, or None once it left memory.
StateOf = Callable[[int, str], Snapshot | None]


class StateWriter(Protocol):
    """What a round needs of a partition's transactional writer (``runtime.fencing.PartitionWriter``)."""

    async def send(
        self, topic: str, value: bytes | None, key: bytes, partition: int | None = None
    ) -> asyncio.Future[Any]: ...


class SnapshotRounds:
    """The snapshots an engine owes per partition, and the round in progress writing them."""

    def __init__(self, topic: str, blobs: BlobStore, *, crash: Callable[[str, str], None] | None = None) -> None:
        """``topic``: the compacted state topic. ``crash``: the engine's crash-point hook, called after each snapshot
        of a round (``mid-snapshot``), before the partition's checkpoint."""
        self.topic = topic
        self.blobs = blobs
        self._crash = crash
        #: Per partition: keys whose state changed since the last round.
        self.dirty: dict[int, set[str]] = defaultdict(set)
        #: Per partition: state-topic records to write at the next round, by key (a run's id marker, or a tombstone).
        self.expired: dict[int, dict[str, bytes | None]] = defaultdict(dict)
        self.written = 0  # snapshots written
        self.rounds = 0  # rounds begun
        self._began = time.monotonic()
        self._todo: dict[int, list[str]] | None = None  # the round in progress: keys left per partition
        self._expired_in_round: dict[int, dict[str, bytes | None]] = {}
        self._marks: dict[int, int | None] = {}
        self._ready: dict[int, list[tuple[str, bytes]]] = {}  # per partition: encoded, not yet sent

    @property
    def in_progress(self) -> bool:
        return self._todo is not None

    def due(self, every_s: float) -> bool:
        """Whether a new round should begin (never while one is in progress; never if ``every_s`` ≤ 0)."""
        return self._todo is None and every_s > 0 and time.monotonic() - self._began >= every_s

    def begin(self, partitions: Iterable[int], events_end: Mapping[int, int]) -> None:
        """Take what each of ``partitions`` owes now; ``events_end`` (per partition, the offset after its last
        committed event) becomes the checkpoint written once its states are."""
        self.rounds += 1
        todo: dict[int, list[str]] = {}
        for partition in sorted(partitions):
            dirty, expired = self.dirty.pop(partition, set()), self.expired.pop(partition, {})
            if dirty or expired:
                todo[partition] = sorted(dirty)
                self._expired_in_round[partition] = expired
                self._marks[partition] = events_end.get(partition)
        self._todo = todo
        self._began = time.monotonic()

    async def prepare(self, budget: int, state_of: StateOf) -> None:
        """Encode the round's next ``budget`` snapshots, writing the claim-checked ones to the blob store now.

        The engine calls it while none of its transactions is open: a slow blob store (a >1 MB state on a shared
        volume) must never hold a transaction open towards its timeout. ``write_prepared`` sends them later."""
        if self._todo is None:
            return
        for partition in list(self._todo):
            keys = self._todo[partition]
            ready = self._ready.setdefault(partition, [])
            while keys and budget > 0:
                key = keys.pop()
                budget -= 1
                state = state_of(partition, key)
                if state is None:
                    continue
                raw = await snapshot_record(key, state, self.blobs)
                if raw is None:  # not written: owed to the next round, and the old checkpoint kept until then
                    self._marks[partition] = None
                    self.dirty[partition].add(key)
                    continue
                ready.append((key, raw))
            if keys:
                return

    async def write_prepared(self, writers: Mapping[int, StateWriter]) -> None:
        """Send what ``prepare`` encoded; a partition whose states are all written gets its markers and checkpoint.
        Its records are ordered, so the checkpoint lands after its snapshots."""
        if self._todo is None:
            return
        for partition in list(self._todo):
            writer = writers[partition]
            for key, raw in self._ready.pop(partition, []):
                await writer.send(self.topic, raw, key.encode(), partition)
                self.written += 1
                if self._crash is not None:
                    self._crash("mid-snapshot", key)
            if self._todo[partition]:
                continue  # more states to prepare at the next turn
            del self._todo[partition]
            for key, marker in self._expired_in_round.pop(partition, {}).items():  # id markers and tombstones
                await writer.send(self.topic, marker, key.encode(), partition)
            mark = self._marks.pop(partition, None)
            if mark is not None:
                await writer.send(self.topic, encode_checkpoint(mark), CHECKPOINT_KEY, partition)
        if not self._todo:
            self._todo = None

    def owe_all(self, partition: int, keys: Iterable[str]) -> None:
        """A rebuilt partition: the next round covers every state rebuilt, so its checkpoint can pass the fold."""
        self.dirty[partition].update(keys)

    def drop(self, partition: int) -> None:
        """Forget a partition this engine no longer serves (its new owner snapshots what it rebuilds)."""
        self.dirty.pop(partition, None)
        self.expired.pop(partition, None)
        if self._todo is not None:
            self._todo.pop(partition, None)
        self._expired_in_round.pop(partition, None)
        self._marks.pop(partition, None)
        self._ready.pop(partition, None)
