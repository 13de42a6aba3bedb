"""The files of an audit export (``tickflow export``): the record as the log holds it, its two file formats, and
the checksums its manifest carries.

Why a record keeps its bytes: an audit export is evidence, so each record's value is the envelope exactly as the
engine wrote it to Kafka, never a re-encoding of a decoded event (a re-encoding could differ in a float's spelling
or in a field a newer schema drops). Beside it go the coordinates that make it checkable against the log: topic,
partition, offset, the record's timestamp and its key.

JSONL, one record a line::

    {"topic":"tickflow.events","partition":3,"offset":17,"timestamp_ms":1765000000000,"key":"run-1","value":{…}}

``value`` is the record's bytes spliced in verbatim (the envelope is one line of JSON already), always the last
field, so ``jq`` reads it as an object and a checker recovers the exact bytes by slicing from ``,"value":`` to the
closing brace. A value that is not one line of valid JSON (none on the events topic) is written as
``"value_base64"`` instead; a key that is not UTF-8 as ``"key_base64"``.

Parquet, written by ClickHouse (chDB, in a child process): the same columns, rows in (topic, partition, offset)
order. Parquet's string type must hold UTF-8, so a key or value that is not (none on the events topic) is NULL in
``key``/``value`` and its bytes are in ``key_base64``/``value_base64`` instead (both NULL: a null key or value).
The records travel to chDB as RowBinary, which carries bytes unchanged, and back the same way when an export is
verified.

Checksums (format-independent: the same records give the same sums in JSONL and in Parquet):

* ``content_sha256``: SHA-256 over every record in file order, each as its topic, partition, offset, timestamp,
  key and value — strings as an 8-byte big-endian length then the bytes (length -1 for a null key or value),
  numbers as 8-byte big-endian signed integers;
* ``values_sha256``: the same over the values alone (length-prefixed, so no two value lists share a sum).
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from tickflow.events.errors import ErrorCode, NonRetryableError

__all__ = [
    "PARQUET_COLUMNS",
    "ExportFormatError",
    "ExportRecord",
    "PartitionTally",
    "RecordDigest",
    "file_sha256",
    "jsonl_line",
    "parse_jsonl_line",
    "parse_time",
    "read_jsonl",
    "read_parquet",
    "read_rowbinary",
    "rowbinary",
    "write_parquet",
]

#: The Parquet file's columns, as ClickHouse types (also the RowBinary schema both ways).
PARQUET_COLUMNS = (
    "topic String, partition Int32, offset Int64, timestamp_ms Int64, key Nullable(String), "
    "key_base64 Nullable(String), value Nullable(String), value_base64 Nullable(String)"
)


class ExportFormatError(NonRetryableError, ValueError):
    """An export file (or a time given to the command) cannot be read: the message says where and why.

    Never retried (the same bytes stay unreadable); still a ``ValueError`` for code that catches that (the
    readers here do)."""

    code = ErrorCode.INVALID_REQUEST


@dataclass(frozen=True, slots=True)
class ExportRecord:
    """One Kafka record as the log holds it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


# -- JSONL -----------------------------------------------------------------------------------------------------

_VALUE = b',"value":'
_VALUE_B64 = b',"value_base64":'


def _spliceable(value: bytes) -> bool:
    """Whether ``value`` can stand in a JSONL line verbatim: one line of valid JSON."""
    if b"\n" in value or b"\r" in value:
        return False
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def jsonl_line(record: ExportRecord) -> bytes:
    """``record`` as one JSONL line (with its newline); see the module docstring for the layout."""
    head: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp_ms": record.timestamp_ms,
    }
    if record.key is None:
        head["key"] = None
    else:
        try:
            head["key"] = record.key.decode()
        except UnicodeDecodeError:
            head["key_base64"] = base64.b64encode(record.key).decode()
    prefix = orjson.dumps(head)[:-1]  # without its closing brace: the value comes last
    if record.value is not None and _spliceable(record.value):
        return prefix + _VALUE + record.value + b"}\n"
    encoded = None if record.value is None else base64.b64encode(record.value).decode()
    return prefix + _VALUE_B64 + orjson.dumps(encoded) + b"}\n"


def parse_jsonl_line(line: bytes) -> ExportRecord:
    """The record of one JSONL line, its value's bytes exactly as written (the inverse of ``jsonl_line``)."""
    line = line.rstrip(b"\n")
    # ``,"`` cannot occur inside a JSON string (its quote would be escaped), so the first match is the field.
    at = line.find(b',"value')
    if at < 0 or not line.endswith(b"}"):
        raise ExportFormatError("a line without a value field at its end")
    try:
        head = orjson.loads(line[:at] + b"}")
        if line.startswith(_VALUE, at):
            value: bytes | None = line[at + len(_VALUE) : -1]
        elif line.startswith(_VALUE_B64, at):
            encoded = orjson.loads(line[at + len(_VALUE_B64) : -1])
            value = None if encoded is None else base64.b64decode(encoded, validate=True)
        else:
            raise ExportFormatError("a line whose last field is neither value nor value_base64")
        if "key_base64" in head:
            key: bytes | None = base64.b64decode(head["key_base64"], validate=True)
        else:
            key = None if head["key"] is None else str(head["key"]).encode()
        return ExportRecord(
            str(head["topic"]), int(head["partition"]), int(head["offset"]), int(head["timestamp_ms"]), key, value
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ExportFormatError):
            raise
        raise ExportFormatError(f"a malformed line ({type(exc).__name__}: {exc})") from None


def read_jsonl(path: Path) -> Iterator[ExportRecord]:
    with path.open("rb") as f:
        for n, line in enumerate(f, 1):
            try:
                yield parse_jsonl_line(line)
            except ExportFormatError as exc:
                raise ExportFormatError(f"{path.name} line {n}: {exc}") from None


# -- RowBinary (to and from ClickHouse) ------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _nullable(data: bytes | None) -> bytes:
    return b"\x01" if data is None else b"\x00" + _varint(len(data)) + data


def _text_or_base64(data: bytes | None) -> bytes:
    """A key or value as the two columns that hold it: the text when it is UTF-8 (Parquet's string type must be),
    else NULL and the bytes in base64; both NULL for a null."""
    if data is None:
        return _nullable(None) + _nullable(None)
    try:
        data.decode()
    except UnicodeDecodeError:
        return _nullable(None) + _nullable(base64.b64encode(data))
    return _nullable(data) + _nullable(None)


def rowbinary(record: ExportRecord) -> bytes:
    """``record`` as one RowBinary row of ``PARQUET_COLUMNS``."""
    topic = record.topic.encode()
    return (
        _varint(len(topic))
        + topic
        + struct.pack("<iqq", record.partition, record.offset, record.timestamp_ms)
        + _text_or_base64(record.key)
        + _text_or_base64(record.value)
    )


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def exact(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ExportFormatError("RowBinary data ends inside a row")
        return data

    def varint(self, first: int | None = None) -> int:
        shift = result = 0
        while True:
            byte = self.exact(1)[0] if first is None else first
            first = None
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def string(self) -> bytes:
        return self.exact(self.varint())

    def nullable(self) -> bytes | None:
        return None if self.exact(1) == b"\x01" else self.string()


def read_rowbinary(f: BinaryIO) -> Iterator[ExportRecord]:
    """The records of RowBinary rows of ``PARQUET_COLUMNS`` (the inverse of ``rowbinary``)."""
    reader = _Reader(f)
    while True:
        first = f.read(1)
        if not first:
            return
        length = reader.varint(first[0])  # the topic's length; end of data only here, between rows
        topic = reader.exact(length).decode()
        partition, offset, timestamp_ms = struct.unpack("<iqq", reader.exact(20))
        key, key_base64, value, value_base64 = (reader.nullable() for _ in range(4))
        yield ExportRecord(topic, partition, offset, timestamp_ms, _bytes_of(key, key_base64),
                           _bytes_of(value, value_base64))


def _bytes_of(text: bytes | None, encoded: bytes | None) -> bytes | None:
    if encoded is None:
        return text
    try:
        return base64.b64decode(encoded, validate=True)
    except ValueError:
        raise ExportFormatError("a base64 column that is not base64") from None


# -- Parquet, through ClickHouse's own writer and reader ---------------------------------------------------------


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: What the child process runs: ClickHouse's own engine (chDB), in memory, on files only.
_CHILD = "import sys, chdb; chdb.query(sys.argv[1], 'CSV')"


def _chdb(sql: str) -> None:
    """Run ``sql`` in an in-memory chDB of a child process.

    Why a child: chDB hosts one engine per process, bound to one data directory, so a process that has a tickflow
    store open (a node, the API, a test) could not open an in-memory one beside it; and a big conversion's memory
    is given back when the child exits."""
    done = subprocess.run([sys.executable, "-c", _CHILD, sql], capture_output=True, check=False)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        why = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "no message")
        raise ExportFormatError(f"ClickHouse (chDB) failed on the export's Parquet file: {why.strip()[:500]}")


def write_parquet(rows: Path, out: Path) -> None:
    """Convert the RowBinary rows in ``rows`` into the Parquet file ``out`` with ClickHouse's Parquet writer."""
    _chdb(
        f"SELECT * FROM file({_literal(str(rows))}, 'RowBinary', {_literal(PARQUET_COLUMNS)}) "
        f"ORDER BY topic, partition, offset INTO OUTFILE {_literal(str(out))} TRUNCATE FORMAT Parquet"
    )


def read_parquet(path: Path, scratch: Path) -> Iterator[ExportRecord]:
    """The records of an export's Parquet file in file order, read by ClickHouse's Parquet reader into the RowBinary
    file ``scratch`` (deleted afterwards): a value comes back with the bytes it was written with."""
    try:
        _chdb(
            f"SELECT * FROM file({_literal(str(path))}, 'Parquet', "
            f"{_literal(PARQUET_COLUMNS)}) INTO OUTFILE {_literal(str(scratch))} TRUNCATE FORMAT RowBinary "
            "SETTINGS input_format_parquet_preserve_order = 1, max_threads = 1"
        )
        with scratch.open("rb") as f:
            yield from read_rowbinary(f)
    finally:
        scratch.unlink(missing_ok=True)


# -- checksums -------------------------------------------------------------------------------------------------


def _field(data: bytes | None) -> bytes:
    return struct.pack(">q", -1) if data is None else struct.pack(">q", len(data)) + data


@dataclass(slots=True)
class PartitionTally:
    """What an export holds of one partition."""

    count: int = 0
    first_offset: int | None = None
    last_offset: int | None = None


@dataclass(slots=True)
class RecordDigest:
    """Counts and checksums of a sequence of records (the manifest's), fed one record at a time in file order."""

    content: Any = field(default_factory=hashlib.sha256)
    values: Any = field(default_factory=hashlib.sha256)
    total: int = 0
    partitions: dict[tuple[str, int], PartitionTally] = field(default_factory=dict)

    def add(self, r: ExportRecord) -> None:
        self.content.update(
            _field(r.topic.encode())
            + struct.pack(">qqq", r.partition, r.offset, r.timestamp_ms)
            + _field(r.key)
            + _field(r.value)
        )
        self.values.update(_field(r.value))
        self.total += 1
        tally = self.partitions.setdefault((r.topic, r.partition), PartitionTally())
        tally.count += 1
        if tally.first_offset is None:
            tally.first_offset = r.offset
        tally.last_offset = r.offset

    @property
    def content_sha256(self) -> str:
        return str(self.content.hexdigest())

    @property
    def values_sha256(self) -> str:
        return str(self.values.hexdigest())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# -- times given to the command --------------------------------------------------------------------------------

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}


def parse_time(text: str, now_ms: int) -> int:
    """Epoch milliseconds of ``--since``/``--until``: ``now``; a duration ago (``90s``, ``15m``, ``2h``, ``7d``);
    an ISO 8601 time (``2026-12-06T17:00:00Z``; without a zone, UTC); or epoch milliseconds."""
    text = text.strip()
    if text == "now":
        return now_ms
    if ago := _AGO.match(text):
        return now_ms - round(float(ago.group(1)) * _UNIT_MS[ago.group(2)])
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExportFormatError(
            f"{text!r} is not a time: give an ISO 8601 time (2026-12-06T17:00:00Z), a duration ago (15m, 2h, 7d), "
            "epoch milliseconds, or now"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)
