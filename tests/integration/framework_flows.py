"""Framework agents in workflows, for the integration tests (``--app tests.integration.framework_flows:registry``).

The same agent, written with Pydantic AI (workflow ``trip``) and with the OpenAI Agents SDK (``trip_oa``), talks to
the local OpenAI-compatible server (``tests.llm_server``, model ``trip-agent``) through the framework's own client,
at ``TICKFLOW_TEST_LLM_URL``; its tools act on that server's fake external service, so a test counts what they did
outside the log.
"""

from __future__ import annotations

import os

import httpx
from agents import Agent as OpenAIAgent
from agents import OpenAIChatCompletionsModel, function_tool
from openai import AsyncOpenAI
from pydantic_ai import Agent, DeferredToolRequests
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tickflow.integrations.openai_agents import TickflowAgents
from tickflow.integrations.pydantic_ai import TickflowAgent, TickflowDurability
from tickflow.workflow import Registry, Workflow, current_step

__all__ = ["approved_trip_agent", "oa_approved_trip_agent", "oa_trip_agent", "registry", "trip_agent"]

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


# --- the same agent, whose booking needs a human's approval (workflow "trip_approval") -------------------------

approved_trip_agent = Agent(
    OpenAIChatModel("trip-agent", provider=OpenAIProvider(base_url=BASE_URL, api_key="sk-test-not-a-secret")),
    name="trip_approval",
    instructions="Plan the trip with the tools.",
    output_type=[str, DeferredToolRequests],
    capabilities=[TickflowDurability()],
)
approved_trip_agent.tool_plain(note)


@approved_trip_agent.tool_plain(name="book", requires_approval=True)
async def book_when_approved(what: str) -> str:
    """Book it, once a human approved (under the step's idempotency key)."""
    async with httpx.AsyncClient() as http:
        key = current_step().idempotency_key
        done = (await http.post(f"{SERVICE}/svc/effect/book", headers={"Idempotency-Key": key}, timeout=30)).json()
    return f"booked {what} ({done['done']})"


registry.add(Workflow("trip_approval").agent(TickflowAgent(approved_trip_agent)))


# --- the same agent written with the OpenAI Agents SDK (workflow "trip_oa") -----------------------------------


@function_tool(name_override="note")
async def oa_note(text: str) -> str:
    """Keep a note of the traveller's wish."""
    return await note(text)


@function_tool(name_override="book")
async def oa_book(what: str) -> str:
    """Book it: read the quote, then make the booking."""
    return await book(what)


oa_trip_agent = OpenAIAgent(
    name="trip_oa",
    instructions="Plan the trip with the tools.",
    model=OpenAIChatCompletionsModel("trip-agent", AsyncOpenAI(base_url=BASE_URL, api_key="sk-test-not-a-secret")),
    tools=[oa_note, oa_book],
)
registry.add(Workflow("trip_oa").agent(TickflowAgents(oa_trip_agent)))


@function_tool(name_override="book", needs_approval=True)
async def oa_book_when_approved(what: str) -> str:
    """Book it, once a human approved."""
    return await book_when_approved(what)


oa_approved_trip_agent = OpenAIAgent(
    name="trip_oa_approval",
    instructions="Plan the trip with the tools.",
    model=OpenAIChatCompletionsModel("trip-agent", AsyncOpenAI(base_url=BASE_URL, api_key="sk-test-not-a-secret")),
    tools=[oa_note, oa_book_when_approved],
)
registry.add(Workflow("trip_oa_approval").agent(TickflowAgents(oa_approved_trip_agent)))
