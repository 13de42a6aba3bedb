"""Recovery reads a state partition a batch at a time (``SnapshotReader``): however the records are split into
batches, the result is the one reading them all at once gives, and an unreadable record gives the snapshots up
(keeping the taken ids seen before it) wherever it falls."""

from __future__ import annotations

import itertools
from pathlib import Path

from aiokafka import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from tickflow.core.state import RunState
from tickflow.runtime.claimcheck import FileBlobStore
from tickflow.runtime.recovery import SnapshotReader, parse_snapshots
from tickflow.runtime.snapshots import CHECKPOINT_KEY, encode_checkpoint, encode_gone, encode_snapshot

BLOBS = FileBlobStore(Path("/nonexistent-blobs"))  # no claim-checked snapshot here: never read

_key = st.sampled_from(["r1", "r2", "r3"])
_record = st.one_of(
    st.tuples(_key, st.integers(1, 9).map(lambda seq: ("run", seq))),
    st.tuples(_key, st.integers(1, 10**6).map(lambda until: ("gone", until))),
    st.tuples(_key, st.just(("tombstone", 0))),
    st.tuples(st.just("@checkpoint"), st.integers(0, 10**6).map(lambda offset: ("checkpoint", offset))),
)


def _value(key: str, kind: str, n: int) -> tuple[bytes, bytes | None]:
    if kind == "run":
        return key.encode(), encode_snapshot(RunState(key, seq=n, status="running"))
    if kind == "gone":
        return key.encode(), encode_gone(n)
    if kind == "checkpoint":
        return CHECKPOINT_KEY, encode_checkpoint(n)
    if kind == "corrupt":
        return key.encode(), b"{not a snapshot"
    return key.encode(), None


def _records(items: list[tuple[str, tuple[str, int]]]) -> list[ConsumerRecord[bytes, bytes]]:
    out = []
    for offset, (key, (kind, n)) in enumerate(items):
        k, v = _value(key, kind, n)
        out.append(ConsumerRecord("state", 0, offset, 0, 0, k, v, None, len(k), len(v or b""), ()))  # type: ignore[arg-type]
    return out


def _in_batches(records: list[ConsumerRecord[bytes, bytes]], cuts: list[int]) -> tuple[object, ...]:
    reader = SnapshotReader(0, BLOBS)
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        reader.feed(records[lo:hi])
    return reader.result()


@given(st.lists(_record, max_size=40), st.lists(st.integers(0, 100), max_size=6))
def test_batches_fold_to_what_one_read_gives(items: list[tuple[str, tuple[str, int]]], cuts: list[int]) -> None:
    records = _records(items)
    assert _in_batches(records, cuts) == parse_snapshots(0, records, BLOBS)


@given(st.lists(_record, max_size=20), st.lists(_record, max_size=20), st.lists(st.integers(0, 100), max_size=4))
def test_an_unreadable_snapshot_gives_them_up_but_keeps_the_ids_seen(
    before: list[tuple[str, tuple[str, int]]], after: list[tuple[str, tuple[str, int]]], cuts: list[int]
) -> None:
    records = _records([*before, ("r9", ("corrupt", 0)), *after])
    runs, slots, stacks, gone, checkpoint = _in_batches(records, cuts)  # type: ignore[misc]
    assert (runs, slots, stacks, checkpoint) == ({}, {}, {}, None)
    assert gone == parse_snapshots(0, _records(before), BLOBS)[3]
