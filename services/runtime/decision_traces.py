"""The trace context of the engine's decisions, when tracing is on (``tickflow.tracing``).

A decision gets a span that is a child of the record that caused it, or, for a timer or a recovery (which no record
caused), of its run's latest traced input; every record the decision writes names that span. Off, a decision costs
one check and no allocation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import tickflow.tracing as tracing
from tickflow.core.decider import Fork, Input, Signal, Start, WorkerResult

__all__ = ["DecisionTraces", "trace_of"]

_NO_SPAN = nullcontext()  # a decision's span when tracing is off: shared, reusable, free


def trace_of(input: Input) -> str | None:
    """The traceparent of the record that caused a decision (None for a timer or a recovery)."""
    if isinstance(input, Start | Signal | Fork):
        return input.command.trace_parent
    if isinstance(input, WorkerResult):
        return input.result.trace_parent
    return None


class DecisionTraces:
    """The span of the decision being made, and each run's latest traced context (for its timer decisions)."""

    def __init__(self) -> None:
        #: The traceparent of the decision being made, while one is (None when tracing is off).
        self.current: str | None = None
        self._latest: dict[str, str] = {}

    def span(self, partition: int, run_id: str, input: Input) -> AbstractContextManager[object]:
        """The context to decide ``input`` for ``run_id`` in."""
        if not tracing.enabled():
            return _NO_SPAN
        return self._traced(partition, run_id, input)

    def forget(self, run_id: str) -> None:
        """A run whose decisions are over (finished and shrunk, or expired)."""
        self._latest.pop(run_id, None)

    @contextmanager
    def _traced(self, partition: int, run_id: str, input: Input) -> Iterator[None]:
        parent = trace_of(input) or self._latest.get(run_id)
        if parent is not None:
            self._latest[run_id] = parent
        name = f"decide {type(input).__name__}"
        with tracing.span(name, parent, tickflow__run_id=run_id, tickflow__partition=partition):
            self.current = tracing.current_trace_parent()
            try:
                yield
            finally:
                self.current = None
