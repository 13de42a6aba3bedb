"""How a rebuild names what it refused, and which tables a one-projection rebuild checks (no I/O)."""

from __future__ import annotations

import pytest

from tickflow.cli.replay import report_lines
from tickflow.projections.models import RebuildReport, TableCheck
from tickflow.projections.verify import ALL_TABLES, PROJECTIONS, compare_tables, projection_tables


def test_a_table_that_differs_from_the_fold_is_named_and_refused() -> None:
    checks = compare_tables({"runs": (5, 11), "steps": (20, 7)}, {"runs": (5, 11), "steps": (20, 9)}, ["runs", "steps"])
    assert [c.ok for c in checks] == [True, False]
    report = RebuildReport(database="tf__rebuild_2", previous_database="tf", check_method="fold", table_checks=checks)
    report.mismatches = [c.mismatch() for c in checks if not c.ok]
    lines = report_lines(report)
    assert "checked against an independent fold of the log: 1 of 2 tables equal" in lines
    assert (
        "  MISMATCH table steps: the rebuilt table has 20 rows (checksum 7), the independent fold of the log 20 "
        "rows (checksum 9)"
    ) in lines
    assert lines[-1] == "REFUSED: not swapped; tf__rebuild_2 is kept for inspection until the next swap"


def test_a_swapped_report_says_how_to_swap_back() -> None:
    report = RebuildReport(
        database="tf__rebuild_2",
        previous_database="tf",
        swapped=True,
        ok=True,
        table="steps",
        table_checks=[TableCheck(table="steps", rows=1, checksum=2, reference_rows=1, reference_checksum=2)],
    )
    lines = report_lines(report)
    assert lines[0].startswith("rebuilt projection steps: ")
    assert lines[-1] == "swapped in (previous: tf; `tickflow replay rollback` swaps back)"


def test_each_projection_brings_the_rollups_its_views_feed() -> None:
    assert projection_tables(None) == ALL_TABLES and len(ALL_TABLES) == 10
    assert projection_tables("steps") == ("steps", "step_latency_per_minute")
    assert projection_tables("llm_calls") == ("llm_calls", "llm_usage_per_minute")
    assert projection_tables("events") == ("events", "runs_per_minute")
    assert sorted(t for ts in PROJECTIONS.values() for t in ts) == sorted(ALL_TABLES)  # each table in one projection
    with pytest.raises(ValueError, match="choose one of events, runs, steps"):
        projection_tables("step")
