"""One partition of an engine: the state it serves for it, and where that partition stands in its lifecycle.

An engine owns some partitions of the input topics (commands and results share their partition numbers, and each
number is one events partition and one state partition too). Everything the engine keeps about one of them lives on
its ``Partition``: the run, slot and stack states (the cache of the partition's log), the run ids that stay taken
after their state expired, the runs set aside by recovery, the transactional writer every write for it goes through,
the events offset its snapshots may checkpoint, the note already added to its open transaction, and the task
rebuilding it. Before, each of these was a map keyed by partition number on the engine, and recovery, fencing,
snapshots and failure handling each had to add, read and drop the same key in a dozen maps: a map missed in one of
those places would have kept part of a dropped partition alive. Now a partition's state is created, installed and
dropped as one, and its stage says what the engine may do with it.

What stays engine-wide, keyed by partition inside their own owners: the input offsets (``InputOffsets``), the
snapshot debt and the round writing it (``SnapshotRounds``), and the timers (``Timers``, keyed by run id).
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

from tickflow.core.slots import SlotState
from tickflow.core.stacks import StackState
from tickflow.core.state import RunState
from tickflow.runtime.fencing import PartitionWriter
from tickflow.runtime.input_offsets import NoteRecord
from tickflow.runtime.recovery import Rebuilt
from tickflow.runtime.snapshots import Quarantine, Snapshot

__all__ = ["Partition", "Stage"]


class Stage(enum.Enum):
    """Where an owned partition stands (see ``Partition``)."""

    #: Assigned, its inputs paused: its snapshots and log are being folded in the background (``Partition.recovery``).
    RECOVERING = "recovering"
    #: Rebuilt and installed, its inputs resumed: its records are decided here and written through its writer.
    LIVE = "live"
    #: Dropped after a failed transaction without being rebuilt: a newer owner fenced it, or it is no longer this
    #: engine's to rebuild (being revoked, or the engine is stopping). Nothing is served until it recovers again.
    GIVEN_UP = "given up"


class Partition:
    """One partition an engine owns, from its assignment until its revocation.

    Its lifecycle (the transitions are ``PartitionOwnership``'s, in ``runtime/ownership.py``):

    * **recovering**: created when the partition is assigned, with its inputs paused. Its ``recovery`` task fences
      the previous owner, folds the partition's snapshots and log (never inside the rebalance callback), then
      installs the result with the writer that fenced (``install``). A recovery that keeps failing is retried
      alone with backoff; after a few failures in a row it is ``parked`` (with its last error, shown in /stats)
      while it keeps being retried. The other partitions are served meanwhile.
    * **live**: once the healing decisions of its install committed (``go_live``): its inputs are resumed and
      decided against its states.
    * **revoking**: a flag, not a stage: while the group takes the partition away, its last transaction commits
      (a failure there is not rebuilt here: the new owner rebuilds from the log), then the engine drops the object.
    * **given up**: a transaction failed, so its writes were aborted and its cached state may be ahead of the log:
      everything it served is dropped (``drop``, then ``give_up``). It is rebuilt at once (recovering again),
      unless a newer owner fenced it (the group then takes it away) or it was being revoked.

    ``drop`` forgets its states, ids, quarantines, writer and pending sends at once, so nothing of a dropped
    partition can be decided on or written by mistake; only ``recovered_from`` (what its last recovery read) and
    ``parked`` outlive it.
    """

    def __init__(self, number: int) -> None:
        self.number = number
        self.stage = Stage.RECOVERING
        #: The task rebuilding it, while one runs.
        self.recovery: asyncio.Task[None] | None = None
        #: Why its recovery keeps failing (the last error), once it failed ``PARK_AFTER`` times in a row.
        self.parked: str | None = None
        #: Being handed over to another engine: its last transaction commits now, and is not rebuilt if it fails.
        self.revoking = False
        #: The events checkpoint its last recovery started at (None: it folded the whole log).
        self.recovered_from: int | None = None
        #: The transactional producer every write for it goes through (``runtime/fencing.py``), once installed.
        self.writer: PartitionWriter | None = None
        self.runs: dict[str, RunState] = {}
        self.slots: dict[str, SlotState] = {}
        self.stacks: dict[str, StackState] = {}
        #: Finished runs whose state expired: their ids stay taken until the time given.
        self.gone: dict[str, int] = {}
        #: Runs whose log recovery could not fold: nothing is decided for them until released.
        self.quarantined: dict[str, Quarantine] = {}
        #: The events offset after its last event known committed: the checkpoint its next snapshot round writes.
        self.events_end: int | None = None
        #: The send of its latest event, not yet counted in ``events_end`` (its records are acked in send order).
        self.last_event_send: asyncio.Future[Any] | None = None
        #: The applied-offsets note already added to its open transaction (``Engine._send_notes_early``).
        self.early_note: NoteRecord | None = None

    def __repr__(self) -> str:
        return f"Partition({self.number}, {self.stage.value}, {len(self.runs)} runs)"

    @property
    def live(self) -> bool:
        return self.stage is Stage.LIVE

    @property
    def writing(self) -> bool:
        """Whether a transaction of it is open (something was written for it since its last commit)."""
        return self.writer is not None and self.writer.open

    def require_writer(self) -> PartitionWriter:
        """Its writer; a partition not installed (recovering, given up) has none, and nothing may write for it."""
        if self.writer is None:
            raise LookupError(f"partition {self.number} has no writer: it is not served here")
        return self.writer

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def recovering(self, task: asyncio.Task[None]) -> None:
        """A recovery of it started (on assignment, or after a give-up)."""
        self.stage = Stage.RECOVERING
        self.recovery = task

    def recovery_ended(self, task: asyncio.Task[Any] | None) -> None:
        """``task`` ended; a recovery started after it (a give-up during its install) stays registered."""
        if self.recovery is task:
            self.recovery = None

    def stop_recovery(self) -> None:
        """Being revoked: a recovery not yet installed is cancelled (nothing of it was installed or sent)."""
        self.parked = None
        if self.recovery is not None:
            self.recovery.cancel()
            self.recovery = None

    def install(self, writer: PartitionWriter, built: Rebuilt) -> None:
        """Take the rebuilt state, and the writer that fenced the previous owner before it was read. Not live yet:
        the engine first expires, heals and re-sends what the state owes (``PartitionOwnership._install``)."""
        self.recovered_from = built.checkpoint
        self.writer = writer
        self.runs, self.slots, self.stacks, self.gone = built.runs, built.slots, built.stacks, built.gone
        self.quarantined = built.held

    def go_live(self) -> None:
        """Its install committed: its inputs are decided from now on."""
        self.stage = Stage.LIVE

    def drop(self) -> PartitionWriter | None:
        """Forget everything it served; returns its writer, to be stopped. The engine drops its timers, input
        offsets and snapshot debt with it (``PartitionOwnership._drop``). Its stage is the caller's to set: a
        failed install stays recovering (and is retried), a failed transaction is then given up (``give_up``), a
        revoked partition is discarded."""
        writer, self.writer = self.writer, None
        self.runs, self.slots, self.stacks, self.gone, self.quarantined = {}, {}, {}, {}, {}
        self.events_end = self.last_event_send = self.early_note = None
        return writer

    def give_up(self) -> None:
        """A transaction of it failed and it was dropped: it serves nothing until it recovers again or is revoked."""
        self.stage = Stage.GIVEN_UP

    # -- its state ---------------------------------------------------------------------------------------------

    def state_of(self, key: str) -> Snapshot | None:
        """What the state topic keeps for ``key``: its state, or, while it is quarantined, its quarantine."""
        return self.runs.get(key) or self.slots.get(key) or self.stacks.get(key) or self.quarantined.get(key)

    def settle_events_end(self) -> None:
        """Its transactions committed: the offset after its last event sent becomes ``events_end``."""
        if self.last_event_send is not None:
            self.events_end = max(self.events_end or 0, self.last_event_send.result().offset + 1)
            self.last_event_send = None

    def take_early_note(self, note: NoteRecord) -> bool:
        """Whether ``note`` is in its open transaction already (then it is not added again at the commit)."""
        early, self.early_note = self.early_note, None
        return early == note
