"""The shapes projections answer with — a rebuild's progress and report, a SQL result — and nothing else.

They live apart from the code that produces them so that the SDK (``tickflow.client``) can parse the API's answers
without loading ClickHouse or Kafka: this module imports pydantic and the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

__all__ = ["PartitionCheck", "RebuildProgress", "RebuildReport", "SqlResult", "TableCheck"]


class PartitionCheck(BaseModel):
    partition: int
    log_events: int
    log_checksum: int
    table_events: int
    table_checksum: int

    @property
    def ok(self) -> bool:
        return (self.log_events, self.log_checksum) == (self.table_events, self.table_checksum)


class TableCheck(BaseModel):
    """One table of a rebuilt database against the same table filled by an independent fold of the same log."""

    table: str
    rows: int = Field(description="Rows of the rebuilt table (FINAL; rollups: finalised groups).")
    checksum: int = Field(description="Order-independent checksum of the rebuilt table's rows.")
    reference_rows: int = Field(description="Rows the independent fold of the log gave.")
    reference_checksum: int

    @property
    def ok(self) -> bool:
        return (self.rows, self.checksum) == (self.reference_rows, self.reference_checksum)

    def mismatch(self) -> str:
        """What differs, in the words the report and the CLI use."""
        return (
            f"table {self.table}: the rebuilt table has {self.rows} rows (checksum {self.checksum}), the "
            f"independent fold of the log {self.reference_rows} rows (checksum {self.reference_checksum})"
        )


class RebuildProgress(BaseModel):
    phase: str = "starting"
    events_done: int = 0
    events_total: int = 0


class RebuildReport(BaseModel):
    """What a rebuild did and found. ``ok`` means every partition of the events table matches the log and every
    checked table (``table_checks``) equals the same table filled by an independent fold of the log."""

    database: str
    previous_database: str = ""
    table: str = Field(
        default="",
        description="The one projection rebuilt ('' for all): the swap takes the other tables from the database "
        "it replaces, as they are.",
    )
    method: str = Field(
        default="",
        description="How the tables were built: 'bulk' (ClickHouse derived them from the staged log) or 'fold' "
        "(every event folded in Python: asked for, or the bulk path refused this log, see method_reason).",
    )
    method_reason: str = ""
    ok: bool = False
    swapped: bool = False
    events: int = Field(default=0, description="Events read from the log up to the captured end offsets.")
    invalid_records: int = Field(default=0, description="Records that do not decode (skipped, not projected).")
    caught_up_events: int = Field(default=0, description="Events projected after verification, before the swap.")
    paused_ms: float = Field(default=0.0, description="How long the live projector was held for the swap.")
    duration_s: float = 0.0
    events_per_s: float = 0.0
    phases: dict[str, float] = Field(default_factory=dict, description="Seconds per phase (read overlaps).")
    start_offsets: dict[int, int] = Field(default_factory=dict)
    end_offsets: dict[int, int] = Field(default_factory=dict)
    tables: dict[str, int] = Field(default_factory=dict, description="Rows per table (FINAL).")
    checksums: dict[str, int] = Field(default_factory=dict, description="Order-independent checksum per table.")
    partitions: list[PartitionCheck] = Field(default_factory=list)
    check_method: str = Field(
        default="",
        description="What the tables were checked against: 'fold' (the live projector's Python fold of the same "
        "log range, into a scratch database).",
    )
    table_checks: list[TableCheck] = Field(
        default_factory=list, description="Every checked table (and rollup) against the independent fold."
    )
    mismatches: list[str] = Field(default_factory=list, description="Each partition or table that differs.")


@dataclass(frozen=True)
class SqlResult:
    """A query's answer: column names and ClickHouse types, rows as JSON-ready lists."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool
    elapsed_ms: float
