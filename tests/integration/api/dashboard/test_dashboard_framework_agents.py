"""A framework agent's run page in real headless Chromium — a Pydantic AI agent and an OpenAI Agents SDK agent: the
reply shows while the model streams it (through the framework's own OpenAI client, from the local server's
``stream-slow`` model), and the model call is listed with its tokens once the run has ended."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from agents import Agent as OpenAIAgent
from agents import OpenAIChatCompletionsModel
from openai import AsyncOpenAI
from playwright.sync_api import Browser
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.conftest import free_port
from tests.integration.api.dashboard.test_dashboard import in_browser
from tests.integration.harness import settings_for
from tests.llm_server import SLOW_ANSWER, LlmTestServer, running_llm_server
from tickflow.client import Client
from tickflow.integrations.openai_agents import TickflowAgents
from tickflow.integrations.pydantic_ai import TickflowAgent, TickflowDurability
from tickflow.node import Node
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration


@pytest.fixture
def llm() -> Iterator[LlmTestServer]:
    with running_llm_server() as server:
        yield server


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path, llm: LlmTestServer) -> AsyncIterator[Node]:
    model = OpenAIChatModel("stream-slow", provider=OpenAIProvider(base_url=llm.base_url, api_key="sk-test"))
    teller = Agent(model, name="teller", capabilities=[TickflowDurability()])
    oa_teller = OpenAIAgent(name="teller_oa", model=OpenAIChatCompletionsModel(
        "stream-slow", AsyncOpenAI(base_url=llm.base_url, api_key="sk-test")))
    registry = Registry()
    registry.add(Workflow("tale").agent(TickflowAgent(teller)))
    registry.add(Workflow("tale_oa").agent(TickflowAgents(oa_teller)))
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    await node.start()
    yield node
    await node.stop()


@pytest.mark.parametrize("workflow", ["tale", "tale_oa"])  # Pydantic AI, OpenAI Agents SDK
async def test_the_run_page_streams_the_reply_and_lists_the_model_call(node: Node, llm: LlmTestServer,
                                                                     workflow: str) -> None:
    base = node.settings.api_url

    def session(browser: Browser) -> dict[str, Any]:
        page = browser.new_page()
        with Client(base) as c:
            c.start(workflow, "Tell me a tale.", run_id="tale-web")
        page.goto(f"{base}/ui/runs/tale-web")  # the reply's 24 words stream over ~1.4 s
        page.wait_for_selector("#run-tokens .token-stream pre:not(:empty)", timeout=30_000)
        early = {"text": page.text_content("#run-tokens .token-stream pre") or "",
                 "status": page.get_attribute("#run-panel #run-status", "class") or ""}
        page.wait_for_selector("#run-status.completed", timeout=30_000)
        page.wait_for_selector("table.llm tbody tr", timeout=30_000)
        calls = page.text_content("table.llm tbody") or ""
        final = page.text_content("#run-tokens .token-stream pre") or ""
        page.close()
        return {"early": early, "final": final, "calls": calls}

    seen = await asyncio.to_thread(in_browser, session)
    assert seen["final"].strip() == SLOW_ANSWER, seen
    assert seen["early"]["text"] and "completed" not in seen["early"]["status"], seen["early"]
    assert "stream-slow" in seen["calls"] and "11 / 3" in seen["calls"], seen["calls"]
    assert [r.body.get("stream") for r in llm.for_model("stream-slow")] == [True]
