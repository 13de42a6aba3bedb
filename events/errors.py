"""tickflow's one error hierarchy: every exception tickflow defines, in any layer, derives from here.

**The root.** :class:`TickflowError`: ``except TickflowError`` catches whatever tickflow raises on its own account,
while a user's own exceptions pass through as they are. The classes every user meets live here (and in
``tickflow``); the others live beside the code that raises them (``InvalidRecord`` in the codec, ``SqlError`` in
``projections.sql``, ``SendFailed`` in ``runtime.kafka``...), each listed in its module's ``__all__``.

**The retry decision.** A step body raises :class:`NonRetryableError` to fail at once, or :class:`RetryableError`
(optionally with ``retry_after``) to be retried no earlier than that; any other exception — a user's own
``KeyError``, or a ``TickflowError`` that is neither — is retried under the step's policy. tickflow's own errors
take the same sides. What retrying cannot change derives from ``NonRetryableError``: every record-level error (an
input record that can never be processed: ``InvalidRecord`` and its ``RecordTooLarge``, undecodable, invalid or
too big; ``SequenceError``, out of sequence), a node failing on its own spec (``NodeFailure``), a refused request
(``SqlError``, ``ExportFormatError``). A failure of something outside — Kafka, ClickHouse, a model provider
(``SendFailed``, ``LogReadError``, ``TokensUnavailable``, ``AllModelsFailed``...) — derives from ``TickflowError``
directly: trying again later may work.

**The codes.** Every class carries an :class:`ErrorCode` (its ``code`` class attribute) that says what went wrong,
for programs: API error bodies carry one (``{"detail": ..., "code": ...}``) so that clients branch on the code,
never on message text. Codes are a stable contract: a new meaning gets a new code; a code is never renamed, reused
or removed. ``INTERNAL``, the root's, means "not classified": every class below the root chooses its code, itself or
through a parent other than the root. ``tests/unit/test_error_tree.py`` walks the whole package and holds all of this
(and pins the codes).

**Builtin bases kept.** The classes that were a ``ValueError`` or ``RuntimeError`` before they joined the tree and
that callers (tickflow's own or users') may catch as such keep that base second: ``InvalidRecord``,
``SequenceError``, ``ExportFormatError`` and ``SqlError`` are ``ValueError`` s, ``LocalBrokerError`` is a
``RuntimeError``. The others (``TopicLayoutError``, ``SendFailed``, ``TransactionFailed``, ``RebuildError``...) were
only ever caught by name and dropped theirs.

**What stays outside, and why.** Control-flow signals (suspension, cancellation) are not errors and do not derive
from here: a cancelled step sees asyncio's ``CancelledError``, a ``BaseException`` that no ``except Exception`` may
swallow, and a wait is a node of the spec, not an exception. The API's ``ApiProblem`` is an ``HTTPException``, the
shape of an HTTP answer (status, code, detail) rendered by FastAPI, not an error raised at a user; it carries an
``ErrorCode`` all the same.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

__all__ = [
    "ApiError",
    "ErrorCode",
    "NonRetryableError",
    "PayloadTooLarge",
    "ResumeRefused",
    "RetryableError",
    "RunNotFound",
    "TickflowError",
    "UnknownStepFunction",
    "UnknownWorkflow",
]


class ErrorCode(StrEnum):
    """Machine-readable error codes. Stable: clients match on them, so never rename one."""

    INTERNAL = "internal"
    INVALID_REQUEST = "invalid_request"
    UNAUTHORIZED = "unauthorized"
    #: Credentials are fine but the request may not come this way (another site's page, no CSRF header).
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    UNKNOWN_WORKFLOW = "unknown_workflow"
    RUN_NOT_FOUND = "run_not_found"
    STACK_NOT_FOUND = "stack_not_found"
    CONFLICT = "conflict"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAVAILABLE = "unavailable"
    RESUME_REJECTED = "resume_rejected"
    UNKNOWN_STEP_FUNCTION = "unknown_step_function"
    STEP_FAILED = "step_failed"
    #: The server is busy with this kind of work (a verify already running, the SQL queue full): try again later.
    BUSY = "busy"
    #: No claim-checked value with that digest is in the blob store (never stored, or deleted since).
    BLOB_NOT_FOUND = "blob_not_found"
    #: A record that can never be processed: it does not decode or does not validate (dead-lettered on a topic).
    INVALID_RECORD = "invalid_record"
    #: An event does not follow its entity's last seq (a gap or a skipped fold): the run is quarantined.
    OUT_OF_SEQUENCE = "out_of_sequence"
    #: The deployment is set up wrong (topics, the local broker, the LLM configuration): fix it; retrying won't.
    MISCONFIGURED = "misconfigured"
    #: A model provider failed or refused the call (every model of the chain, for a chain).
    LLM_FAILED = "llm_failed"
    #: An LLM call could pass the run's budget, so it was not made.
    BUDGET_EXCEEDED = "budget_exceeded"


class TickflowError(Exception):
    """Root of tickflow's own errors; the message says what happened and what to do."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL


class NonRetryableError(TickflowError):
    """Raise from a step body to fail the attempt without retrying (bad input, a refusal, a 4xx…).

    tickflow's own errors that retrying cannot fix derive from it too, every record-level error first (a record
    that cannot be decoded, is invalid or is out of sequence never becomes processable)."""

    code = ErrorCode.STEP_FAILED


class RetryableError(TickflowError):
    """Raise from a step body to ask for a retry, no earlier than ``retry_after`` seconds from now.

    The step's retry policy still bounds the attempts; ``retry_after`` only ever delays the next one beyond the
    policy's own backoff (e.g. a provider's ``Retry-After`` header).
    """

    code = ErrorCode.STEP_FAILED

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        if retry_after is not None and not 0 <= retry_after <= 366 * 86_400:
            raise ValueError(f"retry_after must be between 0 and a year in seconds, not {retry_after!r}")
        super().__init__(message)
        self.retry_after = retry_after


class UnknownWorkflow(TickflowError):
    """The workflow name is not registered with the engine/API."""

    code = ErrorCode.UNKNOWN_WORKFLOW


class RunNotFound(TickflowError):
    """No run with that id is visible (yet): it was never started, or the projection has not caught up."""

    code = ErrorCode.RUN_NOT_FOUND


class ResumeRefused(TickflowError):
    """The engine refused a resume (wrong event, payload not matching the schema, run not waiting).

    Named apart from the event that records the refusal in the log, ``tickflow.events.ResumeRejected``: this is what
    ``Client.resume`` raises when it reads that event back. Its code keeps the event's name, ``resume_rejected``.
    """

    code = ErrorCode.RESUME_REJECTED


class UnknownStepFunction(NonRetryableError):
    """A task names a step function this worker's registry does not hold.

    The run pinned a spec that refers to the function by its stable name; the code that registered it is not
    deployed here (a renamed or removed function, or a worker started with another ``--app``). Retrying cannot
    help, so the attempt fails at once with this type.
    """

    code = ErrorCode.UNKNOWN_STEP_FUNCTION


class PayloadTooLarge(NonRetryableError):
    """A value is larger than ``TICKFLOW_MAX_PAYLOAD_BYTES``, the most tickflow stores even out of band."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class ApiError(TickflowError):
    """The tickflow API refused a request; ``status`` is the HTTP status and ``api_code`` the answer's error code
    (an :class:`ErrorCode` value, or a code this SDK does not know yet as text)."""

    #: The class's own code says only that this SDK has no class of its own for the answer: ``api_code`` is the
    #: code the API sent.
    code = ErrorCode.INTERNAL

    def __init__(self, message: str, *, status: int, code: ErrorCode | str = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.status = status
        self.api_code = code
