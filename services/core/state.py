"""A run's state and ``evolve``: how one event changes it. Pure, like everything the decider uses.

The state is a cache of the fold of a run's events; ``fold`` rebuilds it from the log alone. Node instances
live in ``nodes`` by path. A container learns of its children through ``_child_started``/``_child_finished``:
each child start or finish updates the parent's counters in O(1), so deciding stays cheap for long sequences
and wide foreach nodes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from functools import singledispatch
from typing import Any, Literal, TypeVar

from pydantic import TypeAdapter

from tickflow.events.agents import AgentHandoff, LlmCallAttempted, MessageAppended
from tickflow.events.envelope import Envelope
from tickflow.events.errors import ErrorCode, NonRetryableError
from tickflow.events.schemas import (
    BranchChosen,
    ChildStarted,
    ChildUsage,
    ErrorInfo,
    Event,
    IterationStarted,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    ResumeRejected,
    RunAdmitted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunFailing,
    RunForked,
    RunRejected,
    RunReleased,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    TimerStarted,
    WaitStarted,
    WaitTimedOut,
)
from tickflow.events.spec import ForEachNode, LoopNode, Node, WaitNode, WorkflowSpec, children, walk

__all__ = [
    "RESUME_WINDOW",
    "TERMINAL",
    "NodeState",
    "RunState",
    "SequenceError",
    "evolve",
    "fold",
    "parent_path",
    "released_seqs",
    "remaining",
    "shrink",
    "spec_node",
    "split_path",
    "state_from_json",
    "state_to_json",
    "waiting_on",
]

_T = TypeVar("_T", "NodeState", "RunState")
_N = TypeVar("_N", int, float)
RunStatus = Literal["new", "running", "failing", "completed", "failed", "cancelled", "rejected"]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled", "rejected"})


class SequenceError(NonRetryableError, ValueError):
    """An event does not follow its entity's last seq (a run's, a slot's, a stack's): the log has a gap or the fold
    skipped one. Record-level, so never retried; still a ``ValueError`` for code that catches that."""

    code = ErrorCode.OUT_OF_SEQUENCE


@dataclass(frozen=True, slots=True)
class NodeState:
    """One node instance. Which fields matter depends on ``kind``."""

    kind: str
    status: Literal["active", "done", "failed"] = "active"
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    origin: str | None = None  # the path where a failure began
    # steps: attempt and phase; steps, sleeps and waits: the time the engine must look at it again
    attempt: int = 0
    phase: Literal["", "scheduled", "backoff"] = ""
    due_at_ms: int | None = None
    # containers
    done: int = 0
    failed_child: str | None = None
    started: int = 0
    open: tuple[int, ...] = ()
    chosen: bool = False
    case: int | None = None
    iteration: int = 0
    child_run_id: str | None = None
    timed_out: bool = False
    # an LLM step in flight: tokens held against the run's budget until its result settles them
    reserved_tokens: int = 0



#: How many resume command ids a run remembers (``RunState.resumed_by``): a retried resume is recognised while
#: fewer than this many other resumes reached the run since the first one.
RESUME_WINDOW = 16

@dataclass(frozen=True, slots=True)
class RunState:
    """Everything the decider needs to know about one run, rebuilt by folding its events."""

    run_id: str
    seq: int = 0
    status: RunStatus = "new"
    workflow: str = ""
    spec_hash: str = ""
    spec: WorkflowSpec | None = None
    input: Any = None
    nodes: dict[str, NodeState] = field(default_factory=dict)
    output: Any = None
    error: ErrorInfo | None = None
    error_path: str | None = None
    parent_run_id: str | None = None
    parent_path: str | None = None
    deadline_ms: int | None = None
    slot: str | None = None
    priority: int = 0
    admitted: bool = True
    started_at_ms: int = 0
    updated_at_ms: int = 0
    ended_at_ms: int | None = None
    #: LLM usage so far (every attempt, failed ones included): reported to a parent or a stack at the end.
    tokens: int = 0
    cost_usd: float = 0.0
    #: The LLM budget (``StartRun.budget_tokens``/``budget_cost_usd``); None: none.
    budget_tokens: int | None = None
    budget_cost_usd: float | None = None
    #: The state was shrunk (``shrink``) to what a finished run still needs: no spec, input, nodes or output.
    shrunk: bool = False
    #: Ids of the last ``RESUME_WINDOW`` resume commands this run took or refused (oldest first): a resume sent
    #: again with the same id (a client's retry under one idempotency key) is recognised and changes nothing.
    resumed_by: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def active(self) -> bool:
        return self.status in ("running", "failing")

    def next_due_ms(self) -> int | None:
        """The earliest time the engine must wake this run (timers, backoffs, deadlines), if any."""
        if not self.active:
            return None
        due = [self.deadline_ms] if self.deadline_ms is not None and self.status == "running" else []
        due.extend(n.due_at_ms for n in self.nodes.values() if n.status == "active" and n.due_at_ms is not None)
        return min(due) if due else None


def remaining(budget: _N | None, used: _N) -> _N | None:
    """What is left of a budget (never below zero); None when there is no budget. A run's and a stack's alike."""
    return None if budget is None else max(budget - used, type(budget)(0))


def shrink(state: RunState) -> RunState:
    """A finished run as the engine keeps it once its full state has left memory: id, seq, status, workflow, lineage
    and times — a few hundred bytes instead of its spec, input, nodes and output.

    Enough to answer every late input exactly as the full state would (a repeated start or fork is ignored, a late
    result or child report changes nothing, a resume is rejected with the same ``ResumeRejected``: the decider looks
    at nothing else of a finished run), and the shrunk state folds those answers the same way. What it cannot do is
    re-send the run's report to its parent or its slot release, so ``recovery_effects`` sends nothing for it: the
    engine shrinks a run only long after those were committed with its last event.
    """
    if not state.terminal:
        raise ValueError(f"only a finished run can be shrunk; {state.run_id!r} is {state.status}")
    return RunState(
        run_id=state.run_id,
        seq=state.seq,
        status=state.status,
        workflow=sys.intern(state.workflow),  # one copy per workflow, not per run: they stay for days
        spec_hash=sys.intern(state.spec_hash),
        parent_run_id=state.parent_run_id,
        parent_path=state.parent_path,
        slot=state.slot,
        priority=state.priority,
        admitted=state.admitted,
        started_at_ms=state.started_at_ms,
        updated_at_ms=state.updated_at_ms,
        ended_at_ms=state.ended_at_ms,
        tokens=state.tokens,
        cost_usd=state.cost_usd,
        shrunk=True,
        resumed_by=state.resumed_by,
    )


def _replace(obj: _T, **changes: Any) -> _T:
    """``dataclasses.replace`` without its per-call overhead (it dominated the cost of deciding).

    Safe for these frozen, slotted dataclasses: they have no ``__post_init__`` and no init-only fields.
    """
    new = object.__new__(type(obj))
    for name in _FIELDS[type(obj)]:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(obj, name))
    return new


# --- paths ----------------------------------------------------------------------------------------------


_FIELDS: dict[type, tuple[str, ...]] = {cls: tuple(f.name for f in fields(cls)) for cls in (NodeState, RunState)}


def split_path(path: str) -> tuple[list[str], str]:
    """``"items[3]/poll#2/check"`` → (``["items[3]", "poll#2"]``, ``"check"``)."""
    *scopes, name = path.split("/")
    return scopes, name


_PARENTS: dict[tuple[str, str], dict[str, Node]] = {}


def _parents(spec: WorkflowSpec, spec_hash: str) -> dict[str, Node]:
    """Child node name → its container node, per spec (memoised: specs are immutable)."""
    key = (spec.name, spec_hash)
    found = _PARENTS.get(key)
    if found is None:
        found = {}
        for node in walk(spec.root):
            for child in children(node):
                found[child.name] = node
        if len(_PARENTS) > 10_000:
            _PARENTS.clear()
        _PARENTS[key] = found
    return found


_NODES: dict[tuple[str, str], dict[str, Node]] = {}


def spec_node(state: RunState, path: str) -> Node:
    """The spec node a node instance at ``path`` runs (memoised per spec)."""
    assert state.spec is not None
    key = (state.spec.name, state.spec_hash)
    found = _NODES.get(key)
    if found is None:
        if len(_NODES) > 10_000:
            _NODES.clear()
        found = _NODES[key] = state.spec.nodes()
    return found[split_path(path)[1]]


def parent_path(state: RunState, path: str) -> tuple[str, Node, int | None] | None:
    """The path of the container instance holding ``path``, that container, and the foreach item index."""
    if state.spec is None:
        return None
    scopes, name = split_path(path)
    parent = _parents(state.spec, state.spec_hash).get(name)
    if parent is None:
        return None
    if isinstance(parent, LoopNode | ForEachNode):
        if not scopes:
            return None
        last = scopes[-1]
        item = int(last[last.index("[") + 1 : -1]) if isinstance(parent, ForEachNode) else None
        return "/".join([*scopes[:-1], parent.name]), parent, item
    return "/".join([*scopes, parent.name]), parent, None


def waiting_on(state: RunState) -> dict[str, str]:
    """Path → event of every wait node that a resume of that event would complete now, in the order they started.

    What the run is waiting for: the decider matches a ``ResumeRun`` against it, and the status projection says
    ``waiting`` exactly when it is not empty (``projections.rows.run_row`` folds the same waits from the events).
    Nothing while the run is not running: a failing or finished run takes no resume, and a timed-out wait none.
    """
    if state.status != "running":
        return {}
    out = {}
    for path, node in state.nodes.items():
        if node.kind == "wait" and node.status == "active" and not node.timed_out:
            spec = spec_node(state, path)
            assert isinstance(spec, WaitNode)
            out[path] = spec.event
    return out


def _set(state: RunState, path: str, node: NodeState) -> RunState:
    nodes = dict(state.nodes)
    nodes[path] = node
    return _replace(state, nodes=nodes)


def _child_started(state: RunState, path: str) -> RunState:
    found = parent_path(state, path)
    if found is None or not isinstance(found[1], ForEachNode):
        return state
    ppath, _, item = found
    parent = state.nodes[ppath]
    assert item is not None
    return _set(state, ppath, _replace(parent, started=parent.started + 1, open=(*parent.open, item)))


def _child_finished(state: RunState, path: str, failed: bool) -> RunState:
    found = parent_path(state, path)
    if found is None or found[0] not in state.nodes:
        return state
    ppath, _, item = found
    parent = state.nodes[ppath]
    parent = _replace(parent, done=parent.done + 1, failed_child=parent.failed_child or (path if failed else None))
    if item is not None:
        parent = _replace(parent, open=tuple(i for i in parent.open if i != item))
    return _set(state, ppath, parent)


# --- evolve ---------------------------------------------------------------------------------------------


def evolve(state: RunState, event: Envelope) -> RunState:
    """Apply one event; events must arrive in seq order with no gaps.

    The one exception is an operator's ``RunReleased``: it applies to the state at its ``resumed_from_seq`` and
    skips the seqs between that and its own (the stretch of log a quarantine could not fold).
    """
    if event.seq != state.seq + 1 and not _releases(state, event):
        raise SequenceError(f"run {state.run_id}: expected seq {state.seq + 1}, got {event.seq}")
    moved = _replace(state, seq=event.seq, updated_at_ms=event.occurred_at_ms)
    payload = event.payload
    if not isinstance(payload, Event):
        raise TypeError(f"{event.type} is a {event.kind}, not an event")
    return _apply(payload, moved, event)


def _releases(state: RunState, event: Envelope) -> bool:
    p = event.payload
    return isinstance(p, RunReleased) and p.resumed_from_seq == state.seq and (event.seq or 0) > state.seq


def fold(run_id: str, events: list[Envelope]) -> RunState:
    """Rebuild a run's state from its events (the replay the engine's cache must always equal).

    The seqs an operator's release skipped (``released_seqs``) are skipped here too, even where they are readable
    now (an upcaster added since): the live run resumed without them, so a refold must as well."""
    skipped = released_seqs(events)
    state = RunState(run_id=run_id)
    for event in events:
        if event.seq not in skipped:
            state = evolve(state, event)
    return state


def released_seqs(events: list[Envelope]) -> set[int]:
    """The seqs of a run's log that its ``RunReleased`` events skip: between the state each resumed from and the
    release itself (the stretch a quarantine could not fold)."""
    skipped: set[int] = set()
    for event in events:
        p = event.payload
        if isinstance(p, RunReleased) and event.seq is not None:
            skipped.update(range(p.resumed_from_seq + 1, event.seq))
    return skipped


@singledispatch
def _apply(payload: Event, state: RunState, event: Envelope) -> RunState:
    raise TypeError(f"no evolve rule for {type(payload).__name__}")


@_apply.register
def _(p: LlmCallAttempted, s: RunState, e: Envelope) -> RunState:
    return _replace(s, tokens=s.tokens + p.tokens_in + p.tokens_out, cost_usd=s.cost_usd + p.cost_usd)


@_apply.register
def _(p: ChildUsage, s: RunState, e: Envelope) -> RunState:
    return _replace(s, tokens=s.tokens + p.tokens, cost_usd=s.cost_usd + p.cost_usd)


@_apply.register
def _(p: MessageAppended, s: RunState, e: Envelope) -> RunState:
    return s  # memory lives in the messages projection; the run only logs what it added


@_apply.register
def _(p: AgentHandoff, s: RunState, e: Envelope) -> RunState:
    return s  # a record of what happened inside a step: the step's own journal is what replays it


@_apply.register
def _(p: RunStarted, s: RunState, e: Envelope) -> RunState:
    # The root container starts with the run (no NodeStarted of its own): one event fewer per run, and runs
    # recorded before node trees existed (upcast v1 histories) have their root in place.
    root = p.spec.root
    nodes = {root.name: NodeState(kind=root.kind, input=p.input)} if root.kind != "step" else {}
    return _replace(
        s,
        nodes=nodes,
        status="running",
        workflow=p.workflow,
        spec_hash=p.spec_hash,
        spec=p.spec,
        input=p.input,
        parent_run_id=p.parent_run_id,
        parent_path=p.parent_path,
        deadline_ms=p.deadline_ms,
        slot=p.slot,
        priority=p.priority,
        admitted=p.slot is None,
        started_at_ms=e.occurred_at_ms,
        budget_tokens=p.budget_tokens,
        budget_cost_usd=p.budget_cost_usd,
    )


@_apply.register
def _(p: RunAdmitted, s: RunState, e: Envelope) -> RunState:
    return _replace(s, admitted=True)


@_apply.register
def _(p: RunRejected, s: RunState, e: Envelope) -> RunState:
    return _replace(
        s,
        status="rejected",
        workflow=p.workflow,
        error=ErrorInfo(type="RunRejected", message=p.reason),
        parent_run_id=p.parent_run_id,
        parent_path=p.parent_path,
        ended_at_ms=e.occurred_at_ms,
    )


@_apply.register
def _(p: NodeStarted, s: RunState, e: Envelope) -> RunState:
    return _child_started(_set(s, p.path, NodeState(kind=p.node, input=p.input)), p.path)


@_apply.register
def _(p: BranchChosen, s: RunState, e: Envelope) -> RunState:
    return _set(s, p.path, _replace(s.nodes[p.path], chosen=True, case=p.case))


@_apply.register
def _(p: IterationStarted, s: RunState, e: Envelope) -> RunState:
    return _set(s, p.path, _replace(s.nodes[p.path], iteration=p.iteration))


@_apply.register
def _(p: NodeCompleted, s: RunState, e: Envelope) -> RunState:
    before = s.nodes[p.path]
    if before.kind == "wait" and e.causation_id is not None:  # only a resume completes a wait
        s = _replace(s, resumed_by=_remember(s.resumed_by, e.causation_id))
    node = _replace(before, status="done", output=p.output, due_at_ms=None)
    return _child_finished(_set(s, p.path, node), p.path, failed=False)


def _remember(ids: tuple[str, ...], new: str) -> tuple[str, ...]:
    return (*ids, new)[-RESUME_WINDOW:]


@_apply.register
def _(p: NodeFailed, s: RunState, e: Envelope) -> RunState:
    if p.path not in s.nodes:  # it failed while starting (e.g. its input mapping found nothing)
        s = _child_started(_set(s, p.path, NodeState(kind="node")), p.path)
    node = _replace(s.nodes[p.path], status="failed", error=p.error, origin=p.origin_path, due_at_ms=None)
    return _child_finished(_set(s, p.path, node), p.path, failed=True)


@_apply.register
def _(p: TimerStarted, s: RunState, e: Envelope) -> RunState:
    return _child_started(_set(s, p.path, NodeState(kind="sleep", due_at_ms=p.due_at_ms)), p.path)


@_apply.register
def _(p: WaitStarted, s: RunState, e: Envelope) -> RunState:
    return _child_started(_set(s, p.path, NodeState(kind="wait", due_at_ms=p.due_at_ms)), p.path)


@_apply.register
def _(p: WaitTimedOut, s: RunState, e: Envelope) -> RunState:
    return _set(s, p.path, _replace(s.nodes[p.path], timed_out=True, due_at_ms=None))


@_apply.register
def _(p: ResumeRejected, s: RunState, e: Envelope) -> RunState:
    return s if p.command_id is None else _replace(s, resumed_by=_remember(s.resumed_by, p.command_id))


@_apply.register
def _(p: RunForked, s: RunState, e: Envelope) -> RunState:
    return s  # a marker of where the copied history ends; the copy itself already built the state


@_apply.register
def _(p: ChildStarted, s: RunState, e: Envelope) -> RunState:
    node = NodeState(kind="child", input=p.input, child_run_id=p.child_run_id)
    return _child_started(_set(s, p.path, node), p.path)


@_apply.register
def _(p: StepScheduled, s: RunState, e: Envelope) -> RunState:
    existing = s.nodes.get(p.path)
    if existing is None:
        node = NodeState(kind="step", input=p.input, attempt=p.attempt, phase="scheduled", due_at_ms=p.deadline_ms,
                         reserved_tokens=p.reserve_tokens)
        return _child_started(_set(s, p.path, node), p.path)
    changed = _replace(existing, attempt=p.attempt, phase="scheduled", due_at_ms=p.deadline_ms,
                       reserved_tokens=p.reserve_tokens)
    return _set(s, p.path, changed)


@_apply.register
def _(p: StepCompleted, s: RunState, e: Envelope) -> RunState:
    node = _replace(s.nodes[p.path], status="done", phase="", output=p.output, due_at_ms=None)
    return _child_finished(_set(s, p.path, node), p.path, failed=False)


@_apply.register
def _(p: StepFailed, s: RunState, e: Envelope) -> RunState:
    if p.will_retry:
        node = _replace(s.nodes[p.path], phase="backoff", error=p.error, due_at_ms=p.retry_at_ms)
        return _set(s, p.path, node)
    node = _replace(s.nodes[p.path], status="failed", phase="", error=p.error, origin=p.path, due_at_ms=None)
    return _child_finished(_set(s, p.path, node), p.path, failed=True)


@_apply.register
def _(p: RunCompleted, s: RunState, e: Envelope) -> RunState:
    return _replace(s, status="completed", output=p.output, ended_at_ms=e.occurred_at_ms)


@_apply.register
def _(p: RunFailing, s: RunState, e: Envelope) -> RunState:
    return _replace(s, status="failing", error=p.error, error_path=p.path)


@_apply.register
def _(p: RunFailed, s: RunState, e: Envelope) -> RunState:
    return _replace(s, status="failed", error=p.error, error_path=p.path, ended_at_ms=e.occurred_at_ms)


@_apply.register
def _(p: RunCancelled, s: RunState, e: Envelope) -> RunState:
    error = ErrorInfo(type="Cancelled", message=p.reason)
    return _replace(s, status="cancelled", error=error, ended_at_ms=e.occurred_at_ms)


@_apply.register
def _(p: RunReleased, s: RunState, e: Envelope) -> RunState:
    return s  # the state resumes as it was at resumed_from_seq; only its seq moved on


_STATE = TypeAdapter(RunState)


def state_to_json(state: RunState) -> dict[str, Any]:
    """A state as JSON: every field of ``RunState`` (nodes by path, with status, attempts, outputs, errors)."""
    data: dict[str, Any] = _STATE.dump_python(state, mode="json")
    return data


def state_from_json(data: Any) -> RunState:
    """The inverse of ``state_to_json`` (the SDK returns real ``RunState`` objects)."""
    return _STATE.validate_python(data)
