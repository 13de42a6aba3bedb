"""The divergence diff: would other code decide a recorded run the way the log says it was decided?

A run's log is a sequence of decisions. Each decision's events name the input that caused it (``causation_id``):
a command's id (StartRun, ResumeRun, CancelRun, ChildFinished, AdmitRun, ForkRun), a worker result's id, or
``timer/<now>`` / ``recover/<partition>`` for a timer firing or a recovery, which no record caused. Every event of
one decision carries the decision's time (a fork's copied history excepted, whose last event does). So the log
alone says which input was decided when and in what order; the commands and results topics hold the inputs.

``diff_run`` re-drives those inputs, in log order and at their recorded times, through the decider of the code
it is given and compares what it emits with what was recorded, decision by decision, stopping at the first
difference. Two questions can be asked of new code (``spec=``):

``pinned`` (the default, the deploy question)
    Each run keeps the spec its ``RunStarted`` recorded, exactly as the engine treats a run in flight after a
    deploy. What the new code contributes is what runs are not pinned to: the conditions and mappers the decider
    calls by stable name (a changed body chooses another branch; a missing one fails the node), and the decider
    itself. A new *version* of the workflow changes nothing here: pinned runs are never moved to it.
``registry``
    Each run is started on the spec the new code would pin for its StartRun (the version it named, else the
    newest) and fed the same inputs: what a run started under the new code would decide given the same world.
    ``RunStarted``'s ``spec`` and ``spec_hash`` are not compared (they differ whenever the definition does), the
    decisions after it are: a reordered sequence schedules another step first.

Separately, for a run still in flight, ``still_needed`` lists what it will still look up by name that the new code
lacks: step functions (a worker of the new code fails such a step with ``UnknownStepFunction``), conditions,
mappers, and child workflows. That is judged on the pinned spec and the recorded state in both modes, since
runs in flight keep their specs.

What it cannot see: an input that decided nothing when it was recorded (a duplicate or late result, a resume
retried under one id) left no event naming it, so it is not re-driven; a step body's own behaviour (its recorded
result is used: the step ran in a worker, with its effects). A history with a hole (a lagging or vacuumed
projection; a quarantine release, which skips seqs on purpose) is reported as uncheckable.

Pure: no clock and no I/O; the caller gathers the inputs (``tickflow.runtime.recorded`` reads them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from tickflow.core.decider import (
    ClaimedPayload,
    Decision,
    Fork,
    Input,
    Recover,
    Signal,
    Start,
    WorkerResult,
    effects,
    refuse,
    resume_schema,
    run,
)
from tickflow.core.interpreter import Functions
from tickflow.core.state import RunState, evolve
from tickflow.events.agents import LlmCallAttempted, MessageAppended  # also registers the agent event types
from tickflow.events.codec import InvalidRecord, RecordTooLarge, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import (
    PAYLOAD_TYPES,
    AdmitRun,
    CancelRun,
    ChildFinished,
    ErrorInfo,
    ForkRun,
    LlmAttemptFields,
    MessageFields,
    ResumeRun,
    RunReleased,
    RunStarted,
    StartRun,
    StepCompleted,
    StepSucceeded,
)
from tickflow.events.spec import (
    BranchNode,
    ChildNode,
    ForEachNode,
    LoopNode,
    Node,
    ParallelNode,
    SequenceNode,
    StepNode,
    WaitNode,
    WorkflowSpec,
    walk,
)

__all__ = [
    "CheckReport",
    "Code",
    "Divergence",
    "Missing",
    "RecordedDecision",
    "RunDiff",
    "SpecChoice",
    "decisions",
    "diff_run",
    "envelope_from_json",
    "envelope_json",
    "rebuilt_results",
    "still_needed",
]

SpecChoice = Literal["pinned", "registry"]

#: Causation ids of decisions no record caused (see ``runtime/engine.py``): a timer firing, a recovery.
TIMER_PREFIXES = ("timer/", "recover/")


class Code(Functions, Protocol):
    """What the diff needs of the code under test (``tickflow.workflow.Registry`` is one)."""

    def spec(self, workflow: str, version: int | None = None) -> WorkflowSpec | None: ...

    def function(self, name: str) -> Any | None: ...


class Divergence(BaseModel):
    """The first decision the code makes differently: at ``seq``, ``expected`` was recorded, ``produced`` is what
    the code emits (either None when one side emits fewer events)."""

    seq: int
    input: str = Field(description="The input that caused the decision, as 'Type id'.")
    expected: dict[str, Any] | None = None
    produced: dict[str, Any] | None = None


class Missing(BaseModel):
    """Something a run in flight will still look up by name that the code does not register."""

    kind: Literal["step function", "condition", "mapper", "workflow"]
    name: str
    path: str = Field(description="The node (path in the run) that needs it, or the unsettled node it lies under.")


class RunDiff(BaseModel):
    run_id: str
    workflow: str = ""
    status: str = Field(default="", description="The run's recorded status at its last event.")
    spec: SpecChoice = "pinned"
    decisions: int = Field(default=0, description="Recorded decisions re-driven until the verdict.")
    divergence: Divergence | None = None
    missing: list[Missing] = Field(default_factory=list)
    #: Set when an input the log names could not be found (past the topics' retention): nothing after it is known.
    unreplayable: str | None = None
    #: In ``registry`` mode: the hash of the spec the run pinned and of the one the code would pin, when they differ.
    spec_change: tuple[str, str] | None = None

    @property
    def identical(self) -> bool:
        return self.divergence is None and not self.missing and self.unreplayable is None

    def verdict(self) -> str:
        """One line for people."""
        if self.unreplayable is not None:
            return f"{self.run_id}: cannot be checked: {self.unreplayable}"
        lines = []
        if self.divergence is not None:
            d = self.divergence
            lines.append(
                f"{self.run_id}: diverges at seq {d.seq} (decision on {d.input}): "
                f"expected {_brief(d.expected)}, produced {_brief(d.produced)}"
            )
        lines += [f"{self.run_id}: still needs {m.kind} {m.name!r} (at {m.path}), which the code lacks"
                  for m in self.missing]
        return "\n".join(lines) or f"{self.run_id}: identical ({self.decisions} decisions)"


def _brief(event: dict[str, Any] | None) -> str:
    if event is None:
        return "nothing"
    text = f"{event['type']} {event['payload']}"
    return text if len(text) <= 300 else f"{text[:300]}…"


class CheckReport(BaseModel):
    """``replay check``: the diff of many runs of one workflow. ``ok`` only when every run is identical, so a CI job
    can gate a deploy on it."""

    workflow: str
    spec: SpecChoice = "pinned"
    runs: list[RunDiff] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.identical for r in self.runs)

    def missing(self) -> dict[tuple[str, str], list[str]]:
        """(kind, name) → the runs in flight that still need it and the code lacks."""
        out: dict[tuple[str, str], list[str]] = {}
        for r in self.runs:
            for m in r.missing:
                out.setdefault((m.kind, m.name), []).append(r.run_id)
        return out

    def summary(self) -> str:
        diverged = sum(r.divergence is not None for r in self.runs)
        unchecked = sum(r.unreplayable is not None for r in self.runs)
        needy = sum(bool(r.missing) for r in self.runs)
        verdict = "identical" if self.ok else "DIVERGES"
        return (
            f"{len(self.runs)} runs of {self.workflow!r} re-driven ({self.spec} specs): {diverged} diverge, "
            f"{needy} need code that is missing, {unchecked} cannot be checked: {verdict}"
        )


@dataclass(frozen=True, slots=True)
class RecordedDecision:
    """One decision as the log holds it: what caused it, when, and the events it emitted."""

    cause: str
    now_ms: int
    events: list[Envelope]


def decisions(events: Sequence[Envelope]) -> list[RecordedDecision]:
    """A run's events cut into decisions: runs of consecutive events with one causation id. The decision's time
    is its last event's (a fork's copies carry shifted times; its ``RunForked`` marker carries the decision's).
    Recoveries of one partition share their causation id (``recover/<partition>``), so two in a row are told
    apart by their times."""
    out: list[RecordedDecision] = []
    group: list[Envelope] = []
    for event in events:
        cause = group[0].causation_id if group else None
        recovery_again = (
            cause is not None and cause.startswith("recover/") and event.occurred_at_ms != group[-1].occurred_at_ms
        )
        if group and (event.causation_id != cause or recovery_again):
            out.append(RecordedDecision(group[0].causation_id or "", group[-1].occurred_at_ms, group))
            group = []
        group.append(event)
    if group:
        out.append(RecordedDecision(group[0].causation_id or "", group[-1].occurred_at_ms, group))
    return out


#: The id a worker gives an attempt's result: its task's id and this (``StepWorker._wrap``).
RESULT_ID_SUFFIX = "/result"


def rebuilt_results(events: Sequence[Envelope]) -> dict[str, Envelope]:
    """The successful step results a run's events record whole, by result id: for results that were never records.

    A step run through eager dispatch (``runtime/eager.py``) hands its ``StepSucceeded`` to the engine in memory,
    so the results topic never holds it; the decision it caused holds every field the decider read of it:
    ``StepCompleted`` (path, step, attempt, output, duration, worker, logs) after the ``LlmCallAttempted`` and
    ``MessageAppended`` events of its reported calls and messages. Failures always go through the topic: their
    events do not keep ``retryable`` and ``retry_after_ms``. Envelope fields the decider does not read (the
    worker's clock, its trace) are not rebuilt.
    """
    out: dict[str, Envelope] = {}
    for decision in decisions(events):
        if not decision.cause.endswith(RESULT_ID_SUFFIX):
            continue
        at = next((i for i, e in enumerate(decision.events) if isinstance(e.payload, StepCompleted)), None)
        if at is None:
            continue
        done = decision.events[at]
        p = done.payload
        assert isinstance(p, StepCompleted)
        before = [e.payload for e in decision.events[:at]]
        result = StepSucceeded(
            path=p.path,
            step=p.step,
            attempt=p.attempt,
            output=p.output,
            duration_ms=p.duration_ms,
            worker=p.worker,
            logs=p.logs,
            llm_attempts=[
                LlmAttemptFields(**a.model_dump(exclude={"path"}))
                for a in before
                if isinstance(a, LlmCallAttempted) and a.path == p.path
            ],
            messages=[MessageFields(**m.model_dump()) for m in before if isinstance(m, MessageAppended)],
        )
        out[decision.cause] = Envelope.wrap(
            result,
            id=decision.cause,
            key=done.key,
            occurred_at_ms=done.occurred_at_ms,
            causation_id=decision.cause.removesuffix(RESULT_ID_SUFFIX),
            correlation_id=done.correlation_id,
        )
    return out


def envelope_json(env: Envelope) -> dict[str, Any]:
    """An envelope as JSON for the wire (a recorded run): the codec's fields, without its record-size limit, since
    a fork's inlined history may exceed what one record may hold."""
    return env.model_dump(mode="json")


def envelope_from_json(data: Mapping[str, Any]) -> Envelope:
    """The envelope ``envelope_json`` wrote (already upcast: it was decoded from the log first)."""
    cls = PAYLOAD_TYPES.get((str(data.get("kind")), str(data.get("type"))))
    if cls is None:
        raise ValueError(f"unknown record type {data.get('kind')}/{data.get('type')}: upgrade this client")
    return Envelope.model_validate({**data, "payload": cls.model_validate(data.get("payload", {}))})


def _shape(event: Envelope, registry_mode: bool) -> dict[str, Any]:
    payload = event.payload.model_dump(mode="json")
    if registry_mode and isinstance(event.payload, RunStarted):
        payload.pop("spec", None)
        payload.pop("spec_hash", None)
    return {"seq": event.seq, "type": event.type, "payload": payload}


def _input_for(
    decision: RecordedDecision,
    state: RunState,
    inputs: Mapping[str, Envelope],
    claimed: Mapping[str, ClaimedPayload],
    code: Code,
    choice: SpecChoice,
) -> Input | str:
    """The decider input that caused ``decision``, or why it cannot be had."""
    cause = decision.cause
    if cause.startswith(TIMER_PREFIXES):
        return Recover(cause)
    env = inputs.get(cause)
    if env is None:
        return (
            f"the input {cause!r} that caused seq {decision.events[0].seq} is not in the commands or results topic "
            "(past their retention?)"
        )
    p = env.payload
    if isinstance(p, StartRun):
        first = decision.events[0].payload
        if choice == "pinned" and isinstance(first, RunStarted):
            return Start(env, first.spec, first.spec_hash)
        spec = code.spec(p.workflow, p.version)
        return Start(env, spec, spec.content_hash() if spec is not None else "")
    if isinstance(p, ForkRun):
        return Fork(env)
    if isinstance(p, ResumeRun):
        held = claimed.get(cause)
        use = held is not None and resume_schema(state, p.event) is not None  # as ``claimed_signal`` decides
        return Signal(env, held if use else None)
    if isinstance(p, CancelRun | ChildFinished | AdmitRun):
        return Signal(env)
    if env.kind == "result":
        return WorkerResult(env)
    return f"the input {cause!r} is a {env.type}, which the diff cannot re-drive"


def _decide(state: RunState, input: Input, now_ms: int, code: Code) -> Decision:
    """The decision as the engine makes it (``Engine._decide``): one that does not encode, or a decider error,
    becomes ``refuse``'s failure or rejection."""
    cause = input.causation_id if isinstance(input, Recover) else (
        input.result.id if isinstance(input, WorkerResult) else input.command.id
    )
    try:
        decision = run(state, input, now_ms, code)
        for event in decision.events:
            encode(event)
        for out in effects(decision):
            encode(out.envelope)
        return decision
    except InvalidRecord as exc:
        kind = "PayloadTooLarge" if isinstance(exc, RecordTooLarge) else "InvalidRecord"
        error = ErrorInfo(type=kind, message=str(exc)[:10_000])
    except Exception as exc:
        error = ErrorInfo(type="EngineError", message=f"the engine could not decide this input: {exc!r}"[:10_000])
    start = input.command.payload if isinstance(input, Start) else None
    assert start is None or isinstance(start, StartRun)
    return refuse(state, error, now_ms, cause, start)


def _label(input: Input, cause: str) -> str:
    if isinstance(input, Recover):
        return f"timer {cause}" if cause.startswith("timer/") else f"recovery {cause}"
    env = input.result if isinstance(input, WorkerResult) else input.command
    return f"{env.type} {env.id}"


def diff_run(
    run_id: str,
    events: Sequence[Envelope],
    inputs: Mapping[str, Envelope],
    code: Code,
    *,
    spec: SpecChoice = "pinned",
    claimed: Mapping[str, ClaimedPayload] | None = None,
) -> RunDiff:
    """Re-drive a run's recorded inputs through ``code``'s decider and report the first decision that differs.

    ``events`` are the run's events 1..n in seq order; ``inputs`` the commands and results they name, by
    envelope id; ``claimed`` the values of claim-checked resume payloads (the engine reads them for the wait's
    schema check). See the module docstring for what ``spec`` chooses.
    """
    claimed = claimed or {}
    report = RunDiff(run_id=run_id, spec=spec)
    gap = next((i + 1 for i, e in enumerate(events) if e.seq != i + 1), None)
    if gap is not None or not events:
        report.unreplayable = (
            f"its history is incomplete (seq {gap} is missing or out of place): the projection is catching up, "
            "or it was vacuumed; rebuild it" if events else "it has no events"
        )
        return report
    recorded = decisions(events)
    state = RunState(run_id)
    registry_mode = spec == "registry"
    for i, decision in enumerate(recorded):
        todo = list(decision.events)
        if isinstance(todo[0].payload, RunReleased):  # an operator's release applies as recorded (see ``release``)
            state = evolve(state, todo[0])
            todo = todo[1:]
            if not todo:
                report.decisions += 1
                continue
            input: Input | str = Recover(decision.cause)  # the engine decides what is due right after it
        else:
            input = _input_for(decision, state, inputs, claimed, code, spec)
        if isinstance(input, str):
            report.unreplayable = input
            break
        produced = _decide(state, input, decision.now_ms, code)
        report.decisions += 1
        expected = [_shape(e, registry_mode) for e in todo]
        got = [_shape(e, registry_mode) for e in produced.events]
        if expected == got:
            state = produced.state
        elif _cut_short(expected, got, recorded[i + 1 :]):
            for event in todo:  # a crash cut the decision short; the recovery after it emits the rest
                state = evolve(state, event)
        else:
            at = next(k for k in range(max(len(expected), len(got)))
                      if k >= len(expected) or k >= len(got) or expected[k] != got[k])
            report.divergence = Divergence(
                seq=(todo[at].seq if at < len(todo) else produced.events[at].seq) or 0,
                input=_label(input, decision.cause),
                expected=_plain(expected[at]) if at < len(expected) else None,
                produced=_plain(got[at]) if at < len(got) else None,
            )
            break
        if registry_mode and isinstance(todo[0].payload, RunStarted) and state.spec is not None:
            pinned = todo[0].payload.spec_hash
            now = state.spec_hash or state.spec.content_hash()
            if pinned != now:
                report.spec_change = (pinned, now)
    last = _recorded_state(run_id, events)
    report.workflow, report.status = last.workflow, last.status
    if not last.terminal and last.spec is not None:
        report.missing = still_needed(last, code)
    return report


def _plain(shape: dict[str, Any]) -> dict[str, Any]:
    return {"type": shape["type"], "payload": shape["payload"]}


def _cut_short(expected: list[Any], got: list[Any], rest: Sequence[RecordedDecision]) -> bool:
    """A recorded decision that is a prefix of the one produced, for a reason other than the code: a crash cut it
    short (an engine before transactions; the recovery after it emitted the rest), or it is the last one and the
    rest of its events is not visible yet (the projection a diff reads lags the log, and a batch may end inside a
    decision)."""
    return (
        len(expected) < len(got)
        and got[: len(expected)] == expected
        and (not rest or rest[0].cause.startswith("recover/"))
    )


def _recorded_state(run_id: str, events: Iterable[Envelope]) -> RunState:
    state = RunState(run_id)
    for event in events:
        state = evolve(state, event)
    return state


# --- what a run in flight still needs ------------------------------------------------------------------------


def still_needed(state: RunState, code: Code) -> list[Missing]:
    """Everything the run in ``state`` (not finished) may still look up by name that ``code`` lacks.

    Judged on its pinned spec: a node settled in the run's state needs nothing more; one not started needs its
    input mapper; an unchosen branch its conditions; a step not settled its function (a retry or redelivery runs
    it under the new code). Inside a loop or a foreach that is not settled, any body node may run again, so all of
    the body's functions count. The compensation step counts until the run has finished failing.
    """
    assert state.spec is not None
    found: dict[tuple[str, str], Missing] = {}

    def need(kind: Literal["step function", "condition", "mapper", "workflow"], name: str, path: str) -> None:
        lookup: dict[str, Callable[[str], Any]] = {
            "step function": code.function,
            "condition": code.condition,
            "mapper": code.mapper,
            "workflow": code.spec,
        }
        if lookup[kind](name) is None and (kind, name) not in found:
            found[(kind, name)] = Missing(kind=kind, name=name, path=path)

    def mapping(mapping: str | None, path: str) -> None:
        if mapping is not None and mapping.startswith("fn:"):
            need("mapper", mapping[3:], path)

    def whole(node: Node, path: str) -> None:  # every function of a subtree that may run (again)
        for sub in walk(node):
            own(sub, path)

    def own(node: Node, path: str) -> None:  # a node's own functions, when it has yet to start
        mapping(node.input, path)
        if isinstance(node, StepNode):
            need("step function", node.fn, path)
        elif isinstance(node, ChildNode):
            need("workflow", node.workflow, path)
        elif isinstance(node, BranchNode):
            for case in node.cases:
                need("condition", case.when, path)
        elif isinstance(node, LoopNode):
            for condition in (node.until, node.while_):
                if condition is not None:
                    need("condition", condition, path)

    def visit(node: Node, scopes: list[str]) -> None:
        path = "/".join([*scopes, node.name])
        st = state.nodes.get(path)
        if st is None:  # yet to start: all of it may run
            whole(node, path)
            return
        if st.status != "active":  # settled: it needs nothing more
            return
        if isinstance(node, StepNode):
            need("step function", node.fn, path)
        elif isinstance(node, SequenceNode):
            for child in node.nodes:
                visit(child, scopes)
        elif isinstance(node, ParallelNode):
            for child in node.branches:
                visit(child, scopes)
        elif isinstance(node, BranchNode):
            if not st.chosen:
                whole(node, path)
            elif st.case is not None:
                visit(node.cases[st.case].then, scopes)
            elif node.otherwise is not None:
                visit(node.otherwise, scopes)
        elif isinstance(node, LoopNode | ForEachNode):
            if isinstance(node, LoopNode):  # its condition is asked again after every iteration
                for condition in (node.until, node.while_):
                    if condition is not None:
                        need("condition", condition, path)
            whole(node.body, path)  # any iteration or item may still run any body node
        elif isinstance(node, WaitNode) and node.on_timeout is not None:
            if st.timed_out:
                visit(node.on_timeout, scopes)
            else:
                whole(node.on_timeout, path)

    if state.status == "running":
        visit(state.spec.root, [])
    if state.spec.on_failure is not None and state.status in ("running", "failing"):
        visit(state.spec.on_failure, [])
    return list(found.values())
