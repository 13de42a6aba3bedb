"""Projection rebuilds on the real broker and chDB: deterministic, verified against the log, swapped in live."""

from __future__ import annotations

import asyncio
import itertools
import threading

import httpx
import pytest

from tests.integration.harness import read_topic
from tickflow.client import Client
from tickflow.node import Node
from tickflow.projections.queries import RunQuery
from tickflow.projections.rebuild import Rebuild, rebuild_and_swap, rebuild_database, table_checksums
from tickflow.projections.store import ClickHouseStore

pytestmark = pytest.mark.integration


def store_of(node: Node) -> ClickHouseStore:
    assert isinstance(node.store, ClickHouseStore)
    return node.store


async def settled(node: Node, runs: int) -> int:
    """Start ``runs`` runs (some fail), wait for them, and until the live projection holds the whole log."""

    def scenario() -> None:
        with Client(node.settings.api_url) as c:
            ids = [c.start("math" if i % 4 else "doomed", i) for i in range(runs)]
            for rid in ids:
                c.wait(rid, timeout=60)

    await asyncio.to_thread(scenario)
    log = await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)
    for _ in range(200):
        if await asyncio.to_thread(node.store.event_count) == len(log):
            return len(log)
        await asyncio.sleep(0.1)
    raise AssertionError("the live projector did not catch up with the log")


async def test_two_rebuilds_equal_each_other_and_the_live_projection(node: Node) -> None:
    events = await settled(node, 12)
    store = store_of(node)
    live = await asyncio.to_thread(table_checksums, store)

    def rebuild() -> tuple[dict[str, int], dict[str, int], bool]:
        r = rebuild_database(store, kafka=node.settings.bootstrap, topic=node.topics.events)
        return r.tables, r.checksums, r.ok

    first, second = await asyncio.to_thread(rebuild), await asyncio.to_thread(rebuild)
    assert first[2] and second[2]
    assert first[0]["events"] == events and first[0]["runs"] == 12 and first[0]["steps"] > 36
    assert first == second
    assert first[0] == {t: n for t, (n, _) in live.items()}
    assert first[1] == {t: h for t, (_, h) in live.items()}
    assert store.database == store.base_database  # no swap was asked for


async def test_verification_catches_a_tampered_table_and_does_not_swap(node: Node) -> None:
    await settled(node, 6)
    store = store_of(node)
    before = store.database

    def tamper(rebuild: Rebuild) -> None:
        victim = store.sibling(rebuild.database)
        try:
            run_id = victim.list_runs(RunQuery(limit=1))[0].run_id
            victim.command(f"DELETE FROM `{rebuild.database}`.events WHERE run_id = '{run_id}' AND seq = 2")
        finally:
            victim.close()

    job = Rebuild(store, kafka=node.settings.bootstrap, topic=node.topics.events)
    report = await rebuild_and_swap(job, swap=True, projector=node.projector, before_verify=tamper)
    assert not report.ok and not report.swapped
    assert report.mismatches[0].startswith("partition ")
    assert [c.table for c in report.table_checks if not c.ok] == ["events"]  # the fold of the log has the row
    bad = [p for p in report.partitions if not p.ok]
    assert len(bad) == 1 and bad[0].table_events == bad[0].log_events - 1
    assert store.database == before and store.active_database() == before


async def test_swap_under_queries_keeps_counts_and_projects_new_runs(node: Node) -> None:
    await settled(node, 10)
    store = store_of(node)
    before = store.database
    errors: list[str] = []
    totals: list[int] = []
    stop = threading.Event()

    def query_loop() -> None:
        with httpx.Client(base_url=node.settings.api_url, timeout=10) as http:
            while not stop.is_set():
                for path in ("/runs?limit=5", "/stats"):
                    try:
                        r = http.get(path)
                    except httpx.HTTPError as exc:
                        errors.append(f"{path}: {type(exc).__name__} {exc}")
                        continue
                    if r.status_code != 200:
                        errors.append(f"{path}: {r.status_code} {r.text}")
                    elif path == "/stats":
                        totals.append(int(r.json()["total"]))

    def scenario() -> tuple[str, str]:
        with Client(node.settings.api_url) as c:
            job = c.rebuild(swap=True, wait=120)
            assert job.state == "succeeded", job
            assert job.report is not None and job.report.ok and job.report.swapped
            after = c.wait(c.start("math", 100), timeout=60)  # projected by the live projector into the new db
            assert after.status == "completed" and after.output == 202
            assert len(c.list_runs(limit=100)) == 11
            return job.database, after.run_id

    loop = threading.Thread(target=query_loop)
    loop.start()
    try:
        database, new_run = await asyncio.to_thread(scenario)
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await asyncio.to_thread(loop.join)  # the API answers on this event loop: never block it
    assert not errors, errors[:5]
    assert totals and all(b >= a for a, b in itertools.pairwise(totals)), totals
    assert totals[-1] == 11
    assert store.database == database != before
    assert store.active_database() == database  # a restart opens the swapped-in generation
    rows = store.query("SELECT count() FROM {db}.events FINAL WHERE run_id = {r:String}", {"r": new_run})
    assert rows[0][0] > 0
    generations = store.query("SELECT name FROM system.databases WHERE startsWith(name, {p:String})", {"p": before})
    assert {r[0] for r in generations} == {before, database}  # the previous generation is kept for rollback
