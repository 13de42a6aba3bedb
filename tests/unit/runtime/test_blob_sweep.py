"""The sweep's judgement (``runtime.blobsweep.sweep_marked``) on the in-memory store with a clock the test moves:
what is referenced, or referred to by what is kept, or young, stays; everything else goes; and recovery never
needs a snapshot blob that a later record replaced."""

from __future__ import annotations

import os
import time
from pathlib import Path

import orjson
from aiokafka import ConsumerRecord

from tickflow.core.state import RunState
from tickflow.runtime.blobsweep import references_in, sweep_marked
from tickflow.runtime.claimcheck import FileBlobStore, MemoryBlobStore, offload
from tickflow.runtime.recovery import SnapshotReader
from tickflow.runtime.snapshots import (
    CHECKPOINT_KEY,
    encode_blob_reference,
    encode_checkpoint,
    encode_snapshot,
)

HOUR = 3600.0


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_references_are_found_in_records_and_in_json_written_into_strings() -> None:
    ref = {"$blob": {"sha256": "a" * 64, "size": 3}}
    assert references_in(orjson.dumps({"output": ref})) == {"a" * 64}
    assert references_in(orjson.dumps({"note": orjson.dumps(ref).decode()})) == {"a" * 64}  # escaped quotes
    assert references_in(encode_blob_reference("b" * 64, 10)) == {"b" * 64}
    assert references_in(b'{"sha256":"' + b"c" * 63 + b'"}') == set()


def test_sweep_keeps_the_referenced_what_they_refer_to_and_the_young() -> None:
    clock = Clock()
    store = MemoryBlobStore(now=clock)
    out_kept = offload("k" * 500, store, 10, 10_000, "output")["$blob"]["sha256"]  # referred to by a state blob
    out_dropped = offload("d" * 500, store, 10, 10_000, "output")["$blob"]["sha256"]  # only by a superseded one
    state_new = store.put(orjson.dumps({"run": {"outputs": [{"$blob": {"sha256": out_kept, "size": 1}}]}}))
    state_old = store.put(orjson.dumps({"run": {"outputs": [{"$blob": {"sha256": out_dropped, "size": 1}}]}}))
    orphan = store.put(b"x" * 2000)  # written by a writer that crashed before its record committed
    clock.t += 2 * HOUR
    fresh = store.put(b"y" * 3000)  # just written: its record may be about to commit
    fresh_child = offload("f" * 500, store, 10, 10_000, "o")["$blob"]["sha256"]
    clock.t -= 2 * HOUR  # (fresh_child was put long ago, but the young blob below refers to it)
    store.put(b"placeholder")  # an old, unreferenced blob
    clock.t += 2 * HOUR
    young_parent = store.put(orjson.dumps({"$blob": {"sha256": fresh_child, "size": 1}}))

    listed = list(store.list())
    before = sum(b.size for b in listed)
    missing = "e" * 64
    report = sweep_marked(store, listed, {state_new, missing}, began_s=clock.t, grace_s=HOUR)

    left = {b.digest for b in store.list()}
    assert left == {state_new, out_kept, fresh, young_parent, fresh_child}
    assert {state_old, out_dropped, orphan}.isdisjoint(left)
    assert report.deleted == 4 and report.young == 3 and report.missing == [missing]
    assert report.bytes_after == sum(b.size for b in store.list()) < before
    assert report.deleted_bytes == before - report.bytes_after


def test_a_blob_put_again_while_the_sweep_ran_is_kept() -> None:
    clock = Clock()
    store = MemoryBlobStore(now=clock)
    digest = store.put(b"z" * 100)
    clock.t += 2 * HOUR
    listed = list(store.list())  # the sweep lists: old, and (it will find) unreferenced …
    store.put(b"z" * 100)  # … then a worker writes the same bytes for a result it is about to commit
    report = sweep_marked(store, listed, set(), began_s=clock.t, grace_s=HOUR)
    assert report.deleted == 0 and report.kept_on_recheck == 1
    assert store.get(digest) == b"z" * 100


def test_dry_run_deletes_nothing() -> None:
    clock = Clock()
    store = MemoryBlobStore(now=clock)
    store.put(b"q" * 10)
    clock.t += 2 * HOUR
    report = sweep_marked(store, list(store.list()), set(), began_s=clock.t, grace_s=HOUR, dry_run=True)
    assert report.deleted == 1 and report.deleted_bytes == 10 and len(list(store.list())) == 1


def _record(offset: int, key: bytes, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("state", 0, offset, 0, 0, key, value, None, len(key), len(value or b""), ())  # type: ignore[arg-type]


def test_recovery_reads_only_the_latest_claim_checked_snapshot_of_a_key() -> None:
    """Each round writes a big state again as a new blob; compaction keeps the older records for a while, and the
    sweep deletes their blobs (nothing reads them). Before, recovery read every version, found one blob gone, and
    gave up on all snapshots of the partition: a full-log fold at every restart."""
    store = MemoryBlobStore()
    old = store.put(encode_snapshot(RunState("r1", seq=3, status="running")))
    new = store.put(encode_snapshot(RunState("r1", seq=9, status="running")))
    gone_since = store.put(encode_snapshot(RunState("r2", seq=4, status="running")))
    records = [
        _record(0, b"r1", encode_blob_reference(old, 10)),
        _record(1, b"r2", encode_blob_reference(gone_since, 10)),
        _record(2, b"r1", encode_blob_reference(new, 10)),
        _record(3, b"r2", encode_snapshot(RunState("r2", seq=5, status="running"))),  # small again: in the record
        _record(4, CHECKPOINT_KEY, encode_checkpoint(42)),
    ]
    assert store.delete(old, unless_put_after=float("inf")) and store.delete(gone_since, unless_put_after=1e12)
    reader = SnapshotReader(0, store)
    reader.feed(records[:2])
    reader.feed(records[2:])
    runs, _, _, _, checkpoint = reader.result()
    assert reader.usable and checkpoint == 42
    assert {k: (s.seq, s.status) for k, s in runs.items()} == {"r1": (9, "running"), "r2": (5, "running")}

    store.delete(new, unless_put_after=float("inf"))  # the latest one's blob gone: that is still a real loss
    lost = SnapshotReader(0, store)
    lost.feed(records)
    assert lost.result()[4] is None and not lost.usable


def test_leftovers_of_crashed_writes_go_once_older_than_the_grace_period(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    kept = store.put(b"k" * 10)
    folder = tmp_path / kept[:2]
    stale, fresh = folder / ".tmp-abc", folder / ".tmp-def"  # mkstemp names of writes that never finished
    stale.write_bytes(b"s" * 70)
    fresh.write_bytes(b"f" * 30)
    os.utime(stale, (time.time() - 2 * HOUR, time.time() - 2 * HOUR))
    report = sweep_marked(store, list(store.list()), {kept}, began_s=time.time(), grace_s=HOUR)
    assert not stale.exists() and fresh.exists() and store.get(kept) == b"k" * 10
    assert (report.deleted, report.deleted_bytes) == (1, 70)
