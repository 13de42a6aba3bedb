"""Agents without I/O: the compiled loop, the pure mapper and conditions, tool-argument errors fed back to the
model, and whole agent runs where the real decider and the real step bodies (offline model) take turns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from tickflow.agents import (
    Agent,
    AgentMaxTurns,
    LlmCallFailed,
    Memory,
    Tool,
    ToolError,
    finished,
    has_tool_calls,
    memory_prompt,
    start_message,
    turn_input,
)
from tickflow.core.decider import Recover, RunState, Signal, Start, WorkerResult, effects, fold, run
from tickflow.events import Envelope, ErrorInfo, ResumeRun, RunStep, StartRun, StepErrored, StepSucceeded
from tickflow.events.agents import LlmCallAttempted, MessageAppended
from tickflow.events.errors import NonRetryableError
from tickflow.events.spec import BranchNode, ForEachNode, LoopNode, SequenceNode, StepNode
from tickflow.llm import OFFLINE_LABEL, ToolCall
from tickflow.settings import Settings
from tickflow.workflow import Registry, StepContext, Workflow, current_step

NO_MEMORY_READS = Memory(window=0, recall_k=0)


class City(BaseModel):
    city: str = Field(min_length=2)
    days: int = Field(default=1, ge=1, le=7)


def get_weather(args: City) -> dict[str, Any]:
    """The forecast for a city."""
    if args.city == "Atlantis":
        raise ToolError("Atlantis has no weather station; ask about another city")
    return {"city": args.city, "days": args.days, "sky": "clear"}


async def get_time(args: City) -> str:
    """The local time in a city."""
    return f"noon in {args.city}"


class Forecast(BaseModel):
    city: str
    summary: str


def weather_agent(**kwargs: Any) -> Agent:
    return Agent("weather", instructions="Use the tools.", tools=[get_weather, get_time],
                 memory=kwargs.pop("memory", NO_MEMORY_READS), **kwargs)


# --- the compiled spec ----------------------------------------------------------------------------------------


def test_the_agent_compiles_to_a_loop_of_an_llm_step_and_a_foreach_of_tool_steps() -> None:
    registry = Registry()
    agent = weather_agent(max_turns=5, llm_pool="llm", tool_pool="tools")
    spec = registry.add(Workflow("forecast").agent(agent, input="input.question"))
    loop = spec.root.nodes[0]  # type: ignore[union-attr]
    assert isinstance(loop, LoopNode) and loop.name == "weather" and loop.input == "input.question"
    assert loop.until == "tickflow.agent.finished" and loop.max_iterations == 5
    turn = loop.body
    assert isinstance(turn, SequenceNode) and turn.name == "weather.turn"
    llm, act = turn.nodes
    assert isinstance(llm, StepNode) and llm.name == "weather.llm" and llm.pool == "llm"
    assert llm.fn == "tickflow.agent.weather.llm" and llm.input == "fn:tickflow.agent.turn_input.weather"
    assert llm.retry.max_attempts == 3
    assert isinstance(act, BranchNode) and act.cases[0].when == "tickflow.agent.has_tool_calls"
    assert act.otherwise is None  # no tool calls: the LLM step's output (the answer) passes through
    tools = act.cases[0].then
    assert isinstance(tools, ForEachNode) and tools.name == "weather.tools" and tools.input == "value.tool_calls"
    assert isinstance(tools.body, StepNode) and tools.body.fn == "tickflow.agent.weather.tool"
    assert tools.body.pool == "tools"
    assert registry.agents == {"weather": agent}
    assert {"tickflow.agent.weather.llm", "tickflow.agent.weather.tool"} <= set(registry.functions)
    assert registry.condition("tickflow.agent.finished") is finished
    assert registry.mapper("tickflow.agent.turn_input.weather") is turn_input("weather")
    assert registry.pools() == {"default", "llm", "tools"}


def test_one_agent_serves_several_workflows_but_two_agents_cannot_share_a_name() -> None:
    registry = Registry()
    agent = weather_agent()
    registry.add(Workflow("a").agent(agent))
    registry.add(Workflow("b").step(get_time).agent(agent, name="second"))
    with pytest.raises(ValueError, match="weather"):
        registry.add(Workflow("c").agent(weather_agent()))


def test_definitions_refuse_what_cannot_work() -> None:
    def untyped(args):  # type: ignore[no-untyped-def]
        return args

    with pytest.raises(ValueError, match="pydantic model"):
        Tool.of(untyped)
    with pytest.raises(ValueError, match="agent name"):
        Agent("has space")
    with pytest.raises(ValueError, match="two tools"):
        Agent("x", tools=[get_weather, Tool.of(get_time, name="get_weather")])
    with pytest.raises(NonRetryableError, match="template"):
        Memory(thread="{nope}").thread_id(agent="a", stack_id="", run_id="r", workflow="w", given=None)
    assert Tool.of(get_weather).spec().parameters == City.model_json_schema()
    assert Tool.of(get_weather).description == "The forecast for a city."


# --- the pure parts ---------------------------------------------------------------------------------------------


class _Steps(dict[str, Any]):
    pass


def test_turn_input_starts_from_the_agent_input_then_carries_the_conversation() -> None:
    mapper = turn_input("w")
    stack_input = {"stack_id": "s1", "tick": 3, "input": "hello"}
    first = mapper({"input": stack_input, "value": stack_input, "iteration": 1, "steps": _Steps()})
    assert first == {"turn": 1, "input": stack_input, "stack_id": "s1"}
    previous = {"thread_id": "t", "stack_id": "s1", "memory": {"window": ["m"]}, "messages": [{"role": "user"}]}
    results = [{"role": "tool", "content": "x", "tool_call_id": "c1"}]
    second = mapper({"input": stack_input, "value": results, "iteration": 2, "steps": _Steps({"w#1/w.llm": previous})})
    assert second == {"turn": 2, "thread_id": "t", "stack_id": "s1", "memory": {"window": ["m"]},
                      "messages": [{"role": "user"}], "tool_results": results}
    with pytest.raises(ValueError, match="claim-checked"):
        mapper({"input": None, "value": results, "iteration": 2, "steps": _Steps({"w#1/w.llm": {"$blob": "x"}})})


def test_conditions_and_message_parsing() -> None:
    assert has_tool_calls({"value": {"tool_calls": [{"id": "c"}]}})
    assert not has_tool_calls({"value": {"final": True, "answer": "x"}})
    assert finished({"value": {"final": True}}) and not finished({"value": [{"role": "tool"}]})
    assert start_message("hi") == ("hi", None)
    assert start_message({"message": "hi", "thread_id": "t1"}) == ("hi", "t1")
    assert start_message({"stack_id": "s", "tick": 1, "input": "tick!"}) == ("tick!", None)
    assert start_message({"n": 1}) == ('{"n": 1}', None)
    assert memory_prompt("t", [], []) == ""


def test_thread_ids_per_stack_and_agent_by_default() -> None:
    m = Memory()
    assert m.thread_id(agent="a", stack_id="s1", run_id="r", workflow="w", given=None) == "stack:s1:agent:a"
    assert m.thread_id(agent="a", stack_id="", run_id="r", workflow="w", given=None) == "agent:a"
    assert Memory(thread="{workflow}.{agent}").thread_id(agent="a", stack_id="", run_id="r", workflow="w",
                                                         given=None) == "w.a"
    with pytest.raises(NonRetryableError, match="must match"):
        m.thread_id(agent="a", stack_id="", run_id="r", workflow="w", given="has/slash")


# --- the tool step ----------------------------------------------------------------------------------------------


def ctx(path: str = "weather#1/weather.tools[0]/weather.tool", **kw: Any) -> StepContext:
    return StepContext(run_id="r1", workflow="forecast", step=path.rsplit("/", 1)[-1], attempt=1,
                       idempotency_key=f"r1/{path}/1", path=path, **kw)


async def call_tool(registry: Registry, call: ToolCall) -> dict[str, Any]:
    out: dict[str, Any] = await registry.call("tickflow.agent.weather.tool", call.model_dump(), ctx())
    return out


async def test_tool_argument_problems_go_back_to_the_model_as_tool_results() -> None:
    registry = Registry()
    registry.add(Workflow("forecast").agent(weather_agent()))
    ok = await call_tool(registry, ToolCall(id="c1", name="get_weather", arguments='{"city": "Paris", "days": 2}'))
    assert ok == {"role": "tool", "name": "get_weather", "tool_call_id": "c1",
                  "content": '{"city":"Paris","days":2,"sky":"clear"}'}
    bad_json = await call_tool(registry, ToolCall(id="c2", name="get_weather", arguments="{city: Paris"))
    assert bad_json["content"].startswith("error: the arguments are not valid JSON")
    invalid = await call_tool(registry, ToolCall(id="c3", name="get_weather", arguments='{"city": "P", "days": 9}'))
    assert invalid["content"].startswith("error: invalid arguments for get_weather: city:")
    assert "days:" in invalid["content"] and invalid["tool_call_id"] == "c3"
    unknown = await call_tool(registry, ToolCall(id="c4", name="launch", arguments="{}"))
    assert unknown["content"] == "error: there is no tool named 'launch'; available tools: get_time, get_weather"
    refused = await call_tool(registry, ToolCall(id="c5", name="get_weather", arguments='{"city": "Atlantis"}'))
    assert refused["content"] == "error: Atlantis has no weather station; ask about another city"
    async_tool = await call_tool(registry, ToolCall(id="c6", name="get_time", arguments='{"city": "Oslo"}'))
    assert async_tool["content"] == "noon in Oslo"


async def test_a_tool_sees_its_own_step_context() -> None:
    seen: list[str] = []

    def record(args: City) -> str:
        seen.append(current_step().idempotency_key)
        return "ok"

    registry = Registry()
    registry.add(Workflow("forecast").agent(Agent("weather", tools=[record], memory=NO_MEMORY_READS)))
    await call_tool(registry, ToolCall(id="c1", name="record", arguments='{"city": "Rome"}'))
    assert seen == ["r1/weather#1/weather.tools[0]/weather.tool/1"]


# --- whole runs: the real decider and the real step bodies take turns --------------------------------------------


class AgentSim:
    """Runs a workflow to its end: the decider decides, the step bodies run in this process, results go back."""

    def __init__(self, wf: Workflow, value: Any, settings: Settings | None = None) -> None:
        self.registry = Registry()
        self.spec = self.registry.add(wf)
        self.settings = settings or Settings()
        self.state = RunState("r1")
        self.log: list[Envelope] = []
        self.now = 1_000
        cmd = Envelope.wrap(StartRun(workflow=wf.name, input=value), id="c1", key="r1", occurred_at_ms=0)
        self.pending = self._apply(Start(cmd, self.spec))

    def _apply(self, inp: Any) -> list[RunStep]:
        self.now += 1
        d = run(self.state, inp, self.now, self.registry)
        self.log.extend(d.events)
        self.state = d.state
        return [o.envelope.payload for o in effects(d) if isinstance(o.envelope.payload, RunStep)]

    async def finish(self, max_tasks: int = 50) -> None:
        for _ in range(max_tasks):
            if not self.pending:
                return
            task = self.pending.pop(0)
            c = StepContext(run_id="r1", workflow=self.spec.name, step=task.step, attempt=task.attempt,
                            idempotency_key=task.idempotency_key, path=task.path, settings=self.settings)
            common: dict[str, Any] = {"path": task.path, "step": task.step, "attempt": task.attempt, "duration_ms": 1,
                                      "llm_attempts": c.report.llm_attempts, "messages": c.report.messages}
            try:
                output = await self.registry.call(task.fn, task.input, c)
                result: Any = StepSucceeded(**common, output=output)
            except Exception as exc:
                result = StepErrored(**common, error=ErrorInfo(type=type(exc).__name__, message=str(exc)),
                                     retryable=not isinstance(exc, NonRetryableError))
            env = Envelope.wrap(result, id=f"{task.idempotency_key}/result", key="r1", occurred_at_ms=0)
            self.pending.extend(self._apply(WorkerResult(env)))
        raise AssertionError("the run did not finish")

    async def resume(self, event: str, payload: Any) -> None:
        """Send ``ResumeRun(event, payload)`` (a command id of its own), then run what it makes due."""
        cmd = Envelope.wrap(ResumeRun(event=event, payload=payload), id=f"resume-{self.now}", key="r1",
                            occurred_at_ms=0)
        self.pending.extend(self._apply(Signal(cmd)))
        await self.finish()

    def types(self) -> list[str]:
        return [e.type for e in self.log]


async def test_an_agent_run_calls_a_tool_then_answers_and_logs_attempts_and_memory() -> None:
    agent = weather_agent(chain=["offline/tool-then-answer"])
    stack_input = {"stack_id": "s1", "tick": 1, "input": "what is the get_weather in Paris?"}
    sim = AgentSim(Workflow("forecast").agent(agent), stack_input)
    await sim.finish()
    assert sim.state.status == "completed", sim.state.error
    out = sim.state.output
    assert out["final"] is True and out["turns"] == 2 and out["label"] == OFFLINE_LABEL
    assert out["thread_id"] == "stack:s1:agent:weather" and "from the tool results" in out["answer"]
    scheduled = [e.payload.path for e in sim.log if e.type == "StepScheduled"]
    assert scheduled == ["weather#1/weather.llm", "weather#1/weather.tools[0]/weather.tool", "weather#2/weather.llm"]
    attempts = [e.payload for e in sim.log if isinstance(e.payload, LlmCallAttempted)]
    assert [(a.path, a.call, a.agent, a.stack_id, a.outcome) for a in attempts] == [
        ("weather#1/weather.llm", 1, "weather", "s1", "ok"), ("weather#2/weather.llm", 2, "weather", "s1", "ok")]
    messages = [e.payload for e in sim.log if isinstance(e.payload, MessageAppended)]
    assert [m.role for m in messages] == ["user", "tool", "assistant"]
    assert all(m.thread_id == "stack:s1:agent:weather" and m.embedding and len(m.embedding) == 256 for m in messages)
    assert messages[0].content == "what is the get_weather in Paris?" and messages[1].content.startswith("get_weather:")
    assert len({m.message_id for m in messages}) == 3
    # Each attempt and message is logged before the outcome of the step that made it.
    seq_of = {(e.type, getattr(e.payload, "path", None)): e.seq for e in sim.log}
    assert seq_of[("LlmCallAttempted", "weather#1/weather.llm")] < seq_of[("StepCompleted", "weather#1/weather.llm")]
    assert sim.state.tokens > 0
    assert fold("r1", sim.log) == sim.state


async def test_structured_output_is_validated_and_returned_as_json() -> None:
    agent = weather_agent(chain=["offline/tool-then-answer"], output=Forecast)
    sim = AgentSim(Workflow("forecast").agent(agent), "forecast for get_time in Oslo")
    await sim.finish()
    answer = sim.state.output["answer"]
    assert set(answer) == {"city", "summary"} and Forecast.model_validate(answer)


async def test_max_turns_is_a_clear_non_retryable_error_after_reporting_the_call() -> None:
    sim = AgentSim(Workflow("forecast").agent(weather_agent(max_turns=1)), "weather in Paris")
    await sim.finish()
    assert sim.state.status == "failed"
    assert sim.state.error is not None and sim.state.error.type == "AgentMaxTurns"
    assert "used all 1 turns (max_turns)" in sim.state.error.message
    assert sum(1 for e in sim.log if isinstance(e.payload, LlmCallAttempted)) == 1
    assert issubclass(AgentMaxTurns, NonRetryableError)


async def test_when_every_model_fails_the_step_is_retried_and_each_attempt_is_logged(tmp_path: Path) -> None:
    config = tmp_path / "llm.json"
    config.write_text(json.dumps({
        "providers": [{"name": "flaky", "kind": "offline", "offline": {"failure_rate": 1.0},
                       "retry": {"max_attempts": 2, "base_delay_s": 0, "max_delay_s": 0}}],
        "models": [{"id": "offline/echo", "provider": "flaky"}],
        "chains": {"default": ["offline/echo"]},
    }))
    agent = Agent("echoer", memory=NO_MEMORY_READS, llm_max_attempts=2, backoff_s=0)
    sim = AgentSim(Workflow("echo").agent(agent), "hello", Settings(llm_config=config))
    for _ in range(3):  # attempt 1 fails, its backoff timer fires, attempt 2 fails
        await sim.finish()
        sim.now += 10_000
        sim.pending.extend(sim._apply(Recover()))
    assert sim.state.status == "failed" and sim.state.error is not None
    assert sim.state.error.type == LlmCallFailed.__name__ and "transient failures" in sim.state.error.message
    failures = [e.payload for e in sim.log if e.type == "StepFailed"]
    assert [f.will_retry for f in failures] == [True, False]  # type: ignore[attr-defined]
    attempts = [e.payload for e in sim.log if isinstance(e.payload, LlmCallAttempted)]
    assert len(attempts) == 4 and {a.outcome for a in attempts} == {"server_error"}
    assert all(a.error is not None and a.http_status == 503 for a in attempts)
