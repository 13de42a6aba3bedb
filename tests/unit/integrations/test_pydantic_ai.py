"""A Pydantic AI agent inside a tickflow step (no broker): its model requests and tool calls are journaled, a re-run
of the step replays them instead of asking or acting again, each request's usage reaches the ledger once, and a
run's budget stops the agent before the request that could pass it.

The real framework runs here (``pydantic_ai.Agent``, its durable-execution capability interface, its tool loop);
the model is the framework's own ``FunctionModel`` and the journal the worker's, over a stand-in results topic.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic_ai import Agent, DeferredToolRequests
from pydantic_ai.durable_exec import JSON_CODEC
from pydantic_ai.messages import ModelMessage, ModelRequest, ModelResponse, TextPart, ToolCallPart, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, FunctionModel
from pydantic_ai.usage import RequestUsage

from tests.unit.agents.test_agents import AgentSim
from tests.unit.runtime.test_paid_once import Broker, task
from tickflow.events.agents import LlmCallCheckpoint
from tickflow.events.codec import decode
from tickflow.events.spec import BranchNode, LoopNode, StepNode, WaitNode
from tickflow.integrations.pydantic_ai import BudgetExceeded, TickflowAgent, TickflowDurability
from tickflow.runtime.journal import PaidCalls, StepJournal
from tickflow.workflow import Registry, StepContext, Workflow


class Crash(Exception):
    """Stands for the worker dying in the middle of the step."""


class Script:
    """A model that asks for ``note`` (twice, in parallel), then ``book``, then answers; counts its requests."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests += 1
        returns = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts if isinstance(p, ToolReturnPart)]
        usage = RequestUsage(input_tokens=100, output_tokens=10)
        if not returns:
            return ModelResponse(parts=[ToolCallPart("note", {"text": "a"}, tool_call_id="c1"),
                                        ToolCallPart("note", {"text": "b"}, tool_call_id="c2")],
                                 usage=usage, model_name="scripted")
        if len(returns) == 2:
            return ModelResponse(parts=[ToolCallPart("book", {"what": "flight"}, tool_call_id="c3")], usage=usage,
                                 model_name="scripted")
        return ModelResponse(parts=[TextPart(f"done: {returns[-1].content}")], usage=usage, model_name="scripted")


class Effects:
    """The outside world the tools act on: what each did, and whether ``book`` crashes the worker first."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.bookings = 0
        self.crash_before_booking = False


def build(script: Script, effects: Effects) -> tuple[TickflowAgent, Registry]:
    agent = Agent(FunctionModel(script), name="planner", capabilities=[TickflowDurability()])

    @agent.tool_plain
    async def note(text: str) -> str:
        effects.notes.append(text)
        return f"noted {text}"

    @agent.tool_plain
    async def book(what: str) -> str:
        if effects.crash_before_booking:
            raise Crash("killed")
        effects.bookings += 1
        return f"booked {what} #{effects.bookings}"

    wrapped = TickflowAgent(agent)
    registry = Registry()
    registry.add(Workflow("plan").agent(wrapped))
    return wrapped, registry


def context(journal: StepJournal, attempt: int = 1, **budget: Any) -> StepContext:
    return StepContext(run_id="r1", workflow="plan", step="planner", attempt=attempt, idempotency_key="r1/planner",
                       path="planner", journal=journal, **budget)


def checkpoints(broker: Broker) -> list[LlmCallCheckpoint]:
    found = [decode(raw, expect="result").payload for _, raw in broker.sent]
    assert all(isinstance(cp, LlmCallCheckpoint) for cp in found)
    return found  # type: ignore[return-value]


async def test_a_re_run_after_a_crash_replays_the_requests_and_tool_calls_already_made() -> None:
    script, effects = Script(), Effects()
    wrapped, registry = build(script, effects)
    calls, broker = PaidCalls(), Broker()
    effects.crash_before_booking = True
    with pytest.raises(Crash):
        await registry.call(wrapped.step.__tickflow_name__, "plan a trip",  # type: ignore[attr-defined]
                            context(StepJournal(calls, broker.send, task("planner"))))
    assert script.requests == 2 and effects.notes == ["a", "b"] and effects.bookings == 0
    effects.crash_before_booking = False
    ctx = context(StepJournal(calls, broker.send, task("planner", attempt=2)), attempt=2)
    out = await registry.call(wrapped.step.__tickflow_name__, "plan a trip", ctx)  # type: ignore[attr-defined]
    assert out["output"] == "done: booked flight #1"
    # Requests 1 and 2 and both notes came from the journal; only what had not happened ran.
    assert script.requests == 3 and effects.notes == ["a", "b"] and effects.bookings == 1
    assert calls.reused == 4
    paid = [cp for cp in checkpoints(broker) if cp.attempts]
    model = "function:Script:"  # the name the framework gives a FunctionModel's responses
    assert [(cp.attempt, cp.attempts[0].tokens_in, cp.attempts[0].tokens_out, cp.attempts[0].model) for cp in paid] == [
        (1, 100, 10, model), (1, 100, 10, model), (2, 100, 10, model)]
    assert all(not cp.attempts[0].price_known and cp.attempts[0].agent == "planner" for cp in paid)
    tools = sorted(cp.name.rsplit(":", 1)[-1] for cp in checkpoints(broker) if not cp.attempts)
    assert tools == ["c1", "c2", "c3"]
    assert ctx.report.llm_attempts == []  # the engine logs each request from its checkpoint, once
    assert [m["kind"] for m in out["messages"]] == ["request", "response", "request", "response", "request",
                                                    "response"]


async def test_the_output_and_messages_let_a_next_step_go_on_from_the_conversation() -> None:
    script, effects = Script(), Effects()
    wrapped, registry = build(script, effects)
    broker = Broker()
    first = await registry.call(wrapped.step.__tickflow_name__, {"prompt": "plan"},  # type: ignore[attr-defined]
                                context(StepJournal(PaidCalls(), broker.send, task("planner"))))
    follow_up = {"prompt": "and again", "message_history": first["messages"]}
    again = await registry.call(wrapped.step.__tickflow_name__, follow_up,  # type: ignore[attr-defined]
                                context(StepJournal(PaidCalls(), broker.send, task("planner", run_id="r2"))))
    assert again["output"].startswith("done:") and script.requests == 4  # the history already held the tool turns


async def test_a_budget_stops_the_agent_before_the_request_that_could_pass_it() -> None:
    script, effects = Script(), Effects()
    wrapped, registry = build(script, effects)
    broker = Broker()
    # Enough for the first request (its estimate is the 1,024-token default reply plus the prompt), not a second.
    ctx = context(StepJournal(PaidCalls(), broker.send, task("planner")), budget_tokens=1_200)
    with pytest.raises(BudgetExceeded, match="model request 2 was not sent"):
        await registry.call(wrapped.step.__tickflow_name__, "plan", ctx)  # type: ignore[attr-defined]
    assert script.requests == 1 and effects.notes == ["a", "b"]
    spent = context(StepJournal(PaidCalls(), broker.send, task("planner", run_id="r2")), budget_cost_usd=0.0)
    with pytest.raises(BudgetExceeded, match="cost budget is spent"):
        await registry.call(wrapped.step.__tickflow_name__, "plan", spent)  # type: ignore[attr-defined]
    assert script.requests == 1


async def test_outside_a_step_the_agent_runs_as_it_would_without_tickflow() -> None:
    script, effects = Script(), Effects()
    wrapped, _ = build(script, effects)
    result = await wrapped.agent.run("plan")
    assert result.output == "done: booked flight #1" and script.requests == 3


def test_an_agent_without_the_capability_is_refused_with_what_to_do() -> None:
    with pytest.raises(ValueError, match=r"capabilities=\[TickflowDurability\(\)\]"):
        TickflowAgent(Agent(FunctionModel(Script()), name="bare"))


async def test_a_failed_request_is_reported_with_its_key_scrubbed() -> None:
    """A provider's 401 echoes the key it was given; the attempt the step reports keeps none of it."""
    key = "sk-proj-" + "a1b2c3d4" * 6

    def refuse(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        raise RuntimeError(f"Incorrect API key provided: {key}. You can find your API key at platform.example")

    agent = Agent(FunctionModel(refuse), name="refused", capabilities=[TickflowDurability()])
    registry = Registry()
    registry.add(Workflow("w").agent(wrapped := TickflowAgent(agent)))
    ctx = context(StepJournal(PaidCalls(), Broker().send, task("refused")))
    with pytest.raises(RuntimeError):
        await registry.call(wrapped.step.__tickflow_name__, "hi", ctx)  # type: ignore[attr-defined]
    (attempt,) = ctx.report.llm_attempts
    assert attempt.outcome == "connection_error" and attempt.error is not None
    assert key not in attempt.error.message and "Incorrect API key" in attempt.error.message


# --- a tool that needs a human: a tickflow wait, the real decider and the real agent taking turns ---------------


class Approvals:
    """A model that asks for ``note`` and ``pay`` at once, then answers with what the last tool result said."""

    def __init__(self) -> None:
        self.requests = 0

    def __call__(self, messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        self.requests += 1
        returns = [p for m in messages if isinstance(m, ModelRequest) for p in m.parts
                   if isinstance(p, ToolReturnPart)]
        if len(returns) < 2:
            return ModelResponse(parts=[ToolCallPart("note", {"text": "a"}, tool_call_id="n1"),
                                        ToolCallPart("pay", {"amount": 40}, tool_call_id="p1")])
        return ModelResponse(parts=[TextPart(f"done: {returns[-1].content}")])


def approval_flow(model: Approvals, paid: list[int]) -> Workflow:
    agent = Agent(FunctionModel(model), name="cashier", output_type=[str, DeferredToolRequests],
                  capabilities=[TickflowDurability()])

    @agent.tool_plain
    async def note(text: str) -> str:
        return f"noted {text}"

    @agent.tool_plain(requires_approval=True)
    async def pay(amount: int) -> str:
        paid.append(amount)
        return f"paid {amount}"

    return Workflow("checkout").agent(TickflowAgent(agent))


def test_an_agent_with_deferred_tools_compiles_to_a_loop_of_its_step_and_a_wait() -> None:
    spec = Registry().add(approval_flow(Approvals(), []))
    loop = spec.root.nodes[0]  # type: ignore[union-attr]
    assert isinstance(loop, LoopNode) and loop.name == "cashier" and loop.until == "tickflow.integrations.settled"
    run_step, ask = loop.body.nodes  # type: ignore[union-attr]
    assert isinstance(run_step, StepNode) and run_step.name == "cashier.run"
    assert run_step.input == "fn:tickflow.integrations.resume_input.cashier" and run_step.llm_reserve_tokens
    assert isinstance(ask, BranchNode) and ask.cases[0].when == "tickflow.integrations.deferred"
    wait = ask.cases[0].then
    assert isinstance(wait, WaitNode) and wait.event == "cashier.deferred_tools" and wait.name == "cashier.answers"


async def test_a_tool_that_needs_approval_waits_for_it_then_runs_once_and_the_agent_goes_on() -> None:
    model, paid = Approvals(), []
    sim = AgentSim(approval_flow(model, paid), "pay the invoice")
    await sim.finish()
    assert sim.state.status == "running" and paid == [] and model.requests == 1
    waiting = sim.state.nodes["cashier#1/cashier.run"].output
    assert waiting["deferred"] == {"approvals": [{"tool_call_id": "p1", "tool_name": "pay", "args": {"amount": 40}}],
                                   "calls": []}
    await sim.resume("cashier.deferred_tools", {"approvals": {}})  # answers nothing yet: it waits for the rest
    assert sim.state.status == "running" and model.requests == 1
    assert sim.state.nodes["cashier#2/cashier.run"].output["deferred"]["approvals"][0]["tool_call_id"] == "p1"
    await sim.resume("cashier.deferred_tools", {"approvals": {"p1": True}})
    assert sim.state.status == "completed", sim.state.error
    assert paid == [40] and model.requests == 2
    out = sim.state.output
    assert out["output"] == "done: paid 40"
    # The whole conversation since the prompt, across the waits: a later step or turn can go on from it.
    messages = JSON_CODEC.load(list[ModelMessage], out["messages"])
    returns = [p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts
               if isinstance(p, ToolReturnPart)]
    assert returns == ["noted a", "paid 40"] and isinstance(messages[-1], ModelResponse)


async def test_a_denied_call_tells_the_model_why_and_a_bad_answer_is_refused_while_the_run_waits() -> None:
    model, paid = Approvals(), []
    sim = AgentSim(approval_flow(model, paid), "pay the invoice")
    await sim.finish()
    await sim.resume("cashier.deferred_tools", {"approvals": {"p1": "yes"}})
    assert sim.types()[-1] == "ResumeRejected" and sim.state.status == "running"
    await sim.resume("cashier.deferred_tools", {"approvals": {"p1": {"approved": False, "message": "over budget"}}})
    assert sim.state.status == "completed" and paid == []
    assert sim.state.output["output"] == "done: over budget"


def test_an_agent_without_deferred_tools_stays_one_step() -> None:
    spec = Registry().add(Workflow("plan").agent(build(Script(), Effects())[0]))
    assert isinstance(spec.root.nodes[0], StepNode)  # type: ignore[union-attr]
