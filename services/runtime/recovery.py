"""Rebuilding a partition's state: its snapshots parsed, then its log folded on top of them.

Both functions are pure apart from reading claim-checked snapshot blobs, and touch no engine state, so the engine
runs them in a thread while its loop keeps serving other partitions and sending heartbeats (see ``Engine._recover``).
"""

from __future__ import annotations

import logging

from aiokafka import ConsumerRecord

from tickflow.core.slots import SlotState, evolve_slot, is_slot
from tickflow.core.stacks import StackState, evolve_stack, is_stack
from tickflow.core.state import RunState, SequenceError, evolve
from tickflow.events.codec import InvalidRecord, decode
from tickflow.runtime.claimcheck import FileBlobStore
from tickflow.runtime.snapshots import CHECKPOINT_KEY, Gone, decode_snapshot

__all__ = ["fold_log", "parse_snapshots"]

log = logging.getLogger("tickflow.engine")


def parse_snapshots(
    partition: int, records: list[ConsumerRecord[bytes, bytes]], blobs: FileBlobStore
) -> tuple[dict[str, RunState], dict[str, SlotState], dict[str, StackState], dict[str, int], int | None]:
    """The partition's snapshots, its taken ids, and the events offset they cover (None: fold the whole log).

    Ids marked gone are kept even when the snapshots are unreadable: they are what keeps an id from reuse.
    Pure apart from reading claim-checked blobs, so recovery runs it in a thread.
    """
    runs: dict[str, RunState] = {}
    slots: dict[str, SlotState] = {}
    stacks: dict[str, StackState] = {}
    gone: dict[str, int] = {}
    checkpoint: int | None = None
    for record in records:
        if record.key == CHECKPOINT_KEY:
            if record.value is not None:
                try:
                    value = decode_snapshot(record.value)
                except ValueError as exc:
                    log.error("ignoring snapshots of partition %d, folding the whole log: %s", partition, exc)
                    return {}, {}, {}, gone, None
                checkpoint = value if isinstance(value, int) else checkpoint
            continue
        key = (record.key or b"").decode()
        if record.value is None:  # a tombstone: the state (or, later, the id marker) is gone for good
            runs.pop(key, None)
            slots.pop(key, None)
            stacks.pop(key, None)
            gone.pop(key, None)
            continue
        try:
            snap = decode_snapshot(record.value, blobs)
        except ValueError as exc:
            log.error("ignoring snapshots of partition %d, folding the whole log: %s", partition, exc)
            return {}, {}, {}, gone, None
        if isinstance(snap, Gone):
            runs.pop(key, None)
            gone[key] = snap.until_ms
        elif isinstance(snap, RunState):
            runs[key] = snap
        elif isinstance(snap, SlotState):
            slots[key] = snap
        elif isinstance(snap, StackState):
            stacks[key] = snap
    return runs, slots, stacks, gone, checkpoint


def fold_log(
    partition: int,
    records: list[ConsumerRecord[bytes, bytes]],
    runs: dict[str, RunState],
    slots: dict[str, SlotState],
    stacks: dict[str, StackState],
    gone: dict[str, int],
) -> None:
    """Fold a partition's events on top of its snapshots, in place. Pure (no engine state): it runs in a thread."""
    for record in records:
        try:
            event = decode(record.value, expect="event")
        except InvalidRecord as exc:
            log.error("unreadable event at %s[%d]@%d: %s", record.topic, partition, record.offset, exc)
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
            log.error("log gap at %s[%d]@%d: %s", record.topic, partition, record.offset, exc)
            continue
        if event.key in gone:
            continue  # a finished run whose state expired: only its id is kept
        state = runs.get(event.key) or RunState(event.key)
        if event.seq is None or event.seq <= state.seq:
            continue  # an already-applied copy
        try:
            runs[event.key] = evolve(state, event)
        except SequenceError as exc:
            log.error("log gap: %s", exc)
