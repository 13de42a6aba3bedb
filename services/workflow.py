"""Define workflows in Python, compile them to a ``WorkflowSpec``, and register the step functions.

Definitions are code; what runs is the compiled spec (data with a content hash). Step bodies are plain
Python functions, sync or async, taking the step's input and returning a JSON-serialisable output; they run
only in workers, at least once per attempt, and can read ``current_step()`` for their idempotency key.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from events.spec import RetryPolicy, StepSpec, WorkflowSpec
from events.topics import DEFAULT_POOL

__all__ = ["Registry", "StepContext", "Workflow", "current_step"]

StepFn = Callable[[Any], Any] | Callable[[Any], Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a running step may know about itself. ``idempotency_key`` is stable across redeliveries."""

    run_id: str
    workflow: str
    step: str
    attempt: int
    idempotency_key: str


_current: contextvars.ContextVar[StepContext] = contextvars.ContextVar("tickflow_step")


def current_step() -> StepContext:
    """The context of the step being executed; raises LookupError outside a step body."""
    return _current.get()


class Workflow:
    """A sequential workflow under construction: ``Workflow("etl").step(fetch).step(load, max_attempts=3)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._steps: list[StepSpec] = []
        self.functions: dict[str, StepFn] = {}

    def step(
        self,
        fn: StepFn,
        *,
        name: str | None = None,
        pool: str = DEFAULT_POOL,
        max_attempts: int = 1,
        timeout_s: float | None = None,
    ) -> Workflow:
        """Append a step running ``fn``; the step is named after the function unless ``name`` is given."""
        fn_name = getattr(fn, "__tickflow_name__", None) or f"{self.name}.{fn.__name__}"
        step_name = name or fn.__name__
        if any(s.name == step_name for s in self._steps):
            raise ValueError(f"workflow {self.name!r} already has a step named {step_name!r}; pass name=")
        self._steps.append(
            StepSpec(
                name=step_name,
                fn=fn_name,
                pool=pool,
                retry=RetryPolicy(max_attempts=max_attempts),
                timeout_s=timeout_s,
            )
        )
        self.functions[fn_name] = fn
        return self

    def compile(self) -> WorkflowSpec:
        if not self._steps:
            raise ValueError(f"workflow {self.name!r} has no steps")
        return WorkflowSpec(name=self.name, steps=tuple(self._steps))


class Registry:
    """The workflows an engine can start and the functions a worker can run, by name."""

    def __init__(self) -> None:
        self.specs: dict[str, WorkflowSpec] = {}
        self.functions: dict[str, StepFn] = {}

    def add(self, workflow: Workflow) -> WorkflowSpec:
        spec = workflow.compile()
        self.specs[spec.name] = spec
        for name, fn in workflow.functions.items():
            existing = self.functions.get(name)
            if existing is not None and existing is not fn:
                raise ValueError(f"two different functions are registered as {name!r}")
            self.functions[name] = fn
        return spec

    def spec(self, workflow: str) -> WorkflowSpec | None:
        return self.specs.get(workflow)

    async def call(self, fn_name: str, value: Any, ctx: StepContext) -> Any:
        """Run a registered function: async ones on the loop, sync ones in a thread so they cannot stall it."""
        fn = self.functions.get(fn_name)
        if fn is None:
            raise LookupError(f"no step function {fn_name!r} is registered in this worker")
        token = _current.set(ctx)
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(value)
            import asyncio

            return await asyncio.to_thread(contextvars.copy_context().run, fn, value)
        finally:
            _current.reset(token)
