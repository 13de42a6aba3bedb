"""ClickHouse projections of the log: migrations, pure row mapping, stores, the projector loop."""

from projections.rows import EventRow, RunRow, event_row, run_row
from projections.store import ClickHouseStore, MemoryStore, ProjectionStore, open_store

__all__ = [
    "ClickHouseStore",
    "EventRow",
    "MemoryStore",
    "ProjectionStore",
    "RunRow",
    "event_row",
    "open_store",
    "run_row",
]
