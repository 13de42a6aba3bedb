"""Eager local dispatch on the real broker: steps handed over in memory keep every guarantee of the topic path.

The engine and the worker share one ``tickflow up --roles engine,worker`` process (the default layout), so its steps
run in memory: the tasks topic stays (almost) empty. Killed with SIGKILL or stopped with SIGTERM mid-run, then
started again, every run still applies every step once (the shared checker reads every topic from offset 0). A
worker that stops with steps handed to it hands them back as lost, and they go to the topic.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for, spawn_roles
from tests.integration.runtime.test_faults import RUNS, STEPS, assert_log_is_exact, start_runs, stop, wait_until
from tickflow.node import Node
from tickflow.runtime.worker import StepWorker

pytestmark = pytest.mark.integration


@pytest.fixture
async def projector(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    """Only a projector in this process: every step runs in the process under test (a third of the runs at once;
    a step that finds every slot taken goes through the topic, so both paths are in flight when it stops)."""
    node = Node(
        settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=0.5,
                     worker_concurrency=RUNS // 3),
        registry,
        frozenset({"projector"}),
    )
    await node.start()
    yield node
    await node.stop()


async def _tasks_sent(node: Node) -> int:
    s = node.settings
    return len(await read_topic(s.bootstrap, s.topics.tasks("default"), s.partitions))


async def _completed_steps(node: Node) -> int:
    s = node.settings
    log = await read_topic(s.bootstrap, s.topics.events, s.partitions)
    return sum(1 for _, _, e in log if e.type == "StepCompleted")


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
async def test_a_stop_mid_run_of_an_eager_node_loses_and_duplicates_nothing(
    projector: Node, tmp_path: Path, how: signal.Signals
) -> None:
    settings = projector.settings
    ids = [f"eg-{how.name}-{i:04d}" for i in range(RUNS)]
    proc = spawn_roles(settings, "engine,worker", tmp_path / "node1.log")
    try:
        await start_runs(settings, ids)

        async def some_progress() -> bool:
            return await _completed_steps(projector) >= RUNS

        await wait_until(some_progress, 90, "some steps to complete")
        proc.send_signal(how)
        proc.wait(40)
        at_stop = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
        assert sum(1 for _, _, e in at_stop if e.type == "RunCompleted") < RUNS, "the stop landed after the end"
        proc = spawn_roles(settings, "engine,worker", tmp_path / "node2.log")

        async def all_done() -> bool:
            counts = await asyncio.to_thread(projector.store.status_counts, "slow10")
            return int(counts.get("completed", 0)) == RUNS

        await wait_until(all_done, 180, f"all {RUNS} runs to complete after the restart")
    finally:
        stop(proc)
    await assert_log_is_exact(settings, ids)
    # Many steps went through memory, not the tasks topic.
    assert await _tasks_sent(projector) < RUNS * STEPS * 3 // 4


async def test_steps_handed_to_a_stopping_worker_go_to_the_topic(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    node = Node(settings, registry, frozenset({"engine", "worker"}))
    await node.start()
    assert node.eager is not None
    ids = [f"lost-{i:03d}" for i in range(10)]
    try:
        await start_runs(settings, ids, workflow="dawdle", inputs=dict.fromkeys(ids, 1))

        async def some_in_memory() -> bool:
            return node.eager is not None and node.eager.in_flight > 0

        await wait_until(some_in_memory, 30, "steps handed to the local worker")
        old = node.workers[0]
        node.eager.detach(old)
        await old.stop(drain_s=0.2)  # its steps in memory come back as lost; no local worker: they go to the topic
        replacement = StepWorker(settings, registry)  # a worker of the pool reading the topic, as a restart makes
        await replacement.start()
        node.workers[0] = replacement

        async def all_done() -> bool:
            s = settings
            log = await read_topic(s.bootstrap, s.topics.events, s.partitions)
            return sum(1 for _, _, e in log if e.type == "RunCompleted") == len(ids)

        await wait_until(all_done, 90, "every run to complete")
        assert node.eager.lost > 0
        assert await _tasks_sent(node) >= node.eager.lost
    finally:
        await node.stop()
    (await check_log(settings)).assert_clean()
