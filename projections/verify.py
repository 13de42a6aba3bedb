"""What a rebuild's gate compares: per table, a row count and an order-independent checksum, computed by ClickHouse
on the rebuilt database and on a scratch database that an independent fold of the same log range filled.

Why both sides are computed by ClickHouse: the checksum is ``sum(cityHash64(<the row's columns>))`` over the
``FINAL`` rows (wrapping UInt64 addition: order-independent, so insert order, parts and merges do not matter).
Reproducing cityHash64 of ClickHouse's own serialisation of DateTime64, Float64, LowCardinality and Array values
in Python would be a second implementation of ClickHouse's hashing, fragile across versions; instead the
independent fold (``ProjectionFold``, the code the live projector runs) writes its rows into a scratch database of
the same ClickHouse, migrated from the same files, and one SQL text checksums both databases. What differs between
the two sides is then only how the rows were computed — the bulk SQL of ``projections.bulk`` against the Python
fold, reading the log twice — which is the point of the check: a bug in either path, or a candidate table changed
after it was built, makes the two disagree, and the swap is refused with the table named. (When the build itself
fell back to the fold — ``method='fold'`` — both sides run the same code: the check still catches a table changed
after it was built or a read that went wrong, not a bug shared by the fold.)

``projected_at`` (the insert time) is left out of every checksum. Rollups are compared on their finalised
aggregates (``GROUP BY`` their key, floats rounded: summation order differs between inserts); the t-digests of
``step_latency_per_minute`` are approximate and merge-order dependent, so only its counts.
"""

from __future__ import annotations

from collections.abc import Iterable

from tickflow.projections.models import TableCheck
from tickflow.projections.store import TABLE_COLUMNS, ClickHouseStore

__all__ = ["PROJECTIONS", "ROLLUPS", "compare_tables", "projection_tables", "table_checksums"]

#: Rollup -> the finalising query a checksum is taken over (``{t}``: the rollup, qualified by its database).
ROLLUPS = {
    "runs_per_minute": "SELECT minute, workflow, sum(started), sum(completed), sum(failed), sum(cancelled) "
    "FROM {t} GROUP BY minute, workflow",
    "llm_usage_per_minute": "SELECT minute, provider, model, agent, stack_id, sum(calls), sum(errors), "
    "sum(fallbacks), sum(tokens_in), sum(tokens_out), round(sum(cost_usd), 9), round(sum(latency_ms), 3), "
    "sum(calls_price_unknown), sum(calls_price_illustrative), sum(calls_usage_estimated), "
    "round(sum(cost_illustrative_usd), 9) FROM {t} GROUP BY minute, provider, model, agent, stack_id",
    "step_latency_per_minute": "SELECT minute, workflow, step, sum(attempts), sum(failures) "
    "FROM {t} GROUP BY minute, workflow, step",
}

#: A projection one can rebuild on its own: its table and the rollups its materialised views feed (a rollup is
#: rebuilt with its source, or it would count what the rebuilt table no longer holds, or miss what it gained).
PROJECTIONS: dict[str, tuple[str, ...]] = {
    "events": ("events", "runs_per_minute"),
    "runs": ("runs",),
    "steps": ("steps", "step_latency_per_minute"),
    "llm_calls": ("llm_calls", "llm_usage_per_minute"),
    "stacks": ("stacks",),
    "ticks": ("ticks",),
    "messages": ("messages",),
}
#: Every table a full rebuild checks, in the order reports list them.
ALL_TABLES = (*TABLE_COLUMNS, *ROLLUPS)


def projection_tables(projection: str | None) -> tuple[str, ...]:
    """The tables of one projection (every table and rollup for ``None``); a ValueError names the valid ones."""
    if projection is None:
        return ALL_TABLES
    if projection not in PROJECTIONS:
        raise ValueError(f"no projection {projection!r}: choose one of {', '.join(PROJECTIONS)}")
    return PROJECTIONS[projection]


def _columns(table: str) -> str:
    return ", ".join(c[:-3] if c.endswith("_at_ms") else c for c in TABLE_COLUMNS[table])


def table_checksums(store: ClickHouseStore, tables: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
    """(rows, checksum) of tables of the store's current database (all by default), as queries see them."""
    wanted = list(ALL_TABLES if tables is None else tables)
    parts = [
        f"SELECT '{t}', count(), sum(cityHash64({_columns(t)})) FROM {{db}}.{t} FINAL"
        for t in wanted
        if t in TABLE_COLUMNS
    ]
    parts += [
        f"SELECT '{t}', count(), sum(cityHash64(*)) FROM ({ROLLUPS[t].format(t='{db}.' + t)})"
        for t in wanted
        if t in ROLLUPS
    ]
    found = {str(t): (int(n), int(h)) for t, n, h in store.query(" UNION ALL ".join(parts))}
    return {t: found[t] for t in wanted}  # in the order asked (UNION ALL answers in any order)


def compare_tables(
    candidate: dict[str, tuple[int, int]], reference: dict[str, tuple[int, int]], tables: Iterable[str]
) -> list[TableCheck]:
    """One check per table: the candidate's (rows, checksum) against the reference's."""
    return [
        TableCheck(
            table=t,
            rows=candidate[t][0],
            checksum=candidate[t][1],
            reference_rows=reference[t][0],
            reference_checksum=reference[t][1],
        )
        for t in tables
    ]
