"""A Pydantic AI agent in a workflow, for the integration tests (``--app tests.integration.pai_flows:registry``).

The agent talks to the local OpenAI-compatible server (``tests.llm_server``, model ``trip-agent``) through Pydantic
AI's own OpenAI client, at ``TICKFLOW_TEST_LLM_URL``; its tools act on that server's fake external service, so a test
counts what they did outside the log.
"""

from __future__ import annotations

import os

import httpx
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tickflow.integrations.pydantic_ai import TickflowAgent, TickflowDurability
from tickflow.workflow import Registry, Workflow, current_step

__all__ = ["registry", "trip_agent"]

BASE_URL = os.environ.get("TICKFLOW_TEST_LLM_URL", "http://127.0.0.1:9/v1")
SERVICE = BASE_URL.removesuffix("/v1")

trip_agent = Agent(
    OpenAIChatModel("trip-agent", provider=OpenAIProvider(base_url=BASE_URL, api_key="sk-test-not-a-secret")),
    name="trip",
    instructions="Plan the trip with the tools.",
    capabilities=[TickflowDurability()],
)


@trip_agent.tool_plain
async def note(text: str) -> str:
    """Keep a note of the traveller's wish."""
    async with httpx.AsyncClient() as http:
        done = (await http.post(f"{SERVICE}/svc/effect/note", timeout=30)).json()["done"]
    return f"noted {text} ({done})"


@trip_agent.tool_plain
async def book(what: str) -> str:
    """Book it: read the quote, then make the booking (under the step's idempotency key)."""
    async with httpx.AsyncClient() as http:
        price = (await http.get(f"{SERVICE}/svc/quote", timeout=120)).json()["price_eur"]
        key = current_step().idempotency_key
        done = (await http.post(f"{SERVICE}/svc/effect/book", headers={"Idempotency-Key": key}, timeout=30)).json()
    return f"booked {what} for {price} EUR ({done['done']})"


registry = Registry()
registry.add(Workflow("trip").agent(TickflowAgent(trip_agent)))
