"""No silent skips, end to end: a run whose log the engine cannot fold is quarantined, says why, refuses its inputs
with how to release it, and resumes when an operator releases it; every other run goes on.

Two runs wait for input while the engine is stopped; then one gets an unreadable record appended to its log and the
other an event that skips a seq (a gap). The restarted engine rebuilds the partition: both are quarantined (status
``quarantined`` with the reason), a resume sent to one is dead-lettered with the release command to use, and
``release`` resumes each from its last good state: they finish. A release of a healthy run is refused. A second
restart folds through the releases: nothing is quarantined again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.harness import read_topic, settings_for, spawn_roles
from tests.integration.runtime.test_faults import stop
from tickflow.client import Client
from tickflow.events import DeadLetter, decode, encode, event_id
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics, new_producer, read_partition
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration
APP = "tests.integration.runtime.test_quarantine:registry"


async def echo(value: Any) -> Any:
    return value


registry = Registry()
registry.add(Workflow("waiter").wait_for_event("go", timeout_s=600).step(echo, name="after"))


async def _until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await asyncio.to_thread(check)
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _status(c: Client, run_id: str) -> Any:
    try:
        return c.status(run_id)
    except Exception:
        return None


async def _dead_letters(settings: Settings) -> list[DeadLetter]:
    records = await read_partition(settings.bootstrap, settings.topics.dead_letter, 0)
    return [p for r in records if isinstance(p := decode(r.value).payload, DeadLetter)]


async def test_a_run_whose_log_cannot_be_folded_is_quarantined_until_released(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=0.5)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    node = Node(settings, registry, frozenset({"worker", "projector", "api"}))
    await node.start()
    engine = spawn_roles(settings, "engine", tmp_path / "engine-1.log", app=APP)
    producer = new_producer(settings.bootstrap)
    await producer.start()
    try:
        with Client(settings.api_url) as c:
            for run_id in ("unreadable", "gapped", "healthy"):
                await asyncio.to_thread(c.start, "waiter", None, run_id=run_id)
            for run_id in ("unreadable", "gapped", "healthy"):
                await _until(lambda r=run_id: getattr(_status(c, r), "status", "") == "waiting", f"{run_id} waits")
        stop(engine)

        # The damage, done while no engine runs: an unreadable record, and an event two seqs ahead (a gap).
        log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
        last = [e for _, _, e in log if e.key == "gapped"][-1]
        assert last.seq is not None
        ahead = last.model_copy(update={"seq": last.seq + 2, "id": event_id("gapped", last.seq + 2)})
        await producer.send_and_wait(settings.topics.events, b"\x00 not an event", key=b"unreadable")
        await producer.send_and_wait(settings.topics.events, encode(ahead), key=b"gapped")

        engine = spawn_roles(settings, "engine", tmp_path / "engine-2.log", app=APP)
        with Client(settings.api_url) as c:
            held = {}
            # The projector may see the gap first (it runs on; the engine is only starting) and says what it sees:
            # "the log skips seq …". The engine's own reason replaces it once its RunQuarantined is projected.
            engine_says = {"unreadable": "cannot be read", "gapped": "expected seq"}
            for run_id in ("unreadable", "gapped"):
                held[run_id] = await _until(
                    lambda r=run_id: (s := _status(c, r)) is not None and s.status == "quarantined"
                    and engine_says[r] in s.error_message and s,
                    f"{run_id} to be quarantined by the engine",
                )
            assert "cannot be read" in held["unreadable"].error_message
            assert f"expected seq {last.seq + 1}, got {last.seq + 2}" in held["gapped"].error_message
            assert held["gapped"].error_type == "Quarantined"

            # A snapshot round's checkpoint passes the bad events; a restart still finds both runs held (their
            # quarantine is on the state topic), instead of bringing them back from stale states.
            await asyncio.sleep(2)  # a few snapshot rounds
            stop(engine)
            engine = spawn_roles(settings, "engine", tmp_path / "engine-2b.log", app=APP)
            await _until(
                lambda: (tmp_path / "engine-2b.log").read_text().count(" recovered: ") >= settings.partitions,
                "the restarted engine to recover",
            )
            text = (tmp_path / "engine-2b.log").read_text()
            assert "run unreadable quarantined" in text and "run gapped quarantined" in text, text[-3000:]

            # Its inputs are refused, with what to do; a release of a healthy run is refused too.
            await asyncio.to_thread(c.resume, "unreadable", "go", None, wait=False)
            await asyncio.to_thread(c.release, "healthy")
            letters: list[DeadLetter] = []
            for _ in range(300):  # the projector's letter for the unreadable event may come first: count commands'
                letters = [d for d in await _dead_letters(settings) if d.source_topic == settings.topics.commands]
                if len(letters) >= 2:
                    break
                await asyncio.sleep(0.2)
            reasons = " | ".join(d.reason for d in letters)
            assert "is quarantined" in reasons and "tickflow release unreadable" in reasons, reasons
            assert "'healthy' is not quarantined" in reasons, reasons

            # Released, each resumes from its last good state and finishes.
            for run_id in ("unreadable", "gapped"):
                await asyncio.to_thread(c.release, run_id, "checked the log by hand")
                await _until(lambda r=run_id: getattr(_status(c, r), "status", "") == "waiting", f"{run_id} released")
                await asyncio.to_thread(c.resume, run_id, "go", {"n": run_id})
            for run_id in ("unreadable", "gapped"):
                done = await asyncio.to_thread(c.wait, run_id, timeout=60)
                assert (done.status, done.output) == ("completed", {"n": run_id}), done
            await asyncio.to_thread(c.resume, "healthy", "go", 1)
            assert (await asyncio.to_thread(c.wait, "healthy", timeout=60)).status == "completed"
        stop(engine)

        # A third engine folds through the releases: nothing is quarantined again, nothing is decided twice.
        engine = spawn_roles(settings, "engine", tmp_path / "engine-3.log", app=APP)
        await asyncio.sleep(3)
        found = await check_log(settings)
        found.assert_clean()  # the released stretches are skipped on purpose, not gaps
        assert found.unreadable == 1
        notes = [e for e in found.events if e.type == "RunQuarantined"]
        assert sorted(e.key for e in notes) == ["gapped", "unreadable"], notes
        assert "quarantined" not in (tmp_path / "engine-3.log").read_text()
    finally:
        stop(engine)
        await producer.stop()
        await node.stop()
