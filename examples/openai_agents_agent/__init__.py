"""An OpenAI Agents SDK agent, durable on tickflow: ``tickflow up --app examples.openai_agents_agent:registry``.

A triage agent notes the request and hands off to a booking agent with a tool. With ``OPENAI_API_KEY`` set they run
on OpenAI (``EXAMPLE_MODEL``, default ``gpt-4o-mini``); without one, on ``OfflineModel`` below, which calls each tool
(or handoff) it is given once and then answers with the last result — a stand-in, not a real LLM.
See docs/integrations/openai-agents.md.
"""

import os
from typing import Any

from agents import Agent, Model, ModelResponse, Usage, function_tool
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from tickflow import Registry, Workflow, current_step
from tickflow.integrations.openai_agents import TickflowAgents


class OfflineModel(Model):
    """Offline stand-in (not a real LLM): calls the first tool or handoff not yet called, then answers."""

    async def get_response(self, system_instructions: Any, input: Any, model_settings: Any, tools: Any,
                           output_schema: Any, handoffs: Any, tracing: Any, **kwargs: Any) -> ModelResponse:
        items = input if isinstance(input, list) else []
        called = {i.get("name") for i in items if isinstance(i, dict) and i.get("type") == "function_call"}
        names = [t.name for t in tools] + [h.tool_name for h in handoffs]
        usage = Usage(requests=1, input_tokens=50, output_tokens=10, total_tokens=60)
        todo = [n for n in names if n not in called]
        if todo:
            n = len(called) + 1
            call = ResponseFunctionToolCall(arguments="{}" if todo[0].startswith("transfer_to") else '{"what": "a"}',
                                            call_id=f"call_{n}", name=todo[0], type="function_call", id=f"fc_{n}")
            return ModelResponse(output=[call], usage=usage, response_id=None)
        results = [i.get("output") for i in items if isinstance(i, dict) and i.get("type") == "function_call_output"]
        text = ResponseOutputText(annotations=[], text=f"Done: {results[-1] if results else 'nothing to do'}",
                                  type="output_text")
        message = ResponseOutputMessage(id="msg", content=[text], role="assistant", status="completed", type="message")
        return ModelResponse(output=[message], usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("the offline stand-in does not stream")


def _model() -> Model | str:
    if os.environ.get("OPENAI_API_KEY"):
        return os.environ.get("EXAMPLE_MODEL", "gpt-4o-mini")
    return OfflineModel()


@function_tool
def book_table(what: str) -> str:
    """Book a table for the evening. Runs once per run: a re-run of the step gets this from the journal."""
    key = current_step().idempotency_key  # what a real booking API would deduplicate on
    return f"booked {what} (ref {key})"


booker = Agent(name="booker", instructions="Book what the user asks for.", model=_model(), tools=[book_table])
triage = Agent(name="triage", instructions="Hand the request to the booker.", model=_model(), handoffs=[booker])

registry = Registry()
registry.add(Workflow("booking").agent(TickflowAgents(triage)))
