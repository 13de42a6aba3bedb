"""Audit export (``tickflow export``): the log's records in a time window, exactly as Kafka holds them, in a JSONL or
Parquet file, with a manifest of counts and checksums that ``tickflow export verify`` checks again later.

The window is the record's Kafka timestamp, not the envelope's ``occurred_at_ms``: it is what Kafka indexes
(``offsets_for_times`` seeks straight to ``--since``, no scan from the start of the log), it is stamped on every
record whoever wrote it, and an auditor can check it against the broker without decoding anything. For events the
two are close: the engine's producer stamps the record when it appends the events of a turn it just decided.

Where each partition is read: from the first record stamped at or after ``since`` (Kafka's exact answer: no earlier
offset holds one) to the first record stamped at or after ``until`` plus ``skew_ms``, and never past the last
stable offset as of the start (``read_committed``: records of aborted or still-open transactions are never
exported). Timestamps are not strictly ordered within a partition — a new engine taking a partition over writes
with its own host's clock — so the records kept are those stamped in ``[since, until)`` within that range, and the
allowance (60 s by default, far above the clock skew of synced hosts) makes the stop safe. The manifest records
each partition's range (``scanned_from``, ``scanned_to``): offsets are immutable, so ``verify --against-log`` reads
the same ranges again and finds the same records, or names what changed.

What a read_committed reader cannot see yet — a transaction still open when the export starts — is not exported:
a window that ended more than the transaction timeout ago (``TICKFLOW_TRANSACTION_TIMEOUT_MS``, 30 s) is complete.

``--run`` keeps the records keyed by that run id. Every partition is read, not only the one the key hashes to:
a command produced by a client with another partitioner (Go's sarama hashes with FNV) puts a run, and so its
events, on another partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from tickflow.events.connection import KafkaTarget
from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.events.topics import TopicNames
from tickflow.runtime.export_formats import (
    ExportFormatError,
    ExportRecord,
    PartitionTally,
    RecordDigest,
    file_sha256,
    jsonl_line,
    read_jsonl,
    read_parquet,
    rowbinary,
    write_parquet,
)
from tickflow.runtime.kafka import existing_topics, new_consumer

__all__ = [
    "DEFAULT_SKEW_MS",
    "TOPIC_KINDS",
    "ExportError",
    "ScanRange",
    "Verification",
    "export_log",
    "manifest_path_for",
    "plan",
    "scan",
    "verify_against_log",
    "verify_file",
]

DEFAULT_SKEW_MS = 60_000
MANIFEST_VERSION = 1
Format = Literal["jsonl", "parquet"]
#: The topics an export can hold, by the name ``--topic`` takes.
TOPIC_KINDS = ("events", "commands", "results", "dead-letter")

CHECKSUMS = (
    "content_sha256: SHA-256 over every record in file order, each as topic, partition, offset, timestamp_ms, key, "
    "value (strings and bytes as an 8-byte big-endian length, -1 for null, then the bytes; numbers as 8-byte "
    "big-endian signed integers); values_sha256: the same over the values alone; file.sha256: the file's bytes"
)


class ExportError(TickflowError):
    """An export cannot be made (a missing topic, a bad window, the log moved under it): the message says why."""

    code = ErrorCode.INVALID_REQUEST


@dataclass(frozen=True, slots=True)
class ScanRange:
    """The offsets ``[start, stop)`` of one partition an export reads (and filters)."""

    topic: str
    partition: int
    start: int
    stop: int


def _topic(names: TopicNames, kind: str) -> str:
    if kind not in TOPIC_KINDS:
        raise ExportError(f"cannot export topic {kind!r}: choose from {', '.join(TOPIC_KINDS)}")
    return names.dead_letter if kind == "dead-letter" else str(getattr(names, kind))


def manifest_path_for(out: Path) -> Path:
    """Where the manifest of the export file ``out`` is written: beside it, ``<file>.manifest.json``."""
    return out.with_name(out.name + ".manifest.json")


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tickflow")
    except PackageNotFoundError:
        return "unknown"


@contextlib.asynccontextmanager
async def _consumer(kafka: KafkaTarget) -> AsyncIterator[AIOKafkaConsumer]:
    # auto_offset_reset="none": an offset retention removed is an error here, never a silent skip to the start.
    consumer = new_consumer(kafka, group_id=None, fetch_max_wait_ms=10, auto_offset_reset="none")
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


async def plan(
    consumer: AIOKafkaConsumer, partitions: dict[str, int], since_ms: int, until_ms: int, skew_ms: int
) -> list[ScanRange]:
    """The range of each partition of ``partitions`` (topic → partition count) to read for the window, in
    (topic, partition) order (see the module docstring)."""
    tps = [TopicPartition(t, p) for t in sorted(partitions) for p in range(partitions[t])]
    if not tps:
        return []
    ends = await consumer.end_offsets(tps)  # a read_committed consumer: the last stable offsets
    firsts = await consumer.offsets_for_times({tp: since_ms for tp in tps})
    lasts = await consumer.offsets_for_times({tp: until_ms + skew_ms for tp in tps})
    ranges = []
    for tp in tps:
        first, last = firsts.get(tp), lasts.get(tp)
        stop = min(ends[tp], last.offset if last is not None else ends[tp])
        start = min(first.offset if first is not None else stop, stop)
        ranges.append(ScanRange(tp.topic, tp.partition, start, stop))
    return ranges


async def scan(
    consumer: AIOKafkaConsumer,
    ranges: list[ScanRange],
    *,
    since_ms: int,
    until_ms: int,
    run_id: str | None,
    stall_s: float = 60.0,
) -> AsyncIterator[list[ExportRecord]]:
    """The committed records of ``ranges`` stamped in ``[since_ms, until_ms)`` (and keyed ``run_id`` when given),
    a batch at a time, in range order and offset order within each."""
    key = None if run_id is None else run_id.encode()
    for r in ranges:
        if r.start >= r.stop:
            continue
        tp = TopicPartition(r.topic, r.partition)
        consumer.assign([tp])
        consumer.seek(tp, r.start)
        moved_at = time.monotonic()
        while (position := await consumer.position(tp)) < r.stop:
            try:
                fetched = await consumer.getmany(tp, timeout_ms=500, max_records=5_000)
            except OffsetOutOfRangeError:
                raise ExportError(
                    f"{r.topic}[{r.partition}]: offset {position} is no longer in the log (retention removed it)"
                ) from None
            batch = [
                ExportRecord(rec.topic, rec.partition, rec.offset, rec.timestamp, rec.key, rec.value)
                for rec in fetched.get(tp, [])
                if rec.offset < r.stop
                and since_ms <= rec.timestamp < until_ms
                and (key is None or rec.key == key)
            ]
            if await consumer.position(tp) > position:
                moved_at = time.monotonic()
            elif time.monotonic() - moved_at > stall_s:
                raise ExportError(f"{r.topic}[{r.partition}]: no progress past offset {position} in {stall_s:.0f} s")
            if batch:
                yield batch


async def _partitions(kafka: KafkaTarget, names: TopicNames, topics: list[str]) -> dict[str, int]:
    found = await existing_topics(kafka, names.prefix)
    missing = [t for t in topics if not found.get(t)]
    if missing:
        raise ExportError(f"topic {missing[0]} does not exist: check TICKFLOW_PREFIX and TICKFLOW_KAFKA_BOOTSTRAP")
    return {t: found[t] for t in topics}


async def export_log(
    kafka: KafkaTarget,
    names: TopicNames,
    out: Path,
    *,
    since_ms: int,
    until_ms: int,
    fmt: Format = "jsonl",
    run_id: str | None = None,
    kinds: tuple[str, ...] = ("events",),
    skew_ms: int = DEFAULT_SKEW_MS,
) -> dict[str, Any]:
    """Write the records of the window to ``out`` (``fmt``) and their manifest beside it; return the manifest.

    The file appears under its name only once complete (written to ``<out>.partial`` first), and the manifest
    only after it."""
    if not 0 <= since_ms < until_ms:
        raise ExportError(
            f"the window is empty: --since ({_iso(since_ms)}) must come before --until ({_iso(until_ms)})"
        )
    if fmt not in ("jsonl", "parquet"):
        raise ExportError(f"unknown format {fmt!r}: jsonl or parquet")
    topics = sorted({_topic(names, k) for k in kinds})
    partitions = await _partitions(kafka, names, topics)
    started_ms = int(time.time() * 1000)
    digest = RecordDigest()
    partial = out.with_name(out.name + ".partial")
    rows = out.with_name(out.name + ".rows") if fmt == "parquet" else partial
    try:
        async with _consumer(kafka) as consumer:
            ranges = await plan(consumer, partitions, since_ms, until_ms, skew_ms)
            with rows.open("wb") as sink:
                async for batch in scan(consumer, ranges, since_ms=since_ms, until_ms=until_ms, run_id=run_id):
                    for record in batch:
                        digest.add(record)
                        sink.write(jsonl_line(record) if fmt == "jsonl" else rowbinary(record))
        if fmt == "parquet":
            await asyncio.to_thread(write_parquet, rows, partial)
        manifest_path_for(out).unlink(missing_ok=True)  # never a new file beside an older export's manifest
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
        if fmt == "parquet":
            rows.unlink(missing_ok=True)
    tallies = digest.partitions
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "tickflow_version": _version(),
        "created_at": _iso(started_ms),
        "format": fmt,
        "file": {"name": out.name, "bytes": out.stat().st_size, "sha256": file_sha256(out)},
        "window": {
            "since": _iso(since_ms),
            "until": _iso(until_ms),
            "since_ms": since_ms,
            "until_ms": until_ms,
            "by": "Kafka record timestamp, since <= timestamp < until",
            "skew_ms": skew_ms,
        },
        "filters": {"prefix": names.prefix, "topics": topics, "run_id": run_id},
        "isolation": "read_committed",
        "records": digest.total,
        "content_sha256": digest.content_sha256,
        "values_sha256": digest.values_sha256,
        "checksums": CHECKSUMS,
        "partitions": [_partition_entry(r, tallies.get((r.topic, r.partition))) for r in ranges],
    }
    manifest_path_for(out).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    return manifest


def _partition_entry(r: ScanRange, tally: PartitionTally | None) -> dict[str, Any]:
    """The manifest's account of one partition: the range read, and what of it the export holds."""
    return {
        "topic": r.topic,
        "partition": r.partition,
        "scanned_from": r.start,
        "scanned_to": r.stop,
        "count": 0 if tally is None else tally.count,
        "first_offset": None if tally is None else tally.first_offset,
        "last_offset": None if tally is None else tally.last_offset,
    }


# -- verification ----------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Verification:
    """What ``verify_file`` (and ``verify_against_log``) found: no problems means the export checks out."""

    manifest: dict[str, Any]
    records: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _records_of(manifest: dict[str, Any], path: Path) -> Iterator[ExportRecord]:
    if manifest.get("format") == "parquet":
        # scratch space outside the export's folder, which may be read-only (evidence storage)
        fd, scratch = tempfile.mkstemp(prefix="tickflow-verify-", suffix=".rows")
        os.close(fd)
        return read_parquet(path, Path(scratch))
    if manifest.get("format") == "jsonl":
        return read_jsonl(path)
    raise ExportFormatError(f"the manifest names an unknown format {manifest.get('format')!r}")


def _compare(v: Verification, digest: RecordDigest, what: str) -> None:
    """Problems where ``digest`` (of the file, or of the log) differs from the manifest ``v`` holds."""
    m = v.manifest
    if digest.total != m.get("records"):
        v.problems.append(f"{what} holds {digest.total} records, the manifest says {m.get('records')}")
    for name, got in (("content_sha256", digest.content_sha256), ("values_sha256", digest.values_sha256)):
        if got != m.get(name):
            v.problems.append(f"{what}: {name} is {got}, the manifest says {m.get(name)}")
    for entry in m.get("partitions", []):
        tally = digest.partitions.get((entry["topic"], entry["partition"]))
        held = (0, None, None) if tally is None else (tally.count, tally.first_offset, tally.last_offset)
        if held != (entry["count"], entry["first_offset"], entry["last_offset"]):
            v.problems.append(
                f"{what}: {entry['topic']}[{entry['partition']}] holds {held[0]} records "
                f"(offsets {held[1]}..{held[2]}), "
                f"the manifest says {entry['count']} ({entry['first_offset']}..{entry['last_offset']})"
            )


def verify_file(manifest_path: Path) -> Verification:
    """Check an export file against its manifest: its size and SHA-256, then every record — order, window,
    filters, partition ranges, counts and the content and value checksums. Reads the file once more through the
    same reader a Parquet export was written with (ClickHouse), so a value must come back byte for byte."""
    try:
        manifest = orjson.loads(manifest_path.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        return Verification({}, problems=[f"cannot read the manifest {manifest_path}: {exc}"])
    v = Verification(manifest if isinstance(manifest, dict) else {})
    if v.manifest.get("manifest_version") != MANIFEST_VERSION:
        version = v.manifest.get("manifest_version")
        v.problems.append(f"manifest version {version!r}: this tickflow reads version {MANIFEST_VERSION}")
        return v
    try:
        _verify_records(manifest_path, v)
    except (KeyError, TypeError, ValueError) as exc:
        v.problems.append(f"the manifest is malformed ({type(exc).__name__}: {exc}): it was not written by tickflow")
    return v


#: Problems listed per record at most; the counts and checksums still cover every record.
MAX_RECORD_PROBLEMS = 20


def _verify_records(manifest_path: Path, v: Verification) -> None:
    manifest = v.manifest
    path = manifest_path.parent / manifest["file"]["name"]
    if not path.is_file():
        v.problems.append(f"the export file {path} is missing")
        return
    if path.stat().st_size != manifest["file"]["bytes"] or file_sha256(path) != manifest["file"]["sha256"]:
        v.problems.append(f"{path.name}: its bytes differ from the manifest's size and sha256 (the file was changed)")
    window, filters = manifest["window"], manifest["filters"]
    ranges = {(p["topic"], p["partition"]): (p["scanned_from"], p["scanned_to"]) for p in manifest["partitions"]}
    key = None if filters.get("run_id") is None else str(filters["run_id"]).encode()
    digest = RecordDigest()
    previous: tuple[str, int, int] | None = None
    wrong: list[str] = []
    try:
        for r in _records_of(manifest, path):
            digest.add(r)
            where = f"{r.topic}[{r.partition}]@{r.offset}"
            if previous is not None and (r.topic, r.partition, r.offset) <= previous:
                wrong.append(f"{where} is out of (topic, partition, offset) order")
            previous = (r.topic, r.partition, r.offset)
            scanned = ranges.get((r.topic, r.partition))
            if scanned is None or not scanned[0] <= r.offset < scanned[1]:
                wrong.append(f"{where} lies outside the ranges the manifest says were read")
            if not window["since_ms"] <= r.timestamp_ms < window["until_ms"]:
                wrong.append(f"{where} is stamped {_iso(r.timestamp_ms)}, outside the window")
            if key is not None and r.key != key:
                wrong.append(f"{where} is not keyed {filters['run_id']!r}")
    except ExportFormatError as exc:
        v.problems.append(f"cannot read {path.name}: {exc}")
        return
    v.problems.extend(wrong[:MAX_RECORD_PROBLEMS])
    if len(wrong) > MAX_RECORD_PROBLEMS:
        v.problems.append(f"... and {len(wrong) - MAX_RECORD_PROBLEMS} more such problems")
    v.records = digest.total
    _compare(v, digest, path.name)


async def verify_against_log(kafka: KafkaTarget, v: Verification) -> None:
    """Read the log again over the manifest's ranges, with its window and filters, and add a problem for every
    way the records found there differ from the manifest (a record changed, missing, or retention removed it)."""
    m = v.manifest
    try:
        window, filters = m["window"], m["filters"]
        ranges = [ScanRange(p["topic"], p["partition"], p["scanned_from"], p["scanned_to"]) for p in m["partitions"]]
    except (KeyError, TypeError) as exc:
        v.problems.append(f"the manifest is malformed ({type(exc).__name__}: {exc}): the log was not read")
        return
    digest = RecordDigest()
    async with _consumer(kafka) as consumer:
        tps = [TopicPartition(r.topic, r.partition) for r in ranges if r.start < r.stop]
        firsts = await consumer.beginning_offsets(tps) if tps else {}
        for r in ranges:
            first = firsts.get(TopicPartition(r.topic, r.partition))
            if first is not None and first > r.start:
                v.problems.append(
                    f"the log: {r.topic}[{r.partition}] now starts at offset {first}, after the export's {r.start} "
                    "(retention removed records): the export can no longer be checked against it"
                )
                return
        try:
            async for batch in scan(
                consumer, ranges, since_ms=window["since_ms"], until_ms=window["until_ms"], run_id=filters["run_id"]
            ):
                for record in batch:
                    digest.add(record)
        except ExportError as exc:
            v.problems.append(f"the log: {exc}")
            return
    _compare(v, digest, "the log")
