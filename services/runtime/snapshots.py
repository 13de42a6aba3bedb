"""Snapshots of the engine's state on a compacted topic, so recovery reads a tail of the log, not all of it.

The events topic stays the source of truth; snapshots are a cache of its fold, like the in-memory table.
Every ``snapshot_interval_s`` the engine writes, per owned partition, the state of each run (or slot entity)
that changed since the last snapshot, keyed by its id, then a checkpoint record naming the events offset that
all snapshots of that partition cover. A run whose state expired (retention) gets a tombstone, which
compaction turns into nothing: that is how finished runs leave the engine's storage for good.

Recovery reads the state partition, then folds only the events after the last checkpoint on top of the
snapshots (events at or below a snapshot's seq are skipped). A snapshot that cannot be read is ignored and
the checkpoint that follows it is not trusted, so the fold falls back to the full log.

A state too big for one record (a run holding large step outputs) goes through the claim-check: its snapshot is
written to the blob store and the state topic gets a reference. A state that cannot be written at all keeps the
partition's checkpoint where it was, round after round, until it can: the checkpoint never passes an event whose
run's latest state is not in a snapshot.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from tickflow.core.slots import SlotState
from tickflow.core.stacks import StackState
from tickflow.core.state import RunState
from tickflow.events.codec import MAX_RECORD_BYTES
from tickflow.runtime.claimcheck import BlobStore

__all__ = [
    "APPLIED_KEY",
    "BLOB_REFERENCE_PREFIX",
    "CHECKPOINT_KEY",
    "Gone",
    "Quarantine",
    "Snapshot",
    "decode_applied",
    "decode_snapshot",
    "encode_applied",
    "encode_blob_reference",
    "encode_checkpoint",
    "encode_gone",
    "encode_snapshot",
    "snapshot_record",
]

log = logging.getLogger("tickflow.engine")

CHECKPOINT_KEY = b"__checkpoint__"
#: The input offsets (per input topic role: commands, results) up to which a partition's committed transactions
#: applied their inputs: written as the last record of every engine transaction (``PartitionWriter.commit``).
APPLIED_KEY = b"__applied__"
_RUN = TypeAdapter(RunState)
_SLOT = TypeAdapter(SlotState)
_STACK = TypeAdapter(StackState)



@dataclass(slots=True)
class Quarantine:
    """A run set aside because its log cannot be folded past ``state`` (its last good state).

    Snapshotted under the run's key like a state, so it outlives checkpoints and restarts: the checkpoint after the
    quarantine passes the event that could not be folded, and only this record still says the run is held, at
    which seq, and why."""

    state: RunState
    reason: str
    highest_seq: int  # the highest seq its log holds: a release resumes after it
    announced: bool = False  # a RunQuarantined about it is in the log already
    skipped: int = 0  # events of it after the quarantine (not folded)


Snapshot = RunState | SlotState | StackState | Quarantine


@dataclass(frozen=True, slots=True)
class Gone:
    """A finished run whose state has expired: its id stays taken until ``until_ms``.

    It replaces the run's snapshot on the compacted topic, so the id outlives the state by far at the cost of a
    few bytes; only when it passes ``until_ms`` does a tombstone let compaction forget the id.
    """

    until_ms: int


def encode_gone(until_ms: int) -> bytes:
    return orjson.dumps({"gone": {"until_ms": until_ms}})


def encode_snapshot(state: Snapshot) -> bytes:
    if isinstance(state, Quarantine):
        held = {
            "state": _RUN.dump_python(state.state, mode="json"),
            "reason": state.reason,
            "highest_seq": state.highest_seq,
            "announced": state.announced,
            "skipped": state.skipped,
        }
        return orjson.dumps({"held": held})
    if isinstance(state, RunState):
        return orjson.dumps({"run": _RUN.dump_python(state, mode="json")})
    if isinstance(state, StackState):
        return orjson.dumps({"stack": _STACK.dump_python(state, mode="json")})
    return orjson.dumps({"slot": _SLOT.dump_python(state, mode="json")})


#: How every ``encode_blob_reference`` record begins (orjson writes no spaces): recovery defers reading those.
BLOB_REFERENCE_PREFIX = b'{"blob":'


def encode_blob_reference(digest: str, size: int) -> bytes:
    """The state-topic record of a snapshot stored in the blob store (too big for a record of its own)."""
    return orjson.dumps({"blob": {"sha256": digest, "size": size}})


def encode_checkpoint(events_offset: int) -> bytes:
    return orjson.dumps({"events_offset": events_offset})


def encode_applied(offsets: dict[str, int]) -> bytes:
    return orjson.dumps({"applied": offsets})


def decode_applied(raw: bytes) -> dict[str, int]:
    """The input offsets of an ``APPLIED_KEY`` record; ValueError if unreadable."""
    try:
        data = orjson.loads(raw)["applied"]
        return {str(k): int(v) for k, v in data.items()}
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"unreadable applied-offsets record: {exc!r}") from None


def decode_snapshot(raw: bytes, blobs: BlobStore | None = None) -> Snapshot | Gone | int:
    """A run, slot or stack snapshot, or the events offset of a checkpoint; ValueError if unreadable (a snapshot
    in the blob store is read from ``blobs``; a missing or corrupt blob is unreadable too)."""
    try:
        data: Any = orjson.loads(raw)
        if "blob" in data:
            if blobs is None:
                raise ValueError("a snapshot in the blob store, and no blob store to read it from")
            try:
                stored = blobs.get(str(data["blob"]["sha256"]))
            except OSError as exc:
                raise ValueError(f"its blob cannot be read: {exc}") from None
            return decode_snapshot(stored)
        if "run" in data:
            return _RUN.validate_python(data["run"])
        if "held" in data:
            held = data["held"]
            return Quarantine(
                state=_RUN.validate_python(held["state"]),
                reason=str(held["reason"]),
                highest_seq=int(held["highest_seq"]),
                announced=bool(held["announced"]),
                skipped=int(held["skipped"]),
            )
        if "gone" in data:
            return Gone(int(data["gone"]["until_ms"]))
        if "slot" in data:
            return _SLOT.validate_python(data["slot"])
        if "stack" in data:
            return _STACK.validate_python(data["stack"])
        return int(data["events_offset"])
    except (orjson.JSONDecodeError, ValidationError, KeyError, TypeError) as exc:
        raise ValueError(f"unreadable snapshot: {exc}") from None


async def snapshot_record(key: str, state: Snapshot, blobs: BlobStore) -> bytes | None:
    """The state-topic record of one snapshot: the state itself, or a reference to it in the blob store when it is
    too big for a record; None when it cannot be written now (it is logged, and the caller tries again later)."""
    try:
        raw = encode_snapshot(state)
    except (TypeError, ValueError) as exc:
        log.error("snapshot of %s cannot be encoded; the checkpoint waits for it: %s", key, exc)
        return None
    if len(raw) <= MAX_RECORD_BYTES:
        return raw
    try:
        digest = await asyncio.to_thread(blobs.put, raw)
    except OSError as exc:
        log.error("snapshot of %s (%d bytes) cannot be stored; the checkpoint waits for it: %s", key, len(raw), exc)
        return None
    return encode_blob_reference(digest, len(raw))
