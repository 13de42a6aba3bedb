"""Every workflow construct on the real broker and real ClickHouse, through the SDK and the CLI."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for
from tickflow.client import Client
from tickflow.events.errors import ResumeRefused, RunNotFound
from tickflow.node import Node
from tickflow.runtime import step_logs
from tickflow.runtime.kafka import read_partition
from tickflow.runtime.snapshots import Gone, decode_snapshot

pytestmark = pytest.mark.integration


def sdk(node: Node) -> Client:
    return Client(node.settings.api_url)


def cli(node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TICKFLOW_API_PORT": str(node.settings.api_port)}
    return subprocess.run(
        [sys.executable, "-m", "tickflow.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_parallel_sleep_and_step_logs(node: Node) -> None:
    step_logs.install()  # pytest swaps sys.stdout between test phases; put the tee back for this one

    def scenario() -> None:
        with sdk(node) as c:
            final = c.wait(c.start("fan", 5), timeout=60)
            assert final.status == "completed", final
            assert final.output == {"left": 6, "right": 10}
            events = c.events(final.run_id)
            said = next(e for e in events if e["type"] == "StepCompleted" and e["payload"]["path"] == "say")
            assert "saying {'left': 6, 'right': 10}" in said["payload"]["logs"]
            assert "WARNING flows: said" in said["payload"]["logs"]
            fired = next(e for e in events if e["type"] == "NodeCompleted" and e["payload"]["path"] == "sleep1")
            started = next(e for e in events if e["type"] == "TimerStarted")
            assert fired["occurred_at_ms"] >= started["payload"]["due_at_ms"]  # never early

    await asyncio.to_thread(scenario)


async def test_suspend_and_resume_through_sdk_and_cli(node: Node) -> None:
    def scenario() -> None:
        with sdk(node) as c:
            rid = c.start("approval", 1)
            for status in c.watch(rid, poll_s=0.05, timeout=30):
                if status.status == "waiting":
                    break
            # A run waiting for approval after its first step says so, with the event and the wait node's path,
            # and names no finished step as current: in the SDK...
            assert (status.waiting_for, status.waiting_path, status.current_step) == ("approve", "approve", "")
            assert [(w.path, w.event) for w in status.waits] == [("approve", "approve")]
            assert status.steps_completed == 1  # 'prepare' ran and finished
            assert rid in {r.run_id for r in c.list_runs(status="waiting", workflow="approval")}
            with pytest.raises(TimeoutError, match="it waits for 'approve' at 'approve'; resume it"):
                c.wait(rid, timeout=0.3)
            # ... over HTTP ...
            with httpx.Client(base_url=node.settings.api_url) as h:
                shown = h.get(f"/runs/{rid}").json()
                assert (shown["status"], shown["waiting_for"], shown["waiting_path"], shown["current_step"]) == (
                    "waiting", "approve", "approve", ""
                )
                listed = h.get("/runs", params={"status": "waiting", "workflow": "approval"}).json()
                assert rid in {r["run_id"] for r in listed}
                assert h.get("/runs", params={"status": "asleep"}).status_code == 422  # not a status there is
            # ... and in the CLI.
            out = cli(node, "status", rid)
            assert out.returncode == 0, out.stderr
            shown = json.loads(out.stdout)
            assert (shown["status"], shown["waiting_for"], shown["waiting_path"]) == ("waiting", "approve", "approve")
            out = cli(node, "runs", "--status", "waiting", "--workflow", "approval", "--since", "1h")
            assert out.returncode == 0, out.stderr
            line = next(line for line in out.stdout.splitlines() if line.startswith(rid))
            assert line.split()[2] == "waiting" and line.endswith("waits for approve at approve"), line
            with pytest.raises(ResumeRefused, match="'approved' is a required property"):
                c.resume(rid, "approve", {"by": "ann"})
            with pytest.raises(ResumeRefused, match="not waiting for 'payment'; it waits for: approve"):
                c.resume(rid, "payment", {})
            assert c.status(rid).status == "waiting"  # refusals leave the run suspended
            bad = cli(node, "resume", rid, "approve", "--payload", '{"approved": "maybe", "by": 1}')
            assert bad.returncode == 1 and "does not match the wait's schema" in bad.stderr
            ok = cli(node, "resume", rid, "approve", "--payload", '{"approved": true, "by": "ann"}')
            assert ok.returncode == 0, ok.stderr
            final = c.wait(rid, timeout=30)
            assert final.status == "completed" and final.output == "shipped after ann approved"
            assert (final.waiting_for, final.waiting_path, final.waits, final.current_step) == ("", "", [], "")
            again = cli(node, "resume", rid, "approve", "--payload", '{"approved": true, "by": "bob"}')
            assert again.returncode == 1 and "(completed) is not waiting" in again.stderr

    await asyncio.to_thread(scenario)


async def test_children_fan_out_and_join(node: Node) -> None:
    def scenario() -> None:
        with sdk(node) as c:
            final = c.wait(c.start("fanout", list(range(10))), timeout=60)
            assert final.status == "completed" and final.output == sum(i * i for i in range(10))
            kids = c.list_runs(workflow="square", limit=100)
            assert len([k for k in kids if k.run_id.startswith(final.run_id + ":")]) == 10

    await asyncio.to_thread(scenario)


async def test_cancel_stops_the_run_and_its_children(node: Node) -> None:
    def scenario() -> str:
        with sdk(node) as c:
            rid = c.start("parent_of_stuck", 1)
            child = f"{rid}:child1"
            for status in c.watch(child, poll_s=0.05, timeout=30):
                if status.current_step == "slow_forever":
                    break
            out = cli(node, "cancel", rid, "--reason", "changed my mind")
            assert out.returncode == 0, out.stderr
            parent = c.wait(rid, timeout=30)
            assert parent.status == "cancelled" and parent.error_message == "changed my mind"
            kid = c.wait(child, timeout=30)
            assert kid.status == "cancelled" and "parent run" in kid.error_message
            c.cancel(rid)  # cancelling again changes nothing
            return child

    child = await asyncio.to_thread(scenario)
    tasks = await read_topic(node.settings.bootstrap, node.topics.tasks(), node.settings.partitions)
    assert any(e.type == "CancelStep" and e.key == child for _, _, e in tasks)


async def test_vacuum_removes_finished_runs_from_the_projections(node: Node) -> None:
    def scenario() -> None:
        with sdk(node) as c:
            done = c.wait(c.start("math", 1), timeout=60)
            waiting = c.start("approval", 1)
            for status in c.watch(waiting, poll_s=0.05, timeout=30):
                if status.waiting_for:
                    break
            out = cli(node, "vacuum", "--older-than-days", "0")
            assert out.returncode == 0 and "finished runs removed" in out.stdout, out.stderr
            with pytest.raises(RunNotFound):
                c.status(done.run_id)
            assert c.status(waiting).status == "waiting"  # unfinished runs are never vacuumed

    await asyncio.to_thread(scenario)


async def test_one_run_at_a_time_per_key(node: Node) -> None:
    def scenario() -> list[str]:
        with sdk(node) as c:
            ids = [c.start("per_customer", {"customer": "acme", "i": i}, run_id=f"acme-{i}") for i in range(3)]
            other = c.start("per_customer", {"customer": "zeta"}, run_id="zeta-0")
            for rid in [*ids, other]:
                assert c.wait(rid, timeout=60).status == "completed"
            return ids

    ids = await asyncio.to_thread(scenario)
    log = await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)
    spans: dict[str, list[int | None]] = {}
    for _, _, e in log:
        if e.key in ids and e.type == "RunAdmitted":
            spans[e.key] = [e.occurred_at_ms, None]
        if e.key in ids and e.type == "RunCompleted":
            spans[e.key][1] = e.occurred_at_ms
    ordered = sorted(spans.values())
    assert len(ordered) == 3
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered)), f"runs overlapped: {ordered}"
    slot_events = [e.type for _, _, e in log if e.key == "slot:per_customer:acme"]
    assert slot_events.count("SlotGranted") == 3 and slot_events.count("SlotReleased") == 3


async def test_finished_runs_leave_engine_memory_after_the_retention(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(
        prefix, kafka_bootstrap, tmp_path, free_port(), state_retention_s=1.0, snapshot_interval_s=0.3
    )
    n = Node(settings, registry)
    await n.start()
    try:

        def scenario() -> tuple[str, str]:
            with sdk(n) as c:
                done = c.wait(c.start("math", 1), timeout=60).run_id
                waiting = c.start("approval", 1)
                for status in c.watch(waiting, poll_s=0.05, timeout=30):
                    if status.waiting_for:
                        break
                return done, waiting

        done, waiting = await asyncio.to_thread(scenario)
        assert n.engine is not None
        held = lambda rid: any(rid in part.runs for part in n.engine.partitions.values())  # noqa: E731
        assert held(done) and held(waiting)
        await asyncio.sleep(2.5)
        assert not held(done) and held(waiting)  # only finished runs expire
        snapshots = [
            r
            for p in range(settings.partitions)
            for r in await read_partition(settings.bootstrap, settings.topics.state, p)
            if r.key == done.encode()
        ]
        # Its full state is replaced by a marker of a few bytes that keeps its id taken (later, a tombstone).
        last = snapshots[-1].value if snapshots else None
        assert last is not None and len(last) < 100 and isinstance(decode_snapshot(last), Gone)
    finally:
        await n.stop()


async def test_pool_concurrency_changes_at_runtime_through_the_cli(node: Node) -> None:
    [worker] = node.workers
    assert worker.concurrency == node.settings.worker_concurrency
    out = await asyncio.to_thread(cli, node, "pool-limit", "default", "3")
    assert out.returncode == 0, out.stderr
    for _ in range(100):
        if worker.concurrency == 3:
            break
        await asyncio.sleep(0.1)
    assert worker.concurrency == 3
    bad = await asyncio.to_thread(cli, node, "pool-limit", "default", "0")
    assert bad.returncode == 1 and "limit" in bad.stderr
