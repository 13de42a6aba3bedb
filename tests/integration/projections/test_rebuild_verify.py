"""The rebuild's gate on every table, one-projection rebuilds and rollback, on the real broker and chDB.

The gate compares each rebuilt table with the same table filled by an independent fold of the log; these tests
change a table of the rebuilt database after it was built (as a bug in one path, or a hand on the database,
would) and check that the swap is refused with the table named, and that a clean rebuild passes with every table
checked.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from click.testing import CliRunner

from tests.integration.projections.test_rebuild import settled, store_of
from tickflow.cli import main as cli
from tickflow.cli.replay import report_lines
from tickflow.client import Client
from tickflow.node import Node
from tickflow.projections.models import RebuildReport
from tickflow.projections.rebuild import Rebuild, rebuild_and_swap, rebuild_database, table_checksums
from tickflow.projections.store import ClickHouseStore
from tickflow.projections.verify import ALL_TABLES

pytestmark = pytest.mark.integration


def databases(store: ClickHouseStore) -> set[str]:
    rows = store.query(
        "SELECT name FROM system.databases WHERE startsWith(name, {p:String})", {"p": store.base_database}
    )
    return {str(r[0]) for r in rows}


def full_rebuild_sums(node: Node) -> dict[str, tuple[int, int]]:
    """Every table's (rows, checksum) in a fresh, verified rebuild of the whole log (not swapped in)."""
    store = store_of(node)
    report = rebuild_database(store, kafka=node.settings.bootstrap, topic=node.topics.events)
    assert report.ok, report.mismatches
    other = store.sibling(report.database)
    try:
        return table_checksums(other)
    finally:
        other.close()
        store.command(f"DROP DATABASE IF EXISTS `{report.database}`")


async def test_a_clean_rebuild_checks_every_table_against_an_independent_fold(node: Node) -> None:
    await settled(node, 8)
    store = store_of(node)
    report = await asyncio.to_thread(rebuild_database, store, kafka=node.settings.bootstrap, topic=node.topics.events)
    assert report.ok and not report.mismatches, report.mismatches
    assert report.check_method == "fold"
    assert [c.table for c in report.table_checks] == list(ALL_TABLES)  # every table and rollup, events included
    assert all(c.ok for c in report.table_checks)
    checks = {c.table: c for c in report.table_checks}
    assert checks["runs"].rows == 8 and checks["steps"].rows > 20 and checks["step_latency_per_minute"].rows > 0
    assert f"{report.database}__check" not in databases(store)  # the scratch database is gone


@pytest.mark.parametrize(
    ("table", "tamper"),
    [
        # one value changed: the row count is the same, only the checksum can tell
        (
            "steps",
            "ALTER TABLE {db}.steps UPDATE worker = 'tampered' WHERE status = 'completed' AND attempt = 1 "
            "AND run_id = (SELECT min(run_id) FROM {db}.steps) AND path = (SELECT min(path) FROM {db}.steps "
            "WHERE run_id = (SELECT min(run_id) FROM {db}.steps) AND status = 'completed') SETTINGS mutations_sync = 1",
        ),
        ("runs", "DELETE FROM {db}.runs WHERE run_id = (SELECT min(run_id) FROM {db}.runs)"),
    ],
)
async def test_a_tampered_table_refuses_the_swap_and_names_the_table(node: Node, table: str, tamper: str) -> None:
    await settled(node, 6)
    store = store_of(node)
    before = store.database

    def change(rebuild: Rebuild) -> None:
        victim = store.sibling(rebuild.database)
        try:
            victim.command(tamper.replace("{db}", victim.quoted_database))
        finally:
            victim.close()

    job = Rebuild(store, kafka=node.settings.bootstrap, topic=node.topics.events)
    report = await rebuild_and_swap(job, swap=True, projector=node.projector, before_verify=change)
    print(
        "\n".join(
            [
                "",
                f"[the rebuilt {table} table changed before the gate; the report as `tickflow replay rebuild` "
                "prints it]",
                *report_lines(report),
            ]
        )
    )
    assert not report.ok and not report.swapped
    assert all(p.ok for p in report.partitions)  # the events table is intact: the old gate passed this database
    bad = [c for c in report.table_checks if not c.ok]
    assert [c.table for c in bad] == [table]
    assert len(report.mismatches) == 1 and report.mismatches[0].startswith(f"table {table}: ")
    if table == "steps":
        assert bad[0].rows == bad[0].reference_rows and bad[0].checksum != bad[0].reference_checksum
    else:
        assert bad[0].rows == bad[0].reference_rows - 1
    assert store.database == before and store.active_database() == before


async def test_rebuilding_one_projection_replaces_it_and_keeps_the_other_tables(node: Node) -> None:
    await settled(node, 8)
    store = store_of(node)
    # damage the live steps (the projection to rebuild) and a runs row (which the rebuild of steps must keep out)
    gone_run = store.query("SELECT min(run_id) FROM {db}.runs")[0][0]
    store.command(
        f"DELETE FROM {store.quoted_database}.steps WHERE run_id IN (SELECT run_id FROM "
        f"{store.quoted_database}.runs ORDER BY run_id LIMIT 3)"
    )
    store.command(f"DELETE FROM {store.quoted_database}.runs WHERE run_id = '{gone_run}'")
    live = await asyncio.to_thread(table_checksums, store)

    def scenario() -> tuple[str, str]:
        with Client(node.settings.api_url) as c:
            job = c.rebuild(table="steps", wait=120)
            assert job.state == "succeeded", job
            assert job.report is not None and job.report.swapped and job.report.table == "steps"
            assert [t.table for t in job.report.table_checks] == ["steps", "step_latency_per_minute"]
            after = c.wait(c.start("math", 50), timeout=60)  # projected by the live projector into the new db
            assert after.status == "completed"
            return job.database, after.run_id

    database, new_run = await asyncio.to_thread(scenario)
    assert store.database == database
    for _ in range(100):  # the live projector writes the new run's last rows
        if store.query(
            "SELECT count() FROM {db}.runs FINAL WHERE run_id = {r:String} AND status = 'completed'", {"r": new_run}
        )[0][0]:
            break
        await asyncio.sleep(0.1)
    now = await asyncio.to_thread(table_checksums, store)
    full = await asyncio.to_thread(full_rebuild_sums, node)  # the whole log, new run included
    assert now["steps"] == full["steps"] and now["step_latency_per_minute"] == full["step_latency_per_minute"]
    assert now["events"] == full["events"] and now["runs_per_minute"] == full["runs_per_minute"]
    assert now["runs"][0] == full["runs"][0] - 1  # the kept runs table still lacks the deleted row
    assert now["runs"][0] == live["runs"][0] + 1  # and gained the new run
    assert not store.query("SELECT count() FROM {db}.runs FINAL WHERE run_id = {r:String}", {"r": gone_run})[0][0]


async def test_rollback_swaps_back_caught_up_and_forward_again(node: Node) -> None:
    await settled(node, 6)
    store = store_of(node)
    base = store.database

    def scenario() -> tuple[str, list[str]]:
        with Client(node.settings.api_url) as c:
            job = c.rebuild(wait=120)
            assert job.state == "succeeded" and job.report is not None and job.report.swapped, job
            rebuilt = job.database
            new = [c.wait(c.start("math", 60 + i), timeout=60).run_id for i in range(2)]  # into the rebuilt db
            back = c.rollback()
            assert (back.database, back.previous_database, back.swapped) == (base, rebuilt, True)
            assert back.caught_up_events > 0  # the old database missed the runs started after the swap
            for rid in new:
                assert c.status(rid).status == "completed"  # read from the rolled-back database
            new.append(c.wait(c.start("math", 70), timeout=60).run_id)  # the projector goes on into it
            return rebuilt, new

    rebuilt, new = await asyncio.to_thread(scenario)
    assert store.database == base and store.active_database() == base
    for _ in range(100):
        if store.query(
            "SELECT count() FROM {db}.runs FINAL WHERE run_id = {r:String} AND status = 'completed'", {"r": new[-1]}
        )[0][0]:
            break
        await asyncio.sleep(0.1)
    # exactly what a rebuild of the whole log gives: nothing missed, no fact (and no rollup count) twice
    assert await asyncio.to_thread(table_checksums, store) == await asyncio.to_thread(full_rebuild_sums, node)
    with Client(node.settings.api_url) as c:
        forward = await asyncio.to_thread(c.rollback)
    assert (forward.database, forward.previous_database) == (rebuilt, base) and store.database == rebuilt


async def test_an_unknown_projection_or_nothing_to_roll_back_is_a_clear_error(node: Node) -> None:
    async with httpx.AsyncClient(base_url=node.settings.api_url, timeout=30) as http:
        r = await http.post("/admin/rebuild", json={"table": "nope"})
        assert r.status_code == 422 and "choose one of events, runs, steps" in r.text, r.text
        r = await http.post("/admin/rollback")
        assert r.status_code == 409 and "nothing to roll back to" in r.text, r.text


async def test_the_cli_refuses_a_tampered_table_then_rebuilds_one_projection_and_rolls_back(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    await settled(node, 6)
    store = store_of(node)
    base = store.database
    env = {"TICKFLOW_API_PORT": str(node.settings.api_port)}
    verify = Rebuild.verify

    def tampered_verify(rebuild: Rebuild) -> RebuildReport:
        """The API's rebuild, with the rows of one run deleted from its rebuilt ``steps`` table before the gate."""
        victim = store.sibling(rebuild.database)
        try:
            victim.command(
                f"DELETE FROM {victim.quoted_database}.steps WHERE run_id = "
                f"(SELECT min(run_id) FROM {victim.quoted_database}.steps)"
            )
        finally:
            victim.close()
        return verify(rebuild)

    async def tickflow(*args: str) -> tuple[int, str]:
        result = await asyncio.to_thread(CliRunner().invoke, cli, list(args), env=env)
        print(f"\n$ tickflow {' '.join(args)}\n{result.output}", end="")
        return result.exit_code, result.output

    with monkeypatch.context() as patched:
        patched.setattr(Rebuild, "verify", tampered_verify)
        code, out = await tickflow("replay", "rebuild", "--wait", "120")
    assert code == 1 and "  MISMATCH table steps: the rebuilt table has " in out, out
    assert "MISMATCH table runs" not in out and "MISMATCH partition" not in out
    assert "REFUSED: not swapped" in out and store.database == base

    code, out = await tickflow("replay", "rebuild", "--table", "steps", "--wait", "120")
    assert code == 0 and "rebuilt projection steps: " in out and "2 of 2 tables equal" in out, out
    assert "swapped in (previous: " + base in out
    rebuilt = store.database
    assert rebuilt != base

    code, out = await tickflow("replay", "rollback")
    assert code == 0 and f"rolled back to {base} (from {rebuilt})" in out, out
    assert store.database == base
