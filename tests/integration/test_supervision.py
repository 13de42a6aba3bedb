"""A role whose loop fails is restarted by its node, with backoff, and the failure shows in /stats and /metrics.

The failures are real ones: a role's Kafka consumer is closed under it while it runs (what a client does when the
broker stays away longer than its timeouts), so its next fetch raises and its loop ends with that error."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.client import Client
from tickflow.node import Node

pytestmark = pytest.mark.integration


async def test_failed_roles_are_restarted_and_runs_go_on(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    await node.start()
    supervisor = asyncio.create_task(node.wait())
    s = node.settings
    try:
        first = await asyncio.to_thread(_run, s.api_url, "before")
        assert first == "completed"
        old_engine, old_worker = node.engine, node.workers[0]
        assert old_engine is not None
        await old_engine.consumer.stop()  # its next poll fails: the engine's loop ends with an error
        await old_worker.consumer.stop()
        deadline = time.monotonic() + 30
        while node.engine is old_engine or node.workers[0] is old_worker:
            assert time.monotonic() < deadline, f"not restarted: {node.failures}"
            assert not supervisor.done(), supervisor
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_run, s.api_url, "after") == "completed"

        def observe() -> tuple[dict[str, object], str]:
            with httpx.Client(base_url=s.api_url) as http:
                return http.get("/stats").json(), http.get("/metrics").text

        stats, exposed = await asyncio.to_thread(observe)
        restarts = stats["role_restarts"]
        assert isinstance(restarts, dict)
        assert restarts["engine"]["restarts"] == 1 and restarts["worker:default"]["restarts"] == 1, restarts
        assert restarts["engine"]["last_error"], restarts
        # The counter is process-wide (other tests may have restarted roles too): at least this one restart.
        restarted = [float(line.rsplit(" ", 1)[1]) for line in exposed.splitlines()
                     if line.startswith('tickflow_role_restarts_total{role="engine"}')]
        assert restarted and restarted[0] >= 1, exposed[-2000:]
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await node.stop()


def _run(api_url: str, run_id: str) -> str:
    with Client(api_url) as c:
        c.start("math", 1, run_id=run_id)
        return c.wait(run_id, timeout=60).status


async def test_the_projector_holds_its_offsets_while_clickhouse_refuses_and_catches_up(
    kafka_bootstrap: str, prefix: str, tmp_path: Path,
) -> None:
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    await node.start()
    supervisor = asyncio.create_task(node.wait())
    s = node.settings
    projector = node.projector
    store = node.store
    real_write, refusals = store.write, 3
    committed_while_refusing: list[int] = []

    def refusing_write(rows: object) -> None:  # the real store, refusing its first inserts as a server would
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise ConnectionError("ClickHouse refused the insert (injected)")
        real_write(rows)  # type: ignore[arg-type]

    try:
        store.write = refusing_write  # type: ignore[method-assign]
        runs = await asyncio.to_thread(_start_many, s.api_url, [f"f{i}" for i in range(5)])
        deadline = time.monotonic() + 30
        while projector.metrics.store_failures < 3:
            assert time.monotonic() < deadline, "the store was never refused"
            committed_while_refusing.append(await _committed(projector))
            await asyncio.sleep(0.1)
        while True:
            done = await asyncio.to_thread(store.status_counts, "math")
            if done.get("completed", 0) == len(runs):
                break
            assert time.monotonic() < deadline + 60, done
            await asyncio.sleep(0.2)
        assert projector is node.projector and node.failures == {}, "retried in place, not restarted"
        assert set(committed_while_refusing) == {committed_while_refusing[0]}, "offsets moved while refused"
        events = int(store.query("SELECT count() FROM {db}.events", None)[0][0])
        assert events == projector.metrics.events_projected  # each event inserted once, none lost
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await node.stop()


async def _committed(projector: object) -> int:
    consumer = projector.consumer  # type: ignore[attr-defined]
    total = 0
    for tp in consumer.assignment():
        total += await consumer.committed(tp) or 0
    return total


def _start_many(api_url: str, run_ids: list[str]) -> list[str]:
    with Client(api_url) as c:
        for rid in run_ids:
            c.start("math", 1, run_id=rid)
    return run_ids


def _immutable(path: Path, on: bool) -> None:
    """``chattr ±i`` on a tree: even root cannot write an immutable file or add to an immutable directory (plain
    permissions would not stop the root user these tests run as)."""
    entries = [str(p) for p in [path, *path.rglob("*")] if not p.is_symlink()]  # ClickHouse links tables to store/
    subprocess.run(["chattr", "+i" if on else "-i", *entries], check=True, capture_output=True)


async def test_the_projector_waits_out_a_read_only_clickhouse_directory_and_catches_up(
    kafka_bootstrap: str, prefix: str, tmp_path: Path,
) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed: no way to make a directory read-only for root")
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    await node.start()
    supervisor = asyncio.create_task(node.wait())
    s, projector, store = node.settings, node.projector, node.store
    data = s.chdb_path
    committed: list[int] = []
    try:
        assert projector is not None
        first = await asyncio.to_thread(_start_many, s.api_url, [f"ro-before-{i}" for i in range(3)])
        await _until_projected(store, len(first), 60)
        failures_before = projector.metrics.store_failures
        _immutable(data, True)
        try:
            later = await asyncio.to_thread(_start_many, s.api_url, [f"ro-during-{i}" for i in range(5)])
            deadline = time.monotonic() + 60
            while projector.metrics.store_failures < failures_before + 2:
                assert time.monotonic() < deadline, "no insert was refused by the read-only directory"
                committed.append(await _committed(projector))
                await asyncio.sleep(0.2)
            committed.append(await _committed(projector))
        finally:
            _immutable(data, False)
        await _until_projected(store, len(first) + len(later), 150)
        assert set(committed) == {committed[0]}, f"offsets moved while ClickHouse could not write: {committed}"
        assert projector is node.projector and node.failures == {}, "retried in place, not restarted"
        events = int(store.query("SELECT count() FROM {db}.events", None)[0][0])
        assert events == projector.metrics.events_projected  # each event inserted once, none lost
    finally:
        with contextlib.suppress(Exception):
            _immutable(data, False)
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await node.stop()


async def _until_projected(store: object, completed: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        done = await asyncio.to_thread(store.status_counts, "math")  # type: ignore[attr-defined]
        if done.get("completed", 0) >= completed:
            return
        assert time.monotonic() < deadline, done
        await asyncio.sleep(0.2)
