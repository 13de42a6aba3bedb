"""Recovery from snapshots + the log's tail equals the fold of the whole log, and runs carry on from it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for
from tickflow.client import Client
from tickflow.core.decider import fold
from tickflow.core.slots import is_slot
from tickflow.events import Envelope
from tickflow.node import Node
from tickflow.workflow import Registry, Workflow, current_step

pytestmark = pytest.mark.integration


async def test_recovery_from_snapshots_equals_the_full_fold(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=0.3)
    first = Node(settings, registry)
    await first.start()
    try:

        def before() -> list[str]:
            with Client(settings.api_url) as c:
                for rid in [c.start("math", i) for i in range(20)]:
                    assert c.wait(rid, timeout=60).status == "completed"
                waiting = [c.start("approval", i, run_id=f"wait-{i}") for i in range(4)]
                for rid in waiting:
                    for status in c.watch(rid, poll_s=0.05, timeout=30):
                        if status.waiting_for:
                            break
                return waiting

        waiting = await asyncio.to_thread(before)
        await asyncio.sleep(1.0)  # at least one snapshot round after the last change
        assert first.engine is not None and first.engine.snapshots.written > 0
    finally:
        await first.stop()

    second = Node(settings, registry)
    await second.start()
    try:
        engine = second.engine
        assert engine is not None
        for _ in range(100):
            if len(engine.recovered_partitions) == settings.partitions:
                break
            await asyncio.sleep(0.1)
        checkpoints = [part.recovered_from for part in engine.partitions.values()]
        assert any(checkpoints), "recovery read no checkpoint: it folded everything"
        log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
        by_run: dict[str, list[Envelope]] = defaultdict(list)
        for _, _, e in log:
            if not is_slot(e.key):
                by_run[e.key].append(e)
        live = {rid: st for part in engine.partitions.values() for rid, st in part.runs.items()}
        assert set(live) == set(by_run)
        for rid, events in by_run.items():
            assert live[rid] == fold(rid, events), f"{rid}: snapshot + tail differs from the full fold"

        def after() -> None:
            with Client(settings.api_url) as c:
                c.resume(waiting[0], "approve", {"approved": True, "by": "ann"})
                assert c.wait(waiting[0], timeout=30).output == "shipped after ann approved"

        await asyncio.to_thread(after)
    finally:
        await second.stop()


async def heavy(value: Any) -> str:
    """~250 kB per step: under the claim-check threshold, so five of them make a run state of over 1 MB."""
    HEAVY_CALLS.append(current_step().step)
    return "x" * 250_000


HEAVY_CALLS: list[str] = []
heavy_registry = Registry()
heavy_flow = Workflow("heavy")
for _i in range(5):
    heavy_flow = heavy_flow.step(heavy, name=f"h{_i}")
heavy_registry.add(heavy_flow.wait_for_event("go", timeout_s=600).step(heavy, name="after"))
heavy_registry.add(Workflow("light").step(heavy, name="l0"))


async def test_a_state_too_big_for_one_record_is_never_lost(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """A run state over 1 MB is snapshotted through the claim-check; the checkpoint never passes its events."""
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=0.3, partitions=1)
    HEAVY_CALLS.clear()
    first = Node(settings, heavy_registry)
    await first.start()
    try:

        def before() -> None:
            with Client(settings.api_url) as c:
                c.start("heavy", None, run_id="big")
                for status in c.watch("big", poll_s=0.05, timeout=60):
                    if status.waiting_for:
                        break

        await asyncio.to_thread(before)
        await asyncio.sleep(1.0)  # a snapshot round with the big state in it

        def another_change() -> None:  # so that another round writes a checkpoint
            with Client(settings.api_url) as c:
                assert c.wait(c.start("light", None), timeout=60).status == "completed"

        await asyncio.to_thread(another_change)
        await asyncio.sleep(1.0)
        assert first.engine is not None and first.engine.snapshots.written > 0
    finally:
        await first.stop()

    second = Node(settings, heavy_registry)
    await second.start()
    try:
        assert second.engine is not None
        for _ in range(100):
            if second.engine.recovered_partitions:
                break
            await asyncio.sleep(0.1)
        checkpoint = second.engine.partitions[0].recovered_from
        assert checkpoint is not None, "recovery read no checkpoint: the test proves nothing"

        def after() -> None:
            with Client(settings.api_url) as c:
                c.resume("big", "go", None)
                assert c.wait("big", timeout=60).status == "completed"

        await asyncio.to_thread(after)
    finally:
        await second.stop()
    log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
    seqs = [e.seq for _, _, e in log if e.key == "big"]
    assert seqs == list(range(1, len(seqs) + 1)), f"seq gap or duplicate: {seqs}"
    assert sorted(HEAVY_CALLS) == ["after", "h0", "h1", "h2", "h3", "h4", "l0"], "a step ran again"
