"""Agent stacks on the real broker: ticks from the engine's own timers, no overlap, pause/play, idle backoff,
the board in ClickHouse — through the SDK, HTTP and the CLI — and ticks that survive a kill -9 of the engine."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.harness import read_topic, settings_for, spawn_roles
from tests.integration.runtime.test_faults import stop, wait_until
from tests.integration.test_constructs import cli
from tickflow.client import Client
from tickflow.events.envelope import Envelope
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration

registry = Registry()


async def busy(value: Any) -> dict[str, Any]:
    await asyncio.sleep(1.6)  # longer than the 1 s interval: the next tick is due while this one runs
    return {"tick": value["tick"]}


async def nothing_to_do(value: Any) -> dict[str, Any]:
    return {"idle": True, "tick": value["tick"]}


registry.add(Workflow("busy_tick").step(busy))
registry.add(Workflow("idle_tick").step(nothing_to_do))


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    await n.start()
    yield n
    await n.stop()


async def stack_log(node: Node, stack_id: str) -> list[Envelope]:
    log = await read_topic(node.settings.bootstrap, node.settings.topics.events, node.settings.partitions)
    return sorted((e for _, _, e in log if e.key == f"stack:{stack_id}"), key=lambda e: e.seq or 0)


def assert_no_overlap(events: list[Envelope]) -> None:
    running = None
    for e in events:
        if e.type == "TickFired":
            assert running is None, f"tick {e.payload.tick} fired while tick {running} ran"  # type: ignore[attr-defined]
            running = e.payload.tick  # type: ignore[attr-defined]
        elif e.type == "TickFinished":
            assert e.payload.tick == running  # type: ignore[attr-defined]
            running = None


async def test_ticks_pause_play_idle_backoff_and_the_board(node: Node) -> None:
    url = node.settings.api_url

    def create() -> None:  # the SDK is synchronous: keep it off the loop that serves the API
        with Client(url) as c:
            c.create_stack("busy", "busy_tick", interval_s=1)
            c.create_stack("lazy", "idle_tick", interval_s=1, idle_backoff_max_s=4)
            bad = httpx.post(f"{url}/stacks", json={"stack_id": "x", "workflow": "nope"})
            assert bad.status_code == 404 and "unknown workflow" in bad.text
            bad = httpx.post(f"{url}/stacks", json={"stack_id": "bad id", "workflow": "busy_tick"})
            assert bad.status_code == 422

    await asyncio.to_thread(create)
    await asyncio.sleep(9)
    busy = await stack_log(node, "busy")
    types = Counter(e.type for e in busy)
    assert types["TickFired"] >= 3 and types["TickSkipped"] >= 2, types  # 1.6 s runs on a 1 s rhythm
    assert_no_overlap(busy)
    fired = [e for e in busy if e.type == "TickFired"]
    assert all(e.occurred_at_ms >= e.payload.due_at_ms for e in fired)  # type: ignore[attr-defined]

    lazy = await stack_log(node, "lazy")
    lazy_fired = [e.payload.due_at_ms for e in lazy if e.type == "TickFired"]  # type: ignore[attr-defined]
    gaps = [b - a for a, b in itertools.pairwise(lazy_fired)]
    assert gaps[:2] == [2000, 4000] and all(g == 4000 for g in gaps[2:]), gaps  # idle: 1 s doubles to the 4 s cap

    out = await asyncio.to_thread(cli, node, "stack", "pause", "busy", "--reason", "night")
    assert out.returncode == 0, out.stderr
    await wait_until(lambda: _paused(node, "busy"), 20, "the pause to be logged")
    await asyncio.sleep(2.5)
    after_pause = await stack_log(node, "busy")
    paused_at = max(e.seq or 0 for e in after_pause if e.type == "StackPaused")
    assert not [e for e in after_pause if e.type in ("TickFired", "TickSkipped") and (e.seq or 0) > paused_at]

    def board() -> None:
        with Client(url) as c:
            c.play_stack("busy")

            def board_ready() -> bool:
                rows = {s["stack_id"]: s for s in c.stacks()}
                return "busy" in rows and rows["busy"]["status"] == "playing" and rows["busy"]["ticks_fired"] > 3

            deadline = time.monotonic() + 30
            while not board_ready():
                assert time.monotonic() < deadline, c.stacks()
                time.sleep(0.3)
            detail = c.stack("busy", ticks=50)
            statuses = Counter(t["status"] for t in detail["ticks"])
            assert statuses["completed"] >= 3 and statuses["skipped"] >= 2, statuses
            finished = [t for t in detail["ticks"] if t["status"] == "completed"]
            assert all(t["run_id"].startswith("busy.t") and t["lag_ms"] >= 0 for t in finished)
            assert c.status(finished[0]["run_id"]).status == "completed"
            c.delete_stack("lazy")

    await asyncio.to_thread(board)
    out = await asyncio.to_thread(cli, node, "stacks")
    assert out.returncode == 0 and "busy" in out.stdout, out.stderr
    assert_no_overlap(await stack_log(node, "busy"))


async def _paused(node: Node, stack_id: str) -> bool:
    return any(e.type == "StackPaused" for e in await stack_log(node, stack_id))


async def test_ticks_survive_a_kill_9_of_the_engine(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """Ticks are state in the log: after SIGKILL a new engine continues the rhythm; no tick number fires twice
    and each tick's run starts once."""
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=1.0)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools, settings.log_retention_ms)
    app = "tests.integration.agents.test_stacks:registry"
    engine = spawn_roles(settings, "engine,worker", tmp_path / "engine1.log", app=app)
    api = None
    try:
        api = spawn_roles(settings, "api,projector", tmp_path / "api.log", app=app)

        async def api_up() -> bool:
            try:
                return httpx.get(f"{settings.api_url}/healthz").status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(api_up, 60, "the API")
        with Client(settings.api_url) as c:
            for i in range(5):
                c.create_stack(f"k{i}", "idle_tick", interval_s=1)

        async def fired(n: int) -> bool:
            log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
            return sum(1 for _, _, e in log if e.type == "TickFired") >= n

        await wait_until(lambda: fired(10), 60, "ten ticks")
        engine.send_signal(signal.SIGKILL)
        engine.wait(10)
        log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
        at_kill = sum(1 for _, _, e in log if e.type == "TickFired")
        engine = spawn_roles(settings, "engine,worker", tmp_path / "engine2.log", app=app)
        await wait_until(lambda: fired(at_kill + 10), 60, "ten more ticks after the restart")
    finally:
        stop(engine)
        if api is not None:
            stop(api)
    log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
    for i in range(5):
        events = sorted((e for _, _, e in log if e.key == f"stack:k{i}"), key=lambda e: e.seq or 0)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        ticks = [e.payload.tick for e in events if e.type in ("TickFired", "TickSkipped")]  # type: ignore[attr-defined]
        assert ticks == sorted(set(ticks)), f"k{i}: a tick number was used twice: {ticks}"
        assert_no_overlap(events)
    started = Counter(e.key for _, _, e in log if e.type == "RunStarted")
    assert started and max(started.values()) == 1  # each tick's run started once
