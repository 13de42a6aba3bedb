"""Read-your-writes: a run the API has just accepted answers ``pending`` (never 404) until its first projection lands,
through HTTP, the SDK and the CLI; a run nobody started is still a 404 with its code.

No engine runs here, so the start is never projected and "just accepted" lasts as long as the test needs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.cli import main
from tickflow.client import Client
from tickflow.events.errors import RunNotFound
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration


async def test_a_just_accepted_run_is_pending_not_missing(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    node = Node(settings, registry, frozenset({"api", "projector"}))
    await node.start()
    try:

        def through_the_sdk() -> None:
            with Client(settings.api_url) as c:
                run_id = c.start("slow10", {"n": 0}, run_id="fresh-1")
                status = c.status(run_id)
                assert (status.status, status.workflow, status.run_id) == ("pending", "slow10", "fresh-1")
                assert c.resume(run_id, "go", None, wait=False)  # commands to it are accepted too
                with pytest.raises(RunNotFound):
                    c.status("never-started")

        await asyncio.to_thread(through_the_sdk)
        async with httpx.AsyncClient(base_url=settings.api_url) as http:
            answer = await http.get("/runs/fresh-1")
            assert answer.status_code == 200 and answer.json()["status"] == "pending"
            missing = await http.get("/runs/never-started")
            assert missing.status_code == 404 and missing.json()["code"] == "run_not_found"
        port = str(settings.api_port)
        result = await asyncio.to_thread(
            CliRunner().invoke, main, ["status", "fresh-1"], env={"TICKFLOW_API_PORT": port}, catch_exceptions=False
        )
        assert result.exit_code == 0 and "pending" in result.output, result.output
    finally:
        await node.stop()
