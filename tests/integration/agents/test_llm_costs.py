"""Honest LLM costs on the real broker and chDB: an agent whose model has no price shows its cost as unknown —
never $0 — through the run timeline, the usage analytics, the stacks API, the dashboard's run panel and stack board,
and the CLI; an agent on the demo's illustratively priced offline model shows a non-zero cost labelled
illustrative."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tests.integration.test_constructs import cli
from tests.llm_server import running_llm_server
from tickflow.client import Client
from tickflow.demo.workflows import DEMO_ILLUSTRATIVE_PRICE
from tickflow.events.errors import ApiError
from tickflow.node import Node

pytestmark = pytest.mark.integration


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    """Chain ``http`` (the forecaster agent) on a real OpenAI-compatible server's model with no price and no usage
    reported; chain ``default`` (the librarian agent) on the offline model at the demo's illustrative price."""
    with running_llm_server() as server:
        config = tmp_path / "llm.json"
        config.write_text(json.dumps({
            "providers": [{"name": "local", "base_url": server.base_url, "timeout_s": 10, "retry": {"max_attempts": 1},
                           "stream": False},
                          {"name": "offline", "kind": "offline"}],
            "models": [{"id": "quiet", "provider": "local", "model": "no-usage"},
                       {"id": "offline/tool-then-answer", "provider": "offline"}],
            "prices": {"offline/tool-then-answer": DEMO_ILLUSTRATIVE_PRICE},
            "chains": {"http": ["quiet"], "default": ["offline/tool-then-answer"]},
        }))
        n = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), llm_config=config), registry)
        await n.start()
        try:
            yield n
        finally:
            await n.stop()


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def _eventually(get: Any, ok: Any, what: str, timeout: float = 40.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = get()
        except ApiError as exc:  # not visible yet
            value = exc
        if not isinstance(value, ApiError) and ok(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last: {value!r}")
        time.sleep(0.3)


async def test_unknown_prices_read_unknown_and_illustrative_prices_read_illustrative(node: Node) -> None:
    base = node.settings.api_url

    def scenario() -> None:
        with Client(base) as c:
            for rid, workflow, value in (("cost-unknown", "agent_http", "how is the weather?"),
                                         ("cost-demo", "agent_lookup", {"message": "please lookup kafka logs"})):
                c.start(workflow, value, run_id=rid)
                assert c.wait(rid, timeout=60).status == "completed"
            c.create_stack("costly", "agent_http", interval_s=1, input="how is the weather?")

            unknown = _eventually(lambda: c.timeline("cost-unknown")["llm_calls"], bool, "cost-unknown's calls")
            assert [(x["model"], x["cost_usd"], x["price_known"], x["usage_estimated"]) for x in unknown] == [
                ("quiet", None, False, True)]
            demo = _eventually(lambda: c.timeline("cost-demo")["llm_calls"], lambda v: len(v) == 2, "cost-demo's calls")
            assert all(x["cost_usd"] > 0 and x["price_known"] and x["price_illustrative"] for x in demo)

            usage = {r["model"]: r for r in c.analytics("usage", by="model", bucket="total")}
            quiet, offline = usage["quiet"], usage["offline/tool-then-answer"]
            assert (quiet["cost_usd"], quiet["cost_complete"], quiet["calls_price_unknown"]) == (0, False, 1)
            assert quiet["calls_usage_estimated"] == 1
            assert offline["cost_usd"] > 0 and offline["cost_illustrative_usd"] == offline["cost_usd"]
            assert (offline["calls_price_illustrative"], offline["cost_complete"]) == (2, True)

            stack = _eventually(lambda: c.stack("costly")["stack"], lambda s: s["calls_price_unknown"] >= 1
                                and s["ticks_fired"] >= 1, "a tick of stack costly with its unpriced call")
            assert stack["cost_complete"] is False and stack["cost_used_usd"] == 0
            c.pause_stack("costly")

        panel = _text(httpx.get(f"{base}/ui/runs/cost-unknown/panel").text)
        assert "cost unknown (1 call at unknown price)" in panel and "$0.0" not in panel
        assert "~" in panel  # estimated token counts are marked
        panel = _text(httpx.get(f"{base}/ui/runs/cost-demo/panel").text)
        figures = [float(x) for x in re.findall(r"\$(\d+\.\d+) illustrative", panel)]
        assert len(figures) == 3 and all(f > 0 for f in figures), panel  # the run's total, then each call
        board = httpx.get(f"{base}/ui/board").text
        row = _text(re.search(r'<tr id="stack-costly".*?</tr>', board, flags=re.S).group(0))  # type: ignore[union-attr]
        assert "unknown (" in row and "at unknown price" in row and "$0.0000" not in row, row

    await asyncio.to_thread(scenario)

    out = await asyncio.to_thread(cli, node, "timeline", "cost-unknown")
    assert out.returncode == 0 and "cost unknown" in out.stdout and "$0.0" not in out.stdout, out.stdout + out.stderr
    out = await asyncio.to_thread(cli, node, "stacks")
    assert out.returncode == 0 and "cost unknown (" in out.stdout, out.stdout + out.stderr
