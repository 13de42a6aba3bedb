"""Recovery from snapshots + the log's tail equals the fold of the whole log, and runs carry on from it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for
from tickflow.client import Client
from tickflow.core.decider import fold
from tickflow.core.slots import is_slot
from tickflow.events import Envelope
from tickflow.node import Node

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
        assert first.engine is not None and first.engine.snapshots_written > 0
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
        assert any(c for c in engine.recovered_from.values()), "recovery read no checkpoint: it folded everything"
        log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
        by_run: dict[str, list[Envelope]] = defaultdict(list)
        for _, _, e in log:
            if not is_slot(e.key):
                by_run[e.key].append(e)
        live = {rid: st for runs in engine.runs.values() for rid, st in runs.items()}
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
