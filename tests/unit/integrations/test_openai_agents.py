"""An OpenAI Agents SDK run inside a tickflow step (no broker): its model calls, tool calls and handoffs are
journaled, a re-run of the step replays them instead of calling again, each model call's usage reaches the ledger
once, and a run's budget stops it before the call that could pass it. The SDK's own ``Runner`` runs here, with a
scripted ``Model`` of the SDK's interface and the worker's journal over a stand-in results topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from agents import Agent, Model, ModelResponse, Usage, function_tool
from openai.types.responses import ResponseFunctionToolCall, ResponseOutputMessage, ResponseOutputText

from tests.unit.agents.test_agents import AgentSim
from tests.unit.integrations.test_pydantic_ai import Crash, checkpoints, context
from tests.unit.runtime.test_paid_once import Broker, task
from tickflow.core.decider import WorkerResult
from tickflow.events.agents import AgentHandoff, HandoffFields, LlmCallAttempted
from tickflow.events.codec import decode
from tickflow.events.schemas import LlmAttemptFields
from tickflow.events.spec import StepNode
from tickflow.integrations.journaled import priced
from tickflow.integrations.openai_agents import BudgetExceeded, TickflowAgents
from tickflow.runtime.journal import PaidCalls, StepJournal
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow


def call(name: str, call_id: str, args: str = "{}") -> ResponseFunctionToolCall:
    return ResponseFunctionToolCall(arguments=args, call_id=call_id, name=name, type="function_call",
                                    id=f"fc_{call_id}", status="completed")


class Script(Model):
    """``note``, then a handoff to ``booker``, then ``book``, then an answer; counts the calls it got."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_response(self, system_instructions: Any, input: Any, *args: Any, **kwargs: Any) -> ModelResponse:
        self.calls += 1
        outputs = [i for i in input if isinstance(i, dict) and i.get("type") == "function_call_output"]
        usage = Usage(requests=1, input_tokens=100, output_tokens=10, total_tokens=110)
        if not outputs:
            items: list[Any] = [call("note", "c1", '{"text": "window seat"}')]
        elif len(outputs) == 1:
            items = [call("transfer_to_booker", "c2")]
        elif len(outputs) == 2:
            items = [call("book", "c3", '{"what": "flight"}')]
        else:
            text = ResponseOutputText(annotations=[], text=f"done: {outputs[-1]['output']}", type="output_text")
            items = [ResponseOutputMessage(id="m1", content=[text], role="assistant", status="completed",
                                           type="message")]
        return ModelResponse(output=items, usage=usage, response_id=None)

    def stream_response(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError


class World:
    def __init__(self) -> None:
        self.notes: list[str] = []
        self.bookings = 0
        self.crash_before_booking = False


def build(script: Script, world: World) -> tuple[TickflowAgents, Registry]:
    @function_tool
    def note(text: str) -> str:
        """Keep a note."""
        world.notes.append(text)
        return f"noted {text}"

    @function_tool(failure_error_function=None)  # the crash must end the step, not go back to the model
    def book(what: str) -> str:
        """Book it."""
        if world.crash_before_booking:
            raise Crash("killed")
        world.bookings += 1
        return f"booked {what} #{world.bookings}"

    booker = Agent(name="booker", instructions="Book.", model=script, tools=[book])
    triage = Agent(name="triage", instructions="Note, then hand off.", model=script, tools=[note], handoffs=[booker])
    wrapped = TickflowAgents(triage)
    registry = Registry()
    registry.add(Workflow("trip").agent(wrapped))
    return wrapped, registry


async def test_a_re_run_after_a_crash_replays_model_calls_tools_and_handoffs() -> None:
    script, world = Script(), World()
    wrapped, registry = build(script, world)
    calls, broker = PaidCalls(), Broker()
    world.crash_before_booking = True
    with pytest.raises(Exception, match="killed"):
        await registry.call(wrapped.step.__tickflow_name__, "plan",  # type: ignore[attr-defined]
                            context(StepJournal(calls, broker.send, task("triage"))))
    assert script.calls == 3 and world.notes == ["window seat"] and world.bookings == 0
    world.crash_before_booking = False
    ctx = context(StepJournal(calls, broker.send, task("triage", attempt=2)), attempt=2)
    out = await registry.call(wrapped.step.__tickflow_name__, "plan", ctx)  # type: ignore[attr-defined]
    assert out["output"] == "done: booked flight #1" and out["last_agent"] == "booker"
    assert script.calls == 4 and world.notes == ["window seat"] and world.bookings == 1
    found = checkpoints(broker)
    paid = [cp for cp in found if cp.attempts]
    assert [(cp.attempt, cp.attempts[0].tokens_in, cp.attempts[0].tokens_out) for cp in paid] == [
        (1, 100, 10)] * 3 + [(2, 100, 10)]
    names = sorted(cp.name for cp in found if not cp.attempts)
    assert names == ["openai_agents:handoff@0", "openai_agents:tool:book:c3", "openai_agents:tool:note:c1"]
    # The handoff rides on its record once: the re-run replayed it from the journal.
    assert [cp.handoff for cp in found if cp.handoff] == [HandoffFields(from_agent="triage", to_agent="booker")]
    assert ctx.report.llm_attempts == []


async def test_the_engine_logs_a_handoff_as_an_event_and_each_call_with_the_runs_stack() -> None:
    """Run as a stack's tick: the step does not know its stack, the run does, and each call is logged with it."""
    script, world = Script(), World()
    wrapped, registry = build(script, world)
    broker = Broker()
    sim = AgentSim(Workflow("trip").agent(wrapped), {"stack_id": "s1", "tick": 3, "input": "plan"})
    (running,) = sim.pending
    await registry.call(wrapped.step.__tickflow_name__, "plan",  # type: ignore[attr-defined]
                        context(StepJournal(PaidCalls(), broker.send, task(running.path))))
    for _, raw in broker.sent:
        sim.pending.extend(sim._apply(WorkerResult(decode(raw, expect="result"))))
    handoffs = [e.payload for e in sim.log if isinstance(e.payload, AgentHandoff)]
    assert handoffs == [AgentHandoff(path="triage", from_agent="triage", to_agent="booker")]
    paid = [e.payload for e in sim.log if isinstance(e.payload, LlmCallAttempted)]
    assert [(p.agent, p.stack_id) for p in paid] == [("triage", "s1")] * 4  # note, hand off, book, answer


async def test_a_budget_stops_the_run_before_the_call_that_could_pass_it() -> None:
    script, world = Script(), World()
    wrapped, registry = build(script, world)
    ctx = context(StepJournal(PaidCalls(), Broker().send, task("triage")), budget_tokens=1_200)
    with pytest.raises(BudgetExceeded, match="model request 2 was not sent"):
        await registry.call(wrapped.step.__tickflow_name__, "plan", ctx)  # type: ignore[attr-defined]
    assert script.calls == 1 and world.notes == ["window seat"]


async def test_outside_a_step_it_is_the_sdks_runner() -> None:
    script, world = Script(), World()
    wrapped, _ = build(script, world)
    from tickflow.integrations.openai_agents import TickflowRunner

    result = await TickflowRunner.run(wrapped.agent, "plan")
    assert result.final_output == "done: booked flight #1" and script.calls == 4


def test_a_framework_call_is_priced_by_the_configured_price_then_genai_prices_else_unknown(tmp_path: Path) -> None:
    config = tmp_path / "llm.toml"
    config.write_text('[[providers]]\nname = "house"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
                      '[[models]]\nid = "house"\nprovider = "house"\nmodel = "house-model"\n'
                      '[prices.house]\ninput_per_m = 2.0\noutput_per_m = 4.0\nillustrative = true\n')
    settings = Settings(llm_config=config)

    def attempt(model: str, provider: str = "openai-agents") -> LlmAttemptFields:
        return priced(LlmAttemptFields(provider=provider, model=model, tokens_in=1_000_000, tokens_out=500_000,
                                       outcome="ok", price_known=False), settings)

    house = attempt("house-model")  # the provider's name of the configured model "house"
    assert (house.cost_usd, house.price_known, house.price_illustrative) == (4.0, True, True)
    public = attempt("gpt-4o")  # the SDK names no provider: genai-prices matches the model
    assert public.price_known and public.cost_usd == pytest.approx(7.5)  # $2.50 / $10 per million tokens
    assert attempt("gpt-4o", provider="openai").cost_usd == pytest.approx(7.5)
    unknown = attempt("trip-agent")
    assert (unknown.cost_usd, unknown.price_known) == (0.0, False)


def approval_flow(script: Script, world: World) -> Workflow:
    @function_tool
    def note(text: str) -> str:
        """Keep a note."""
        world.notes.append(text)
        return f"noted {text}"

    @function_tool(needs_approval=True)
    def book(what: str) -> str:
        """Book it, once a human approved."""
        world.bookings += 1
        return f"booked {what} #{world.bookings}"

    booker = Agent(name="booker", instructions="Book.", model=script, tools=[book])
    triage = Agent(name="triage", instructions="Note, then hand off.", model=script, tools=[note], handoffs=[booker])
    return Workflow("trip").agent(TickflowAgents(triage))


async def test_a_tool_that_needs_approval_is_a_wait_and_runs_once_approved() -> None:
    script, world = Script(), World()
    sim = AgentSim(approval_flow(script, world), "plan")
    await sim.finish()
    assert sim.state.status == "running" and world.bookings == 0 and script.calls == 3
    stopped = sim.state.nodes["triage#1/triage.run"].output
    assert stopped["deferred"] == {"approvals": [{"tool_call_id": "c3", "tool_name": "book",
                                                  "args": {"what": "flight"}}], "calls": []}
    assert stopped["waiting_for"] == "triage.deferred_tools"
    await sim.resume("triage.deferred_tools", {"approvals": {"c3": True}})
    assert sim.state.status == "completed", sim.state.error
    assert world.bookings == 1 and world.notes == ["window seat"] and script.calls == 4
    assert sim.state.output["output"] == "done: booked flight #1" and sim.state.output["last_agent"] == "booker"


async def test_a_rejected_call_tells_the_model_why() -> None:
    script, world = Script(), World()
    sim = AgentSim(approval_flow(script, world), "plan")
    await sim.finish()
    await sim.resume("triage.deferred_tools", {"approvals": {"c3": {"approved": False, "message": "too dear"}}})
    assert sim.state.status == "completed" and world.bookings == 0
    assert sim.state.output["output"] == "done: too dear"


def test_without_tools_that_need_approval_the_agents_stay_one_step() -> None:
    spec = Registry().add(Workflow("trip").agent(build(Script(), World())[0]))
    assert isinstance(spec.root.nodes[0], StepNode)  # type: ignore[union-attr]
