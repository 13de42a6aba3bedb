"""Errors that carry a decision. One root; step bodies raise these to steer retries."""

from __future__ import annotations

__all__ = ["NonRetryableError", "ResumeRejected", "RunNotFound", "TickflowError", "UnknownWorkflow"]


class TickflowError(Exception):
    """Root of tickflow's own errors; the message says what happened and what to do."""


class NonRetryableError(TickflowError):
    """Raise from a step body to fail the attempt without retrying (bad input, a refusal, a 4xx…)."""


class UnknownWorkflow(TickflowError):
    """The workflow name is not registered with the engine/API."""


class RunNotFound(TickflowError):
    """No run with that id is visible (yet): it was never started, or the projection has not caught up."""


class ResumeRejected(TickflowError):
    """The engine refused a resume (wrong event, payload not matching the schema, run not waiting)."""
