"""Agents written with other frameworks, run durably on tickflow.

``tickflow.integrations.pydantic_ai`` (extra ``tickflow[pydantic-ai]``) makes a Pydantic AI agent a tickflow step
whose every model request and tool call is journaled: a re-run of the step after a crash replays them instead of
paying or acting again, and each model request is logged as an ``LlmCallAttempted`` event, so the ledger, budgets,
analytics and the dashboard see it; ``tickflow.integrations.openai_agents`` (extra ``tickflow[openai-agents]``) does
the same for the OpenAI Agents SDK (``TickflowRunner.run`` in place of ``Runner.run``). What they share:
``journaled`` (one step's journaled calls, budgets, prices) and ``waits`` (a tool that needs a human as a tickflow
wait). The frameworks are optional: import the submodule you use.
"""

__all__: list[str] = []
