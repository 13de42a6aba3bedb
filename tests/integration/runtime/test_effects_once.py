"""The docs' recipe for exactly-once external effects (docs/workflows.md), proven: a step charges a fake payment
service under ``current_step().idempotency_key``; attempts time out (the engine retries them, and cancels the late
ones) and the worker is killed with SIGKILL mid-way and restarted. The service counts requests and effects: every
run's charge is made once, however many attempts and re-runs asked for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.harness import http_service, settings_for, spawn_roles
from tickflow.client import Client
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics
from tickflow.workflow import Registry, Workflow, current_step

pytestmark = pytest.mark.integration
APP = "tests.integration.runtime.test_effects_once:registry"
SERVICE_ENV = "TICKFLOW_TEST_PAYMENTS_URL"
RUNS = 12


async def charge(order: dict[str, Any]) -> dict[str, Any]:
    """The docs' recipe: the external call carries the step's idempotency key; the service applies a key once.
    The first attempt of every third order stalls past the step's timeout, so the engine retries it."""
    step = current_step()
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(os.environ[SERVICE_ENV], json={"key": step.idempotency_key, "amount": order["amount"]})
    if step.attempt == 1 and order["n"] % 3 == 0:
        await asyncio.sleep(3)  # past timeout_s: the engine fails this attempt, cancels it and schedules another
    await asyncio.sleep(0.3)  # a window for the SIGKILL while charges are in flight
    return dict(answer.json())


registry = Registry()
# Enough attempts to outlast the worker's restart: the engine times each out after 2.5 s while no worker runs.
registry.add(Workflow("pay").step(charge, timeout_s=1.5, max_attempts=20, backoff_s=0.1))


@contextmanager
def payment_service() -> Iterator[tuple[str, Counter[str], Counter[str]]]:
    """A payment API that applies each idempotency key once: (url, requests by key, effects by key)."""
    requests: Counter[str] = Counter()
    effects: Counter[str] = Counter()
    lock = threading.Lock()

    def charge_once(raw: bytes) -> tuple[str, bytes]:
        body = json.loads(raw)
        with lock:
            requests[body["key"]] += 1
            if body["key"] not in effects:
                effects[body["key"]] += 1
        return "application/json", json.dumps({"charged": body["amount"], "key": body["key"]}).encode()

    with http_service(charge_once) as port:
        yield f"http://127.0.0.1:{port}/charge", requests, effects


async def test_a_charge_is_made_once_through_timeouts_and_a_kill(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    with payment_service() as (url, requests, effects):
        monkeypatch.setenv(SERVICE_ENV, url)
        worker = spawn_roles(settings, "worker", tmp_path / "worker-1.log", app=APP)
        node = Node(settings, registry, frozenset({"engine", "projector", "api"}))
        await node.start()
        try:
            with Client(settings.api_url) as c:
                ids = [await asyncio.to_thread(c.start, "pay", {"n": n, "amount": 10 + n}, run_id=f"pay-{n}")
                       for n in range(RUNS)]  # the API answers on this loop: the client waits in a thread
                deadline = time.monotonic() + 60
                while sum(requests.values()) < RUNS // 2 and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                worker.send_signal(signal.SIGKILL)  # some charges made, their results not yet reported
                worker.wait(10)
                killed_after = sum(requests.values())
                worker = spawn_roles(settings, "worker", tmp_path / "worker-2.log", app=APP)
                finals = [await asyncio.to_thread(c.wait, run_id, timeout=120) for run_id in ids]
        finally:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(15)
            await node.stop()
    assert [f.status for f in finals] == ["completed"] * RUNS, [(f.run_id, f.status, f.error) for f in finals]
    keys = {f"pay-{n}/charge" for n in range(RUNS)}
    assert set(effects) == keys and all(effects[k] == 1 for k in keys), effects  # one charge per run
    retried = [k for k in keys if requests[k] > 1]
    assert retried, f"no charge was asked for twice ({killed_after} requests before the kill): this proved nothing"
    assert sum(requests.values()) > RUNS  # attempts and re-runs asked again; the service charged once each
    assert all(f.output["key"] == f.run_id + "/charge" for f in finals)
