"""The engine killed (SIGKILL) at each named crash point, then restarted: the log stays exact.

For every point of ``tickflow.runtime.engine.CRASH_POINTS`` an engine process kills itself there while runs are in
flight; a second engine takes over. Then the checker reads every topic from offset 0: no run lost, no duplicate and
no gap at any (run, seq), every result applied once, every run finished. ``mid-events`` is exercised on a fork, the
decision that writes the most events at once (the copied history).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for, spawn_roles, worker_node
from tests.integration.runtime.test_faults import start_runs, stop
from tickflow.events import encode
from tickflow.node import Node
from tickflow.runtime.kafka import new_producer
from tickflow.runtime.replay import fork_command
from tickflow.settings import Settings

pytestmark = pytest.mark.integration
RUNS = 30
CRASHING = [sys.executable, "-m", "tests.integration.crashing_engine"]


@pytest.fixture
async def workers(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=0.5)
    async with worker_node(settings, registry) as node:
        yield node


async def _until_clean(settings: Settings, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = await check_log(settings)
        if not found.problems() or time.monotonic() > deadline:
            found.assert_clean()
            return found.summary()
        await asyncio.sleep(0.5)


async def _crash_at(settings: Settings, tmp_path: Path, point: str, after: int, key: str = "") -> None:
    """Run an engine that kills itself at ``point`` (after passing it ``after`` times), until it has."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TEST_CRASH_AT", point)
        env.setenv("TEST_CRASH_AFTER", str(after))
        env.setenv("TEST_CRASH_KEY", key)
        crashing = spawn_roles(settings, "engine", tmp_path / "crashing.log", command=CRASHING)
    try:
        code = await asyncio.to_thread(crashing.wait, 120)
    finally:
        stop(crashing)
    text = (tmp_path / "crashing.log").read_text()
    assert code == -signal.SIGKILL and f"crash point {point}" in text, f"exit {code}:\n{text[-3000:]}"


@pytest.mark.parametrize(
    ("point", "after"),
    [("cached", 60), ("events-sent", 60), ("txn-open", 20), ("before-commit", 3), ("mid-snapshot", 2)],
)
async def test_a_crash_at_each_point_loses_and_duplicates_nothing(
    workers: Node, tmp_path: Path, point: str, after: int
) -> None:
    settings = workers.settings
    ids = [f"{point}-{i:03d}" for i in range(RUNS)]
    crash = asyncio.create_task(_crash_at(settings, tmp_path, point, after))
    await asyncio.sleep(1.0)  # the crashing engine joins its group before the runs arrive
    await start_runs(settings, ids)
    await crash
    assert (await check_log(settings)).unfinished, "every run had finished at the crash: it would prove nothing"
    engine = spawn_roles(settings, "engine", tmp_path / "engine.log")
    try:
        summary = await _until_clean(settings, 180)
    finally:
        stop(engine)
    found = await check_log(settings)
    assert found.started == set(ids)
    print(f"\n{point}: {summary}")


async def test_a_crash_in_the_middle_of_a_fork_leaves_the_fork_exact(workers: Node, tmp_path: Path) -> None:
    settings = workers.settings
    engine = spawn_roles(settings, "engine", tmp_path / "first.log")
    try:
        await start_runs(settings, ["source"], workflow="math", inputs={"source": 1})
        await _until_clean(settings, 60)
    finally:
        stop(engine)
    history = [e for _, _, e in await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)]
    source = [e for e in history if e.key == "source"]
    fork = fork_command("source", source, 4, "fork-1", int(time.time() * 1000))
    crash = asyncio.create_task(_crash_at(settings, tmp_path, "mid-events", 0, key="fork-"))
    await asyncio.sleep(1.0)
    producer = new_producer(settings.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.commands, encode(fork), key=b"fork-1")
    finally:
        await producer.stop()
    await crash
    engine = spawn_roles(settings, "engine", tmp_path / "engine.log")
    try:
        summary = await _until_clean(settings, 120)
    finally:
        stop(engine)
    log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
    forked = [e.type for _, _, e in log if e.key == "fork-1"]
    assert forked.count("RunForked") == 1 and forked[-1] == "RunCompleted", forked
    print(f"\nmid-fork: {summary}")
