"""Rebalances with runs in flight: an engine joins, one leaves gracefully, another is killed; the log stays exact.

Runs start on engine A alone. Engine B joins while they are half done (the partitions it takes are rebuilt in the
background with their inputs paused), A then leaves gracefully (SIGTERM: commits and revokes), C joins and is
killed with SIGKILL while it owns partitions (B gets them back after C's session times out). Every run finishes
and the shared checker finds nothing lost, duplicated or missing.
"""

from __future__ import annotations

import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for, spawn_roles
from tests.integration.runtime.test_faults import start_runs, stop, wait_until
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration
RUNS = 300


@pytest.fixture
async def workers(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    settings = settings_for(
        prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=0.5, session_timeout_ms=6_000
    )
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    node = Node(settings, registry, frozenset({"worker"}))
    await node.start()
    yield node
    await node.stop()


def owned(path: Path) -> set[int]:
    lines = re.findall(r"engine owns partitions \[([0-9, ]*)\]", path.read_text() if path.exists() else "")
    return {int(p) for p in lines[-1].split(",") if p.strip()} if lines else set()


async def test_join_leave_and_kill_with_runs_in_flight(workers: Node, tmp_path: Path) -> None:
    settings = workers.settings
    everything = set(range(settings.partitions))
    logs = {name: tmp_path / f"{name}.log" for name in "abc"}
    a = spawn_roles(settings, "engine", logs["a"])
    b = c = None
    ids = [f"rb-{i:03d}" for i in range(RUNS)]
    try:
        await wait_until(lambda: _true(owned(logs["a"]) == everything), 60, "engine A to own every partition")
        await start_runs(settings, ids)

        async def some_steps_done() -> bool:
            log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
            return sum(1 for _, _, e in log if e.type == "StepCompleted") >= RUNS * 2

        await wait_until(some_steps_done, 90, "runs to be under way on engine A")
        b = spawn_roles(settings, "engine", logs["b"])
        await wait_until(lambda: _true(bool(owned(logs["b"]))), 60, "engine B to take a share of the partitions")
        assert (await check_log(settings)).unfinished, "every run had finished before B joined: it proves nothing"

        stop(a)  # SIGTERM: a graceful leave
        await wait_until(lambda: _true(owned(logs["b"]) == everything), 60, "engine B to take over from A")
        c = spawn_roles(settings, "engine", logs["c"])
        await wait_until(lambda: _true(bool(owned(logs["c"]))), 60, "engine C to take a share")
        assert (await check_log(settings)).unfinished, "every run had finished before C was killed"
        c.send_signal(signal.SIGKILL)
        c.wait(10)

        async def clean() -> bool:
            return not (await check_log(settings)).problems()

        await wait_until(clean, 180, "every run to finish with an exact log")
    finally:
        for proc in (a, b, c):
            if proc is not None:
                stop(proc)
    found = await check_log(settings)
    found.assert_clean()
    assert found.started == set(ids)
    print(f"\njoin, leave, kill: {found.summary()}")


async def _true(value: bool) -> bool:
    return value
