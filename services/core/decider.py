"""The pure heart of tickflow: what happens next to a run, given its state, an input and the time.

Nothing here (nor in ``state`` and ``interpreter``, which it builds on) reads a clock, draws a random number,
invents an id or touches I/O: time arrives as ``now_ms`` with each input, ids derive from (run id, seq) or
(run id, path, attempt), jitter is a hash. That is what makes the engine's in-memory state a cache of the log:
folding ``evolve`` over a run's events always rebuilds it, and replaying recorded inputs reproduces decisions.

Why the follow-up walk (``_advance``) is separate from handling the input: the engine may crash after only a
prefix of one decision's events reached the log. The walk derives everything else (start the next node, fire
a due timer, finish the run) from state alone, so a ``Recover`` input after a restart emits exactly what is
still missing — never a duplicate, never a gap. ``effects`` likewise derives the messages a decision sends
(tasks, child starts, cancellations, reports to a parent) from events and state, and ``recovery_effects``
re-derives the ones that may have been lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from tickflow.core.interpreter import (
    NO_FUNCTIONS,
    Done,
    Emitter,
    Failed,
    Functions,
    NodeFailure,
    budget_left,
    child_run_id,
    drive,
    resolve_mapping,
    retry_decision,
    step_budget,
)
from tickflow.core.slots import slot_id
from tickflow.core.stacks import stack_id_of
from tickflow.core.state import (
    TERMINAL,
    NodeState,
    RunState,
    SequenceError,
    evolve,
    fold,
    spec_node,
    waiting_on,
)
from tickflow.events.agents import AgentHandoff, LlmCallAttempted, LlmCallCheckpoint, MessageAppended
from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.envelope import Envelope, event_id
from tickflow.events.schemas import (
    AcquireSlot,
    AdmitRun,
    CancelRun,
    CancelStep,
    ChildFinished,
    ChildStarted,
    ChildUsage,
    ErrorInfo,
    ForkRun,
    LlmAttemptFields,
    NodeCompleted,
    NodeFailed,
    ReleaseRun,
    ReleaseSlot,
    ResumeRejected,
    ResumeRun,
    RunAdmitted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunFailing,
    RunForked,
    RunRejected,
    RunReleased,
    RunStarted,
    RunStep,
    StartRun,
    StepCompleted,
    StepErrored,
    StepFailed,
    StepScheduled,
    StepSucceeded,
    idempotency_key,
)
from tickflow.events.spec import StepNode, WaitNode, WorkflowSpec

__all__ = [
    "ClaimedPayload",
    "Decision",
    "Fork",
    "Outbound",
    "Recover",
    "RunState",
    "SequenceError",
    "Signal",
    "Start",
    "WorkerResult",
    "decide",
    "effects",
    "evolve",
    "fold",
    "fork_problem",
    "fork_source",
    "recovery_effects",
    "refuse",
    "release",
    "resume_schema",
    "run",
]


# --- inputs ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """A StartRun command, with the spec the engine resolved for it (None: unknown workflow)."""

    command: Envelope
    spec: WorkflowSpec | None
    spec_hash: str = ""


@dataclass(frozen=True, slots=True)
class WorkerResult:
    """A StepSucceeded, StepErrored or LlmCallCheckpoint record from a worker."""

    result: Envelope


@dataclass(frozen=True, slots=True)
class ClaimedPayload:
    """The value a claim-checked ResumeRun payload (a ``{"$blob": …}`` reference) stands for, as the engine read
    it from the blob store off its loop — or why it could not (``problem``). Only the wait's schema check sees
    it: the event records the reference, so the log stays small and the next step's worker reads the value."""

    value: Any = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Signal:
    """A command to a run: ResumeRun, CancelRun, ChildFinished or AdmitRun (``claimed``: a claim-checked resume
    payload, read for its schema check; see ``resume_schema``)."""

    command: Envelope
    claimed: ClaimedPayload | None = None


@dataclass(frozen=True, slots=True)
class Recover:
    """Re-derive what is due: after a restart, or when a timer of the run comes due."""

    causation_id: str | None = None


@dataclass(frozen=True, slots=True)
class Fork:
    """A ForkRun command: a new run (the command's key) from a copy of another run's history. A claim-checked
    history arrives read (inline) by the engine, or with ``unreadable`` saying why it could not be read."""

    command: Envelope
    unreadable: str | None = None


Input = Start | WorkerResult | Signal | Recover | Fork


@dataclass(frozen=True, slots=True)
class Decision:
    events: list[Envelope]
    state: RunState


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message a decision sends: a task to a worker pool, or a command to a run (a child, a parent)."""

    topic: Literal["tasks", "commands"]
    envelope: Envelope
    pool: str | None = None


# --- run ------------------------------------------------------------------------------------------------


def run(state: RunState, input: Input, now_ms: int, functions: Functions = NO_FUNCTIONS) -> Decision:
    """Decide and evolve in one pass: the emitted events and the state they lead to."""
    if isinstance(input, Start):
        em = Emitter(state, now_ms, input.command.id, functions)
        _on_start(em, input)
    elif isinstance(input, WorkerResult):
        em = Emitter(state, now_ms, input.result.id, functions)
        _on_result(em, input.result)
    elif isinstance(input, Signal):
        em = Emitter(state, now_ms, input.command.id, functions)
        _on_signal(em, input.command, input.claimed)
    elif isinstance(input, Fork):
        em = Emitter(state, now_ms, input.command.id, functions)
        _on_fork(em, input.command, input.unreadable)
    else:
        em = Emitter(state, now_ms, input.causation_id, functions)
    _advance(em)
    return Decision(em.events, em.state)


def refuse(
    state: RunState, error: ErrorInfo, now_ms: int, causation_id: str | None, start: StartRun | None = None
) -> Decision:
    """What the engine records instead of a decision it cannot record (an event or a message would not encode).

    A run that has not started is rejected (``start``: the command that tried), a live run fails with ``error``,
    and a finished run is left as it is. Both events are small and bounded, so they always encode; their effects
    (cancelling work in flight, releasing a slot, telling a parent) follow as for any rejection or failure.
    """
    em = Emitter(state, now_ms, causation_id, NO_FUNCTIONS)
    if state.status == "new":
        if start is not None:
            _reject(em, start, f"{error.type}: {error.message}")
    elif not state.terminal:
        em.emit(RunFailed(error=error, path=None))
    return Decision(em.events, em.state)


def release(state: RunState, highest_seq: int, command: Envelope, now_ms: int) -> Decision:
    """An operator's release of a quarantined run: one ``RunReleased`` after the highest seq its log holds, applied
    to its last good ``state``. The seqs in between (an event that could not be read, a gap) are skipped on purpose,
    and a refold does the same: ``evolve`` applies a release to the state it names."""
    assert isinstance(command.payload, ReleaseRun)
    seq = max(highest_seq, state.seq) + 1
    payload = RunReleased(resumed_from_seq=state.seq, status=state.status, reason=command.payload.reason)
    event = Envelope.wrap(
        payload,
        id=event_id(state.run_id, seq),
        key=state.run_id,
        seq=seq,
        occurred_at_ms=now_ms,
        causation_id=command.id,
        correlation_id=state.run_id,
    )
    return Decision([event], evolve(state, event))


def decide(state: RunState, input: Input, now_ms: int, functions: Functions = NO_FUNCTIONS) -> list[Envelope]:
    """The events that ``input`` causes for the run in ``state`` at time ``now_ms``."""
    return run(state, input, now_ms, functions).events


def _on_start(em: Emitter, start: Start) -> None:
    if em.state.status != "new":
        return  # idempotent start: the run id already exists
    command = start.command.payload
    assert isinstance(command, StartRun)
    if start.spec is None:
        if command.version is not None:
            reason = f"unknown version {command.version} of workflow {command.workflow!r}: no engine has it"
            _reject(em, command, reason)
        else:
            _reject(em, command, f"unknown workflow {command.workflow!r}: no engine has it registered")
        return
    timeout = start.spec.timeout_s
    slot = None
    if start.spec.concurrency_key is not None:
        scope = {"input": command.input, "value": command.input, "steps": {}}
        try:
            slot = slot_id(start.spec.name, str(resolve_mapping(em, start.spec.concurrency_key, scope)))
        except NodeFailure as exc:
            key = start.spec.concurrency_key
            _reject(em, command, f"concurrency key {key!r} of {command.workflow!r}: {exc.info.message}")
            return
    em.emit(
        RunStarted(
            workflow=command.workflow,
            spec_hash=start.spec_hash or start.spec.content_hash(),
            spec=start.spec,
            input=command.input,
            parent_run_id=command.parent_run_id,
            parent_path=command.parent_path,
            deadline_ms=em.now_ms + int(timeout * 1000) if timeout else None,
            slot=slot,
            priority=command.priority,
            budget_tokens=command.budget_tokens,
            budget_cost_usd=command.budget_cost_usd,
        )
    )


def _reject(em: Emitter, command: StartRun, reason: str) -> None:
    em.emit(
        RunRejected(
            workflow=command.workflow,
            reason=reason,
            parent_run_id=command.parent_run_id,
            parent_path=command.parent_path,
        )
    )


# --- forks ----------------------------------------------------------------------------------------------

#: Payload fields holding absolute times (epoch ms). A fork moves them with the copied history, so a deadline,
#: backoff or sleep running at the fork point keeps the time it had left instead of expiring at once.
ABSOLUTE_TIME_FIELDS = ("deadline_ms", "due_at_ms", "retry_at_ms")


def fork_source(fork: ForkRun) -> list[Envelope]:
    """The source events a fork carries, decoded (and upcast) like any record of the log.

    Raises ``InvalidRecord`` (from the codec) when an event is malformed or the history is not 1..``at_seq``.
    """
    if fork.history_blob is not None and not fork.history:
        raise InvalidRecord(f"its history is claim-checked (blob {fork.history_blob.sha256}) and was not read")
    if len(fork.history) != fork.at_seq:
        raise InvalidRecord(
            f"a fork at seq {fork.at_seq} carries the source's events 1..{fork.at_seq}, got {len(fork.history)}"
        )
    out = []
    for seq, item in enumerate(fork.history, 1):
        raw = orjson.dumps(
            {
                "id": event_id(fork.source_run_id, seq),
                "kind": "event",
                "type": item.type,
                "schema_version": item.schema_version,
                "key": fork.source_run_id,
                "seq": seq,
                "occurred_at_ms": item.occurred_at_ms,
                "payload": item.payload,
            }
        )
        out.append(decode(raw, expect="event"))
    return out


def fork_problem(state: RunState) -> str | None:
    """Why a run in ``state`` cannot be forked from there, or None. The API asks too, before it sends."""
    if state.status == "new":
        return "its history does not begin with RunStarted"
    if state.terminal:
        return (
            f"it is {state.status} at seq {state.seq}, so a fork from there would have nothing to do; "
            "fork at an earlier seq"
        )
    if state.slot is not None:
        return (
            f"its workflow limits concurrency per key ({state.slot!r}) and a fork would run outside that limit; "
            "start a new run instead"
        )
    return None


def _fork_workflow(fork: ForkRun) -> str:
    """The source's workflow name for a rejection, when its history names a valid one."""
    name = fork.history[0].payload.get("workflow") if fork.history else None
    return name if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.:\-]{1,128}", name) else "fork"


def _on_fork(em: Emitter, command: Envelope, unreadable: str | None = None) -> None:
    if em.state.status != "new":
        return  # the id exists: a repeated fork forks once, and no other run is ever overwritten
    fork = command.payload
    assert isinstance(fork, ForkRun)
    where = f"cannot fork run {fork.source_run_id!r} at seq {fork.at_seq}"
    if unreadable is not None:
        reason = f"{where}: its claim-checked history could not be read ({unreadable}); fork again"
        em.emit(RunRejected(workflow=_fork_workflow(fork), reason=reason[:4_000]))
        return
    try:
        source = fork_source(fork)
        at = fold(fork.source_run_id, source)
    except Exception as exc:  # any history that does not fold is refused: a crafted command must not stop us
        em.emit(RunRejected(workflow=_fork_workflow(fork), reason=f"{where}: its history does not fold: {exc}"[:4_000]))
        return
    problem = fork_problem(at)
    if problem is not None:
        em.emit(RunRejected(workflow=at.workflow or _fork_workflow(fork), reason=f"{where}: {problem}"))
        return
    # The copy keeps the source's seqs, so the fork's state at any seq <= at_seq is the source's, re-keyed.
    # In-flight work at the fork point is re-issued by ``effects`` (the copied StepScheduled / ChildStarted of
    # nodes still active); steps already completed there are done nodes and never run again.
    shift = em.now_ms - source[-1].occurred_at_ms
    children = {path for path, node in at.nodes.items() if node.kind == "child" and node.status == "active"}
    run_id = em.state.run_id
    for event in source:
        payload = event.payload
        changes: dict[str, Any] = {
            name: value + shift
            for name in ABSOLUTE_TIME_FIELDS
            if isinstance(value := getattr(payload, name, None), int)
        }
        if isinstance(payload, RunStarted):
            changes.update(parent_run_id=None, parent_path=None)  # a fork is a top-level run of its own
        elif isinstance(payload, ChildStarted) and payload.path in children:
            changes["child_run_id"] = child_run_id(run_id, payload.path)  # restarts under the fork, not shared
        copy = Envelope.wrap(
            payload.model_copy(update=changes) if changes else payload,
            id=event_id(run_id, event.seq or 0),
            key=run_id,
            seq=event.seq,
            occurred_at_ms=max(0, event.occurred_at_ms + shift),
            causation_id=em.causation_id,
            correlation_id=run_id,
        )
        em.state = evolve(em.state, copy)
        em.events.append(copy)
    em.emit(RunForked(source_run_id=fork.source_run_id, at_seq=fork.at_seq, shift_ms=shift))


def _on_checkpoint(em: Emitter, p: LlmCallCheckpoint) -> None:
    """A provider answered one call of a step: log what the call cost now, whichever attempt of the step paid (and a
    handoff between a step's agents, when the call was one).

    Unlike a step's outcome, a paid call counts even from an attempt the run stopped waiting for (timed out,
    superseded): the money is spent. The step's own report then leaves the call out, so it is logged once.
    Only a run that has ended drops it (its ledger is closed; the call is in the worker's logs and metrics).
    """
    node = em.state.nodes.get(p.path)
    if node is None or node.kind != "step" or em.state.status not in ("running", "failing"):
        return
    for attempt in p.attempts:
        em.emit(_attempted(em.state, p.path, attempt))
    if p.handoff is not None:
        em.emit(AgentHandoff(path=p.path, **p.handoff.model_dump()))


def _attempted(state: RunState, path: str, attempt: LlmAttemptFields) -> LlmCallAttempted:
    """The event of one LLM attempt, with the run's stack when the attempt names none (a framework agent's step
    does not know which stack's tick it runs in; the run does), so per-stack analytics count every call."""
    fields = attempt.model_dump()
    if not attempt.stack_id:
        fields["stack_id"] = stack_id_of(state.input)
    return LlmCallAttempted(path=path, **fields)


def _on_result(em: Emitter, result: Envelope) -> None:
    s, p = em.state, result.payload
    if isinstance(p, LlmCallCheckpoint):
        _on_checkpoint(em, p)
        return
    assert isinstance(p, StepSucceeded | StepErrored)
    node = s.nodes.get(p.path)
    # Exactly-once application: only the attempt the run is waiting for counts; duplicates, late results of
    # earlier attempts and results arriving after the run ended are dropped here.
    if node is None or node.kind != "step" or node.phase != "scheduled" or node.attempt != p.attempt:
        return
    compensating = s.spec is not None and s.spec.on_failure is not None and p.path == s.spec.on_failure.name
    if not (s.status == "running" or (s.status == "failing" and compensating)):
        return
    # What an agent step did on the way (every LLM attempt, every memory message) is logged before its outcome.
    for attempt in p.llm_attempts:
        em.emit(_attempted(s, p.path, attempt))
    for message in p.messages:
        em.emit(MessageAppended(**message.model_dump()))
    if isinstance(p, StepSucceeded):
        em.emit(
            StepCompleted(
                path=p.path,
                step=p.step,
                attempt=p.attempt,
                output=p.output,
                duration_ms=p.duration_ms,
                worker=p.worker,
                logs=p.logs,
            )
        )
        return
    spec = spec_node(s, p.path)
    assert isinstance(spec, StepNode)
    retry_at = retry_decision(
        spec.retry, p.error, p.retryable, p.attempt, s.run_id, p.path, em.now_ms, p.retry_after_ms
    )
    em.emit(
        StepFailed(
            path=p.path,
            step=p.step,
            attempt=p.attempt,
            error=p.error,
            will_retry=retry_at is not None,
            retry_at_ms=retry_at,
            duration_ms=p.duration_ms,
            worker=p.worker,
            logs=p.logs,
        )
    )


def _on_signal(em: Emitter, command: Envelope, claimed: ClaimedPayload | None = None) -> None:
    p = command.payload
    if isinstance(p, CancelRun):
        if em.state.active:
            em.emit(RunCancelled(reason=p.reason))
    elif isinstance(p, ResumeRun):
        if command.id not in em.state.resumed_by:  # a retried resume (same id) is taken once
            _on_resume(em, p, command.id, claimed)
    elif isinstance(p, ChildFinished):
        _on_child_finished(em, p)
    elif isinstance(p, AdmitRun):
        _on_admit(em, p)


def _on_admit(em: Emitter, p: AdmitRun) -> None:
    s = em.state
    if s.status == "running" and not s.admitted and p.slot == s.slot:  # re-sent admissions change nothing
        em.emit(RunAdmitted(slot=p.slot))


def resume_schema(state: RunState, event: str) -> dict[str, Any] | None:
    """The JSON schema a ResumeRun of ``event`` is checked against now (None: no wait for it, or no schema).

    The engine asks before deciding: a claim-checked payload must be read (off its loop) to be checked."""
    for path, waits_for in waiting_on(state).items():
        if waits_for == event:
            spec = spec_node(state, path)
            assert isinstance(spec, WaitNode)
            return spec.schema_
    return None


def _on_resume(em: Emitter, p: ResumeRun, command_id: str, claimed: ClaimedPayload | None = None) -> None:
    s = em.state
    waiting = waiting_on(s)
    path = next((path for path, event in waiting.items() if event == p.event), None)
    if path is None:
        now_waiting = ", ".join(sorted(set(waiting.values()))) or "nothing"
        reason = f"run {s.run_id!r} ({s.status}) is not waiting for {p.event!r}; it waits for: {now_waiting}"
        em.emit(ResumeRejected(event=p.event, reason=reason, command_id=command_id))
        return
    spec = spec_node(s, path)
    assert isinstance(spec, WaitNode)
    if spec.schema_ is not None:
        if claimed is not None and claimed.problem is not None:
            reason = f"the claim-checked payload for {p.event!r} could not be read ({claimed.problem}); it still waits"
            em.emit(ResumeRejected(event=p.event, reason=reason[:4_000], command_id=command_id))
            return
        problems = _schema_problems(spec.schema_, claimed.value if claimed is not None else p.payload)
        if problems:
            reason = f"payload for {p.event!r} does not match the wait's schema: {problems}; the run still waits"
            em.emit(ResumeRejected(event=p.event, reason=reason, command_id=command_id))
            return
    em.emit(NodeCompleted(path=path, output=p.payload))


def _schema_problems(schema: dict[str, Any], payload: Any) -> str:
    try:
        validator = Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))[:5]
    except SchemaError as exc:
        return f"the wait's schema itself is invalid ({exc.message})"
    # jsonschema quotes the offending value in its message: a big payload's would not fit an event, so cut it.
    return "; ".join(f"{'.'.join(map(str, e.absolute_path))[:200] or '(payload)'}: {_cut(e.message)}" for e in errors)


def _cut(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters)"


def _on_child_finished(em: Emitter, p: ChildFinished) -> None:
    node = em.state.nodes.get(p.path)
    if em.state.status != "running" or node is None or node.kind != "child" or node.status != "active":
        return
    if node.child_run_id != p.child_run_id:
        return
    if p.tokens or p.cost_usd:  # before the node ends: the run's usage includes its children's when it reports
        em.emit(ChildUsage(path=p.path, child_run_id=p.child_run_id, tokens=p.tokens, cost_usd=p.cost_usd))
    if p.status == "completed":
        em.emit(NodeCompleted(path=p.path, output=p.output))
        return
    why = p.error.message if p.error else p.status
    # A spent budget stays a spent budget up the tree: the stack above pauses on it, whichever run hit it.
    kind = "BudgetExceeded" if p.error is not None and p.error.type == "BudgetExceeded" else "ChildFailed"
    error = ErrorInfo(type=kind, message=f"child run {p.child_run_id!r} {p.status}: {why}")
    em.emit(NodeFailed(path=p.path, error=error, origin_path=p.path))


def _advance(em: Emitter) -> None:
    """Emit the follow-up that the state alone implies; a no-op when the run is waiting or finished."""
    s = em.state
    if s.spec is None:
        return
    if s.status == "running":
        if s.deadline_ms is not None and em.now_ms >= s.deadline_ms:
            timeout = s.spec.timeout_s
            error = ErrorInfo(type="RunTimeout", message=f"run did not finish within its timeout of {timeout}s")
            _begin_failure(em, error, None)
        elif s.admitted:
            outcome = drive(em, s.spec.root, [], s.input, {})
            if isinstance(outcome, Done):
                em.emit(RunCompleted(output=outcome.output))
            elif isinstance(outcome, Failed):
                _begin_failure(em, outcome.error, outcome.origin)
    s = em.state
    if s.status == "failing" and s.spec is not None and s.spec.on_failure is not None:
        assert s.error is not None
        compensation = {"error": s.error.model_dump(mode="json"), "input": s.input}
        outcome = drive(em, s.spec.on_failure, [], compensation, {})
        if isinstance(outcome, Done | Failed):
            em.emit(RunFailed(error=s.error, path=s.error_path))


def _begin_failure(em: Emitter, error: ErrorInfo, path: str | None) -> None:
    assert em.state.spec is not None
    if em.state.spec.on_failure is not None:
        em.emit(RunFailing(error=error, path=path))
    else:
        em.emit(RunFailed(error=error, path=path))


# --- effects --------------------------------------------------------------------------------------------


def _task(state: RunState, path: str, node: NodeState, occurred_at_ms: int, causation_id: str | None) -> Outbound:
    spec = spec_node(state, path)
    assert isinstance(spec, StepNode)
    key = idempotency_key(state.run_id, path, node.attempt)
    budget_tokens, budget_cost = step_budget(state, node) if spec.llm_reserve_tokens is not None else (None, None)
    task = RunStep(
        workflow=state.workflow,
        path=path,
        step=spec.name,
        fn=spec.fn,
        attempt=node.attempt,
        input=node.input,
        idempotency_key=key,
        timeout_s=spec.timeout_s,
        priority=spec.priority + state.priority,  # a run's priority (e.g. its stack's) orders its steps too
        deadline_ms=node.due_at_ms,
        budget_tokens=budget_tokens,
        budget_cost_usd=budget_cost,
    )
    env = Envelope.wrap(
        task,
        id=key,  # the attempt's idempotency key: identical when re-sent after a restart
        key=state.run_id,
        occurred_at_ms=occurred_at_ms,
        causation_id=causation_id,
        correlation_id=state.run_id,
    )
    return Outbound("tasks", env, spec.pool)


def _child_start(state: RunState, path: str, node: NodeState, occurred_at_ms: int) -> Outbound:
    assert node.child_run_id is not None
    spec = spec_node(state, path)
    workflow = getattr(spec, "workflow", "")
    tokens, cost = budget_left(state)
    command = StartRun(workflow=workflow, input=node.input, parent_run_id=state.run_id, parent_path=path,
                       budget_tokens=tokens, budget_cost_usd=cost)
    env = Envelope.wrap(
        command,
        id=f"{node.child_run_id}/start",
        key=node.child_run_id,
        occurred_at_ms=occurred_at_ms,
        causation_id=f"{state.run_id}/{path}",
        correlation_id=state.run_id,
    )
    return Outbound("commands", env)


def _report_to_parent(state: RunState, occurred_at_ms: int) -> Outbound | None:
    if state.parent_run_id is None or state.parent_path is None or state.status not in TERMINAL:
        return None
    status = state.status
    assert status in ("completed", "failed", "cancelled", "rejected")
    command = ChildFinished(
        path=state.parent_path,
        child_run_id=state.run_id,
        status=status,
        output=state.output if status == "completed" else None,
        error=state.error,
        tokens=state.tokens,
        cost_usd=state.cost_usd,
    )
    env = Envelope.wrap(
        command,
        id=f"{state.run_id}/finished",
        key=state.parent_run_id,
        occurred_at_ms=occurred_at_ms,
        causation_id=state.run_id,
        correlation_id=state.parent_run_id,
    )
    return Outbound("commands", env)


def _cancel_step(state: RunState, path: str, attempt: int, occurred_at_ms: int, reason: str) -> Outbound:
    """Stop one attempt where it runs (or before it starts): its result would be ignored anyway."""
    key = idempotency_key(state.run_id, path, attempt)
    env = Envelope.wrap(
        CancelStep(idempotency_key=key, reason=reason[:1_000]),
        id=f"{key}/cancel",
        key=state.run_id,
        occurred_at_ms=occurred_at_ms,
        correlation_id=state.run_id,
    )
    return Outbound("tasks", env, getattr(spec_node(state, path), "pool", None))


def _cancellations(state: RunState, occurred_at_ms: int, reason: str) -> list[Outbound]:
    """Best-effort stop signals for the work a finished run leaves behind: running steps and children."""
    out = []
    for path, node in state.nodes.items():
        if node.status != "active":
            continue
        if node.kind == "step" and node.phase == "scheduled":
            out.append(_cancel_step(state, path, node.attempt, occurred_at_ms, reason))
        elif node.kind == "child" and node.child_run_id is not None:
            env = Envelope.wrap(
                CancelRun(reason=f"parent run {state.run_id!r} ended: {reason}"[:1_000]),
                id=f"{node.child_run_id}/cancel",
                key=node.child_run_id,
                occurred_at_ms=occurred_at_ms,
                correlation_id=state.run_id,
            )
            out.append(Outbound("commands", env))
    return out


def _slot_message(state: RunState, release: bool, occurred_at_ms: int) -> Outbound:
    assert state.slot is not None and state.spec is not None
    payload: AcquireSlot | ReleaseSlot = (
        ReleaseSlot(run_id=state.run_id)
        if release
        else AcquireSlot(run_id=state.run_id, priority=state.priority, limit=state.spec.max_per_key)
    )
    env = Envelope.wrap(
        payload,
        id=f"{state.run_id}/{'release' if release else 'acquire'}",
        key=state.slot,
        occurred_at_ms=occurred_at_ms,
        causation_id=state.run_id,
        correlation_id=state.run_id,
    )
    return Outbound("commands", env)


def effects(decision: Decision) -> list[Outbound]:
    """The messages a decision sends, in order. Derived from its events and resulting state, so pure."""
    state, out = decision.state, []
    for event in decision.events:
        p = event.payload
        if isinstance(p, StepScheduled):
            node = state.nodes.get(p.path)
            if state.active and node and node.phase == "scheduled" and node.attempt == p.attempt:
                out.append(_task(state, p.path, node, event.occurred_at_ms, event.id))
        elif isinstance(p, StepFailed) and p.worker == "engine":  # timed out: stop it where it may still run
            out.append(_cancel_step(state, p.path, p.attempt, event.occurred_at_ms, p.error.message))
        elif isinstance(p, ChildStarted):
            node = state.nodes.get(p.path)
            if state.status == "running" and node is not None and node.status == "active":
                out.append(_child_start(state, p.path, node, event.occurred_at_ms))
        elif isinstance(p, RunStarted) and p.slot is not None and state.active and not state.admitted:
            out.append(_slot_message(state, False, event.occurred_at_ms))
        elif isinstance(p, RunCompleted | RunFailed | RunCancelled | RunRejected):
            if state.slot is not None:
                out.append(_slot_message(state, True, event.occurred_at_ms))
            if isinstance(p, RunFailed | RunCancelled):
                reason = p.reason if isinstance(p, RunCancelled) else f"run failed: {p.error.message}"
                out.extend(_cancellations(state, event.occurred_at_ms, reason))
            report = _report_to_parent(state, event.occurred_at_ms)
            if report is not None:
                out.append(report)
    return out


def recovery_effects(state: RunState, now_ms: int) -> list[Outbound]:
    """Everything that may have been lost with a crash: re-sent tasks, child starts and parent reports.

    Every receiver deduplicates (results by attempt, starts by run id, reports by node state), so re-sending
    is safe; it costs at most one extra execution of each step that was in flight.
    """
    if state.terminal:
        if state.shrunk:  # long after its report and release were committed (see ``shrink``): nothing to re-send
            return []
        report = _report_to_parent(state, now_ms)
        release = [_slot_message(state, True, now_ms)] if state.slot is not None else []
        return release + ([report] if report is not None else [])
    if not state.admitted:
        return [_slot_message(state, False, now_ms)]
    out = []
    for path, node in state.nodes.items():
        if node.status != "active":
            continue
        if node.kind == "step" and node.phase == "scheduled":
            compensating = state.status == "failing" and state.spec is not None and state.spec.on_failure is not None
            if state.status == "running" or (compensating and path == state.spec.on_failure.name):  # type: ignore[union-attr]
                out.append(_task(state, path, node, now_ms, f"recover/{state.run_id}"))
        elif node.kind == "child" and state.status == "running":
            out.append(_child_start(state, path, node, now_ms))
    return out
