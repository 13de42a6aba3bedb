"""Walks a run's node tree and emits what its state implies next. Pure: time is ``now_ms``, functions are given.

``drive`` is called after every input. It descends from the root along started nodes, starts what is due,
finishes containers whose children are done, fires timers whose time has come (never before), and returns
whether the subtree is done, failed or waiting. Because everything it does is derived from state, the same
walk after a crash emits exactly what the crash cut off.

Conditions and mappers are user functions referenced by name. They must be pure; they run only here, when
a decision is made, and their outcome is recorded (``BranchChosen``, ``IterationStarted``, node inputs), so
replaying the log never calls them again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from tickflow.core.state import NodeState, RunState, evolve, remaining
from tickflow.events.envelope import Envelope, event_id
from tickflow.events.errors import NonRetryableError
from tickflow.events.schemas import (
    BranchChosen,
    ChildStarted,
    ErrorInfo,
    Event,
    IterationStarted,
    NodeCompleted,
    NodeFailed,
    NodeStarted,
    StepFailed,
    StepScheduled,
    TimerStarted,
    WaitStarted,
    WaitTimedOut,
)
from tickflow.events.spec import (
    BranchNode,
    ChildNode,
    ForEachNode,
    LoopNode,
    Node,
    ParallelNode,
    RetryPolicy,
    SequenceNode,
    SleepNode,
    StepNode,
    WaitNode,
)

__all__ = [
    "CHARS_PER_TOKEN",
    "NO_FUNCTIONS",
    "Done",
    "Emitter",
    "Failed",
    "Functions",
    "NodeFailure",
    "Outcome",
    "Pending",
    "budget_left",
    "child_run_id",
    "drive",
    "jitter_unit",
    "llm_reservation",
    "reserved_tokens",
    "resolve_mapping",
    "retry_decision",
    "step_budget",
]


STEP_TIMEOUT_GRACE_MS = 1_000


class Functions(Protocol):
    """Where the decider finds the pure conditions and mappers a spec names (the engine's registry)."""

    def condition(self, name: str) -> Callable[[Mapping[str, Any]], Any] | None: ...

    def mapper(self, name: str) -> Callable[[Mapping[str, Any]], Any] | None: ...


class _NoFunctions:
    def condition(self, name: str) -> Callable[[Mapping[str, Any]], Any] | None:
        return None

    def mapper(self, name: str) -> Callable[[Mapping[str, Any]], Any] | None:
        return None


NO_FUNCTIONS: Functions = _NoFunctions()


@dataclass(frozen=True, slots=True)
class Done:
    output: Any


@dataclass(frozen=True, slots=True)
class Failed:
    error: ErrorInfo
    origin: str


@dataclass(frozen=True, slots=True)
class Pending:
    pass


Outcome = Done | Failed | Pending
PENDING = Pending()


class Emitter:
    """Collects events, folding each into the state as it is emitted so later rules see it."""

    def __init__(self, state: RunState, now_ms: int, causation_id: str | None, functions: Functions) -> None:
        self.state = state
        self.now_ms = now_ms
        self.causation_id = causation_id
        self.functions = functions
        self.events: list[Envelope] = []

    def emit(self, payload: Event) -> None:
        seq = self.state.seq + 1
        event = Envelope.wrap(
            payload,
            id=event_id(self.state.run_id, seq),
            key=self.state.run_id,
            seq=seq,
            occurred_at_ms=self.now_ms,
            causation_id=self.causation_id,
            correlation_id=self.state.run_id,
        )
        self.state = evolve(self.state, event)
        self.events.append(event)

    def node(self, path: str) -> NodeState | None:
        return self.state.nodes.get(path)


class NodeFailure(NonRetryableError):
    """A node fails on its own spec, deterministically: the mapping, mapper or condition the workflow names cannot
    be evaluated on the run's values (missing, unregistered, or raising), a sleep's input is not a time, or an LLM
    step's call could pass the run's budget. ``info`` is what the node's ``NodeFailed`` records (``type`` says
    which: ``MappingError``, ``MapperError``, ``BudgetExceeded``...). Not retried: the same events fail the same
    way."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.info = ErrorInfo(type=error_type, message=message)


# --- pure helpers ---------------------------------------------------------------------------------------


#: Characters of an LLM call's JSON input per token, for the input part of its reservation (settled by the real
#: count the provider reports; English text runs at about four).
CHARS_PER_TOKEN = 4


def reserved_tokens(state: RunState) -> int:
    """Tokens held by the run's LLM steps in flight (scheduled, no result yet)."""
    return sum(n.reserved_tokens for n in state.nodes.values() if n.status == "active" and n.phase == "scheduled")


def budget_left(state: RunState) -> tuple[int | None, float | None]:
    """What is left of the run's budget once its calls in flight are paid for (None: no budget): what a child run
    started now may spend."""
    held = reserved_tokens(state) if state.budget_tokens is not None else 0
    return remaining(state.budget_tokens, state.tokens + held), remaining(state.budget_cost_usd, state.cost_usd)


def step_budget(state: RunState, node: NodeState) -> tuple[int | None, float | None]:
    """What the run's budget leaves a scheduled LLM step: what is left once the calls in flight are paid for, plus
    what this step holds itself (None: no budget). A step making several paid calls stops before the one that could
    pass it; what other steps hold stays theirs."""
    tokens, cost = budget_left(state)
    if tokens is not None and node.status == "active" and node.phase == "scheduled":
        tokens += node.reserved_tokens
    return tokens, cost


def llm_reservation(state: RunState, node: StepNode, data: Any) -> int:
    """Tokens to hold for this LLM call: its output cap plus an estimate of its input. Raises ``NodeFailure``
    (``BudgetExceeded``) when the call could pass the run's budget: it is then not made, and the overshoot of a
    budget is bounded by what one call was allowed (the cost by one call's cost: prices are the workers' to know)."""
    if node.llm_reserve_tokens is None or (state.budget_tokens is None and state.budget_cost_usd is None):
        return 0
    if state.budget_cost_usd is not None and state.cost_usd >= state.budget_cost_usd:
        raise NodeFailure(
            "BudgetExceeded",
            f"the run's cost budget is spent (${state.cost_usd:.6f} of ${state.budget_cost_usd:.6f}): "
            f"LLM step {node.name!r} was not called",
        )
    try:
        size = len(orjson.dumps(data))
    except TypeError:  # an integer beyond 64 bits: its text is as long
        size = len(str(data))
    reserve = node.llm_reserve_tokens + size // CHARS_PER_TOKEN
    if state.budget_tokens is not None:
        held = reserved_tokens(state)
        if state.tokens + held + reserve > state.budget_tokens:
            raise NodeFailure(
                "BudgetExceeded",
                f"LLM step {node.name!r} was not called: it could take up to {reserve} tokens, and {state.tokens} "
                f"used + {held} held by calls in flight + {reserve} > the run's budget of {state.budget_tokens}",
            )
    return reserve


def child_run_id(run_id: str, path: str) -> str:
    """A child run's id is derived from its parent and node path, so a re-sent start is idempotent.

    It uses only characters a run id may hold in a URL path: ``r1`` + ``items[3]/ship`` → ``r1:items.3:ship``.
    """
    safe = path.replace("/", ":").replace("[", ".").replace("]", "").replace("#", ".")
    return f"{run_id}:{safe}"


def jitter_unit(run_id: str, path: str, attempt: int) -> float:
    """A deterministic draw in [0, 1) per (run, step, attempt): jitter without a random number generator."""
    digest = hashlib.blake2b(f"{run_id}/{path}/{attempt}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") / 2**32


def retry_decision(
    policy: RetryPolicy,
    error: ErrorInfo,
    retryable: bool,
    attempt: int,
    run_id: str,
    path: str,
    now_ms: int,
    retry_after_ms: int | None = None,
) -> int | None:
    """When the next attempt may start, or None when the step has failed for good.

    ``retry_after_ms`` (a step's ``RetryableError(retry_after=...)``) only ever delays the policy's backoff; the
    policy alone decides whether another attempt is allowed.
    """
    if not retryable or error.type in policy.non_retryable or attempt >= policy.max_attempts:
        return None
    return now_ms + max(policy.delay_ms(attempt, jitter_unit(run_id, path, attempt)), retry_after_ms or 0)


def _scope(em: Emitter, scopes: list[str], value: Any, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {"input": em.state.input, "value": value, "steps": _StepsView(em.state, scopes), **extra}


class _StepsView(Mapping[str, Any]):
    """``steps.<name>``: the output of the nearest finished node of that name, innermost scope first."""

    def __init__(self, state: RunState, scopes: list[str]) -> None:
        self._state, self._scopes = state, scopes

    def __getitem__(self, name: str) -> Any:
        for depth in range(len(self._scopes), -1, -1):
            node = self._state.nodes.get("/".join([*self._scopes[:depth], name]))
            if node is not None and node.status == "done":
                return node.output
        raise KeyError(name)

    def __iter__(self) -> Any:
        return iter(sorted({p.rsplit("/", 1)[-1] for p, n in self._state.nodes.items() if n.status == "done"}))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def resolve_mapping(em: Emitter, mapping: str | None, scope: dict[str, Any]) -> Any:
    """A node's input from its mapping: the flowing value, a dotted path into the scope, or a named mapper."""
    if mapping is None:
        return scope["value"]
    if mapping.startswith("fn:"):
        name = mapping[3:]
        fn = em.functions.mapper(name)
        if fn is None:
            raise NodeFailure("UnknownMapper", f"mapper {name!r} is not registered in this engine; register it")
        try:
            return fn(scope)
        except Exception as exc:
            raise NodeFailure("MapperError", f"mapper {name!r} raised {type(exc).__name__}: {exc}") from None
    current: Any = scope
    for part in mapping.split("."):
        try:
            current = current[int(part)] if isinstance(current, list) else current[part]
        except (KeyError, IndexError, TypeError, ValueError):
            raise NodeFailure("MappingError", f"input mapping {mapping!r}: nothing at {part!r}") from None
    return current


def _condition(em: Emitter, name: str, scope: dict[str, Any]) -> bool:
    fn = em.functions.condition(name)
    if fn is None:
        raise NodeFailure("UnknownCondition", f"condition {name!r} is not registered in this engine; register it")
    try:
        return bool(fn(scope))
    except Exception as exc:
        raise NodeFailure("ConditionError", f"condition {name!r} raised {type(exc).__name__}: {exc}") from None


# --- drive ----------------------------------------------------------------------------------------------


def drive(em: Emitter, node: Node, scopes: list[str], value: Any, extra: Mapping[str, Any]) -> Outcome:
    """Advance the instance of ``node`` in ``scopes`` as far as ``now`` allows; ``value`` is its upstream input."""
    path = "/".join([*scopes, node.name])
    try:
        return _drive(em, node, path, scopes, value, extra)
    except NodeFailure as exc:  # a mapping, condition or input the workflow's spec got wrong: the node fails
        return _fail(em, path, exc.info, path)


def _fail(em: Emitter, path: str, error: ErrorInfo, origin: str) -> Failed:
    em.emit(NodeFailed(path=path, error=error, origin_path=origin))
    return Failed(error, origin)


def _settled(em: Emitter, path: str) -> Outcome | None:
    st = em.node(path)
    if st is None or st.status == "active":
        return None
    if st.status == "done":
        return Done(st.output)
    assert st.error is not None
    return Failed(st.error, st.origin or path)


def _child_failure(em: Emitter, path: str, st: NodeState) -> Failed | None:
    if st.failed_child is None:
        return None
    child = em.node(st.failed_child)
    assert child is not None and child.error is not None
    return _fail(em, path, child.error, child.origin or st.failed_child)


def _drive(em: Emitter, node: Node, path: str, scopes: list[str], value: Any, extra: Mapping[str, Any]) -> Outcome:
    settled = _settled(em, path)
    if settled is not None:
        return settled
    st = em.node(path)
    if isinstance(node, StepNode):
        return _step(em, node, path, scopes, value, extra, st)
    if isinstance(node, SleepNode):
        return _sleep(em, node, path, scopes, value, extra, st)
    if isinstance(node, WaitNode):
        return _wait(em, node, path, scopes, value, extra, st)
    if isinstance(node, ChildNode):
        if st is None:
            data = resolve_mapping(em, node.input, _scope(em, scopes, value, extra))
            cid = child_run_id(em.state.run_id, path)
            em.emit(ChildStarted(path=path, child_run_id=cid, workflow=node.workflow, input=data))
        return PENDING  # ChildFinished settles it
    if st is None:
        data = resolve_mapping(em, node.input, _scope(em, scopes, value, extra))
        em.emit(NodeStarted(path=path, node=node.kind, input=data))
        st = em.node(path)
        assert st is not None
    if isinstance(node, SequenceNode):
        return _sequence(em, node, path, scopes, extra)
    if isinstance(node, ParallelNode):
        return _parallel(em, node, path, scopes, extra)
    if isinstance(node, BranchNode):
        return _branch(em, node, path, scopes, extra)
    if isinstance(node, LoopNode):
        return _loop(em, node, path, scopes, extra)
    assert isinstance(node, ForEachNode)
    return _foreach(em, node, path, scopes, extra)


def _step(
    em: Emitter,
    node: StepNode,
    path: str,
    scopes: list[str],
    value: Any,
    extra: Mapping[str, Any],
    st: NodeState | None,
) -> Outcome:
    now = em.now_ms
    # The worker enforces timeout_s itself; the engine waits a grace second longer before it gives up.
    wait_ms = int(node.timeout_s * 1000) + STEP_TIMEOUT_GRACE_MS if node.timeout_s else None
    deadline = now + wait_ms if wait_ms is not None else None
    if st is None:
        data = resolve_mapping(em, node.input, _scope(em, scopes, value, extra))
        reserve = llm_reservation(em.state, node, data)
        em.emit(StepScheduled(path=path, step=node.name, attempt=1, pool=node.pool, input=data, deadline_ms=deadline,
                              reserve_tokens=reserve))
        return PENDING
    if st.due_at_ms is None or now < st.due_at_ms:
        return PENDING
    if st.phase == "backoff":
        em.emit(
            StepScheduled(
                path=path,
                step=node.name,
                attempt=st.attempt + 1,
                pool=node.pool,
                input=st.input,
                deadline_ms=deadline,
                reserve_tokens=llm_reservation(em.state, node, st.input),
            )
        )
        return _step(em, node, path, scopes, value, extra, em.node(path))
    # No result arrived in time (the worker died, or the task is stuck in a queue): fail this attempt.
    error = ErrorInfo(
        type="StepTimeout",
        message=f"step {node.name!r} attempt {st.attempt} got no result within its timeout of {node.timeout_s}s",
    )
    retry_at = retry_decision(node.retry, error, True, st.attempt, em.state.run_id, path, now)
    em.emit(
        StepFailed(
            path=path,
            step=node.name,
            attempt=st.attempt,
            error=error,
            will_retry=retry_at is not None,
            retry_at_ms=retry_at,
            duration_ms=float(now - st.due_at_ms + (wait_ms or 0)),
            worker="engine",
        )
    )
    return _settled(em, path) or _step(em, node, path, scopes, value, extra, em.node(path))


def _sleep(
    em: Emitter,
    node: SleepNode,
    path: str,
    scopes: list[str],
    value: Any,
    extra: Mapping[str, Any],
    st: NodeState | None,
) -> Outcome:
    if st is None:
        if node.until_input:
            due = resolve_mapping(em, node.input, _scope(em, scopes, value, extra))
            if not isinstance(due, int | float) or isinstance(due, bool):
                raise NodeFailure("SleepError", f"sleep {node.name!r} needs an epoch-ms number as input, got {due!r}")
            due_at = int(due)
        else:
            due_at = em.now_ms + int((node.seconds or 0) * 1000)
        em.emit(TimerStarted(path=path, due_at_ms=due_at))
        st = em.node(path)
        assert st is not None
    if st.due_at_ms is not None and em.now_ms >= st.due_at_ms:  # never early
        em.emit(NodeCompleted(path=path, output=value))
        return Done(value)
    return PENDING


def _wait(
    em: Emitter,
    node: WaitNode,
    path: str,
    scopes: list[str],
    value: Any,
    extra: Mapping[str, Any],
    st: NodeState | None,
) -> Outcome:
    if st is None:
        due = em.now_ms + int(node.timeout_s * 1000) if node.timeout_s else None
        em.emit(WaitStarted(path=path, event=node.event, due_at_ms=due))
        st = em.node(path)
        assert st is not None
    if not st.timed_out:
        if st.due_at_ms is None or em.now_ms < st.due_at_ms:
            return PENDING  # a ResumeRun settles it
        if node.on_timeout is None:
            error = ErrorInfo(type="WaitTimeout", message=f"no {node.event!r} event within {node.timeout_s}s")
            return _fail(em, path, error, path)
        em.emit(WaitTimedOut(path=path))
    assert node.on_timeout is not None
    outcome = drive(em, node.on_timeout, scopes, value, extra)
    if isinstance(outcome, Done):
        em.emit(NodeCompleted(path=path, output=outcome.output))
    elif isinstance(outcome, Failed):
        return _fail(em, path, outcome.error, outcome.origin)
    return outcome


def _output_of(em: Emitter, path: str) -> Any:
    st = em.node(path)
    return st.output if st is not None else None


def _sequence(em: Emitter, node: SequenceNode, path: str, scopes: list[str], extra: Mapping[str, Any]) -> Outcome:
    st = em.node(path)
    assert st is not None
    failure = _child_failure(em, path, st)
    if failure is not None:
        return failure
    i = st.done
    while i < len(node.nodes):
        upstream = st.input if i == 0 else _output_of(em, "/".join([*scopes, node.nodes[i - 1].name]))
        outcome = drive(em, node.nodes[i], scopes, upstream, extra)
        if isinstance(outcome, Pending):
            return outcome
        if isinstance(outcome, Failed):
            return _fail(em, path, outcome.error, outcome.origin)
        i += 1
    output = _output_of(em, "/".join([*scopes, node.nodes[-1].name]))
    em.emit(NodeCompleted(path=path, output=output))
    return Done(output)


def _parallel(em: Emitter, node: ParallelNode, path: str, scopes: list[str], extra: Mapping[str, Any]) -> Outcome:
    st = em.node(path)
    assert st is not None
    for branch in node.branches:
        if isinstance(drive(em, branch, scopes, st.input, extra), Failed):
            break  # fail fast: the branch failure settles the group below
    st = em.node(path)
    assert st is not None
    failure = _child_failure(em, path, st)
    if failure is not None:
        return failure
    if st.done < len(node.branches):
        return PENDING
    output = {b.name: _output_of(em, "/".join([*scopes, b.name])) for b in node.branches}
    em.emit(NodeCompleted(path=path, output=output))
    return Done(output)


def _branch(em: Emitter, node: BranchNode, path: str, scopes: list[str], extra: Mapping[str, Any]) -> Outcome:
    st = em.node(path)
    assert st is not None
    if not st.chosen:
        scope = _scope(em, scopes, st.input, extra)
        chosen = next((i for i, case in enumerate(node.cases) if _condition(em, case.when, scope)), None)
        em.emit(BranchChosen(path=path, case=chosen, condition=node.cases[chosen].when if chosen is not None else None))
        st = em.node(path)
        assert st is not None
    target = node.cases[st.case].then if st.case is not None else node.otherwise
    if target is None:
        em.emit(NodeCompleted(path=path, output=st.input))
        return Done(st.input)
    outcome = drive(em, target, scopes, st.input, extra)
    if isinstance(outcome, Done):
        em.emit(NodeCompleted(path=path, output=outcome.output))
    elif isinstance(outcome, Failed):
        return _fail(em, path, outcome.error, outcome.origin)
    return outcome


def _loop(em: Emitter, node: LoopNode, path: str, scopes: list[str], extra: Mapping[str, Any]) -> Outcome:
    st = em.node(path)
    assert st is not None
    if st.iteration == 0:
        em.emit(IterationStarted(path=path, iteration=1))
    while True:
        st = em.node(path)
        assert st is not None
        k = st.iteration
        inner = [*scopes, f"{node.name}#{k}"]
        upstream = st.input if k == 1 else _output_of(em, "/".join([*scopes, f"{node.name}#{k - 1}", node.body.name]))
        outcome = drive(em, node.body, inner, upstream, {**extra, "iteration": k})
        if isinstance(outcome, Pending):
            return outcome
        if isinstance(outcome, Failed):
            return _fail(em, path, outcome.error, outcome.origin)
        scope = _scope(em, scopes, outcome.output, {**extra, "iteration": k})
        if node.until is not None:
            stop = _condition(em, node.until, scope)
        else:
            assert node.while_ is not None
            stop = not _condition(em, node.while_, scope)
        if stop:
            em.emit(NodeCompleted(path=path, output=outcome.output))
            return Done(outcome.output)
        if k >= node.max_iterations:
            message = f"loop {node.name!r} ran {k} iterations (its max_iterations) without its condition ending it"
            return _fail(em, path, ErrorInfo(type="LoopLimit", message=message), path)
        em.emit(IterationStarted(path=path, iteration=k + 1))


def _foreach(em: Emitter, node: ForEachNode, path: str, scopes: list[str], extra: Mapping[str, Any]) -> Outcome:
    st = em.node(path)
    assert st is not None
    items = st.input
    if not isinstance(items, list):
        message = f"foreach {node.name!r} needs a list as input, got {type(items).__name__}"
        return _fail(em, path, ErrorInfo(type="ForEachInput", message=message), path)
    if len(items) > node.max_items:
        message = f"foreach {node.name!r} got {len(items)} items, above its max_items of {node.max_items}"
        return _fail(em, path, ErrorInfo(type="ForEachInput", message=message), path)

    def run_item(i: int) -> Outcome:
        return drive(em, node.body, [*scopes, f"{node.name}[{i}]"], items[i], {**extra, "item": items[i], "index": i})

    for i in st.open:
        if isinstance(run_item(i), Failed):
            break
    while True:
        st = em.node(path)
        assert st is not None
        if st.failed_child is not None or st.started >= len(items) or len(st.open) >= node.concurrency:
            break
        run_item(st.started)
    st = em.node(path)
    assert st is not None
    failure = _child_failure(em, path, st)
    if failure is not None:
        return failure
    if st.done < len(items):
        return PENDING
    body = node.body.name
    output = [_output_of(em, "/".join([*scopes, f"{node.name}[{i}]", body])) for i in range(len(items))]
    em.emit(NodeCompleted(path=path, output=output))
    return Done(output)
