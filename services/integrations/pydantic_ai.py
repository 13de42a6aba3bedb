"""Pydantic AI agents as durable tickflow steps: model requests and tool calls journaled, paid for once, on the ledger.

    from pydantic_ai import Agent
    from tickflow.integrations.pydantic_ai import TickflowAgent, TickflowDurability

    support = Agent(model, name="support", tools=[lookup_order, refund], capabilities=[TickflowDurability()])
    registry.add(Workflow("support").agent(TickflowAgent(support)))

How it works. ``TickflowDurability`` is a Pydantic AI durable-execution capability built on the framework's public
backend interface (``pydantic_ai.durable_exec``), as its Temporal, DBOS and Prefect capabilities are. Inside a
tickflow step every durable operation of the run (a model request, a tool call, a capability's durable operation)
goes through the step's journal (``tickflow.runtime.journal``): the first run of the step performs it and makes
its JSON-encoded result durable on the results topic before the agent goes on; a later run of the same step (a
retry, or the re-run after a crash) is handed that result instead of performing it again. So a worker killed after
the second model call restarts without sending the first two requests again, and the tools that already ran do not
run again.

What names an operation in the journal: a model request by its operation name and its position among those (an
agent run makes them one after another); a tool call by its operation name and the model's tool-call id, which
comes from a journaled model response and so is the same on every run, whatever order parallel tool calls take.

The ledger. A model request's answer carries its usage; its checkpoint carries it as an ``LlmAttemptFields``
(provider, model, tokens, and the cost by the LLM configuration's price for the model, else by ``genai-prices`` —
``price_known`` false when neither knows it), and
the engine logs it as ``LlmCallAttempted`` the moment the checkpoint arrives, once, whichever run of the step used
it. A request that failed is reported with the step's result. Streamed deltas go to the tokens topic, as the
native agent's do (the worker listens around each step attempt).

Budgets. ``TickflowAgent`` marks its step as an LLM step: in a run with a token or cost budget the engine reserves
``reserve_tokens`` before starting it and does not start it when that could pass the budget; inside the step, each
model request is checked before it is sent, against what the budget leaves the step (``StepContext.budget_*``) less
what the step's own requests cost so far; one that could pass it raises ``BudgetExceeded`` and is not sent.

What is not journaled: what a tool does besides returning its value (use ``current_step().idempotency_key`` to make
an effect once, as a tool that was in flight at the crash runs again), tool listing and argument validation (they
are recomputed: cheap and local), and anything the agent does outside the capability's reach (a model client a
tool builds itself). Outside a tickflow step the capability does nothing: the agent runs as it would without it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

import pydantic_core
from pydantic_ai import Agent, DeferredToolRequests, DeferredToolResults, ToolApproved, ToolDenied
from pydantic_ai.agent import EventStreamHandler
from pydantic_ai.durable_exec import (
    JSON_CODEC,
    BaseDurabilityCapability,
    DurabilityEngineSpec,
    DurableOperationId,
    JournalCallableOperationBackend,
    ModelCountTokensId,
    ModelRequestId,
    RoleBasedOperationConfig,
    ToolsetCallToolId,
    ToolsetGetInstructionsId,
    ToolsetGetToolsId,
    ToolsetValidateToolArgumentsId,
)
from pydantic_ai.messages import (
    AgentStreamEvent,
    ModelMessage,
    ModelResponse,
    PartDeltaEvent,
    PartStartEvent,
    TextPart,
    TextPartDelta,
    ToolCallPart,
    ToolCallPartDelta,
)
from pydantic_ai.models import Model
from pydantic_ai.tools import AgentDepsT, RunContext

from tickflow.events.schemas import LlmAttemptFields
from tickflow.events.topics import DEFAULT_POOL
from tickflow.integrations.journaled import (
    DEFAULT_RESERVE_TOKENS,
    BudgetExceeded,
    JournalError,
    StepCalls,
    StepCallsByStep,
    running_step,
)
from tickflow.integrations.waits import ANSWER_SCHEMA, RESUME, FrameworkAgent, approval, unanswered, waiting
from tickflow.llm.streaming import TokenStream, current_listener
from tickflow.workflow import named_step

__all__ = [
    "ANSWER_SCHEMA",
    "DEFAULT_RESERVE_TOKENS",
    "BudgetExceeded",
    "JournalError",
    "TickflowAgent",
    "TickflowDurability",
]

# --- the capability -----------------------------------------------------------------------------------------


def _not_journalable(error: Exception) -> BaseException:
    return JournalError(f"a result of the agent cannot be journaled, because it is not JSON-serializable: {error}")


class TickflowDurability(BaseDurabilityCapability[AgentDepsT]):
    """Makes a Pydantic AI agent durable inside a tickflow step; see the module docstring.

    Attach it when building the agent (``Agent(…, name=…, capabilities=[TickflowDurability()])``); the agent's
    ``name`` (or ``name=`` here) names its operations in the journal. ``event_stream_handler`` hears the run's
    events as usual; inside a worker, text and tool-argument deltas also go to tickflow's tokens topic as the model
    streams them.
    """

    engine_spec: ClassVar[DurabilityEngineSpec] = DurabilityEngineSpec(
        engine_name="tickflow",
        durable_unit_noun="journaled call",
        durable_container_noun="step",
        codec=JSON_CODEC,
        serialization_failure=_not_journalable,
    )

    def __init__(
        self,
        *,
        models: Mapping[str, Model] | None = None,
        event_stream_handler: EventStreamHandler[AgentDepsT] | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(models=models, event_stream_handler=event_stream_handler, name=name)
        self._calls = StepCallsByStep()

    @property
    def in_durable_context(self) -> bool:
        return running_step() is not None

    @property
    def has_wrap_run_event_stream(self) -> bool:
        # Someone watches this step's tokens (a worker listens around each attempt): stream the model's replies.
        return super().has_wrap_run_event_stream or (self.in_durable_context and current_listener() is not None)

    def _model_stream_event_handler(self) -> EventStreamHandler[AgentDepsT] | None:
        """Send the live deltas to the tokens topic from inside the model request, as they arrive (then hand the
        events to the agent's own handler, if any)."""
        handler = super()._model_stream_event_handler()
        if not self.in_durable_context or current_listener() is None:
            return handler
        return _with_tokens(handler)

    def get_durable_operation_backend(self) -> _TickflowBackend:
        return _TickflowBackend(self)

    def step_calls(self) -> StepCalls | None:
        """The journaled calls of the step running now (None outside a step)."""
        return self._calls.current(self.name)


_NO_CONFIG: RoleBasedOperationConfig[None] = RoleBasedOperationConfig(model=None, event=None, capability=None,
                                                                      tool=None)
#: Operations recomputed on every run: local and cheap, and what they give is an input of the journaled ones.
_LIVE = (ToolsetValidateToolArgumentsId, ToolsetGetToolsId, ToolsetGetInstructionsId, ModelCountTokensId)


class _TickflowBackend(JournalCallableOperationBackend[None]):
    """Runs each durable operation of the agent through the running step's journal."""

    def __init__(self, durability: TickflowDurability[Any]) -> None:
        super().__init__(agent_name=durability.name, default_model_id=durability.default_model_id, config=_NO_CONFIG)
        self._durability = durability

    async def execute(
        self,
        *,
        operation_id: DurableOperationId,
        name: str,
        body: Callable[[], Awaitable[object]],
        cache_key: tuple[object, ...],
        config: None,
    ) -> object:
        calls = self._durability.step_calls()
        if calls is None or isinstance(operation_id, _LIVE):
            return await body()
        if isinstance(operation_id, ModelRequestId):
            _model_id, messages, settings = cache_key[0], cache_key[1], cache_key[2]
            max_tokens = settings.get("max_tokens") if isinstance(settings, Mapping) else None
            return await calls.model_request(
                calls.position(name), body, input_chars=len(pydantic_core.to_json(messages, fallback=str)),
                max_tokens=max_tokens if isinstance(max_tokens, int) else None, attempt=_attempt,
                model=_model_name(cache_key))
        tool_call_id = _tool_call_id(cache_key) if isinstance(operation_id, ToolsetCallToolId) else None
        return await calls.once(f"{name}:{tool_call_id}" if tool_call_id else calls.position(name), body)


def _tool_call_id(cache_key: tuple[object, ...]) -> str | None:
    """The model's id of a tool call (function and MCP calls project (name, args, ctx, tool))."""
    ctx = cache_key[2] if len(cache_key) > 2 else None
    call_id = getattr(ctx, "tool_call_id", None) if isinstance(ctx, RunContext) else None
    return call_id if isinstance(call_id, str) and call_id else None


def _model_name(cache_key: tuple[object, ...]) -> str:
    ctx = cache_key[-1] if cache_key else None
    model = getattr(ctx, "model", None)
    return str(getattr(model, "model_name", "") or "unknown")


def _response(payload: object) -> ModelResponse | None:
    raw = payload.get("response") if isinstance(payload, dict) and "parts" not in payload else payload
    try:
        response = JSON_CODEC.load(ModelResponse, raw)
    except (TypeError, ValueError):
        return None
    return response if isinstance(response, ModelResponse) else None


def _attempt(payload: object) -> LlmAttemptFields:
    """What a model request used, from its answer: provider, model and usage as reported (``priced`` adds the cost)."""
    response = _response(payload)
    if response is None:
        return LlmAttemptFields(provider="unknown", model="unknown", outcome="ok", price_known=False,
                                usage_estimated=True)
    usage = response.usage
    return LlmAttemptFields(
        provider=(response.provider_name or "unknown")[:1_000], model=(response.model_name or "unknown")[:1_000],
        tokens_in=usage.input_tokens, tokens_out=usage.output_tokens, outcome="ok", price_known=False,
    )


# --- streaming to the tokens topic -------------------------------------------------------------------------


def _with_tokens(user: EventStreamHandler[Any] | None) -> EventStreamHandler[Any]:
    """A model stream's handler that sends text and tool-argument deltas to the step's token listener, and hands
    every event on to ``user``'s handler (if any)."""

    async def handler(ctx: RunContext[Any], events: Any) -> None:
        listener = current_listener()
        streams: dict[int, TokenStream] = {}
        tools: dict[int, str] = {}

        async def forward() -> Any:
            outcome = "connection_error"  # unless the stream ends: a request that broke off mid-stream
            try:
                async for event in events:
                    if listener is not None:
                        _tell(listener, ctx, event, streams, tools)
                    yield event
                outcome = "ok"
            finally:
                for stream in streams.values():
                    stream.close(outcome, None)

        if user is not None:
            await user(ctx, forward())
        else:
            async for _ in forward():
                pass

    return handler


def _tell(listener: Any, ctx: RunContext[Any], event: AgentStreamEvent, streams: dict[int, TokenStream],
          tools: dict[int, str]) -> None:
    if not isinstance(event, PartStartEvent | PartDeltaEvent):
        return
    stream = streams.get(0)
    if stream is None:
        model = ctx.model
        stream = streams[0] = listener.open(provider=str(getattr(model, "system", "") or "pydantic-ai"),
                                            model=str(getattr(model, "model_name", "") or "unknown"))
    if isinstance(event, PartStartEvent):
        if isinstance(event.part, TextPart) and event.part.content:
            stream.text(event.part.content)
        elif isinstance(event.part, ToolCallPart):
            tools[event.index] = event.part.tool_name
            if isinstance(event.part.args, str) and event.part.args:
                stream.tool(event.part.tool_name, event.part.args)
    elif isinstance(event.delta, TextPartDelta):
        stream.text(event.delta.content_delta)
    elif isinstance(event.delta, ToolCallPartDelta) and isinstance(event.delta.args_delta, str):
        stream.tool(tools.get(event.index, event.delta.tool_name_delta or ""), event.delta.args_delta)


# --- the step ----------------------------------------------------------------------------------------------


class TickflowAgent(FrameworkAgent):
    """A Pydantic AI agent as a tickflow step (``.step``) or flow (``.flow()``, what ``Flow.agent`` adds).

    The step's input is the user's prompt (a string), or ``{"prompt": …, "message_history": [...]}`` with a
    history in Pydantic AI's JSON form; its output is ``{"output": …, "messages": [...]}`` — the agent's output as
    JSON and the run's new messages, so a later step or turn can go on from them. The agent must carry a
    :class:`TickflowDurability` (it is what journals the calls).

    Tools that need a human. When the agent's ``output_type`` includes ``DeferredToolRequests`` (Pydantic AI's
    deferred tools: ``requires_approval=True``, ``ApprovalRequired``, ``CallDeferred``), ``.flow()`` is a loop: the
    agent runs, and when it stops on calls that need an answer, the run waits for the event ``deferred_event``
    (default ``<name>.deferred_tools``) — a durable tickflow wait, resumed through the SDK, CLI, HTTP or the
    dashboard with a payload of :data:`ANSWER_SCHEMA` — and then goes on from the whole conversation with those
    answers. Calls left unanswered keep the run waiting for the rest. While it waits, the step's output
    (``{"deferred": {"approvals": [...], "calls": [...]}, …}``) lists the calls and their arguments.
    """

    def __init__(
        self,
        agent: Agent[Any, Any],
        *,
        name: str | None = None,
        pool: str = DEFAULT_POOL,
        reserve_tokens: int = DEFAULT_RESERVE_TOKENS,
        max_attempts: int = 3,
        backoff_s: float = 1.0,
        timeout_s: float | None = None,
        deps: Callable[[], Any] | None = None,
        deferred_event: str | None = None,
        max_waits: int = 20,
    ) -> None:
        durable = [c for c in _capabilities(agent) if isinstance(c, TickflowDurability)]
        if not durable:
            raise ValueError(f"agent {agent.name!r} has no TickflowDurability: build it with "
                             "Agent(..., capabilities=[TickflowDurability()]) so its calls are journaled")
        self.agent = agent
        self.name = name or agent.name or ""
        if not self.name:
            raise ValueError("the agent needs a name (Agent(..., name=...) or TickflowAgent(..., name=...))")
        self.pool, self.reserve_tokens = pool, reserve_tokens
        self.max_attempts, self.backoff_s, self.timeout_s = max_attempts, backoff_s, timeout_s
        self.defers = _allows_deferred(agent.output_type)
        self.deferred_event = deferred_event or f"{self.name}.deferred_tools"
        self.max_waits = max_waits
        self._deps = deps
        self.step = named_step(f"tickflow.pydantic_ai.{self.name}", self._run)

    async def _run(self, value: Any) -> dict[str, Any]:
        deps = self._deps() if self._deps is not None else None
        if isinstance(value, Mapping) and RESUME in value:
            return await self._resume(value[RESUME], deps)
        prompt, history = _prompt(value)
        result = await self.agent.run(prompt, message_history=history, deps=deps)
        return self._outcome(result.output, result.all_messages(), len(history or []))

    async def _resume(self, state: Mapping[str, Any], deps: Any) -> dict[str, Any]:
        """Go on from a conversation that stopped on deferred calls, once every one of them has its answer."""
        answers, conversation = state["answers"], state["resume"]
        rest = unanswered(state["requests"], answers)
        if any(rest.values()):  # keep waiting for the rest, holding the answers given so far
            return waiting(self.deferred_event, rest, answers, conversation)
        history = JSON_CODEC.load(list[ModelMessage], conversation["history"])
        result = await self.agent.run(None, message_history=history, deferred_tool_results=_results(answers),
                                      deps=deps)
        return self._outcome(result.output, result.all_messages(), int(conversation["kept"]))

    def _outcome(self, output: Any, messages: list[ModelMessage], kept: int) -> dict[str, Any]:
        if isinstance(output, DeferredToolRequests):  # the conversation so far, and how much of it was the input's
            return waiting(self.deferred_event, _requests(output), {},
                           {"history": JSON_CODEC.dump(list[ModelMessage], messages), "kept": kept})
        return {"output": pydantic_core.to_jsonable_python(output),
                "messages": JSON_CODEC.dump(list[ModelMessage], messages[kept:])}


# --- tools that need a human: the wait and its answers ------------------------------------------------------

def _allows_deferred(output_type: Any) -> bool:
    kinds = output_type if isinstance(output_type, list | tuple) else [output_type]
    return any(kind is DeferredToolRequests for kind in kinds)


def _requests(deferred: DeferredToolRequests) -> dict[str, Any]:
    def call(part: ToolCallPart) -> dict[str, Any]:
        return {"tool_call_id": part.tool_call_id, "tool_name": part.tool_name,
                "args": deferred.validated_args.get(part.tool_call_id, part.args_as_dict())}

    return {"approvals": [call(p) for p in deferred.approvals], "calls": [call(p) for p in deferred.calls]}


def _results(answers: Mapping[str, Any]) -> DeferredToolResults:
    approvals: dict[str, bool | ToolApproved | ToolDenied] = {}
    for call_id, answer in answers.get("approvals", {}).items():
        given = approval(answer)
        if given.approved:
            approvals[call_id] = ToolApproved(override_args=given.override_args)
        else:
            approvals[call_id] = ToolDenied(given.message) if given.message else ToolDenied()
    return DeferredToolResults(approvals=approvals, calls=dict(answers.get("calls", {})))


def _prompt(value: Any) -> tuple[str | None, list[ModelMessage] | None]:
    if isinstance(value, str):
        return value, None
    if isinstance(value, Mapping) and ("prompt" in value or "message_history" in value):
        history = value.get("message_history")
        loaded = JSON_CODEC.load(list[ModelMessage], history) if history else None
        prompt = value.get("prompt")
        return (str(prompt) if prompt is not None else None), loaded
    return pydantic_core.to_json(value).decode(), None


def _capabilities(agent: Agent[Any, Any]) -> list[Any]:
    root = getattr(agent, "root_capability", None)
    found: list[Any] = []
    stack = [root] if root is not None else []
    while stack:
        cap = stack.pop()
        found.append(cap)
        stack.extend(getattr(cap, "capabilities", []) or [])
    return found

