"""Faults on the real broker: kill -9 of the engine mid-run, and two engines sharing one consumer group."""

from __future__ import annotations

import asyncio
import itertools
import re
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for, spawn_roles
from tickflow.events import Envelope, StartRun, StepCompleted, encode
from tickflow.node import Node
from tickflow.runtime.kafka import read_partition
from tickflow.runtime.snapshots import CHECKPOINT_KEY
from tickflow.settings import Settings

pytestmark = pytest.mark.integration
RUNS = 150
STEPS = 10


@pytest.fixture
async def workers_and_projector(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(
        # Snapshots every 0.5 s: a restarted engine recovers from snapshots plus the log's tail.
        settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=0.5),
        registry,
        frozenset({"worker", "projector"}),
    )
    await node.start()
    yield node
    await node.stop()


async def start_runs(
    settings: Settings, ids: list[str], workflow: str = "slow10", inputs: dict[str, Any] | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for rid in ids:
            cmd = Envelope.wrap(
                StartRun(workflow=workflow, input=(inputs or {}).get(rid, {"n": 0})),
                id=f"start/{rid}",
                key=rid,
                occurred_at_ms=1,
            )
            await producer.send(settings.topics.commands, encode(cmd), key=rid.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def count_finished(node: Node, ids: list[str], workflow: str = "slow10") -> int:
    counts = await asyncio.to_thread(node.store.status_counts, workflow)
    return int(counts.get("completed", 0))


async def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


async def assert_log_is_exact(
    settings: Settings, ids: list[str], paths: list[str] | None = None, final_n: int = STEPS
) -> None:
    """Read every topic from offset 0: the shared checker's counts are all zero, and each run applied every one
    of its steps once, fired each timer once and ended with the output it should have."""
    (await check_log(settings)).assert_clean()
    expected = Counter(paths or [f"t{i}" for i in range(STEPS)])
    log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
    by_run: dict[str, list[Envelope]] = defaultdict(list)
    for _, _, e in log:
        by_run[e.key].append(e)
    assert set(by_run) == set(ids)
    for rid, events in by_run.items():
        seqs = [e.seq for e in events]
        assert seqs == list(range(1, len(seqs) + 1)), f"{rid}: seq gap or duplicate: {seqs}"
        applied = Counter(e.payload.path for e in events if isinstance(e.payload, StepCompleted))
        assert applied == expected, f"{rid}: step results applied {applied}"
        fired = Counter(
            e.payload.path for e in events if e.type == "NodeCompleted" and e.payload.path.startswith("nap")
        )
        assert all(n == 1 for n in fired.values()), f"{rid}: a timer fired twice: {fired}"
        assert events[-1].type == "RunCompleted", f"{rid} ended with {events[-1].type}"
        assert events[-1].payload.output["n"] == final_n  # type: ignore[attr-defined]


async def test_kill_9_of_the_engine_mid_run_loses_and_duplicates_nothing(
    workers_and_projector: Node, tmp_path: Path
) -> None:
    node = workers_and_projector
    settings = node.settings
    ids = [f"k9-{i:04d}" for i in range(RUNS)]
    engine = spawn_roles(settings, "engine", tmp_path / "engine1.log")
    try:
        await start_runs(settings, ids)

        async def some_progress() -> bool:  # read the log itself: the projection may lag behind it
            log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
            return sum(1 for _, _, e in log if e.type == "StepCompleted") >= RUNS * STEPS // 4

        await wait_until(some_progress, 90, "a quarter of all steps to complete")
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        at_kill = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
        finished_at_kill = sum(1 for _, _, e in at_kill if e.type == "RunCompleted")
        assert finished_at_kill < RUNS, "every run had finished at the kill; the test would prove nothing"
        engine = spawn_roles(settings, "engine", tmp_path / "engine2.log")

        async def all_done() -> bool:
            return await count_finished(node, ids) == RUNS

        await wait_until(all_done, 180, f"all {RUNS} runs to complete after the restart")
    finally:
        stop(engine)
    await assert_log_is_exact(settings, ids)
    restart_log = (tmp_path / "engine2.log").read_text()
    resent = sum(int(n) for n in re.findall(r"(\d+) messages re-sent", restart_log))
    assert resent > 0, "the restarted engine re-sent no in-flight task; the kill did not land mid-run"


async def test_two_engines_in_one_group_share_the_partitions(workers_and_projector: Node, tmp_path: Path) -> None:
    node = workers_and_projector
    settings = node.settings
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    engines = [spawn_roles(settings, "engine", logs[0])]
    try:
        await asyncio.sleep(3)
        engines.append(spawn_roles(settings, "engine", logs[1]))

        def owned(path: Path) -> set[int]:
            lines = re.findall(r"engine owns partitions \[([0-9, ]*)\]", path.read_text() if path.exists() else "")
            return {int(p) for p in lines[-1].split(",") if p.strip()} if lines else set()

        async def split() -> bool:
            a, b = owned(logs[0]), owned(logs[1])
            return bool(a) and bool(b) and not (a & b) and a | b == set(range(settings.partitions))

        await wait_until(split, 60, "both engines to own a disjoint share of the partitions")
        ids = [f"two-{i:04d}" for i in range(60)]
        await start_runs(settings, ids)

        async def all_done() -> bool:
            return await count_finished(node, ids) == len(ids)

        await wait_until(all_done, 120, "all runs to complete on two engines")
        await assert_log_is_exact(settings, ids)
    finally:
        for e in engines:
            stop(e)


async def test_kill_9_while_timers_are_due_and_branches_are_in_flight(
    workers_and_projector: Node, tmp_path: Path
) -> None:
    """Runs fork into two branches, join, then sleep 1.5 s. The engine dies with branches in flight and
    stays down past the timers' due times; its successor fires each overdue timer once and loses nothing."""
    node = workers_and_projector
    settings = node.settings
    ids = [f"nap-{i:04d}" for i in range(80)]
    engine = spawn_roles(settings, "engine", tmp_path / "engine1.log")
    try:
        await start_runs(settings, ids, "forknap")

        async def some_sleeping_and_snapshotted() -> bool:
            log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
            if sum(1 for _, _, e in log if e.type == "TimerStarted") < 10:
                return False
            for p in range(settings.partitions):  # a checkpoint exists: the restart can start from snapshots
                state = await read_partition(settings.bootstrap, settings.topics.state, p)
                if any(r.key == CHECKPOINT_KEY for r in state):
                    return True
            return False

        await wait_until(some_sleeping_and_snapshotted, 90, "some runs to be asleep and snapshotted")
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        at_kill = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
        assert sum(1 for _, _, e in at_kill if e.type == "RunCompleted") < len(ids)
        await asyncio.sleep(2.0)  # every timer started before the kill is now overdue
        engine = spawn_roles(settings, "engine", tmp_path / "engine2.log")

        async def all_done() -> bool:
            return await count_finished(node, ids, "forknap") == len(ids)

        await wait_until(all_done, 180, "all runs to complete after the restart")
    finally:
        stop(engine)
    await assert_log_is_exact(settings, ids, ["left", "right", "wake"], final_n=3)
    log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
    due = {e.key: e.payload.due_at_ms for _, _, e in log if e.type == "TimerStarted"}
    fired = {e.key: e.occurred_at_ms for _, _, e in log if e.type == "NodeCompleted" and e.payload.path == "nap"}
    assert all(fired[k] >= due[k] for k in ids), "a timer fired early"
    restart_log = (tmp_path / "engine2.log").read_text()
    checkpoints = re.findall(r"events after offset (\d+)", restart_log)
    assert checkpoints, "the restarted engine folded the whole log instead of starting from its snapshots"


async def test_kill_9_with_runs_queued_per_key_admits_each_once_and_never_overlaps(
    workers_and_projector: Node, tmp_path: Path
) -> None:
    """Five customers, six runs each, one at a time per customer: the engine dies mid-way and a new one
    takes over the slot entities and the queued runs. Every run is admitted once and completes, and no two
    runs of one customer ever hold the slot at the same time."""
    node = workers_and_projector
    settings = node.settings
    ids = [f"q-{c}-{i}" for c in range(5) for i in range(6)]
    inputs = {rid: {"customer": f"c{rid.split('-')[1]}"} for rid in ids}
    engine = spawn_roles(settings, "engine", tmp_path / "engine1.log")
    try:
        await start_runs(settings, ids, "per_customer", inputs)

        async def some_done() -> bool:
            log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
            return sum(1 for _, _, e in log if e.type == "RunCompleted") >= 8

        await wait_until(some_done, 90, "a few runs to complete")
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        at_kill = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
        assert sum(1 for _, _, e in at_kill if e.type == "RunCompleted") < len(ids) - 5, "too late a kill"
        engine = spawn_roles(settings, "engine", tmp_path / "engine2.log")

        async def all_done() -> bool:
            return await count_finished(node, ids, "per_customer") == len(ids)

        await wait_until(all_done, 180, "all queued runs to complete after the restart")
    finally:
        stop(engine)
    log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
    admitted: dict[str, list[int]] = defaultdict(list)
    completed: dict[str, int] = {}
    for _, _, e in log:
        if e.type == "RunAdmitted":
            admitted[e.key].append(e.occurred_at_ms)
        elif e.type == "RunCompleted" and e.key in inputs:
            completed[e.key] = e.occurred_at_ms
    assert set(completed) == set(ids)
    assert all(len(admitted[rid]) == 1 for rid in ids), "a run was admitted twice"
    for c in range(5):
        spans = sorted((admitted[rid][0], completed[rid]) for rid in ids if inputs[rid]["customer"] == f"c{c}")
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), f"customer c{c}: runs overlapped {spans}"
