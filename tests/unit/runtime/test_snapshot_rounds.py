"""A snapshot round never moves a partition's checkpoint past a state it did not write."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import tickflow.runtime.snapshots as snapshots_module
from tickflow.core.state import RunState
from tickflow.runtime.claimcheck import FileBlobStore
from tickflow.runtime.engine import Engine
from tickflow.runtime.partition import Partition
from tickflow.runtime.snapshots import (
    CHECKPOINT_KEY,
    decode_snapshot,
    encode_blob_reference,
    encode_snapshot,
)
from tickflow.settings import Settings
from tickflow.workflow import Registry


class RecordingWriter:
    """Stands in for a partition's transactional writer: records what is sent, commits nothing."""

    partition = 0
    open = False

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes | None]] = []

    async def send(self, topic: str, value: bytes | None, key: bytes, partition: int) -> asyncio.Future[Any]:
        self.sent.append((key, value))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _engine(tmp_path: Path) -> Engine:
    """An engine serving partition 0, whose events end at offset 42, through a ``RecordingWriter``."""
    engine = Engine(Settings(state_dir=tmp_path), Registry())
    served = engine.partitions[0] = Partition(0)
    served.writer = RecordingWriter()  # type: ignore[assignment]
    served.go_live()
    served.events_end = 42
    return engine


async def _round(engine: Engine) -> list[tuple[bytes, bytes | None]]:
    sent: list[tuple[bytes, bytes | None]] = engine.partitions[0].writer.sent  # type: ignore[union-attr]
    sent.clear()
    await engine._begin_snapshot_round()
    await engine.snapshots.prepare(100, engine._state_of)
    await engine.snapshots.write_prepared(engine._writers())
    return list(sent)


async def test_an_unwritable_snapshot_holds_the_checkpoint_until_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _engine(tmp_path)
    engine.partitions[0].runs = {"a": RunState("a"), "b": RunState("b")}
    engine.snapshots.dirty[0] = {"a", "b"}

    def broken_for_b(state: Any) -> bytes:
        if getattr(state, "run_id", "") == "b":
            raise ValueError("Maximum serialization depth exceeded")
        return encode_snapshot(state)

    monkeypatch.setattr(snapshots_module, "encode_snapshot", broken_for_b)
    first = await _round(engine)
    assert [k for k, _ in first] == [b"a"], "b was not written, so no checkpoint may follow"
    assert engine.snapshots.dirty[0] == {"b"}  # tried again next round
    monkeypatch.setattr(snapshots_module, "encode_snapshot", encode_snapshot)
    second = await _round(engine)
    assert [k for k, _ in second] == [b"b", CHECKPOINT_KEY]


async def test_a_state_too_big_for_a_record_goes_through_the_claim_check(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    big = RunState("big", input="x" * 1_500_000)
    engine.partitions[0].runs = {"big": big}
    engine.snapshots.dirty[0] = {"big"}
    sent = await _round(engine)
    assert [k for k, _ in sent] == [b"big", CHECKPOINT_KEY]
    reference = sent[0][1]
    assert reference is not None and len(reference) < 200
    assert decode_snapshot(reference, engine.blobs) == big
    with pytest.raises(ValueError, match="no blob store"):
        decode_snapshot(reference)
    with pytest.raises(ValueError, match="cannot be read"):
        decode_snapshot(encode_blob_reference("0" * 64, 10), FileBlobStore(tmp_path / "elsewhere"))


async def test_a_claim_checked_snapshot_is_stored_before_any_transaction_opens(tmp_path: Path) -> None:
    """``prepare`` (called between two turns, no transaction open) writes a big state's blob; the transaction
    that follows only sends its reference. Before, the blob was written inside the open transaction, and a slow
    shared volume could hold it past the coordinator's timeout."""
    engine = _engine(tmp_path)
    big = RunState("big", seq=3, input="x" * (snapshots_module.MAX_RECORD_BYTES + 10))
    engine.partitions[0].runs["big"] = big
    engine.snapshots.dirty[0].add("big")
    await engine._begin_snapshot_round()
    writer: RecordingWriter = engine.partitions[0].writer  # type: ignore[assignment]
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    await engine.snapshots.prepare(100, engine._state_of)
    assert writer.sent == [], "prepare sends nothing: no transaction is opened for it"
    assert {p for p in tmp_path.rglob("*") if p.is_file()} - before, "the blob is stored before the transaction"
    await engine.snapshots.write_prepared(engine._writers())
    keys = [key for key, _ in writer.sent]
    assert keys == [b"big", CHECKPOINT_KEY]
    assert decode_snapshot(writer.sent[0][1] or b"", engine.blobs) == big
