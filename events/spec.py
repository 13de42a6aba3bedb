"""The serialisable workflow spec: what a run pins when it starts.

A spec is data, not code. It is a tree of nodes — steps, sequences, parallel groups, branches, loops, foreach,
sleeps, waits for input and child workflows — whose step bodies, conditions and mappers are referenced by
name and resolved by whoever hosts them (workers run steps; the engine runs the pure conditions and mappers).
Its content hash identifies a version; a run records the whole spec in its ``RunStarted`` event, so a run in
flight keeps executing the spec it started on no matter what is deployed later, and replay needs only the log.

Every node has a name unique within its workflow. A node instance's *path* is that name, prefixed by the
iteration scopes it runs in (``items[3]/charge``, ``poll#2/check``): paths are how events address nodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from tickflow.events.topics import DEFAULT_POOL

__all__ = [
    "BranchNode",
    "Case",
    "ChildNode",
    "ForEachNode",
    "LoopNode",
    "Mapping",
    "Name",
    "Node",
    "ParallelNode",
    "RetryPolicy",
    "SequenceNode",
    "SleepNode",
    "StepNode",
    "WaitNode",
    "WorkflowSpec",
    "children",
    "walk",
]

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]
#: Where a node's input comes from: ``None`` (the value flowing from the previous node), a dotted path
#: (``"input.user"``, ``"steps.fetch.amount"``, ``"value.items"``, ``"item"``) or ``"fn:<name>"`` (a registered
#: pure mapper called with the scope).
Mapping = Annotated[str, StringConstraints(min_length=1, max_length=512)]

_frozen = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RetryPolicy(BaseModel):
    """How often a failing step is tried, how long to wait in between, and which errors are final."""

    model_config = _frozen

    max_attempts: int = Field(default=1, ge=1, le=100)
    backoff_s: float = Field(default=1.0, ge=0, le=86_400)
    backoff_multiplier: float = Field(default=2.0, ge=1, le=10)
    max_backoff_s: float = Field(default=300.0, ge=0, le=30 * 86_400)
    #: Fraction of each delay that is randomised (deterministically, from run id, path and attempt).
    jitter: float = Field(default=0.2, ge=0, le=1)
    #: Error type names (the exception class name) that are never retried.
    non_retryable: tuple[Name, ...] = ()

    def delay_ms(self, attempt: int, unit: float) -> int:
        """Delay before attempt ``attempt + 1``; ``unit`` in [0, 1) is the jitter draw."""
        base = min(self.backoff_s * self.backoff_multiplier ** (attempt - 1), self.max_backoff_s)
        return int(base * (1 - self.jitter * unit) * 1000)


class _Node(BaseModel):
    model_config = _frozen

    name: Name
    #: Where the node's input comes from; see ``Mapping``.
    input: Mapping | None = None


class StepNode(_Node):
    """Run a registered function in a worker of ``pool``."""

    kind: Literal["step"] = "step"
    fn: Name
    pool: Name = DEFAULT_POOL
    retry: RetryPolicy = RetryPolicy()
    #: Per attempt. The worker cancels the body; the engine fails the attempt if no result arrives in time.
    timeout_s: float | None = Field(default=None, gt=0)
    #: Higher runs first among tasks waiting for a slot in the same worker pool.
    priority: int = Field(default=0, ge=-1000, le=1000)
    #: JSON schemas of the function's annotated input and output, for docs and version hashing.
    input_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    #: Set on an LLM call (``Flow.agent``'s model step): the most output tokens it asks for. Before scheduling it
    #: the engine reserves these plus an estimate of the input's against the run's token budget. Left out of the
    #: spec's JSON when unset, so no other spec's hash changes.
    llm_reserve_tokens: int | None = Field(default=None, ge=1, exclude_if=lambda v: v is None)


class SequenceNode(_Node):
    """Children one after another; each gets the previous one's output. Output: the last child's."""

    kind: Literal["sequence"] = "sequence"
    nodes: tuple[Node, ...] = Field(min_length=1, max_length=10_000)


class ParallelNode(_Node):
    """Branches at once, all with the same input. Output: ``{branch name: output}``. Fails fast."""

    kind: Literal["parallel"] = "parallel"
    branches: tuple[Node, ...] = Field(min_length=1, max_length=10_000)


class Case(BaseModel):
    model_config = _frozen

    #: A registered pure predicate, called with the scope.
    when: Name
    then: Node


class BranchNode(_Node):
    """The first case whose condition holds runs; else ``otherwise``; else the value passes through."""

    kind: Literal["branch"] = "branch"
    cases: tuple[Case, ...] = Field(min_length=1, max_length=100)
    otherwise: Node | None = None


class LoopNode(_Node):
    """Do-until / do-while: the body runs, then ``until`` (stop when true) or ``while_`` (go on when true)
    is evaluated with the body's output as ``value``. Each iteration gets the previous one's output."""

    kind: Literal["loop"] = "loop"
    body: Node
    until: Name | None = None
    while_: Name | None = None
    max_iterations: int = Field(default=100, ge=1, le=100_000)

    @model_validator(mode="after")
    def _one_condition(self) -> LoopNode:
        if (self.until is None) == (self.while_ is None):
            raise ValueError(f"loop {self.name!r} needs exactly one of until= or while_=")
        return self


class ForEachNode(_Node):
    """The body once per element of the input list, at most ``concurrency`` at a time. Output: the list of
    the bodies' outputs, in input order. The body sees ``item`` and ``index`` in its scope."""

    kind: Literal["foreach"] = "foreach"
    body: Node
    concurrency: int = Field(default=10, ge=1, le=10_000)
    max_items: int = Field(default=10_000, ge=1, le=100_000)


class SleepNode(_Node):
    """A durable timer: ``seconds`` from when the node starts, or until the epoch-ms time its input gives
    (``until_input=True``). Output: the value passes through."""

    kind: Literal["sleep"] = "sleep"
    seconds: float | None = Field(default=None, ge=0, le=400 * 86_400)
    until_input: bool = False

    @model_validator(mode="after")
    def _one_timing(self) -> SleepNode:
        if (self.seconds is None) == (not self.until_input):
            raise ValueError(f"sleep {self.name!r} needs exactly one of seconds= or until_input=True")
        return self


class WaitNode(_Node):
    """Suspend until a ``ResumeRun`` for ``event`` arrives (payload validated against ``schema``).
    Output: the payload. On timeout ``on_timeout`` runs (its output becomes the wait's), or the node fails."""

    kind: Literal["wait"] = "wait"
    event: Name
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    timeout_s: float | None = Field(default=None, gt=0, le=400 * 86_400)
    on_timeout: Node | None = None


class ChildNode(_Node):
    """Start a run of ``workflow`` with the node's input and wait for its result (its output)."""

    kind: Literal["child"] = "child"
    workflow: Name


Node = Annotated[
    StepNode | SequenceNode | ParallelNode | BranchNode | LoopNode | ForEachNode | SleepNode | WaitNode | ChildNode,
    Field(discriminator="kind"),
]


def children(node: Node) -> list[Node]:
    """A node's direct children."""
    children: list[Node] = []
    if isinstance(node, SequenceNode):
        children = list(node.nodes)
    elif isinstance(node, ParallelNode):
        children = list(node.branches)
    elif isinstance(node, BranchNode):
        children = [c.then for c in node.cases] + ([node.otherwise] if node.otherwise else [])
    elif isinstance(node, LoopNode | ForEachNode):
        children = [node.body]
    elif isinstance(node, WaitNode) and node.on_timeout is not None:
        children = [node.on_timeout]
    return children


def walk(node: Node) -> Iterator[Node]:
    """Every node of a tree, parents before children."""
    yield node
    for child in children(node):
        yield from walk(child)


class WorkflowSpec(BaseModel):
    """A workflow: its node tree, plus run-level policies."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: Name
    #: Versions of one workflow live side by side in a registry: new runs take the newest (or the one their
    #: ``StartRun.version`` names); a run keeps the spec it pinned. Left out of the JSON at 1, so a spec written
    #: before versions existed keeps its hash.
    version: int = Field(default=1, ge=1, le=1_000_000, exclude_if=lambda v: v == 1)
    root: Node
    #: Compensation: runs with ``{"error": …, "input": …}`` when the run fails, before it is marked failed.
    on_failure: StepNode | None = None
    #: The whole run fails with ``RunTimeout`` if it has not finished this long after it started.
    timeout_s: float | None = Field(default=None, gt=0)
    #: Per-key concurrency: a mapping of the run's input (e.g. ``"input.customer"``) naming its key; at most
    #: ``max_per_key`` runs of this workflow with one key are admitted at a time, the rest queue by priority.
    concurrency_key: Mapping | None = None
    max_per_key: int = Field(default=1, ge=1, le=10_000)

    @model_validator(mode="after")
    def _unique_names(self) -> WorkflowSpec:
        seen: set[str] = set()
        nodes = list(walk(self.root)) + ([self.on_failure] if self.on_failure else [])
        for node in nodes:
            if node.name in seen:
                raise ValueError(f"workflow {self.name!r} has two nodes named {node.name!r}; names must be unique")
            seen.add(node.name)
        return self

    def nodes(self) -> dict[str, Node]:
        """Every node by name (including the compensation step)."""
        found = {n.name: n for n in walk(self.root)}
        if self.on_failure is not None:
            found[self.on_failure.name] = self.on_failure
        return found

    def content_hash(self) -> str:
        """SHA-256 over the canonical JSON of the spec: equal specs hash equal, any change changes it."""
        canonical = orjson.dumps(self.model_dump(mode="json", by_alias=True), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:32]


for _model in (SequenceNode, ParallelNode, Case, BranchNode, LoopNode, ForEachNode, WaitNode, WorkflowSpec):
    _model.model_rebuild()
