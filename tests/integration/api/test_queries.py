"""Queries on the real stack: a run's timeline with every attempt, the stack board, usage, run rates, step
latency and error rates — through the SDK, HTTP and the CLI."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from tests.contract.projections.test_projection_facts import scenario
from tests.integration.test_constructs import cli
from tickflow.client import Client
from tickflow.events import Envelope, encode
from tickflow.events.schemas import Payload
from tickflow.node import Node

pytestmark = pytest.mark.integration
RUNS = 4


async def write_agent_events(node: Node) -> None:
    """Stand in for the engine of an agent run and a stack (their producers land with the agents work): the
    projection and the queries read these exactly as they would read the engine's."""
    producer = AIOKafkaProducer(bootstrap_servers=node.settings.bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    now = int(time.time() * 1000)
    try:
        for _, _, env in scenario():
            key = "agent-r1" if env.key == "r1" else env.key
            payload: Payload = env.payload
            moved = Envelope.wrap(payload, id=f"{key}/{env.seq}", key=key, seq=env.seq, occurred_at_ms=now)
            await producer.send_and_wait(node.settings.topics.events, encode(moved), key=key.encode())
    finally:
        await producer.stop()


async def test_timeline_board_and_analytics(node: Node) -> None:
    await write_agent_events(node)

    def scenario_sdk() -> None:
        with Client(node.settings.api_url) as c:
            ids = [c.start("math", i) for i in range(RUNS)]
            for rid in ids:
                assert c.wait(rid, timeout=60).status == "completed"
            deadline = time.monotonic() + 30
            while c.stats()["projector"]["lag"] and time.monotonic() < deadline:
                time.sleep(0.2)

            steps = c.timeline(ids[0])["steps"]
            assert [(s["path"], s["attempt"], s["status"]) for s in steps] == [
                ("add_one", 1, "completed"),
                ("double", 1, "completed"),
                ("flaky", 1, "failed"),
                ("flaky", 2, "completed"),
            ]
            failed = steps[2]
            assert failed["error_type"] == "ConnectionError" and failed["will_retry"] is True
            assert all(s["finished_at_ms"] >= s["scheduled_at_ms"] > 0 for s in steps)

            latency = {(r["workflow"], r["step"]): r for r in c.analytics("steps", workflow="math")}
            flaky = latency[("math", "flaky")]
            assert (flaky["attempts"], flaky["failures"], flaky["failure_rate"]) == (2 * RUNS, RUNS, 0.5)
            assert 0 < flaky["p50_ms"] <= flaky["p99_ms"]
            rates = c.analytics("runs", workflow="math", bucket="total")
            assert [(r["started"], r["completed"], r["failed"]) for r in rates] == [(RUNS, RUNS, 0)]

            usage = {r["model"]: r for r in c.analytics("usage", by="model", bucket="total")}
            assert (usage["m1"]["calls"], usage["m1"]["errors"]) == (1, 1)
            assert (usage["m2"]["tokens_in"], usage["m2"]["tokens_out"], usage["m2"]["fallbacks"]) == (100, 20, 1)
            by_stack = c.analytics("usage", by="stack", bucket="minute")
            assert sum(r["calls"] for r in by_stack if r["stack"] == "s1") == 2
            errors = c.analytics("errors")
            assert {m["model"]: m["error_rate"] for m in errors["llm"]} == {"m1": 1.0, "m2": 0.0}

            board = c.stacks()
            assert [(s["stack_id"], s["status"], s["paused_by"], s["tokens_used"]) for s in board] == [
                ("s1", "paused", "budget", 120)
            ]
            detail = c.stack("s1")
            assert [(t["tick"], t["status"]) for t in detail["ticks"]] == [(2, "skipped"), (1, "completed")]
            agent_timeline = c.timeline("agent-r1")
            assert [(x["model"], x["outcome"], x["fallback"]) for x in agent_timeline["llm_calls"]] == [
                ("m1", "rate_limited", False),
                ("m2", "ok", True),
            ]

            bad = httpx.get(f"{node.settings.api_url}/analytics/usage", params={"by": "color"})
            assert bad.status_code == 422 and "by" in bad.text
            empty = httpx.get(f"{node.settings.api_url}/analytics/runs", params={"since_ms": 10, "until_ms": 5})
            assert empty.status_code == 422 and "must be after" in empty.text

    await asyncio.to_thread(scenario_sdk)

    out = await asyncio.to_thread(cli, node, "stacks")
    assert out.returncode == 0 and "s1" in out.stdout and "budget" in out.stdout, out.stderr
    out = await asyncio.to_thread(cli, node, "analytics", "usage", "--by", "stack", "--since", "1h")
    assert out.returncode == 0, out.stderr
    assert [r["calls"] for r in json.loads(out.stdout) if r["stack"] == "s1"] == [2]
    out = await asyncio.to_thread(cli, node, "timeline", "agent-r1")
    assert out.returncode == 0 and "(fallback)" in out.stdout, out.stderr
