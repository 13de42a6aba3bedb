"""The audit export's file formats and checksums (``tickflow.runtime.export_formats``), without a broker: a record's
bytes survive JSONL, RowBinary and ClickHouse's Parquet unchanged, and the checksums see every change."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq  # a dependency of chdb: an independent Parquet reader
import pytest

from tickflow.runtime.export_formats import (
    ExportFormatError,
    ExportRecord,
    RecordDigest,
    jsonl_line,
    parse_jsonl_line,
    parse_time,
    read_parquet,
    read_rowbinary,
    rowbinary,
    write_parquet,
)

ENVELOPE = orjson.dumps({"id": "r/1", "type": "RunStarted", "payload": {"text": "naïve \"quoted\"\n", "x": 1.5e300}})

RECORDS = [
    ExportRecord("p.events", 0, 3, 1_765_000_000_000, b"run-1", ENVELOPE),
    # spelled as no encoder would spell it again: spaces, a float's zeros, a unicode escape
    ExportRecord("p.events", 0, 4, 1_765_000_000_001, b"run-1", b'{"a": 1.50,  "b":"\\u00e9"}'),
    ExportRecord("p.events", 1, 0, 1_765_000_000_002, b'k","value":{"x', b"[1,2]"),  # a key that mimics the field
    ExportRecord("p.events", 1, 1, 1_765_000_000_003, b"\xff\xfe", b"\x00\xffnot json"),  # neither is UTF-8/JSON
    ExportRecord("p.events", 1, 2, 1_765_000_000_004, None, b'{"multi":\n"line"}'),  # valid JSON, two lines
    ExportRecord("p.events", 2, 9, 0, b"run-2", None),  # a tombstone
    ExportRecord("t" * 200, 7, 2**40, 1, b"k", b"v" * 70_000),  # multi-byte varints
]


def test_jsonl_lines_keep_every_byte_and_read_as_json() -> None:
    for record in RECORDS:
        line = jsonl_line(record)
        assert line.endswith(b"}\n") and line.count(b"\n") == 1
        assert parse_jsonl_line(line) == record
        parsed = orjson.loads(line)  # a JSON reader (jq) sees one object per line
        assert (parsed["topic"], parsed["partition"], parsed["offset"]) == (record.topic, record.partition,
                                                                             record.offset)
    spliced = jsonl_line(RECORDS[1])
    assert spliced.endswith(b',"value":{"a": 1.50,  "b":"\\u00e9"}}\n')  # verbatim, not re-encoded
    assert orjson.loads(jsonl_line(RECORDS[0]))["value"]["type"] == "RunStarted"
    assert {"value_base64", "key_base64"} <= set(orjson.loads(jsonl_line(RECORDS[3])))
    assert "value_base64" in orjson.loads(jsonl_line(RECORDS[4]))


def test_a_malformed_line_is_named() -> None:
    with pytest.raises(ExportFormatError, match="without a value field"):
        parse_jsonl_line(b'{"topic":"x","partition":0}\n')
    with pytest.raises(ExportFormatError, match="malformed"):
        parse_jsonl_line(b'{"topic":"x","partition":0,"offset":1,"timestamp_ms":1,"key":null,"value_base64":"%%"}\n')


def test_rowbinary_round_trips() -> None:
    data = b"".join(rowbinary(r) for r in RECORDS)
    assert list(read_rowbinary(io.BytesIO(data))) == RECORDS
    with pytest.raises(ExportFormatError, match="ends inside a row"):
        list(read_rowbinary(io.BytesIO(data[:-1])))


def test_parquet_written_and_read_by_clickhouse_keeps_every_byte(tmp_path: Path) -> None:
    rows, out = tmp_path / "rows", tmp_path / "out.parquet"
    rows.write_bytes(b"".join(rowbinary(r) for r in reversed(RECORDS)))  # ClickHouse puts them in order
    write_parquet(rows, out)
    expected = sorted(RECORDS, key=lambda r: (r.topic, r.partition, r.offset))
    assert list(read_parquet(out, tmp_path / "scratch")) == expected
    assert not (tmp_path / "scratch").exists()
    rows = pq.read_table(out).to_pylist()  # every column decodes: strings are UTF-8, other bytes base64
    assert list(rows[0]) == ["topic", "partition", "offset", "timestamp_ms", "key", "key_base64", "value",
                             "value_base64"]
    assert [pyarrow_record(r) for r in rows] == expected
    assert rows[expected.index(RECORDS[0])]["value"] == ENVELOPE.decode()
    assert rows[expected.index(RECORDS[3])]["value"] is None


def pyarrow_record(row: dict[str, Any]) -> ExportRecord:
    """A row of an export's Parquet file, as read by pyarrow, as the record it holds."""

    def raw(text: str | None, encoded: str | None) -> bytes | None:
        return base64.b64decode(encoded) if encoded is not None else None if text is None else text.encode()

    return ExportRecord(row["topic"], row["partition"], row["offset"], row["timestamp_ms"],
                        raw(row["key"], row["key_base64"]), raw(row["value"], row["value_base64"]))


def test_an_empty_export_is_a_valid_parquet_file(tmp_path: Path) -> None:
    rows, out = tmp_path / "rows", tmp_path / "out.parquet"
    rows.write_bytes(b"")
    write_parquet(rows, out)
    assert pq.read_table(out).num_rows == 0
    assert list(read_parquet(out, tmp_path / "scratch")) == []


def test_a_file_that_is_not_parquet_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(ExportFormatError, match="ClickHouse"):
        list(read_parquet(bad, tmp_path / "scratch"))


def _digest(records: list[ExportRecord]) -> RecordDigest:
    d = RecordDigest()
    for r in records:
        d.add(r)
    return d


def test_checksums_see_every_change_and_only_changes() -> None:
    base = _digest(RECORDS)
    assert (base.content_sha256, base.values_sha256) == (_digest(RECORDS).content_sha256,
                                                          _digest(RECORDS).values_sha256)
    assert base.total == len(RECORDS)
    assert base.partitions[("p.events", 1)].count == 3
    assert (base.partitions[("p.events", 1)].first_offset, base.partitions[("p.events", 1)].last_offset) == (0, 2)
    flipped = [*RECORDS]
    flipped[0] = ExportRecord("p.events", 0, 3, 1_765_000_000_000, b"run-1", ENVELOPE.replace(b"1.5", b"2.5"))
    assert _digest(flipped).content_sha256 != base.content_sha256
    assert _digest(flipped).values_sha256 != base.values_sha256
    moved = [*RECORDS]
    moved[0] = ExportRecord("p.events", 0, 5, 1_765_000_000_000, b"run-1", ENVELOPE)
    assert _digest(moved).content_sha256 != base.content_sha256
    assert _digest(moved).values_sha256 == base.values_sha256  # only the coordinates changed
    # values are length-prefixed: a boundary moved between two values changes the sum
    ab = [ExportRecord("t", 0, 0, 0, None, b"ab"), ExportRecord("t", 0, 1, 0, None, b"c")]
    a_bc = [ExportRecord("t", 0, 0, 0, None, b"a"), ExportRecord("t", 0, 1, 0, None, b"bc")]
    assert _digest(ab).values_sha256 != _digest(a_bc).values_sha256
    empty_vs_null = [ExportRecord("t", 0, 0, 0, None, b"")], [ExportRecord("t", 0, 0, 0, None, None)]
    assert _digest(empty_vs_null[0]).values_sha256 != _digest(empty_vs_null[1]).values_sha256


def test_times_given_to_the_command() -> None:
    now = 1_765_000_000_000
    assert parse_time("now", now) == now
    assert parse_time("15m", now) == now - 900_000
    assert parse_time("2h", now) == now - 7_200_000
    assert parse_time("1.5d", now) == now - 129_600_000
    assert parse_time("1765000000123", now) == 1_765_000_000_123
    assert parse_time("2026-12-06T17:00:00Z", now) == 1_796_576_400_000
    assert parse_time("2026-12-06T17:00:00", now) == 1_796_576_400_000  # no zone: UTC
    assert parse_time("2026-12-06T18:00:00+01:00", now) == 1_796_576_400_000
    with pytest.raises(ExportFormatError, match="not a time"):
        parse_time("yesterday", now)


def test_the_command_refuses_a_window_it_cannot_read_before_reaching_kafka(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tickflow.cli.main import main

    env = {"TICKFLOW_KAFKA_BOOTSTRAP": "127.0.0.1:1", "TICKFLOW_STATE_DIR": str(tmp_path)}  # nothing listens there
    runner = CliRunner()
    done = runner.invoke(main, ["export"], env=env)
    assert done.exit_code == 2 and "give --since" in done.output
    done = runner.invoke(main, ["export", "--since", "yesterday"], env=env)
    assert done.exit_code == 2 and "not a time" in done.output
    done = runner.invoke(main, ["export", "--since", "1h", "--until", "2h"], env=env)
    assert done.exit_code == 1 and "the window is empty" in done.output
    missing = tmp_path / "gone.jsonl.manifest.json"
    missing.write_text('{"manifest_version": 1, "format": "jsonl", "file": {"name": "gone.jsonl"}}')
    done = runner.invoke(main, ["export", "verify", str(missing)], env=env)
    assert done.exit_code == 1 and "is missing" in done.output
    missing.write_text('{"manifest_version": 1, "format": "jsonl", "file": {"name": "gone.jsonl"}}')
    (tmp_path / "gone.jsonl").write_bytes(b"")
    done = runner.invoke(main, ["export", "verify", str(missing)], env=env)
    assert done.exit_code == 1 and "the manifest is malformed" in done.output
    done = runner.invoke(main, ["export", "verify", str(missing), "--against-log"], env=env)
    assert done.exit_code == 1 and "the log was not read" in done.output
