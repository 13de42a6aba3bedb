"""A role whose loop fails is restarted by its node, with backoff, and the failure shows in /stats and /metrics.

The failures are real ones: a role's Kafka consumer is closed under it while it runs (what a client does when the
broker stays away longer than its timeouts), so its next fetch raises and its loop ends with that error."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.client import Client
from tickflow.node import Node

pytestmark = pytest.mark.integration


async def test_failed_roles_are_restarted_and_runs_go_on(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    await node.start()
    supervisor = asyncio.create_task(node.wait())
    s = node.settings
    try:
        first = await asyncio.to_thread(_run, s.api_url, "before")
        assert first == "completed"
        old_engine, old_worker = node.engine, node.workers[0]
        assert old_engine is not None
        await old_engine.consumer.stop()  # its next poll fails: the engine's loop ends with an error
        await old_worker.consumer.stop()
        deadline = time.monotonic() + 30
        while node.engine is old_engine or node.workers[0] is old_worker:
            assert time.monotonic() < deadline, f"not restarted: {node.failures}"
            assert not supervisor.done(), supervisor
            await asyncio.sleep(0.1)
        assert await asyncio.to_thread(_run, s.api_url, "after") == "completed"

        def observe() -> tuple[dict[str, object], str]:
            with httpx.Client(base_url=s.api_url) as http:
                return http.get("/stats").json(), http.get("/metrics").text

        stats, exposed = await asyncio.to_thread(observe)
        restarts = stats["role_restarts"]
        assert isinstance(restarts, dict)
        assert restarts["engine"]["restarts"] == 1 and restarts["worker:default"]["restarts"] == 1, restarts
        assert restarts["engine"]["last_error"], restarts
        assert 'tickflow_role_restarts_total{role="engine"} 1.0' in exposed
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await node.stop()


def _run(api_url: str, run_id: str) -> str:
    with Client(api_url) as c:
        c.start("math", 1, run_id=run_id)
        return c.wait(run_id, timeout=60).status
