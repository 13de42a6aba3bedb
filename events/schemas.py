"""Typed payloads of every record kind: commands, events, tasks, results and dead-letter records.

Payloads forbid unknown fields and bound their sizes, so a malformed producer is rejected at the edge
(and dead-lettered with the reason) instead of poisoning the state machine. Each payload class declares its
``TYPE`` (the envelope's ``type``) and ``KIND``; ``PAYLOAD_TYPES`` is the registry the codec decodes with.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from tickflow.events.spec import Name, WorkflowSpec

__all__ = [
    "MAX_EPOCH_MS",
    "PAYLOAD_TYPES",
    "RUN_TERMINAL_EVENTS",
    "AcquireSlot",
    "AdmitRun",
    "BlobRef",
    "BranchChosen",
    "CancelRun",
    "CancelStep",
    "ChildFinished",
    "ChildStarted",
    "ChildUsage",
    "Command",
    "DeadLetter",
    "EpochMs",
    "ErrorInfo",
    "Event",
    "ForkRun",
    "HistoryEvent",
    "Int64",
    "IterationStarted",
    "Kind",
    "LlmAttemptFields",
    "LlmOutcome",
    "MessageFields",
    "NodeCompleted",
    "NodeFailed",
    "NodeStarted",
    "Payload",
    "ReleaseRun",
    "ReleaseSlot",
    "Result",
    "ResumeRejected",
    "ResumeRun",
    "RunAdmitted",
    "RunCancelled",
    "RunCompleted",
    "RunFailed",
    "RunFailing",
    "RunForked",
    "RunQuarantined",
    "RunRejected",
    "RunReleased",
    "RunStarted",
    "RunStep",
    "SetPoolConcurrency",
    "SlotGranted",
    "SlotQueued",
    "SlotReleased",
    "StartRun",
    "StepCompleted",
    "StepErrored",
    "StepFailed",
    "StepScheduled",
    "StepSucceeded",
    "Task",
    "TimerStarted",
    "WaitStarted",
    "WaitTimedOut",
    "idempotency_key",
    "step_key",
]

#: ``token``: deltas of a streamed LLM reply, on the tokens topic only (never in the log; see ``LlmTokens``).
Kind = Literal["command", "event", "task", "result", "control", "dead_letter", "token"]
ShortText = Annotated[str, StringConstraints(max_length=1_000)]
LongText = Annotated[str, StringConstraints(max_length=64_000)]
#: 9999-12-31T23:59:59.999Z: the latest instant every reader (Python's datetime, ClickHouse's DateTime64) can show.
MAX_EPOCH_MS = 253_402_300_799_999
#: An integer every reader holds exactly: ClickHouse's Int64 columns, and JSON readers that use doubles elsewhere.
#: The bounds are strict (gt/lt) on purpose: pydantic lets a type's ``ge``/``le`` replace a field's own
#: ``Field(ge=…, le=…)`` of the same name, so ``Int64 = Field(ge=1)`` used to accept 0 (and a StartRun's priority
#: 5000). Under other names both bounds hold, and the published JSON Schemas show the field's.
Int64 = Annotated[int, Field(gt=-(2**63) - 1, lt=2**63)]
#: A point in time, in epoch milliseconds, within what every reader can show.
EpochMs = Annotated[int, Field(ge=0, le=MAX_EPOCH_MS)]


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


LlmOutcome = Literal["ok", "rate_limited", "server_error", "timeout", "connection_error", "malformed", "client_error"]


class LlmAttemptFields(BaseModel):
    """One attempt of one LLM call, as the worker that made it reports it (see ``events.agents``).

    How far its cost can be trusted travels with it, so no view has to print an unknown as $0:
    ``price_known`` is False when the model has no entry in the price table (``cost_usd`` is then 0 and means
    "unknown", not "free"); ``price_illustrative`` is True when the price is one the configuration marks as made
    up (the demo's offline models), so the figure is a sample, not money spent; ``usage_estimated`` is True when
    the provider reported no token counts and ``tokens_in``/``tokens_out`` are tickflow's own estimate.

    The defaults are what history recorded before these fields existed decodes to: price known, usage reported,
    nothing illustrative — i.e. those attempts' costs read as they were recorded (an unpriced model's 0
    included), because the log never said otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    call: Int64 = Field(default=0, ge=0, description="Turn of the agent loop this call belongs to.")
    attempt: Int64 = Field(default=1, ge=1, description="Attempt number across the whole model chain for this call.")
    agent: ShortText = ""
    stack_id: ShortText = ""
    provider: ShortText
    model: ShortText
    tokens_in: Int64 = Field(default=0, ge=0)
    tokens_out: Int64 = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)
    latency_ms: float = Field(default=0.0, ge=0)
    outcome: LlmOutcome
    error: ErrorInfo | None = None
    http_status: Int64 | None = None
    fallback: bool = False
    started_at_ms: EpochMs = 0
    price_known: bool = True
    price_illustrative: bool = False
    usage_estimated: bool = False


class MessageFields(BaseModel):
    """A message an agent step adds to a memory thread, with its embedding (computed once, by the worker)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    thread_id: ShortText
    message_id: ShortText
    role: Literal["system", "user", "assistant", "tool"]
    content: LongText
    agent: ShortText = ""
    stack_id: ShortText = ""
    embedding: list[float] | None = Field(default=None, max_length=8192)
    embedder: ShortText = ""


# --- commands -------------------------------------------------------------------------------------------


class StartRun(Command):
    """Start a run of ``workflow`` with id = the envelope key. Starting an existing run id is a no-op."""

    TYPE: ClassVar[str] = "StartRun"
    workflow: Name
    input: Any = None
    #: Set when a parent run's child node started this run; the child reports back with ``ChildFinished``.
    parent_run_id: ShortText | None = None
    parent_path: ShortText | None = None
    #: Among runs of one workflow queued for the same concurrency key, higher goes first.
    priority: Int64 = Field(default=0, ge=-1000, le=1000)
    #: The run's LLM budget (tokens and USD, its children's usage included): an LLM step that could pass it is not
    #: called and the run fails with ``BudgetExceeded``. A stack gives each tick what is left of its own.
    budget_tokens: Int64 | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    budget_cost_usd: float | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    #: The version of ``workflow`` to run (``Workflow(name, version=N)``); unset, the newest the engine has.
    version: int | None = Field(default=None, ge=1, le=1_000_000, exclude_if=lambda v: v is None)


class ResumeRun(Command):
    """Deliver ``event`` (with ``payload``) to a run suspended in a wait node for that event."""

    TYPE: ClassVar[str] = "ResumeRun"
    event: Name
    payload: Any = None


class CancelRun(Command):
    """Cancel a run and its children. Cancelling a finished run does nothing; cancelled is final."""

    TYPE: ClassVar[str] = "CancelRun"
    reason: ShortText = "cancelled by request"


class ReleaseRun(Command):
    """An operator releases a quarantined run: it resumes from its last good state and the seqs between that state
    and the highest one its log holds are skipped on purpose (``RunReleased``). Refused for a run not in quarantine."""

    TYPE: ClassVar[str] = "ReleaseRun"
    reason: ShortText = "released by an operator"


class AcquireSlot(Command):
    """A run asks the slot entity of its concurrency key (the envelope key) for permission to proceed."""

    TYPE: ClassVar[str] = "AcquireSlot"
    run_id: ShortText
    priority: Int64 = 0
    limit: Int64 = Field(ge=1, le=10_000)


class ReleaseSlot(Command):
    """A finished run gives its slot back (or leaves the queue)."""

    TYPE: ClassVar[str] = "ReleaseSlot"
    run_id: ShortText


class AdmitRun(Command):
    """The slot entity lets a queued run proceed."""

    TYPE: ClassVar[str] = "AdmitRun"
    slot: ShortText


class ChildFinished(Command):
    """A child run reports its end to its parent (sent by the engine that owns the child)."""

    TYPE: ClassVar[str] = "ChildFinished"
    path: ShortText
    child_run_id: ShortText
    status: Literal["completed", "failed", "cancelled", "rejected"]
    output: Any = None
    error: ErrorInfo | None = None
    #: LLM usage of the child run, so a stack can count a tick's tokens and cost against its budget.
    tokens: Int64 = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)


class ChildUsage(Event):
    """A child run's LLM usage, added to its parent's when the child reports back: a parent's tokens and cost
    (and so a stack tick's, counted against the stack's budget) include everything its children spent."""

    TYPE: ClassVar[str] = "ChildUsage"
    path: ShortText
    child_run_id: ShortText
    tokens: Int64 = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)


class HistoryEvent(BaseModel):
    """One event of a run's history as a fork carries it: its seq is its position, its key the source run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    schema_version: Int64 = Field(default=1, ge=1)
    occurred_at_ms: EpochMs = Field(ge=0)
    payload: dict[str, Any]


class BlobRef(BaseModel):
    """Where a claim-checked value lives: the SHA-256 of its JSON text in the blob store, and its size in bytes
    (the shape of a ``{"$blob": …}`` reference, ``tickflow.runtime.claimcheck``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
    size: Int64 = Field(ge=0)


class ForkRun(Command):
    """Start a new run (id = the envelope key) from the state of ``source_run_id`` at ``at_seq``.

    ``history`` is the source's events 1..``at_seq``, read by the sender from the log or its projection: the
    engine that owns the new run owns no other partition's log, and must stay the only writer of events. It
    re-keys that prefix to the new run, appends ``RunForked`` and carries on from there. Forking an existing
    run id is a no-op, so a fork sent twice forks once.

    A history too big for one record travels through the claim-check instead: ``history_blob`` names the JSON
    list of those events in the blob store, and ``history`` is empty; the engine reads it off its loop.
    """

    TYPE: ClassVar[str] = "ForkRun"
    source_run_id: ShortText
    at_seq: Int64 = Field(ge=1)
    history: list[HistoryEvent] = Field(default_factory=list)
    history_blob: BlobRef | None = None

    @model_validator(mode="after")
    def _one_history(self) -> ForkRun:
        if bool(self.history) == (self.history_blob is not None):
            raise ValueError("a fork carries its history either inline (history) or claim-checked (history_blob)")
        return self


# --- events (the log) -----------------------------------------------------------------------------------


class RunStarted(Event):
    TYPE: ClassVar[str] = "RunStarted"
    VERSION: ClassVar[int] = 2
    workflow: Name
    spec_hash: str
    spec: WorkflowSpec
    input: Any = None
    parent_run_id: ShortText | None = None
    parent_path: ShortText | None = None
    #: The run fails with RunTimeout at this time (from the spec's timeout_s).
    deadline_ms: EpochMs | None = None
    #: Set when the workflow limits concurrency per key: the run waits for ``RunAdmitted`` before it starts.
    slot: ShortText | None = None
    priority: Int64 = 0
    #: The run's LLM budget (tokens and USD, its children's usage included): an LLM step that could pass it is not
    #: called and the run fails with ``BudgetExceeded``. A stack gives each tick what is left of its own.
    budget_tokens: Int64 | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    budget_cost_usd: float | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)


class RunAdmitted(Event):
    """The run got a slot of its concurrency key and starts."""

    TYPE: ClassVar[str] = "RunAdmitted"
    slot: ShortText


class SlotGranted(Event):
    """(Slot entity) ``run_id`` holds one of the key's slots."""

    TYPE: ClassVar[str] = "SlotGranted"
    run_id: ShortText


class SlotQueued(Event):
    """(Slot entity) ``run_id`` waits for a slot, ordered by priority then arrival."""

    TYPE: ClassVar[str] = "SlotQueued"
    run_id: ShortText
    priority: Int64 = 0


class SlotReleased(Event):
    """(Slot entity) ``run_id`` gave its slot back or left the queue."""

    TYPE: ClassVar[str] = "SlotReleased"
    run_id: ShortText


class RunRejected(Event):
    """The start command could not be honoured (e.g. unknown workflow); the run id stays unusable."""

    TYPE: ClassVar[str] = "RunRejected"
    workflow: Name
    reason: LongText
    parent_run_id: ShortText | None = None
    parent_path: ShortText | None = None


class NodeStarted(Event):
    """A container node (sequence, parallel, branch, loop, foreach) began, with its input."""

    TYPE: ClassVar[str] = "NodeStarted"
    path: ShortText
    node: Literal["sequence", "parallel", "branch", "loop", "foreach"]
    input: Any = None


class BranchChosen(Event):
    """Which case of a branch node runs (``case`` None: ``otherwise``, or pass-through if there is none)."""

    TYPE: ClassVar[str] = "BranchChosen"
    path: ShortText
    case: Int64 | None = None
    condition: Name | None = None


class IterationStarted(Event):
    TYPE: ClassVar[str] = "IterationStarted"
    path: ShortText
    iteration: Int64 = Field(ge=1)


class NodeCompleted(Event):
    """A non-step node finished (containers, sleeps firing, accepted resumes, children)."""

    TYPE: ClassVar[str] = "NodeCompleted"
    path: ShortText
    output: Any = None


class NodeFailed(Event):
    TYPE: ClassVar[str] = "NodeFailed"
    path: ShortText
    error: ErrorInfo
    #: The path where the failure began (a step, a wait, a child…); containers pass it up.
    origin_path: ShortText | None = None


class TimerStarted(Event):
    """A sleep node began; the engine that owns the run fires it at ``due_at_ms``, never before."""

    TYPE: ClassVar[str] = "TimerStarted"
    path: ShortText
    due_at_ms: EpochMs = Field(ge=0)


class WaitStarted(Event):
    """The run is suspended until ``ResumeRun(event)`` arrives, or until ``due_at_ms`` if it is set."""

    TYPE: ClassVar[str] = "WaitStarted"
    path: ShortText
    event: Name
    due_at_ms: EpochMs | None = None


class WaitTimedOut(Event):
    TYPE: ClassVar[str] = "WaitTimedOut"
    path: ShortText


class ResumeRejected(Event):
    """A resume was refused; the run stays as it was. ``reason`` says what to fix."""

    TYPE: ClassVar[str] = "ResumeRejected"
    event: ShortText
    reason: LongText
    command_id: ShortText | None = None


class ChildStarted(Event):
    TYPE: ClassVar[str] = "ChildStarted"
    path: ShortText
    child_run_id: ShortText
    workflow: Name
    input: Any = None


class StepScheduled(Event):
    TYPE: ClassVar[str] = "StepScheduled"
    VERSION: ClassVar[int] = 2
    path: ShortText
    step: Name
    attempt: Int64 = Field(ge=1)
    pool: Name
    input: Any = None
    #: When the engine gives up waiting for this attempt's result (from the step's timeout_s).
    deadline_ms: EpochMs | None = None
    #: Tokens held against the run's budget while this LLM call is in flight (settled by its recorded usage).
    reserve_tokens: Int64 = Field(default=0, ge=0, exclude_if=lambda v: v == 0)


class StepCompleted(Event):
    TYPE: ClassVar[str] = "StepCompleted"
    VERSION: ClassVar[int] = 2
    path: ShortText
    step: Name
    attempt: Int64 = Field(ge=1)
    output: Any = None
    duration_ms: float = Field(ge=0)
    worker: ShortText = ""
    logs: LongText = ""


class StepFailed(Event):
    TYPE: ClassVar[str] = "StepFailed"
    VERSION: ClassVar[int] = 2
    path: ShortText
    step: Name
    attempt: Int64 = Field(ge=1)
    error: ErrorInfo
    will_retry: bool
    retry_at_ms: EpochMs | None = None
    duration_ms: float = Field(ge=0)
    worker: ShortText = ""
    logs: LongText = ""


class RunCompleted(Event):
    TYPE: ClassVar[str] = "RunCompleted"
    output: Any = None


class RunFailing(Event):
    """The run has failed and its compensation (``on_failure``) step is about to run."""

    TYPE: ClassVar[str] = "RunFailing"
    error: ErrorInfo
    path: ShortText | None = None


class RunFailed(Event):
    TYPE: ClassVar[str] = "RunFailed"
    VERSION: ClassVar[int] = 2
    error: ErrorInfo
    path: ShortText | None = None


class RunCancelled(Event):
    TYPE: ClassVar[str] = "RunCancelled"
    reason: ShortText


class RunQuarantined(Event):
    """The engine cannot fold this run's log past ``last_good_seq`` (an event it cannot read, or a seq gap), so it
    decides nothing for the run until an operator releases it (``ReleaseRun``). Written without a seq: it is a note
    about the run's log, not a step of its state machine, and the run's own seqs stay as they are."""

    TYPE: ClassVar[str] = "RunQuarantined"
    reason: ShortText
    last_good_seq: Int64 = Field(ge=0)
    highest_seq: Int64 = Field(ge=0)


class RunReleased(Event):
    """An operator released a quarantined run: it resumes from its state at ``resumed_from_seq``; the seqs after it
    and before this event's are skipped (the fold applies this event to the state at ``resumed_from_seq``)."""

    TYPE: ClassVar[str] = "RunReleased"
    resumed_from_seq: Int64 = Field(ge=0)
    status: ShortText
    reason: ShortText = ""


class RunForked(Event):
    """This run's events 1..``at_seq`` are a copy of ``source_run_id``'s; from here on it is a run of its own.

    Absolute times of the copy (occurred-at, deadlines, due times) moved by ``shift_ms``, so the fork resumes
    with the time left at ``at_seq`` rather than timing out at once.
    """

    TYPE: ClassVar[str] = "RunForked"
    source_run_id: ShortText
    at_seq: Int64 = Field(ge=1)
    shift_ms: Int64 = 0


# --- tasks and results (engine ⇄ workers) ---------------------------------------------------------------


def idempotency_key(run_id: str, path: str, attempt: int) -> str:
    """The key of one attempt of one step: stable across redeliveries and re-sends of its task (what the worker
    deduplicates and a ``CancelStep`` names)."""
    return f"{run_id}/{path}/{attempt}"


def step_key(run_id: str, path: str) -> str:
    """The idempotency key a step body sees (``current_step().idempotency_key``): the same for every attempt of the
    step, so an external effect made under it happens once however often the step is retried or re-run."""
    return f"{run_id}/{path}"


class RunStep(Task):
    """Execute one attempt of one step. ``idempotency_key`` is stable across redeliveries of this attempt."""

    TYPE: ClassVar[str] = "RunStep"
    VERSION: ClassVar[int] = 2
    workflow: Name
    path: ShortText
    step: Name
    fn: Name
    attempt: Int64 = Field(ge=1)
    input: Any = None
    idempotency_key: ShortText
    timeout_s: float | None = None
    priority: Int64 = 0
    #: When the engine stops waiting for this attempt: a worker that takes it off its queue later does not start
    #: it (the engine has failed it already, and may have scheduled the next attempt).
    deadline_ms: EpochMs | None = Field(default=None, exclude_if=lambda v: v is None)
    #: What the run's LLM budget leaves this attempt of an LLM step (tokens and USD, its own reservation included;
    #: None: no such budget): a step that makes several paid calls itself, as a framework agent does, stops before
    #: the call that could pass it (``tickflow.integrations``).
    budget_tokens: Int64 | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)
    budget_cost_usd: float | None = Field(default=None, ge=0, exclude_if=lambda v: v is None)


class CancelStep(Task):
    """Best-effort: stop the attempt with this idempotency key if it is running (its result is ignored)."""

    TYPE: ClassVar[str] = "CancelStep"
    idempotency_key: ShortText
    reason: ShortText = ""


class StepSucceeded(Result):
    TYPE: ClassVar[str] = "StepSucceeded"
    VERSION: ClassVar[int] = 2
    path: ShortText
    step: Name
    attempt: Int64 = Field(ge=1)
    output: Any = None
    duration_ms: float = Field(ge=0)
    worker: ShortText = ""
    logs: LongText = ""
    #: LLM call attempts and memory messages the step made (agent steps); the engine logs them as events.
    llm_attempts: list[LlmAttemptFields] = Field(default_factory=list, max_length=1_000)
    messages: list[MessageFields] = Field(default_factory=list, max_length=1_000)


class StepErrored(Result):
    TYPE: ClassVar[str] = "StepErrored"
    VERSION: ClassVar[int] = 2
    path: ShortText
    step: Name
    attempt: Int64 = Field(ge=1)
    error: ErrorInfo
    retryable: bool = True
    #: The step asked not to be retried before this many ms (``RetryableError(retry_after=...)``); the engine
    #: waits for the longer of this and the policy's backoff.
    retry_after_ms: Int64 | None = Field(default=None, ge=0, le=366 * 86_400_000)
    duration_ms: float = Field(ge=0)
    worker: ShortText = ""
    logs: LongText = ""
    #: LLM call attempts and memory messages the step made (agent steps); the engine logs them as events.
    llm_attempts: list[LlmAttemptFields] = Field(default_factory=list, max_length=1_000)
    messages: list[MessageFields] = Field(default_factory=list, max_length=1_000)


# --- control (broadcast to every worker; compacted, keyed by pool) --------------------------------------


class SetPoolConcurrency(Payload):
    """Change how many steps each worker of ``pool`` runs at once, at runtime."""

    KIND: ClassVar[Kind] = "control"
    TYPE: ClassVar[str] = "SetPoolConcurrency"
    pool: Name
    limit: Int64 = Field(ge=1, le=100_000)


# --- dead letters ---------------------------------------------------------------------------------------


class DeadLetter(Payload):
    """A record a consumer refused, with where it came from and why; the consumer moved on."""

    KIND: ClassVar[Kind] = "dead_letter"
    TYPE: ClassVar[str] = "DeadLetter"
    consumer: ShortText
    source_topic: ShortText
    source_partition: Int64
    source_offset: Int64
    source_key: ShortText | None = None
    reason: LongText
    record_excerpt: LongText = ""


PAYLOAD_TYPES: dict[tuple[str, str], type[Payload]] = {
    (cls.KIND, cls.TYPE): cls
    for cls in (
        StartRun,
        AcquireSlot,
        ReleaseSlot,
        AdmitRun,
        ResumeRun,
        CancelRun,
        ChildFinished,
        ForkRun,
        RunStarted,
        RunAdmitted,
        SlotGranted,
        SlotQueued,
        SlotReleased,
        RunRejected,
        NodeStarted,
        BranchChosen,
        IterationStarted,
        NodeCompleted,
        NodeFailed,
        TimerStarted,
        WaitStarted,
        WaitTimedOut,
        ResumeRejected,
        ChildStarted,
        ChildUsage,
        StepScheduled,
        StepCompleted,
        StepFailed,
        RunCompleted,
        RunFailing,
        RunFailed,
        RunCancelled,
        RunForked,
        RunQuarantined,
        RunReleased,
        ReleaseRun,
        RunStep,
        CancelStep,
        StepSucceeded,
        StepErrored,
        SetPoolConcurrency,
        DeadLetter,
    )
}


#: The events after which a run's state never changes again. The log may still get answers to commands
#: sent later (a refused resume); a stream that should show those follows past the end.
RUN_TERMINAL_EVENTS = frozenset({"RunCompleted", "RunFailed", "RunCancelled", "RunRejected"})
