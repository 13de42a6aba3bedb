"""OpenAI Agents SDK agents as durable tickflow steps: ``TickflowRunner.run`` in place of ``Runner.run``.

    from agents import Agent, function_tool
    from tickflow.integrations.openai_agents import TickflowAgents

    triage = Agent(name="triage", instructions="Route the question.", handoffs=[billing, shipping])
    registry.add(Workflow("support").agent(TickflowAgents(triage)))

How it works. Inside a tickflow step, ``TickflowRunner.run`` runs the SDK's own ``Runner.run`` on durable copies
of the agents (the starting agent and every agent its handoffs reach): each model call and each function tool call
goes through the step's journal (``tickflow.integrations.journaled``). The first run of the step makes it and makes
its JSON result durable on the results topic before the run goes on; a re-run of the step (a retry, or after a
crash) is handed that result instead of calling the model or the tool again. A model call is named by its position
among the run's model calls (the SDK makes them one after another), a tool call by the tool's name and the model's
call id (from a journaled response, so the same on every run). Each handoff is journaled too, so a re-run hands
off the same way, and the engine logs it as an ``AgentHandoff`` event (from, to) once, when its record arrives.

The ledger: each model call's usage travels in its checkpoint and the engine logs it as ``LlmCallAttempted`` once
(provider ``openai-agents``), priced as ``tickflow.integrations.journaled.priced`` says: the LLM configuration's
price for the model, else ``genai-prices``', else unknown (``price_known`` false). Budgets: a model call is
checked before it is sent against what the run's budget leaves the step (``ModelSettings.max_tokens``, default
1,024, plus the input at four characters a token), and one that could pass it raises ``BudgetExceeded``.

Not journaled: what a tool does besides returning its value (a tool in flight at a crash runs again; use
``current_step().idempotency_key``); hosted tools the model runs itself (web search, file search: they are part of
the journaled response); ``Runner.run_streamed`` (use ``run``: inside a worker its model calls stream, and the text
and tool-argument deltas go to the tokens topic). Outside a tickflow step ``TickflowRunner.run`` is ``Runner.run``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pydantic_core
from agents import (
    Agent,
    FunctionTool,
    Handoff,
    Model,
    ModelProvider,
    ModelResponse,
    ModelSettings,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    RunResult,
    RunState,
    ToolApprovalItem,
    Usage,
)
from agents.items import TResponseOutputItem
from agents.tool_context import ToolContext
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseOutputItemAddedEvent,
    ResponseTextDeltaEvent,
)
from pydantic import TypeAdapter

from tickflow.events.schemas import LlmAttemptFields
from tickflow.events.topics import DEFAULT_POOL
from tickflow.integrations.journaled import (
    DEFAULT_RESERVE_TOKENS,
    BudgetExceeded,
    StepCalls,
    StepCallsByStep,
)
from tickflow.integrations.waits import RESUME, FrameworkAgent, approval, unanswered, waiting
from tickflow.llm.streaming import TokenListener, TokenStream, current_listener
from tickflow.workflow import named_step

__all__ = ["BudgetExceeded", "TickflowAgents", "TickflowRunner"]

_CALLS = StepCallsByStep()
_OUTPUT = TypeAdapter(list[TResponseOutputItem])


class TickflowRunner:
    """``Runner.run`` with every model call, tool call and handoff journaled in the running tickflow step."""

    @classmethod
    async def run(cls, starting_agent: Agent[Any], input: Any, *, run_config: RunConfig | None = None,
                  hooks: RunHooks[Any] | None = None, **kwargs: Any) -> RunResult:
        calls = _CALLS.current(starting_agent.name)
        if calls is None:
            return await Runner.run(starting_agent, input, run_config=run_config, hooks=hooks, **kwargs)
        config = run_config or RunConfig()
        model = config.model
        config = dataclasses.replace(
            config, model_provider=_JournaledProvider(config.model_provider, calls),
            model=_JournaledModel(model, calls, str(getattr(model, "model", "") or type(model).__name__))
            if isinstance(model, Model) else model)
        durable = _Durable(calls).agent(starting_agent)
        if isinstance(input, RunState):  # a run stopped for approvals goes on with the durable copies of its agents
            input = await RunState.from_json(durable, input.to_json())
        return await Runner.run(durable, input, run_config=config, hooks=_JournaledHandoffs(calls, hooks),
                                **kwargs)


class _Durable:
    """Durable copies of an agent graph: models and function tools journaled, handoffs to the copies."""

    def __init__(self, calls: StepCalls) -> None:
        self.calls = calls
        self.copies: dict[int, Agent[Any]] = {}

    def agent(self, agent: Agent[Any]) -> Agent[Any]:
        if id(agent) in self.copies:
            return self.copies[id(agent)]
        model = agent.model
        copy = agent.clone(
            model=_JournaledModel(model, self.calls, str(getattr(model, "model", "") or type(model).__name__))
            if isinstance(model, Model) else model,
            tools=[_journaled_tool(t, self.calls) if isinstance(t, FunctionTool) else t for t in agent.tools],
        )
        self.copies[id(agent)] = copy
        copy.handoffs = [self.agent(h) if isinstance(h, Agent) else self._handoff(h) for h in agent.handoffs]
        return copy

    def _handoff(self, handoff: Handoff[Any, Any]) -> Handoff[Any, Any]:
        invoke = handoff.on_invoke_handoff

        async def to_copy(ctx: RunContextWrapper[Any], args: str) -> Any:
            target = await invoke(ctx, args)
            return self.agent(target) if isinstance(target, Agent) else target

        return dataclasses.replace(handoff, on_invoke_handoff=to_copy)


def _journaled_tool(tool: FunctionTool, calls: StepCalls) -> FunctionTool:
    invoke = tool.on_invoke_tool

    async def journaled(ctx: ToolContext[Any], args: str) -> Any:
        async def make() -> Any:
            return pydantic_core.to_jsonable_python(await invoke(ctx, args), fallback=str)

        return await calls.once(f"openai_agents:tool:{tool.name}:{ctx.tool_call_id}", make)

    return dataclasses.replace(tool, on_invoke_tool=journaled)


class _JournaledModel(Model):
    """A model whose responses are journaled: a re-run of the step gets them back without calling it."""

    def __init__(self, inner: Model, calls: StepCalls, name: str) -> None:
        self.inner, self.calls, self.name = inner, calls, name

    async def get_response(self, system_instructions: str | None, input: Any, model_settings: ModelSettings,
                           tools: Any, output_schema: Any, handoffs: Any, tracing: Any, **kwargs: Any) -> ModelResponse:
        args = (system_instructions, input, model_settings, tools, output_schema, handoffs, tracing)

        async def make() -> dict[str, Any]:
            listener = current_listener()
            if listener is None:
                return _dump(await self.inner.get_response(*args, **kwargs))
            # The ledger needs the usage, which an OpenAI-compatible stream sends only when asked for.
            settings = model_settings if model_settings.include_usage is not None else dataclasses.replace(
                model_settings, include_usage=True)
            try:
                return _dump(await self._streamed(listener, (*args[:2], settings, *args[3:]), kwargs))
            except NotImplementedError:  # a model that cannot stream (an offline stand-in): asked for it whole
                return _dump(await self.inner.get_response(*args, **kwargs))

        size = len(system_instructions or "") + len(pydantic_core.to_json(input, fallback=str))
        saved = await self.calls.model_request(
            self.calls.position("openai_agents:model"), make, input_chars=size,
            max_tokens=model_settings.max_tokens, attempt=lambda answer: _attempt(answer, self.name),
            model=self.name)
        return _load(saved)

    async def _streamed(self, listener: TokenListener, args: tuple[Any, ...], kwargs: dict[str, Any]) -> ModelResponse:
        """The response, asked for as a stream whose text and tool-argument deltas go to the step's token listener
        (the tokens topic) as they arrive: what a worker does for its own agents' calls. The listener's stream opens
        with the first event, so a model that cannot stream (``NotImplementedError``) leaves no broken stream."""
        final: Response | None = None
        tools: dict[int, str] = {}
        stream: TokenStream | None = None
        outcome = "connection_error"  # unless the stream completes
        try:
            async for event in self.inner.stream_response(*args, **kwargs):
                if stream is None:
                    stream = listener.open(provider="openai-agents", model=self.name)
                if isinstance(event, ResponseTextDeltaEvent):
                    stream.text(event.delta)
                elif isinstance(event, ResponseOutputItemAddedEvent) and event.item.type == "function_call":
                    tools[event.output_index] = event.item.name
                elif isinstance(event, ResponseFunctionCallArgumentsDeltaEvent):
                    stream.tool(tools.get(event.output_index, ""), event.delta)
                elif isinstance(event, ResponseCompletedEvent):
                    final = event.response
            if final is None:
                raise RuntimeError(f"model {self.name!r}: its stream ended without a completed response")
            outcome = "ok"
        except NotImplementedError:
            if stream is not None:  # not "cannot stream": it failed mid-stream, and asking again would pay again
                raise RuntimeError(f"model {self.name!r}: its stream broke off (NotImplementedError)") from None
            raise
        finally:
            if stream is not None:
                stream.close(outcome, None)
        usage = final.usage
        return ModelResponse(output=list(final.output), response_id=final.id, usage=Usage(
            requests=1, input_tokens=usage.input_tokens if usage else 0,
            output_tokens=usage.output_tokens if usage else 0, total_tokens=usage.total_tokens if usage else 0))

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("a streamed run is not journaled: use TickflowRunner.run (its model calls stream "
                                  "to the tokens topic; Runner.run_streamed inside a tickflow step would call the "
                                  "model again on every re-run)")


class _JournaledProvider(ModelProvider):
    def __init__(self, inner: ModelProvider, calls: StepCalls) -> None:
        self.inner, self.calls = inner, calls

    def get_model(self, model_name: str | None) -> Model:
        model = self.inner.get_model(model_name)
        return model if isinstance(model, _JournaledModel) else _JournaledModel(model, self.calls, model_name or
                                                                                 str(getattr(model, "model", "")))


class _JournaledHandoffs(RunHooks[Any]):
    """Journals each handoff (from, to) in order, then tells the run's own hooks, if any."""

    def __init__(self, calls: StepCalls, hooks: RunHooks[Any] | None) -> None:
        self.calls, self.hooks = calls, hooks

    def __getattribute__(self, name: str) -> Any:
        hooks = object.__getattribute__(self, "hooks")
        if name.startswith("on_") and name != "on_handoff" and hooks is not None:
            return getattr(hooks, name)
        return object.__getattribute__(self, name)

    async def on_handoff(self, context: RunContextWrapper[Any], from_agent: Agent[Any], to_agent: Agent[Any]) -> None:
        await self.calls.handoff(self.calls.position("openai_agents:handoff"), from_agent.name, to_agent.name)
        if self.hooks is not None:
            await self.hooks.on_handoff(context, from_agent, to_agent)


def _dump(response: ModelResponse) -> dict[str, Any]:
    usage = response.usage
    return {"output": _OUTPUT.dump_python(response.output, mode="json"), "response_id": response.response_id,
            "usage": {"requests": usage.requests, "input_tokens": usage.input_tokens,
                      "output_tokens": usage.output_tokens, "total_tokens": usage.total_tokens}}


def _load(saved: Mapping[str, Any]) -> ModelResponse:
    usage = saved.get("usage") or {}
    return ModelResponse(output=_OUTPUT.validate_python(saved["output"]), response_id=saved.get("response_id"),
                         usage=Usage(requests=int(usage.get("requests", 0)),
                                     input_tokens=int(usage.get("input_tokens", 0)),
                                     output_tokens=int(usage.get("output_tokens", 0)),
                                     total_tokens=int(usage.get("total_tokens", 0))))


def _attempt(answer: Mapping[str, Any], model: str) -> LlmAttemptFields:
    usage = answer.get("usage") or {}
    return LlmAttemptFields(provider="openai-agents", model=(model or "unknown")[:1_000],
                            tokens_in=int(usage.get("input_tokens", 0)), tokens_out=int(usage.get("output_tokens", 0)),
                            outcome="ok", price_known=False)


class TickflowAgents(FrameworkAgent):
    """An OpenAI Agents SDK agent (and the agents it hands off to) as a tickflow step (``.step``) or flow
    (``.flow()``, what ``Workflow.agent`` adds).

    The step's input is the user's message (a string) or ``{"input": [...]}`` with input items in the SDK's form;
    its output is ``{"output": …, "last_agent": …, "items": [...]}`` — the final output as JSON, the agent that gave
    it, and the conversation as input items, so a later step can go on from it.

    Tools that need a human. When a function tool of the agents has ``needs_approval``, ``.flow()`` is a loop
    (``tickflow.integrations.waits``): the run stops on the calls to approve and waits for ``deferred_event``
    (default ``<name>.deferred_tools``), resumed through the SDK, CLI, HTTP or the dashboard with
    ``{"approvals": {<call id>: true | false | {"approved": false, "message": "why"}}}``; the next step goes on
    from the SDK's run state with those answers.
    """

    def __init__(self, agent: Agent[Any], *, name: str | None = None, pool: str = DEFAULT_POOL,
                 reserve_tokens: int = DEFAULT_RESERVE_TOKENS, max_attempts: int = 3, backoff_s: float = 1.0,
                 timeout_s: float | None = None, max_turns: int = 10, run_config: RunConfig | None = None,
                 deferred_event: str | None = None, max_waits: int = 20) -> None:
        self.agent = agent
        self.name = name or agent.name
        self.pool, self.reserve_tokens, self.max_turns = pool, reserve_tokens, max_turns
        self.max_attempts, self.backoff_s, self.timeout_s = max_attempts, backoff_s, timeout_s
        self.run_config = run_config
        self.defers = _needs_approval(agent)
        self.deferred_event = deferred_event or f"{self.name}.deferred_tools"
        self.max_waits = max_waits
        self.step = named_step(f"tickflow.openai_agents.{self.name}", self._run)

    async def _run(self, value: Any) -> dict[str, Any]:
        if isinstance(value, Mapping) and RESUME in value:
            return await self._resume(value[RESUME])
        given = value.get("input") if isinstance(value, Mapping) and "input" in value else value
        prompt = given if isinstance(given, str | list) else pydantic_core.to_json(given).decode()
        return self._outcome(await self._go_on(prompt))

    async def _resume(self, stopped: Mapping[str, Any]) -> dict[str, Any]:
        """Go on from a run that stopped for approvals, once every one of them has its answer."""
        answers = stopped["answers"]
        rest = unanswered(stopped["requests"], answers)
        if any(rest.values()):  # keep waiting for the rest, holding the answers given so far
            return waiting(self.deferred_event, rest, answers, stopped["resume"])
        state = await RunState.from_json(self.agent, stopped["resume"]["state"])
        for item in state.get_interruptions():
            given = approval(answers.get("approvals", {}).get(_call_id(item)))
            if given.approved:  # the SDK runs the call with the model's arguments (no override_args)
                state.approve(item)
            else:
                state.reject(item, rejection_message=given.message)
        return self._outcome(await self._go_on(state))

    async def _go_on(self, input: Any) -> RunResult:
        return await TickflowRunner.run(self.agent, input, run_config=self.run_config, max_turns=self.max_turns)

    def _outcome(self, result: RunResult) -> dict[str, Any]:
        if result.interruptions:
            requests = {"approvals": [_approval(item) for item in result.interruptions], "calls": []}
            return waiting(self.deferred_event, requests, {}, {"state": result.to_state().to_json()})
        return {"output": pydantic_core.to_jsonable_python(result.final_output, fallback=str),
                "last_agent": result.last_agent.name,
                "items": pydantic_core.to_jsonable_python(result.to_input_list(), fallback=str)}


def _needs_approval(agent: Agent[Any]) -> bool:
    """Whether a function tool of ``agent`` or of an agent its handoffs reach may ask for approval."""
    seen: set[int] = set()
    stack = [agent]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if any(isinstance(t, FunctionTool) and t.needs_approval is not False for t in current.tools):
            return True
        stack.extend(h for h in current.handoffs if isinstance(h, Agent))
    return False


def _call_id(item: ToolApprovalItem) -> str:
    return str(getattr(item.raw_item, "call_id", None) or getattr(item.raw_item, "id", "") or "")


def _approval(item: ToolApprovalItem) -> dict[str, Any]:
    raw = getattr(item.raw_item, "arguments", None)
    try:
        args = pydantic_core.from_json(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        args = raw
    return {"tool_call_id": _call_id(item), "tool_name": item.tool_name or "", "args": args}
