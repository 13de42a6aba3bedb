"""Replay on the real broker and real ClickHouse: time travel over HTTP, forks that skip completed steps, and
the engine's live state compared with a refold of its partitions while runs are in flight."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from tests.conftest import free_port
from tests.integration.harness import read_topic, settings_for
from tickflow.cli import main as cli
from tickflow.client import Client
from tickflow.core.decider import fold
from tickflow.events import RunForked
from tickflow.events.errors import RunNotFound, TickflowError
from tickflow.node import Node
from tickflow.runtime.replay import diff_states
from tickflow.workflow import Registry, Workflow, current_step

pytestmark = pytest.mark.integration

#: Idempotency keys (run/path: the same for every attempt of a step) of every step body executed in this process.
executed: list[str] = []


async def first(value: int) -> int:
    executed.append(current_step().idempotency_key)
    return value + 1


async def second(value: int) -> int:
    executed.append(current_step().idempotency_key)
    await asyncio.sleep(0.2)  # long enough to catch runs in flight
    return value * 10


async def third(value: int) -> int:
    executed.append(current_step().idempotency_key)
    return value + 3


async def big(size: int) -> str:
    return "x" * size


async def length(value: str) -> int:
    return len(value)


registry = Registry()
registry.add(Workflow("trio").step(first).step(second).step(third))
registry.add(Workflow("held").step(first).wait_for_event("go", timeout_s=600).step(third))
registry.add(Workflow("hefty").step(big).step(length))


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    # Outputs stay inline (no claim-check), so a long enough history exceeds the record size limit (and its fork
    # travels through the claim-check).
    n = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), offload_bytes=2_000_000), registry)
    await n.start()
    yield n
    await n.stop()


def seq_of(c: Client, run_id: str, type_: str, path: str) -> int:
    return next(int(e["seq"]) for e in c.events(run_id) if e["type"] == type_ and e["payload"].get("path") == path)


async def test_time_travel_over_http_equals_the_fold_of_the_log(node: Node) -> None:
    def scenario() -> tuple[str, dict[int, Any]]:
        with Client(node.settings.api_url) as c:
            rid = c.start("trio", 4)
            assert c.wait(rid, timeout=60).output == 53
            last = c.events(rid)[-1]["seq"]
            states = {n: c.state_at(rid, n) for n in (1, 3, 5, last)}
            assert c.state_at(rid) == states[last]
            return rid, states

    rid, states = await asyncio.to_thread(scenario)
    log = [e for _, _, e in await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)]
    mine = [e for e in log if e.key == rid]
    for n, state in states.items():
        assert diff_states(state, fold(rid, mine[:n])) == [], n
    assert states[1].status == "running" and set(states[1].nodes) == {"__root__"}  # RunStarted only
    assert states[3].nodes["first"].output == 5 and "second" not in states[3].nodes
    assert states[5].nodes["second"].output == 50 and states[5].nodes["second"].status == "done"
    assert states[max(states)].status == "completed" and states[max(states)].output == 53

    env = {"TICKFLOW_API_PORT": str(node.settings.api_port)}
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["replay", "state", rid, "--at-seq", "3"], env=env)
    assert result.exit_code == 0, result.output
    assert '"seq": 3' in result.output and '"spec"' not in result.output


async def test_a_fork_skips_steps_completed_before_the_fork_point(node: Node) -> None:
    def scenario() -> dict[str, int]:
        with Client(node.settings.api_url) as c:
            rid = c.start("trio", 1, run_id="source-1")
            assert c.wait(rid, timeout=60).output == 23
            done = seq_of(c, rid, "StepCompleted", "first")  # first finished, second not yet scheduled
            in_flight = seq_of(c, rid, "StepScheduled", "second")  # second running at the fork point
            assert c.fork(rid, done, new_run_id="fork-done") == "fork-done"
            assert c.fork(rid, in_flight, new_run_id="fork-flight") == "fork-flight"
            for fid in ("fork-done", "fork-flight"):
                final = c.wait(fid, timeout=60)
                assert final.status == "completed" and final.output == 23, final
            assert c.fork(rid, done, new_run_id="fork-done") == "fork-done"  # the same fork again: forked once
            before = c.state_at(rid, done)
            after = c.state_at("fork-done", done)
            # The fork's state at the fork point is the source's, but for its id and the times moved to the fork's.
            assert diff_states(before, after) == ["run_id", "started_at_ms", "updated_at_ms"]
            return {"done": done, "in_flight": in_flight}

    seqs = await asyncio.to_thread(scenario)
    ran: dict[str, list[str]] = defaultdict(list)
    for key in executed:
        run_id, path = key.split("/", 1)
        ran[run_id].append(path)
    assert ran["source-1"] == ["first", "second", "third"]
    assert ran["fork-done"] == ["second", "third"]  # first completed before the fork: not executed again
    assert ran["fork-flight"] == ["second", "third"]  # second was in flight: issued again under the fork's id

    log = await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)
    markers = [(e.key, e.seq, e.payload) for _, _, e in log if isinstance(e.payload, RunForked)]
    assert sorted((k, s) for k, s, _ in markers) == [
        ("fork-done", seqs["done"] + 1),
        ("fork-flight", seqs["in_flight"] + 1),
    ]
    assert all(p.source_run_id == "source-1" for _, _, p in markers)


async def test_bad_replay_requests_get_4xx_with_reasons(node: Node) -> None:
    def scenario() -> None:
        with Client(node.settings.api_url) as c, httpx.Client(base_url=node.settings.api_url) as h:
            rid = c.start("trio", 2, run_id="bad-1")
            assert c.wait(rid, timeout=60).status == "completed"
            last = c.events(rid)[-1]["seq"]
            with pytest.raises(RunNotFound, match="no events of run 'nobody'"):
                c.state_at("nobody", 1)
            r = h.get(f"/runs/{rid}/state", params={"at_seq": 0})
            assert r.status_code == 422 and "at_seq must be at least 1" in r.json()["detail"]
            r = h.get(f"/runs/{rid}/state", params={"at_seq": last + 1})
            assert r.status_code == 422 and f"there is no seq {last + 1}" in r.json()["detail"]
            r = h.post("/runs/nobody/fork", json={"at_seq": 1})
            assert r.status_code == 404
            r = h.post(f"/runs/{rid}/fork", json={"at_seq": last})
            assert r.status_code == 409 and "completed at seq" in r.json()["detail"]
            r = h.post(f"/runs/{rid}/fork", json={"at_seq": last + 5})
            assert r.status_code == 422
            other = c.start("trio", 3, run_id="bad-2")
            c.wait(other, timeout=60)
            r = h.post(f"/runs/{rid}/fork", json={"at_seq": 2, "run_id": other})
            assert r.status_code == 409 and "already taken by another run" in r.json()["detail"]
            with pytest.raises(TickflowError, match="409"):
                c.fork(rid, 2, new_run_id=rid)

            hefty = c.start("hefty", 600_000)
            assert c.wait(hefty, timeout=60).output == 600_000
            at = seq_of(c, hefty, "StepScheduled", "length")  # its input repeats the 600 kB output: > 1 MB
            r = h.post(f"/runs/{hefty}/fork", json={"at_seq": at, "run_id": "hefty-fork"})
            assert r.status_code == 202, r.text  # the history went through the claim-check (it was a 413)
            assert c.wait("hefty-fork", timeout=60).output == 600_000

    await asyncio.to_thread(scenario)


async def test_verify_engine_while_runs_are_in_flight(node: Node) -> None:
    engine = node.engine
    assert engine is not None

    def start_many() -> list[str]:
        with Client(node.settings.api_url) as c:
            held = [c.start("held", i, run_id=f"held-{i}") for i in range(3)]
            busy = [c.start("trio", i) for i in range(12)]
            c.wait(busy[0], timeout=60)
            return held + busy

    ids = await asyncio.to_thread(start_many)
    report = await asyncio.to_thread(lambda: Client(node.settings.api_url).verify_engine())
    differing = [(p.partition, d) for p in report.partitions for d in p.differing]
    missing = [(p.partition, p.missing_in_log, p.missing_live) for p in report.partitions
               if p.missing_in_log or p.missing_live]
    assert report.ok, f"differing: {differing}; missing: {missing}"
    assert report.runs_compared >= 3 and report.equal == report.runs_compared
    assert sum(p.started_after_capture + p.runs_compared for p in report.partitions) >= 3
    live = engine.partitions.values()
    in_flight = sum(1 for part in live for s in part.runs.values() if s.run_id in ids and not s.terminal)
    assert in_flight >= 3  # the held runs wait for an event: the check ran with runs in progress

    # The check can fail: a live state that is not the fold of its events is reported with the field.
    held, state = next((part, s) for part in engine.partitions.values() for s in part.runs.values()
                       if s.run_id == "held-0")
    held.runs["held-0"] = replace(state, input="tampered")
    try:
        result = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["replay", "verify-engine"],
            env={"TICKFLOW_API_PORT": str(node.settings.api_port)},
        )
    finally:
        held.runs["held-0"] = state
    assert result.exit_code == 1 and "held-0: first difference at input" in result.output, result.output

    result = await asyncio.to_thread(
        CliRunner().invoke, cli, ["replay", "verify-engine"], env={"TICKFLOW_API_PORT": str(node.settings.api_port)}
    )
    assert result.exit_code == 0 and "live state equals the refold" in result.output, result.output
