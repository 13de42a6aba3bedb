"""A Pydantic AI agent, durable on tickflow: ``tickflow up --app examples.pydantic_ai_agent:registry``.

The agent plans an evening out with two tools. With ``OPENAI_API_KEY`` set it talks to OpenAI (``EXAMPLE_MODEL``,
default ``gpt-4o-mini``; ``OPENAI_BASE_URL`` for any OpenAI-compatible endpoint); without one it runs on Pydantic AI's
offline ``TestModel``, which calls every tool once and answers with their results — a stand-in, not a real LLM.
See docs/integrations/pydantic-ai.md.
"""

import os

from pydantic_ai import Agent
from pydantic_ai.models import Model
from pydantic_ai.models.test import TestModel

from tickflow import Registry, Workflow, current_step
from tickflow.integrations.pydantic_ai import TickflowAgent, TickflowDurability


def _model() -> Model | str:
    if os.environ.get("OPENAI_API_KEY"):
        return f"openai:{os.environ.get('EXAMPLE_MODEL', 'gpt-4o-mini')}"
    return TestModel()  # offline: not a real LLM


planner = Agent(
    _model(),
    name="planner",
    instructions="Plan an evening out in the user's city: check the weather, then book a table.",
    capabilities=[TickflowDurability()],  # journals every model request and tool call in the tickflow step
)


@planner.tool_plain
def weather(city: str) -> str:
    """Today's weather in a city."""
    return f"18°C and clear in {city}"


@planner.tool_plain
def book_table(restaurant: str, people: int) -> str:
    """Book a table. Runs once per run: a re-run of the step gets this result from the journal."""
    key = current_step().idempotency_key  # what a real booking API would deduplicate on
    return f"booked {restaurant} for {people} (ref {key})"


registry = Registry()
registry.add(Workflow("evening").agent(TickflowAgent(planner)))
