"""``tickflow export`` on the real broker: runs in and around a window, exported as JSONL and Parquet (whole window and
one run), compared record by record with the log; manifests that verify, and tampered exports that do not."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.harness import role_env
from tests.paths import REPO_ROOT
from tests.unit.runtime.test_export_formats import pyarrow_record
from tickflow.client import Client
from tickflow.events.topics import TopicNames
from tickflow.node import Node
from tickflow.runtime.export import export_log, manifest_path_for, verify_file
from tickflow.runtime.export_formats import ExportRecord, RecordDigest, file_sha256, jsonl_line, read_jsonl
from tickflow.runtime.kafka import ensure_topics, read_partition

pytestmark = pytest.mark.integration


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    """``tickflow <args>`` in its own process (it must not block this loop, where the node runs)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tickflow.cli", *args],
        cwd=REPO_ROOT,
        env=role_env(node.settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _run(node: Node, workflow: str, value: int) -> str:
    def go() -> str:
        with Client(node.settings.api_url) as c:
            rid = c.start(workflow, value)
            assert c.wait(rid, timeout=60).status in ("completed", "failed")
            return rid

    return await asyncio.to_thread(go)


async def _log(
    node: Node, since_ms: int, until_ms: int, *, committed: bool = True, topic: str | None = None
) -> list[ExportRecord]:
    """Every record of the events topic (or ``topic``) stamped in the window, read straight from Kafka."""
    topic = topic or node.topics.events
    out = []
    for p in range(node.settings.partitions):
        for r in await read_partition(node.settings.bootstrap, topic, p, committed=committed):
            if since_ms <= r.timestamp < until_ms:
                out.append(ExportRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value))
    return out


async def _abort_one(node: Node, key: bytes) -> None:
    """A record on the events topic inside an aborted transaction: never part of the log."""
    producer = AIOKafkaProducer(bootstrap_servers=node.settings.bootstrap, transactional_id=f"{node.topics.prefix}.x")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(node.topics.events, b'{"ghost":true}', key=key)
        await producer.abort_transaction()
    finally:
        await producer.stop()


def _parquet_records(path: Path) -> list[ExportRecord]:
    """The rows of an exported Parquet file, read by pyarrow (not by the ClickHouse that wrote it)."""
    return [pyarrow_record(row) for row in pq.read_table(path).to_pylist()]


async def test_exports_are_the_log_and_verify(node: Node, tmp_path: Path) -> None:
    before = await _run(node, "math", 1)
    await asyncio.sleep(0.05)
    since = _now_ms()
    inside = [await _run(node, "math", 20), await _run(node, "doomed", 1), await _run(node, "math", 5)]
    await _abort_one(node, b"ghost")
    await asyncio.sleep(0.05)
    until = _now_ms()
    await asyncio.sleep(0.05)
    after = await _run(node, "math", 2)

    window = ["--since", str(since), "--until", str(until)]
    jsonl, parquet, one, both = (tmp_path / n for n in ("w.jsonl", "w.parquet", "run.jsonl", "both.jsonl"))
    for args in (
        [*window, "-o", str(jsonl)],
        [*window, "--format", "parquet", "-o", str(parquet)],
        [*window, "--run", inside[1], "-o", str(one)],
        [*window, "--topic", "events", "--topic", "commands", "-o", str(both)],
    ):
        done = await _cli(node, "export", *args)
        assert done.returncode == 0, done.stderr

    # read after the exports: by then the last transaction's markers have long landed (a commit returns before)
    expected = await _log(node, since, until)
    keys = {r.key for r in expected}
    assert {k.encode() for k in inside} <= keys and before.encode() not in keys and after.encode() not in keys
    assert b"ghost" not in keys and b"ghost" in {r.key for r in await _log(node, since, until, committed=False)}

    # the records, byte for byte, in (partition, offset) order
    expected.sort(key=lambda r: (r.topic, r.partition, r.offset))
    assert list(read_jsonl(jsonl)) == expected
    assert _parquet_records(parquet) == expected
    of_run = [r for r in expected if r.key == inside[1].encode()]
    assert list(read_jsonl(one)) == of_run and [orjson.loads(r.value or b"")["type"] for r in of_run][-1] == "RunFailed"
    assert jsonl.read_bytes() == b"".join(jsonl_line(r) for r in expected)
    commands = await _log(node, since, until, topic=node.topics.commands)
    assert {r.key for r in commands} == {k.encode() for k in inside}  # each run's StartRun
    assert list(read_jsonl(both)) == sorted([*expected, *commands], key=lambda r: (r.topic, r.partition, r.offset))

    # the manifests: counts per partition, the same content checksums in both formats
    m_jsonl, m_parquet = (orjson.loads(manifest_path_for(p).read_bytes()) for p in (jsonl, parquet))
    assert m_jsonl["records"] == m_parquet["records"] == len(expected)
    assert m_jsonl["content_sha256"] == m_parquet["content_sha256"]
    assert m_jsonl["values_sha256"] == m_parquet["values_sha256"]
    assert m_jsonl["file"]["sha256"] == file_sha256(jsonl) and m_parquet["format"] == "parquet"
    assert m_jsonl["window"]["since_ms"] == since and m_jsonl["filters"]["topics"] == [node.topics.events]
    counts = {(p["topic"], p["partition"]): p["count"] for p in m_jsonl["partitions"]}
    assert len(counts) == node.settings.partitions
    for p in range(node.settings.partitions):
        assert counts[(node.topics.events, p)] == sum(1 for r in expected if r.partition == p)
    assert orjson.loads(manifest_path_for(one).read_bytes())["filters"]["run_id"] == inside[1]

    for path in (jsonl, parquet, one):
        done = await _cli(node, "export", "verify", str(manifest_path_for(path)), "--against-log")
        assert done.returncode == 0 and "verified and against the log" in done.stdout, done.stdout + done.stderr


async def test_tampered_exports_fail_verification(node: Node, tmp_path: Path) -> None:
    since = _now_ms()
    await _run(node, "math", 20)
    await asyncio.sleep(0.05)
    until = _now_ms()
    jsonl, parquet = tmp_path / "w.jsonl", tmp_path / "w.parquet"
    for path, fmt in ((jsonl, "jsonl"), (parquet, "parquet")):
        window = ["--since", str(since), "--until", str(until)]
        done = await _cli(node, "export", *window, "--format", fmt, "-o", str(path))
        assert done.returncode == 0, done.stderr
    manifest = manifest_path_for(jsonl)
    original, honest = jsonl.read_bytes(), manifest.read_bytes()

    async def verify(path: Path, *extra: str) -> str:
        done = await _cli(node, "export", "verify", str(path), *extra)
        assert done.returncode == 1, done.stdout + done.stderr
        return done.stdout

    # one event's step output changed in the file
    jsonl.write_bytes(original.replace(b'"output":42', b'"output":43', 1))
    assert jsonl.read_bytes() != original
    out = await verify(manifest)
    assert "the file was changed" in out and "content_sha256" in out

    # ... and the manifest's file checksum forged to match: the record checksums still differ
    m = orjson.loads(honest)
    m["file"] = {"name": jsonl.name, "bytes": jsonl.stat().st_size, "sha256": file_sha256(jsonl)}
    manifest.write_bytes(orjson.dumps(m))
    out = await verify(manifest)
    assert "the file was changed" not in out and "values_sha256" in out

    # ... and every checksum forged to match the altered file: only the log can tell
    forged = RecordDigest()
    for r in read_jsonl(jsonl):
        forged.add(r)
    m.update(content_sha256=forged.content_sha256, values_sha256=forged.values_sha256)
    manifest.write_bytes(orjson.dumps(m))
    assert (await _cli(node, "export", "verify", str(manifest))).returncode == 0
    out = await verify(manifest, "--against-log")
    assert "the log: content_sha256" in out

    # a record dropped from the file
    jsonl.write_bytes(b"".join(original.splitlines(keepends=True)[1:]))
    manifest.write_bytes(honest)
    assert "holds" in await verify(manifest)

    # one byte of the Parquet file
    data = bytearray(parquet.read_bytes())
    data[len(data) // 2] ^= 0xFF
    parquet.write_bytes(bytes(data))
    assert "FAILED" in await verify(manifest_path_for(parquet))


async def test_the_window_is_the_record_timestamp_with_a_skew_allowance(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """Records stamped out of order (a new engine with a slower clock took the partition over): kept when stamped in
    [since, until) and written before the first record stamped --skew-ms after until; that record ends the read."""
    names = TopicNames(prefix=prefix, partitions=1)
    await ensure_topics(kafka_bootstrap, names, ("default",))
    t = _now_ms() - 600_000  # ten minutes ago: since = t + 2000, until = t + 3000
    stamps = [1_000, 1_999, 2_000, 2_500, 1_500, 3_000, 2_999, 3_000 + 1_000, 2_998, 3_000 + 60_000, 2_997]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i, stamp in enumerate(stamps):
            await producer.send_and_wait(names.events, b'{"i":%d}' % i, key=b"k", timestamp_ms=t + stamp)
    finally:
        await producer.stop()

    async def kept(skew_ms: int) -> list[int]:
        out = tmp_path / f"skew{skew_ms}.jsonl"
        manifest = await export_log(kafka_bootstrap, names, out, since_ms=t + 2_000, until_ms=t + 3_000,
                                    skew_ms=skew_ms)
        assert manifest["partitions"][0]["scanned_from"] == 2  # Kafka's time index: the first stamped >= since
        assert verify_file(manifest_path_for(out)).ok
        return [r.offset for r in read_jsonl(out)]

    # not 4 (stamped before since), nor 10: stamped in the window, but written after the stop
    assert await kept(60_000) == [2, 3, 6, 8]
    assert await kept(1_000) == [2, 3, 6]  # stops at offset 7, stamped until + 1 s
    assert await kept(0) == [2, 3]  # stops at offset 5, the first stamped >= until
