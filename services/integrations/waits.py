"""Tools that need a human, for every framework integration: the agent's step, then a durable tickflow wait.

A framework agent stops when it calls a tool that needs an answer from outside (Pydantic AI's deferred tools, the
OpenAI Agents SDK's ``needs_approval``): its step ends with ``{"deferred": {"approvals": [...], "calls": [...]},
"answers": {…}, "resume": {…}, "waiting_for": <event>}`` — the calls (tool-call id, tool name, arguments), the
answers given so far, and what the framework needs to go on (its conversation or run state). ``deferred_flow``
compiles the agent into a loop of that step and a wait for the event: the run holds no worker while it waits, for
days if need be, and survives restarts; a ``ResumeRun`` of the event (SDK, CLI, HTTP, dashboard) whose payload
matches ``ANSWER_SCHEMA`` ends the wait, and the next iteration's step goes on from where the agent stopped with
every answer so far. A call left unanswered keeps the run waiting for the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tickflow.workflow import Flow, named

__all__ = [
    "ANSWER_SCHEMA",
    "RESUME",
    "Approval",
    "FrameworkAgent",
    "approval",
    "deferred_flow",
    "unanswered",
    "waiting",
]

#: The payload that answers an agent's deferred tool calls, keyed by the model's tool-call ids: ``approvals`` —
#: ``true``, ``false``, or ``{"approved": false, "message": "why"}`` (the model reads the message) or
#: ``{"approved": true, "override_args": {…}}``; ``calls`` — the result of each call the agent left to the outside.
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "approvals": {
            "type": "object",
            "description": 'tool-call id → true | false | {"approved": false, "message": "why"}',
            "additionalProperties": {"oneOf": [
                {"type": "boolean"},
                {"type": "object", "required": ["approved"], "additionalProperties": False,
                 "properties": {"approved": {"type": "boolean"}, "message": {"type": "string"},
                                "override_args": {"type": "object"}}},
            ]},
        },
        "calls": {"type": "object", "description": "tool-call id → the call's result (any JSON)"},
    },
}

#: The key of a resumed step's input (a user's own input cannot hold it by accident).
RESUME = "$tickflow.resume"

@dataclass(frozen=True, slots=True)
class Approval:
    """One answer of ``approvals``, read the same way for every framework."""

    approved: bool
    #: Why it was refused, for the model to read (None: the framework's default message).
    message: str | None = None
    #: Arguments to run the approved call with instead of the model's (frameworks that support it).
    override_args: dict[str, Any] | None = None


def approval(answer: Any) -> Approval:
    """``true``, ``false`` or ``{"approved": …, "message"?: …, "override_args"?: …}`` (a missing answer: refused)."""
    if isinstance(answer, Mapping):
        return Approval(bool(answer.get("approved")), answer.get("message") or None, answer.get("override_args"))
    return Approval(answer is True)


def waiting(event: str, requests: Mapping[str, Any], answers: Mapping[str, Any], resume: Any) -> dict[str, Any]:
    """The output of a step whose agent stopped on deferred calls (what the wait and the next step read)."""
    return {"deferred": dict(requests), "answers": dict(answers), "resume": resume, "waiting_for": event}


def unanswered(requests: Mapping[str, Any], answers: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The requested calls that have no answer yet, by kind (``approvals``, ``calls``)."""
    return {kind: [c for c in requests.get(kind, []) if c["tool_call_id"] not in answers.get(kind, {})]
            for kind in ("approvals", "calls")}


def deferred_flow(base: str, event: str, max_waits: int,
                  step: Callable[[str, Callable[[Mapping[str, Any]], Any]], Flow]) -> Flow:
    """The loop named ``base``: ``step(f"{base}.run", input_mapper)`` (the agent's step), then, when it stopped on
    deferred calls, a wait for ``event`` named ``<base>.answers``; until the agent ends with its output."""
    turn = step(f"{base}.run", _resume_input(base)).branch(
        (_deferred, Flow().wait_for_event(event, schema=ANSWER_SCHEMA, name=f"{base}.answers")),
        name=f"{base}.ask")
    flow = Flow().loop(turn, until=_settled, max_iterations=max_waits + 1, name=base)
    flow._nodes[0]["body"]["name"] = f"{base}.turn"
    return flow


class FrameworkAgent:
    """What a framework agent's wrapper is to a workflow (``Flow.agent`` adds its ``flow()``): one LLM step, run
    by ``step`` in a worker of ``pool`` under its retry options; with tools that may need a human (``defers``),
    the loop of ``deferred_flow``. Subclasses set the attributes."""

    name: str
    step: Callable[[Any], Any]
    pool: str
    reserve_tokens: int
    max_attempts: int
    backoff_s: float
    timeout_s: float | None
    defers: bool
    deferred_event: str
    max_waits: int

    def flow(self, name: str | None = None) -> Flow:
        """The agent as a flow named ``name``: its step (budgets reserve ``reserve_tokens`` before it); with tools
        that may need a human, a loop of that step and a wait for the answers."""
        base = name or self.name
        if not self.defers:
            return self._step_flow(base, None)
        return deferred_flow(base, self.deferred_event, self.max_waits, self._step_flow)

    def _step_flow(self, name: str, input: Callable[[Mapping[str, Any]], Any] | None) -> Flow:
        return Flow().step(self.step, name=name, input=input, pool=self.pool, max_attempts=self.max_attempts,
                           backoff_s=self.backoff_s, timeout_s=self.timeout_s, llm_reserve_tokens=self.reserve_tokens)


_RESUME_INPUTS: dict[str, Callable[[Mapping[str, Any]], Any]] = {}


def _resume_input(base: str) -> Callable[[Mapping[str, Any]], Any]:
    """The pure mapper giving iteration ``k`` of agent loop ``base`` its input: the agent's input first; then where
    iteration ``k - 1``'s step stopped (path ``<base>#<k-1>/<base>.run``) and every answer so far (the answers it
    held, and the wait's payload, which is the value flowing out of the previous iteration)."""
    if base in _RESUME_INPUTS:
        return _RESUME_INPUTS[base]

    def mapper(scope: Mapping[str, Any]) -> Any:
        k = int(scope.get("iteration", 1))
        if k == 1:
            return scope["value"]
        previous = scope["steps"][f"{base}#{k - 1}/{base}.run"]
        if not isinstance(previous, Mapping) or "resume" not in previous:
            raise ValueError(f"iteration {k} of agent {base!r} cannot find where the agent stopped (was it "
                             "claim-checked? keep conversations below TICKFLOW_OFFLOAD_BYTES)")
        answers = {kind: dict(previous["answers"].get(kind, {})) for kind in ("approvals", "calls")}
        for kind in answers:
            answers[kind].update(scope["value"].get(kind, {}))
        return {RESUME: {"resume": previous["resume"], "requests": previous["deferred"], "answers": answers}}

    _RESUME_INPUTS[base] = named(f"tickflow.integrations.resume_input.{base}", mapper)
    return _RESUME_INPUTS[base]


@named("tickflow.integrations.deferred")
def _deferred(scope: Mapping[str, Any]) -> bool:
    """The agent stopped on calls that need an answer (the branch waits for it)."""
    value = scope["value"]
    return isinstance(value, Mapping) and "deferred" in value


@named("tickflow.integrations.settled")
def _settled(scope: Mapping[str, Any]) -> bool:
    """The agent finished with its output (else the iteration's value is the answers to its deferred calls)."""
    value = scope["value"]
    return isinstance(value, Mapping) and "output" in value
