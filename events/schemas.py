"""Typed payloads of every record kind: commands, events, tasks, results and dead-letter records.

Payloads forbid unknown fields and bound their sizes, so a malformed producer is rejected at the edge
(and dead-lettered with the reason) instead of poisoning the state machine. Each payload class declares its
``TYPE`` (the envelope's ``type``) and ``KIND``; ``PAYLOAD_TYPES`` is the registry the codec decodes with.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from events.spec import Name, WorkflowSpec

__all__ = [
    "PAYLOAD_TYPES",
    "Command",
    "DeadLetter",
    "ErrorInfo",
    "Event",
    "Kind",
    "Payload",
    "Result",
    "RunCompleted",
    "RunFailed",
    "RunRejected",
    "RunStarted",
    "RunStep",
    "StartRun",
    "StepCompleted",
    "StepErrored",
    "StepFailed",
    "StepScheduled",
    "StepSucceeded",
    "Task",
]

Kind = Literal["command", "event", "task", "result", "dead_letter"]
ShortText = Annotated[str, StringConstraints(max_length=1_000)]
LongText = Annotated[str, StringConstraints(max_length=64_000)]


class Payload(BaseModel):
    """Base of all payloads. Subclasses set ``KIND`` and ``TYPE``; ``VERSION`` is the schema version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    KIND: ClassVar[Kind]
    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1


class Command(Payload):
    KIND: ClassVar[Kind] = "command"


class Event(Payload):
    KIND: ClassVar[Kind] = "event"


class Task(Payload):
    KIND: ClassVar[Kind] = "task"


class Result(Payload):
    KIND: ClassVar[Kind] = "result"


class ErrorInfo(BaseModel):
    """Why something failed, in words a user can act on. Tracebacks are bounded, never secrets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ShortText
    message: LongText
    traceback: LongText = ""


# --- commands -------------------------------------------------------------------------------------------


class StartRun(Command):
    """Start a run of ``workflow`` with id = the envelope key. Starting an existing run id is a no-op."""

    TYPE: ClassVar[str] = "StartRun"
    workflow: Name
    input: Any = None


# --- events (the log) -----------------------------------------------------------------------------------


class RunStarted(Event):
    TYPE: ClassVar[str] = "RunStarted"
    workflow: Name
    spec_hash: str
    spec: WorkflowSpec
    input: Any = None


class RunRejected(Event):
    """The start command could not be honoured (e.g. unknown workflow); the run id stays unusable."""

    TYPE: ClassVar[str] = "RunRejected"
    workflow: Name
    reason: LongText


class StepScheduled(Event):
    TYPE: ClassVar[str] = "StepScheduled"
    step: Name
    index: int = Field(ge=0)
    attempt: int = Field(ge=1)
    pool: Name
    input: Any = None


class StepCompleted(Event):
    TYPE: ClassVar[str] = "StepCompleted"
    step: Name
    index: int = Field(ge=0)
    attempt: int = Field(ge=1)
    output: Any = None
    duration_ms: float = Field(ge=0)
    worker: ShortText = ""


class StepFailed(Event):
    TYPE: ClassVar[str] = "StepFailed"
    step: Name
    index: int = Field(ge=0)
    attempt: int = Field(ge=1)
    error: ErrorInfo
    will_retry: bool
    duration_ms: float = Field(ge=0)
    worker: ShortText = ""


class RunCompleted(Event):
    TYPE: ClassVar[str] = "RunCompleted"
    output: Any = None


class RunFailed(Event):
    TYPE: ClassVar[str] = "RunFailed"
    error: ErrorInfo
    step: Name | None = None


# --- tasks and results (engine ⇄ workers) ---------------------------------------------------------------


class RunStep(Task):
    """Execute one attempt of one step. ``idempotency_key`` is stable across redeliveries of this attempt."""

    TYPE: ClassVar[str] = "RunStep"
    workflow: Name
    step: Name
    fn: Name
    index: int = Field(ge=0)
    attempt: int = Field(ge=1)
    input: Any = None
    idempotency_key: ShortText
    timeout_s: float | None = None


class StepSucceeded(Result):
    TYPE: ClassVar[str] = "StepSucceeded"
    step: Name
    index: int = Field(ge=0)
    attempt: int = Field(ge=1)
    output: Any = None
    duration_ms: float = Field(ge=0)
    worker: ShortText = ""


class StepErrored(Result):
    TYPE: ClassVar[str] = "StepErrored"
    step: Name
    index: int = Field(ge=0)
    attempt: int = Field(ge=1)
    error: ErrorInfo
    retryable: bool = True
    duration_ms: float = Field(ge=0)
    worker: ShortText = ""


# --- dead letters ---------------------------------------------------------------------------------------


class DeadLetter(Payload):
    """A record a consumer refused, with where it came from and why; the consumer moved on."""

    KIND: ClassVar[Kind] = "dead_letter"
    TYPE: ClassVar[str] = "DeadLetter"
    consumer: ShortText
    source_topic: ShortText
    source_partition: int
    source_offset: int
    source_key: ShortText | None = None
    reason: LongText
    record_excerpt: LongText = ""


PAYLOAD_TYPES: dict[tuple[str, str], type[Payload]] = {
    (cls.KIND, cls.TYPE): cls
    for cls in (
        StartRun,
        RunStarted,
        RunRejected,
        StepScheduled,
        StepCompleted,
        StepFailed,
        RunCompleted,
        RunFailed,
        RunStep,
        StepSucceeded,
        StepErrored,
        DeadLetter,
    )
}
