"""What travels over HTTP between the API and its clients: request bodies and answers, as pydantic models.

The API validates with them and the SDK parses with them, so both sides agree by construction. This module (and what
it imports: pydantic, ``tickflow.projections.models``) loads no server library, which keeps ``tickflow.client``
free of FastAPI, Kafka and ClickHouse.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tickflow.core.lineage import lineage_problem
from tickflow.events.spec import Name
from tickflow.events.topics import RUN_ID_PATTERN
from tickflow.projections.models import RebuildProgress, RebuildReport
from tickflow.projections.rows import RunStatusName

__all__ = [
    "CancelRequest",
    "CommandAccepted",
    "Difference",
    "EngineReport",
    "PartitionReport",
    "PoolLimit",
    "RebuildJob",
    "RebuildRequest",
    "RecordedRun",
    "ReleaseRequest",
    "ResumeRequest",
    "RunStatus",
    "StartRequest",
    "StartResponse",
    "VacuumRequest",
    "WaitingOn",
    "top_level_run_id",
]


def top_level_run_id(run_id: str | None) -> str | None:
    """A run id a client may choose: not one reserved for a child or a stack tick (``core.lineage``)."""
    if run_id is not None and (problem := lineage_problem(run_id, None, None)):
        raise ValueError(problem)
    return run_id

class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: Name
    input: Any = None
    run_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=RUN_ID_PATTERN,
        description="Supply your own id to make start idempotent: starting the same id twice starts one run.",
    )
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Order among runs queued for the same concurrency key."
    )
    version: int | None = Field(
        default=None, ge=1, le=1_000_000, description="The workflow version to run (default: the newest registered)."
    )

    _run_id = field_validator("run_id")(top_level_run_id)


class StartResponse(BaseModel):
    run_id: str
    accepted: bool = True


class CommandAccepted(BaseModel):
    run_id: str
    command_id: str


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    payload: Any = None


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="cancelled through the API", max_length=1_000)


class ReleaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="released through the API", max_length=1_000)


class VacuumRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_s: float = Field(ge=0, le=100 * 365 * 86_400)


class PoolLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1, le=100_000)


class WaitingOn(BaseModel):
    """One wait node a run is suspended in: resume the run with ``event`` to go on from ``path``."""

    path: str
    event: str


class RunStatus(BaseModel):
    """A run as its status projection shows it (``tickflow.projections.rows.run_row``)."""

    run_id: str
    workflow: str
    status: RunStatusName = Field(
        description="pending (accepted, not started yet), running, waiting (suspended in a wait node until resumed: "
        "see waiting_for and waiting_path), failing (compensating), completed, failed, cancelled, rejected, or "
        "quarantined (its log cannot be folded until an operator releases it)."
    )
    spec_hash: str
    current_step: str = Field(description="The step in flight (or backing off between attempts); empty if none.")
    step_index: int
    current_path: str = Field(default="", description="The path of the step in flight; empty if none.")
    waiting_for: str = Field(default="", description="The event the run waits for (the first of waits).")
    waiting_path: str = Field(default="", description="The path of the wait node waiting for it.")
    waits: list[WaitingOn] = Field(
        default_factory=list, description="Every wait node the run is suspended in, oldest first."
    )
    attempt: int
    steps_total: int
    steps_completed: int
    input: Any = None
    output: Any = None
    error_type: str = ""
    error_message: str = ""
    started_at_ms: int
    updated_at_ms: int
    finished_at_ms: int
    last_seq: int


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    swap: bool = Field(default=True, description="Swap the rebuilt database in once it is verified.")
    table: str | None = Field(
        default=None,
        description="Rebuild one projection (events, runs, steps, llm_calls, stacks, ticks, messages; with the "
        "rollups its views feed) and keep every other table as it is; all of them when unset.",
    )


class RebuildJob(BaseModel):
    job_id: str
    state: Literal["running", "succeeded", "failed"]
    database: str
    swap: bool
    started_at_ms: int
    progress: RebuildProgress
    report: RebuildReport | None = Field(default=None, description="Set when the job has ended.")
    error: str = ""


class Difference(BaseModel):
    """One run whose live state is not the fold of its events up to the live seq."""

    run_id: str
    first_path: str = Field(description="The first field where live and refold differ.")
    paths: list[str] = Field(description="Up to 10 differing fields, in field order.")
    live_seq: int
    refold_seq: int


class PartitionReport(BaseModel):
    partition: int
    runs_compared: int = 0
    equal: int = 0
    differing_count: int = 0
    differing: list[Difference] = []
    missing_in_log: list[str] = Field(default=[], description="Live runs with no events in the log.")
    missing_live: list[str] = Field(
        default=[], description="Runs in the log, started before the capture and not expired, that the engine lacks."
    )
    expired: int = Field(default=0, description="Finished runs whose state the engine dropped after retention.")
    started_after_capture: int = 0
    other_entities: int = Field(default=0, description="Keys of the log that are no run (slots, stacks).")
    quarantined: list[str] = Field(default=[], description="Runs the engine set aside (quarantined), not compared.")
    unreadable_events: int = 0
    events_read: int = 0


class EngineReport(BaseModel):
    ok: bool
    captured_at_ms: int
    duration_ms: float
    runs_compared: int
    equal: int
    partitions: list[PartitionReport]


class RecordedRun(BaseModel):
    """A run's events and the inputs they were decided on, as records: what a divergence diff re-drives
    (``tickflow.core.divergence``). Each record is the JSON object the codec writes for its envelope."""

    run_id: str
    events: list[dict[str, Any]] = Field(description="The run's events 1..n, as the log holds them.")
    inputs: list[dict[str, Any]] = Field(
        description="The commands and worker results its events name as their cause, read from their topics."
    )
    claimed: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Input id → {value | problem}: claim-checked resume payloads, as the engine read them.",
    )
    not_found: list[str] = Field(
        default_factory=list, description="Inputs its events name that the topics no longer hold (retention)."
    )
