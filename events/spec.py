"""The serialisable workflow spec: what a run pins when it starts.

A spec is data, not code: step bodies are referenced by name and resolved by the workers that host them.
Its content hash identifies a version; a run records the whole spec in its ``RunStarted`` event, so a run in
flight keeps executing the spec it started on no matter what is deployed later, and replay needs nothing but
the log.
"""

from __future__ import annotations

import hashlib
from typing import Annotated

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from events.topics import DEFAULT_POOL

__all__ = ["Name", "RetryPolicy", "StepSpec", "WorkflowSpec"]

Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")]


class RetryPolicy(BaseModel):
    """How often a failing step is tried before the run fails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=1, ge=1, le=100)


class StepSpec(BaseModel):
    """One step: which registered function runs it, in which worker pool, under which policies."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    fn: Name
    pool: Name = DEFAULT_POOL
    retry: RetryPolicy = RetryPolicy()
    timeout_s: float | None = Field(default=None, gt=0)


class WorkflowSpec(BaseModel):
    """A sequence of steps; later constructs (parallel, branches, waits…) extend this model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Name
    steps: tuple[StepSpec, ...] = Field(min_length=1, max_length=10_000)

    def content_hash(self) -> str:
        """SHA-256 over the canonical JSON of the spec: equal specs hash equal, any change changes it."""
        canonical = orjson.dumps(self.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(canonical).hexdigest()[:32]
