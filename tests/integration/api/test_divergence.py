"""The divergence diff on the real broker: `replay check` as a deploy gate (exit codes), `replay diff`, the
``/runs/{id}/recorded`` route and the SDK over it, and workflow versions side by side in one engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.conftest import free_port
from tests.integration.harness import settings_for
from tickflow.cli import main as cli
from tickflow.client import Client
from tickflow.node import Node
from tickflow.workflow import Flow, Registry, Workflow, named

pytestmark = pytest.mark.integration


@named("gate.check")
async def check(value: dict[str, Any]) -> dict[str, Any]:
    return value


@named("gate.review")
async def review(value: dict[str, Any]) -> dict[str, Any]:
    return {**value, "reviewed": True}


@named("gate.ship")
async def ship(value: Any) -> str:
    return "shipped"


@named("gate.is_big")
def is_big(scope: Any) -> bool:
    return bool(scope["value"]["total"] > 100)


@named("gate.is_big")
def is_big_from_10(scope: Any) -> bool:
    return bool(scope["value"]["total"] > 10)


def gate_v1(condition: Any = is_big, *, with_ship: bool = True) -> Workflow:
    flow = Workflow("gate").step(check).branch((condition, Flow().step(review))).wait_for_event("go", timeout_s=600)
    return flow.step(ship) if with_ship else flow


def gate_v2() -> Workflow:
    return Workflow("gate", version=2).step(review).step(check)


def code(*workflows: Workflow) -> Registry:
    reg = Registry()
    for wf in workflows:
        reg.add(wf)
    return reg


deployed = code(gate_v1(), gate_v2())
# What a CI job would point --app at (module:attribute):
same = code(gate_v1(), gate_v2())
changed_condition = code(gate_v1(is_big_from_10), gate_v2())
without_ship = code(gate_v1(with_ship=False))
only_v2 = code(gate_v2())


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), deployed)
    await n.start()
    yield n
    await n.stop()


def runs(c: Client) -> tuple[str, str, str]:
    """A finished v1 run (total 50: no review), a v1 run in flight (waiting for "go"), a v2 run (the default)."""
    done = c.start("gate", {"total": 50}, run_id="done", version=1)
    waiting = c.start("gate", {"total": 500}, run_id="waiting", version=1)
    newest = c.start("gate", {"total": 5}, run_id="newest")
    for rid in (done, waiting):
        deadline = time.monotonic() + 30
        while not any(e["type"] == "WaitStarted" for e in c.events(rid)):
            assert time.monotonic() < deadline, f"{rid} never reached its wait"
            time.sleep(0.1)
    c.resume(done, "go", {"ok": True})
    assert c.wait(done, timeout=30).status == "completed"
    assert c.wait(newest, timeout=30).status == "completed"
    return done, waiting, newest


def invoke(node: Node, *args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"TICKFLOW_API_PORT": str(node.settings.api_port)})


APP = "tests.integration.api.test_divergence"


async def test_replay_check_gates_a_deploy_by_its_exit_code(node: Node) -> None:
    def scenario() -> None:
        with Client(node.settings.api_url) as c:
            done, waiting, newest = runs(c)
            # Versions: the v1 runs pinned v1, the one started without a version the newest.
            versions = {rid: c.events(rid)[0]["payload"]["spec"].get("version", 1) for rid in (done, waiting, newest)}
            assert versions == {"done": 1, "waiting": 1, "newest": 2}
            assert [e["payload"]["path"] for e in c.events(newest) if e["type"] == "StepScheduled"] == [
                "review", "check"]

        ok = invoke(node, "replay", "check", "--app", f"{APP}:same", "--workflow", "gate", "--last", "10",
                    "--in-flight")
        assert ok.exit_code == 0, ok.output
        assert "3 runs of 'gate' re-driven (pinned specs): 0 diverge" in ok.output and "identical" in ok.output

        diverges = invoke(node, "replay", "check", "--app", f"{APP}:changed_condition", "--workflow", "gate",
                          "--last", "10")
        assert diverges.exit_code == 1, diverges.output
        # total 50 took no review before; the changed condition would review it, and the in-flight 500 still
        # reviews (no divergence there): exactly the finished run diverges, at its branch.
        assert "done: diverges at seq" in diverges.output and "BranchChosen" in diverges.output
        assert "waiting: diverges" not in diverges.output

        missing = invoke(node, "replay", "check", "--app", f"{APP}:without_ship", "--workflow", "gate", "--in-flight")
        assert missing.exit_code == 1, missing.output
        assert "step function 'gate.ship': 1 run(s), e.g. waiting" in missing.output

        # The v1 runs in flight keep v1: code with only v2 lacks what they still need.
        gone = invoke(node, "replay", "check", "--app", f"{APP}:only_v2", "--workflow", "gate", "--in-flight")
        assert gone.exit_code == 1 and "gate.ship" in gone.output, gone.output

        same_run = invoke(node, "replay", "diff", "done", "--app", f"{APP}:same")
        assert same_run.exit_code == 0 and "done: identical" in same_run.output, same_run.output
        # Started afresh on what the code would pin for its StartRun (version 1, which only_v2 lacks): rejected.
        fresh = invoke(node, "replay", "diff", "done", "--app", f"{APP}:only_v2", "--spec", "registry")
        assert fresh.exit_code == 1 and "done: diverges at seq 1" in fresh.output, fresh.output
        assert "unknown version 1 of workflow 'gate'" in fresh.output
        newest_fresh = invoke(node, "replay", "diff", "newest", "--app", f"{APP}:only_v2", "--spec", "registry")
        assert newest_fresh.exit_code == 0, newest_fresh.output

        usage = invoke(node, "replay", "check", "--app", f"{APP}:same", "--workflow", "gate")
        assert usage.exit_code == 2 and "--last N, --in-flight" in usage.output

    await asyncio.to_thread(scenario)


async def test_the_recorded_route_and_the_sdk(node: Node) -> None:
    def scenario() -> None:
        with Client(node.settings.api_url) as c:
            rid = c.start("gate", {"total": 500}, version=1)
            deadline = time.monotonic() + 30
            while not any(e["type"] == "WaitStarted" for e in c.events(rid)):
                assert time.monotonic() < deadline
                time.sleep(0.1)
            c.resume(rid, "go", {"ok": True})
            assert c.wait(rid, timeout=30).status == "completed"
            rec = c.recorded(rid)
            assert [e["seq"] for e in rec.events] == list(range(1, len(rec.events) + 1))
            types = sorted({i["type"] for i in rec.inputs})
            assert types == ["ResumeRun", "StartRun", "StepSucceeded"] and not rec.not_found
            assert len([i for i in rec.inputs if i["type"] == "StepSucceeded"]) == 3  # check, review, ship
            assert c.diff(rid, same).identical
            assert c.diff(rid, changed_condition).identical  # 500 is big by either condition
            report = c.check(same, "gate", last=5)
            assert report.ok and [r.run_id for r in report.runs] == [rid]
            with pytest.raises(ValueError, match="which runs"):
                c.check(same, "gate")
        answer = httpx.get(f"{node.settings.api_url}/runs/nope/recorded")
        assert answer.status_code == 404 and "no events of run 'nope'" in answer.text

    await asyncio.to_thread(scenario)
