"""Define workflows in Python, compile them to a ``WorkflowSpec``, and register the functions they name.

Definitions are code; what runs is the compiled spec (data with a content hash). Step bodies are plain Python
functions, sync or async, taking the step's input and returning a JSON-serialisable output; they run only in
workers, at least once per attempt, and can read ``current_step()`` for their idempotency key. If a step's
parameter or return value is annotated (a pydantic model, a TypedDict, ``list[int]``…), its input is validated
and converted before the call and its output validated after it.

Conditions (``when=``, ``until=``, ``while_=``) and mappers (``input=<callable>``) run in the engine while it
decides. They receive the scope — ``input`` (the run's input), ``value`` (the node's upstream value),
``steps`` (outputs by node name), and ``item``/``index``/``iteration`` inside foreach and loops — and must be
pure: same scope, same answer.

    order = (
        Workflow("order", on_failure=refund)
        .step(validate)
        .parallel(charge=Flow().step(charge), stock=Flow().step(reserve))
        .branch((is_big, Flow().wait_for_event("approval", schema=Approval, timeout_s=86_400)))
        .sleep(seconds=3600)
        .foreach(Flow().child("ship_item"), input="input.items", concurrency=5)
    )
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar, overload

from pydantic import BaseModel, TypeAdapter, ValidationError

from tickflow.events.agents import HandoffFields
from tickflow.events.errors import NonRetryableError, UnknownStepFunction
from tickflow.events.schemas import LlmAttemptFields, MessageFields
from tickflow.events.spec import (
    RetryPolicy,
    StepNode,
    WorkflowSpec,
    walk,
)
from tickflow.events.topics import DEFAULT_POOL

if TYPE_CHECKING:
    from tickflow.settings import Settings

__all__ = [
    "AgentDefinition",
    "CallJournal",
    "Flow",
    "Registry",
    "StepContext",
    "StepReport",
    "Trigger",
    "Workflow",
    "current_step",
    "named",
    "named_step",
]

StepFn = Callable[[Any], Any] | Callable[[Any], Awaitable[Any]]
ScopeFn = Callable[[Mapping[str, Any]], Any]


#: What one step result may carry (``StepSucceeded``/``StepErrored`` bound their lists to this).
MAX_REPORTED = 1_000


@dataclass(slots=True)
class StepReport:
    """What a step body did on the way that the engine must log besides its outcome: every LLM call attempt
    and every memory message (agent steps). The worker attaches it to the result, failed attempts included,
    so a call that cost tokens and then failed is still counted."""

    llm_attempts: list[LlmAttemptFields] = field(default_factory=list)
    messages: list[MessageFields] = field(default_factory=list)

    def add_llm_attempt(self, attempt: LlmAttemptFields) -> None:
        if len(self.llm_attempts) >= MAX_REPORTED:
            raise NonRetryableError(f"a step may report at most {MAX_REPORTED} LLM attempts; split the work")
        self.llm_attempts.append(attempt)

    def add_message(self, message: MessageFields) -> None:
        if len(self.messages) >= MAX_REPORTED:
            raise NonRetryableError(f"a step may report at most {MAX_REPORTED} memory messages; split the work")
        self.messages.append(message)


class CallJournal(Protocol):
    """The answers to paid calls a step has had already, by the call's index in the step or its name (its worker's
    journal).

    A worker gives each step run one: ``recall`` returns the answer a previous run of this step (an earlier attempt,
    or the same attempt before a crash) was given for call ``call``; ``record`` makes an answer durable before the
    body goes on, and says whether it did (False: too big to keep, or no journal: report the call in the step's
    result as before); a ``handoff`` rides on its call's record, for the engine to log. ``tickflow.agents.paid_once``
    and the framework integrations (``tickflow.integrations``) use both.
    """

    def next_call(self) -> int: ...

    def recall(self, call: int | str) -> Any | None: ...

    async def record(self, call: int | str, answer: Any, attempts: Sequence[LlmAttemptFields],
                     handoff: HandoffFields | None = None) -> bool: ...


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a running step may know about itself. ``idempotency_key`` (``<run>/<path>``) is the same for every
    attempt of the step, redeliveries and re-runs after a crash included: make an external effect under it and the
    effect happens once; ``attempt`` tells the attempts apart.

    ``report`` collects LLM attempts and memory messages for the engine's log; ``settings`` are the worker's
    (None outside a worker), for step bodies that call back into tickflow, as agents do to read memory.
    """

    run_id: str
    workflow: str
    step: str
    attempt: int
    idempotency_key: str
    path: str = ""
    report: StepReport = field(default_factory=StepReport)
    settings: Settings | None = None
    #: The answers of paid calls already made for this step (None outside a worker: every call is made).
    journal: CallJournal | None = None
    #: What the run's LLM budget leaves this attempt of an LLM step (None: no budget): a body making several paid
    #: calls itself stops before the one that could pass it.
    budget_tokens: int | None = None
    budget_cost_usd: float | None = None


_current: contextvars.ContextVar[StepContext] = contextvars.ContextVar("tickflow_step")


def current_step() -> StepContext:
    """The context of the step being executed; raises LookupError outside a step body."""
    return _current.get()


_F = TypeVar("_F", bound=Callable[..., Any])


@overload
def named(name: str) -> Callable[[_F], _F]: ...


@overload
def named(name: str, fn: _F) -> _F: ...


def named(name: str, fn: _F | None = None) -> Callable[[_F], _F] | _F:
    """Give a step function, condition or mapper a stable name, instead of its ``module.qualname``.

    A run pins its workflow's spec, and the spec refers to functions by name. The default name is the function's
    import path, which changes when the function is renamed or moved; a run recorded before would then name a
    function no worker or engine knows (``UnknownStepFunction``, ``UnknownCondition``). ``@named("billing.charge")``
    fixes the name once, whatever the code is called later; ``named("order.is_big", lambda scope: ...)`` names a
    condition or mapper written inline.
    """
    if not name or len(name) > 200:
        raise ValueError(f"a function name must be 1-200 characters, not {name!r}")

    def pin(fn: _F) -> _F:
        fn.__tickflow_name__ = name  # type: ignore[attr-defined]
        return fn

    return pin if fn is None else pin(fn)


def named_step(name: str, body: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
    """A step function named ``name`` that runs ``body``: for steps an object builds from its own methods (an agent's
    model step), as a bound method cannot carry the name itself."""

    async def step(value: Any) -> Any:
        return await body(value)

    step.__name__ = step.__qualname__ = name.rsplit(".", 1)[-1]
    return named(name, step)


def _fn_name(fn: Callable[..., Any]) -> str:
    return getattr(fn, "__tickflow_name__", None) or f"{fn.__module__}.{fn.__qualname__}".replace("<", "").replace(
        ">", ""
    )


class AgentDefinition(Protocol):
    """What a workflow needs of an agent: its name and the flow its turns compile to.

    ``tickflow.agents.Agent`` is the implementation; naming only this much here keeps the workflow language free
    of the agent layer (which builds on it), so the two never import each other.
    """

    @property
    def name(self) -> str: ...

    def flow(self, name: str) -> Flow: ...


@dataclass(slots=True)
class _Functions:
    steps: dict[str, StepFn] = field(default_factory=dict)
    conditions: dict[str, ScopeFn] = field(default_factory=dict)
    mappers: dict[str, ScopeFn] = field(default_factory=dict)
    agents: dict[str, AgentDefinition] = field(default_factory=dict)

    def merge(self, other: _Functions) -> None:
        self.steps.update(other.steps)
        self.conditions.update(other.conditions)
        self.mappers.update(other.mappers)
        self.agents.update(other.agents)


class Flow:
    """A sequence of nodes under construction; ``Workflow`` is the top-level one.

    Nodes without an explicit ``name`` get one at compile time (steps: the function's name; others: their
    kind and a number). Names must be unique within a workflow; they address nodes in events and queries.
    """

    def __init__(self) -> None:
        self._nodes: list[dict[str, Any]] = []
        self.functions = _Functions()

    # -- leaves ------------------------------------------------------------------------------------------

    def step(
        self,
        fn: StepFn,
        *,
        name: str | None = None,
        input: str | ScopeFn | None = None,
        pool: str = DEFAULT_POOL,
        max_attempts: int = 1,
        backoff_s: float = 1.0,
        backoff_multiplier: float = 2.0,
        max_backoff_s: float = 300.0,
        jitter: float = 0.2,
        non_retryable: tuple[type[BaseException] | str, ...] = (),
        timeout_s: float | None = None,
        priority: int = 0,
        llm_reserve_tokens: int | None = None,
    ) -> Self:
        """Run ``fn`` in a worker of ``pool``; retried up to ``max_attempts`` with exponential backoff.

        ``llm_reserve_tokens`` marks the step as an LLM call that asks for at most that many output tokens: in a run
        with a token budget the engine reserves them (plus an estimate of the input's) before scheduling it, and
        does not call it when that could pass the budget (``Flow.agent`` sets it for its model step)."""
        fn_name = _fn_name(fn)
        existing = self.functions.steps.get(fn_name)
        if existing is not None and existing is not fn:
            raise ValueError(f"two different functions are named {fn_name!r}; set __tickflow_name__ on one")
        self.functions.steps[fn_name] = fn
        typed = _typed(fn)
        in_schema = _json_schema(typed.takes)
        out_schema = _json_schema(typed.returns)
        retry = RetryPolicy(
            max_attempts=max_attempts,
            backoff_s=backoff_s,
            backoff_multiplier=backoff_multiplier,
            max_backoff_s=max_backoff_s,
            jitter=jitter,
            non_retryable=tuple(t if isinstance(t, str) else t.__name__ for t in non_retryable),
        )
        return self._add(
            "step",
            name or fn.__name__,
            input,
            fn=fn_name,
            pool=pool,
            retry=retry,
            timeout_s=timeout_s,
            priority=priority,
            llm_reserve_tokens=llm_reserve_tokens,
            input_schema=in_schema,
            output_schema=out_schema,
        )

    def sleep(self, seconds: float, *, name: str | None = None) -> Self:
        """A durable timer: the run holds no resources and survives restarts while it sleeps."""
        return self._add("sleep", name, None, seconds=seconds)

    def sleep_until(self, at_ms: str | ScopeFn, *, name: str | None = None) -> Self:
        """Sleep until the epoch-ms time that ``at_ms`` (a mapping or mapper) yields."""
        return self._add("sleep", name, at_ms, until_input=True)

    def wait_for_event(
        self,
        event: str,
        *,
        schema: type[BaseModel] | dict[str, Any] | None = None,
        timeout_s: float | None = None,
        on_timeout: Flow | None = None,
        name: str | None = None,
    ) -> Self:
        """Suspend until ``ResumeRun(event)``; its payload (validated against ``schema``) is the output."""
        json_schema = schema.model_json_schema() if isinstance(schema, type) else schema
        return self._add(
            "wait",
            name or event,
            None,
            event=event,
            schema=json_schema,
            timeout_s=timeout_s,
            on_timeout=self._sub(on_timeout, f"{name or event}.on_timeout") if on_timeout else None,
        )

    def child(self, workflow: str, *, name: str | None = None, input: str | ScopeFn | None = None) -> Self:
        """Start a run of ``workflow`` and wait for its output."""
        return self._add("child", name, input, workflow=workflow)

    def agent(self, agent: AgentDefinition, *, name: str | None = None, input: str | ScopeFn | None = None) -> Self:
        """Run ``agent``'s durable LLM ↔ tool loop (see ``tickflow.agents``); its output is the final answer.

        Compiles to a loop node named ``name`` (default: the agent's name) whose turns are an LLM-call step
        and a foreach of tool-call steps, so each call is its own event-sourced step.
        """
        flow = agent.flow(name or agent.name)
        self.functions.merge(flow.functions)
        self.functions.agents[agent.name] = agent
        return self._add_raw({**flow._nodes[0], "input": self._mapping(input)})

    # -- containers --------------------------------------------------------------------------------------

    def parallel(self, *, name: str | None = None, input: str | ScopeFn | None = None, **branches: Flow) -> Self:
        """Run the branches at once; the output is ``{branch: output}``. One failed branch fails the group."""
        if not branches:
            raise ValueError("parallel() needs at least one branch, as keyword arguments: parallel(a=Flow()...)")
        nodes = [self._sub(flow, branch) for branch, flow in branches.items()]
        return self._add("parallel", name, input, branches=nodes)

    def branch(
        self,
        *cases: tuple[str | ScopeFn, Flow],
        otherwise: Flow | None = None,
        name: str | None = None,
        input: str | ScopeFn | None = None,
    ) -> Self:
        """The first case whose condition holds runs; else ``otherwise``; else the value passes through."""
        built = [{"when": self._condition(when), "then": self._sub(flow, None)} for when, flow in cases]
        other = self._sub(otherwise, None) if otherwise is not None else None
        return self._add("branch", name, input, cases=built, otherwise=other)

    def loop(
        self,
        body: Flow,
        *,
        until: str | ScopeFn | None = None,
        while_: str | ScopeFn | None = None,
        max_iterations: int = 100,
        name: str | None = None,
        input: str | ScopeFn | None = None,
    ) -> Self:
        """Do-until (or do-while): run ``body``, test the condition on its output, repeat."""
        return self._add(
            "loop",
            name,
            input,
            body=self._sub(body, None),
            until=self._condition(until) if until is not None else None,
            while_=self._condition(while_) if while_ is not None else None,
            max_iterations=max_iterations,
        )

    def foreach(
        self,
        body: Flow,
        *,
        concurrency: int = 10,
        max_items: int = 10_000,
        name: str | None = None,
        input: str | ScopeFn | None = None,
    ) -> Self:
        """Run ``body`` per element of the input list, ``concurrency`` at a time; output: the list of results."""
        return self._add(
            "foreach", name, input, body=self._sub(body, None), concurrency=concurrency, max_items=max_items
        )

    # -- plumbing ----------------------------------------------------------------------------------------

    def _add(self, kind: str, name: str | None, input: str | ScopeFn | None, **fields: Any) -> Self:
        self._nodes.append({"kind": kind, "name": name, "input": self._mapping(input), **fields})
        return self

    def _add_raw(self, node: dict[str, Any]) -> Self:
        self._nodes.append(node)
        return self

    def _sub(self, flow: Flow | None, name: str | None) -> dict[str, Any]:
        if flow is None or not flow._nodes:
            raise ValueError("a nested Flow needs at least one node")
        self.functions.merge(flow.functions)
        if len(flow._nodes) == 1:  # a one-node branch is that node, named after the branch if it has a name
            return {**flow._nodes[0], "name": name} if name is not None else dict(flow._nodes[0])
        return {"kind": "sequence", "name": name, "input": None, "nodes": list(flow._nodes)}

    def _condition(self, fn: str | ScopeFn) -> str:
        if isinstance(fn, str):
            return fn
        name = _fn_name(fn)
        self.functions.conditions[name] = fn
        return name

    def _mapping(self, input: str | ScopeFn | None) -> str | None:
        if input is None or isinstance(input, str):
            return input
        name = _fn_name(input)
        self.functions.mappers[name] = input
        return f"fn:{name}"


def _raw_children(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A raw (uncompiled) node's direct children, in the order names are given."""
    out = [*node.get("nodes", []), *node.get("branches", [])]
    out += [node[key] for key in ("body", "on_timeout", "otherwise") if node.get(key) is not None]
    return out + [case["then"] for case in node.get("cases", [])]


def _walk_raw(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(n for child in _raw_children(node) for n in _walk_raw(child))]


def _named(root: dict[str, Any]) -> dict[str, Any]:
    """A copy of the tree where every unnamed node has a deterministic name (preorder), so equal definitions
    compile to equal specs."""
    root = copy.deepcopy(root)
    nodes = _walk_raw(root)
    taken = {n["name"] for n in nodes if n.get("name")}
    counters: dict[str, int] = {}
    for node in nodes:
        if node.get("name") is None:
            kind = node["kind"]
            counters[kind] = counters.get(kind, 0) + 1
            while f"{kind}{counters[kind]}" in taken:
                counters[kind] += 1
            node["name"] = f"{kind}{counters[kind]}"
            taken.add(node["name"])
    return root


class Workflow(Flow):
    """A named workflow: ``Workflow("etl").step(fetch).step(load, max_attempts=3)``.

    ``version`` lets a changed definition live beside the one runs in flight pinned: register
    ``Workflow("order", version=2)`` next to version 1 and new runs take version 2, while a run of version 1 goes on
    with the spec it pinned. The spec refers to functions by stable name only, so both versions may share functions,
    and a function must keep its name (``@named``) for as long as a pinned run may still call it.
    """

    def __init__(
        self,
        name: str,
        *,
        version: int = 1,
        timeout_s: float | None = None,
        on_failure: StepFn | None = None,
        concurrency_key: str | ScopeFn | None = None,
        max_per_key: int = 1,
    ) -> None:
        super().__init__()
        self.name = name
        self.version = version
        self.timeout_s = timeout_s
        self.concurrency_key = self._mapping(concurrency_key)
        self.max_per_key = max_per_key
        self._on_failure: dict[str, Any] | None = None
        if on_failure is not None:
            compensation = Flow().step(on_failure)
            self.functions.merge(compensation.functions)
            self._on_failure = compensation._nodes[0]

    def compile(self) -> WorkflowSpec:
        if not self._nodes:
            raise ValueError(f"workflow {self.name!r} has no nodes; add a step")
        named = _named({"kind": "sequence", "name": "__root__", "input": None, "nodes": self._nodes})
        try:
            return WorkflowSpec.model_validate(
                {
                    "name": self.name,
                    "version": self.version,
                    "root": named,
                    "on_failure": self._on_failure,
                    "timeout_s": self.timeout_s,
                    "concurrency_key": self.concurrency_key,
                    "max_per_key": self.max_per_key,
                }
            )
        except ValidationError as exc:
            raise ValueError(f"workflow {self.name!r} is invalid: {exc}") from None


@dataclass(frozen=True, slots=True)
class Trigger:
    """A rule: every record on ``topic`` starts a run of ``workflow`` (see ``tickflow.runtime.triggers``)."""

    name: str
    topic: str
    workflow: str


@dataclass(frozen=True, slots=True)
class _Typed:
    fn: StepFn
    takes: TypeAdapter[Any] | None
    returns: TypeAdapter[Any] | None


def _typed(fn: StepFn) -> _Typed:
    try:
        sig = inspect.signature(fn, eval_str=True)
    except (TypeError, ValueError, NameError):
        return _Typed(fn, None, None)
    params = list(sig.parameters.values())
    adapters: list[TypeAdapter[Any] | None] = []
    for ann in (params[0].annotation if params else inspect.Parameter.empty, sig.return_annotation):
        if ann in (inspect.Parameter.empty, inspect.Signature.empty, Any, None):
            adapters.append(None)
            continue
        try:
            adapters.append(TypeAdapter(ann))
        except Exception:
            adapters.append(None)
    return _Typed(fn, adapters[0], adapters[1])


def _json_schema(adapter: TypeAdapter[Any] | None) -> dict[str, Any] | None:
    if adapter is None:
        return None
    try:
        return adapter.json_schema()
    except Exception:  # an annotation pydantic cannot describe is documentation only
        return None


class Registry:
    """The workflows an engine can start and the functions a worker or an engine can run, by name."""

    def __init__(self) -> None:
        #: The newest version of each workflow, by name: what a StartRun without a version starts.
        self.specs: dict[str, WorkflowSpec] = {}
        #: Every registered version of each workflow, by name and version.
        self.versions: dict[str, dict[int, WorkflowSpec]] = {}
        self.functions: dict[str, StepFn] = {}
        self.conditions: dict[str, ScopeFn] = {}
        self.mappers: dict[str, ScopeFn] = {}
        #: Agents the registered workflows use, by name (their step bodies are in ``functions``).
        self.agents: dict[str, AgentDefinition] = {}
        self._typed: dict[str, _Typed] = {}
        self.triggers: list[Trigger] = []
        #: The LLM configuration this app's agents need when ``TICKFLOW_LLM_CONFIG`` names none (the mapping a
        #: ``.json`` file would hold; see ``tickflow.llm.LlmConfig``): every process that hosts the app writes it to
        #: its state directory at start and uses it, so ``tickflow up --app …`` runs the app's agents as they are.
        self.llm_config: dict[str, Any] | None = None

    def agent_workflows(self) -> list[str]:
        """The workflows that call an LLM (an agent's model step, or any step with ``llm_reserve_tokens``): what a
        stack usually ticks, so the dashboard offers them first."""
        return sorted(
            name for name, spec in self.specs.items()
            if any(isinstance(n, StepNode) and n.llm_reserve_tokens is not None for n in walk(spec.root))
        )

    def add(self, workflow: Workflow) -> WorkflowSpec:
        """Register a workflow (one version of it) and the functions it names.

        Versions of one name live side by side; the newest is ``specs[name]``. Functions are one table for all
        versions, by stable name: two versions may share a function, but one name can never mean two functions
        (a changed body that must not reach runs of the old version needs a new name)."""
        spec = workflow.compile()
        for table, new in (
            (self.functions, workflow.functions.steps),
            (self.conditions, workflow.functions.conditions),
            (self.mappers, workflow.functions.mappers),
        ):
            for name, fn in new.items():
                existing = table.get(name)
                if existing is not None and existing is not fn:
                    raise ValueError(f"two different functions are registered as {name!r}")
                table[name] = fn
        for name, agent in workflow.functions.agents.items():
            if self.agents.get(name, agent) is not agent:
                raise ValueError(f"two different agents are named {name!r}; give one another name")
            self.agents[name] = agent
        versions = self.versions.setdefault(spec.name, {})
        versions[spec.version] = spec
        self.specs[spec.name] = versions[max(versions)]
        return spec

    def pools(self) -> set[str]:
        """Every worker pool a registered workflow sends steps to (``tickflow up`` serves them all)."""
        found = {DEFAULT_POOL}
        for spec in self.specs.values():
            found.update(n.pool for n in spec.nodes().values() if isinstance(n, StepNode))
        return found

    def trigger(self, topic: str, workflow: str, *, name: str | None = None) -> Trigger:
        """Start a run of ``workflow`` for every record on ``topic`` (hosted by the ``trigger`` role)."""
        trig = Trigger(name=name or f"on.{topic}.{workflow}", topic=topic, workflow=workflow)
        if any(t.name == trig.name for t in self.triggers):
            raise ValueError(f"a trigger named {trig.name!r} exists already; pass name=")
        self.triggers.append(trig)
        return trig

    def spec(self, workflow: str, version: int | None = None) -> WorkflowSpec | None:
        """The spec a StartRun of ``workflow`` pins: ``version``'s, or the newest when it names none."""
        if version is None:
            return self.specs.get(workflow)
        return self.versions.get(workflow, {}).get(version)

    def function(self, name: str) -> StepFn | None:
        """The step function registered under ``name`` (what a worker of this code would run for it)."""
        return self.functions.get(name)

    def condition(self, name: str) -> ScopeFn | None:
        return self.conditions.get(name)

    def mapper(self, name: str) -> ScopeFn | None:
        return self.mappers.get(name)

    async def call(self, fn_name: str, value: Any, ctx: StepContext, executor: Executor | None = None) -> Any:
        """Run a registered function: async ones on the loop, sync ones in a thread so they cannot stall it — of
        ``executor`` when given (a worker's own, so stuck sync steps cannot starve the threads the projector and
        the API use), else of the loop's default executor."""
        fn = self.functions.get(fn_name)
        if fn is None:
            raise UnknownStepFunction(
                f"no step function {fn_name!r} is registered in this worker: the run's spec names it, but the code "
                "this worker hosts (its --app) does not register it; deploy it, or pin a moved function's old name "
                "with @named"
            )
        typed = self._typed.get(fn_name)
        if typed is None or typed.fn is not fn:
            typed = self._typed[fn_name] = _typed(fn)
        if typed.takes is not None:
            try:
                value = typed.takes.validate_python(value)
            except ValidationError as exc:
                raise NonRetryableError(f"input of step {ctx.step!r} does not match its annotation: {exc}") from None
        token = _current.set(ctx)
        try:
            if inspect.iscoroutinefunction(fn):
                output = await fn(value)
            else:
                loop = asyncio.get_running_loop()
                output = await loop.run_in_executor(executor, contextvars.copy_context().run, fn, value)
        finally:
            _current.reset(token)
        if typed.returns is not None:
            try:
                return typed.returns.dump_python(typed.returns.validate_python(output), mode="json")
            except ValidationError as exc:
                raise NonRetryableError(f"output of step {ctx.step!r} does not match its annotation: {exc}") from None
        if isinstance(output, BaseModel):
            return output.model_dump(mode="json")
        return output
