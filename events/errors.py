"""tickflow's one error hierarchy: every layer (events included) raises from here, and each error carries a decision.

Two decisions matter to a caller. **Retry or not**: a step body raises :class:`NonRetryableError` to fail at once, or
:class:`RetryableError` (optionally with ``retry_after``) to be retried no earlier than that; any other exception —
a user's own ``KeyError`` included — is retried under the step's policy. **What went wrong**, for programs: every
error has an :class:`ErrorCode`, which API error bodies carry (``{"detail": ..., "code": ...}``) so that clients
branch on the code, never on message text.

Control-flow signals (suspension, cancellation) are not errors and do not derive from here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

__all__ = [
    "ApiError",
    "ErrorCode",
    "NonRetryableError",
    "PayloadTooLarge",
    "ResumeRejected",
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


class TickflowError(Exception):
    """Root of tickflow's own errors; the message says what happened and what to do."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL


class NonRetryableError(TickflowError):
    """Raise from a step body to fail the attempt without retrying (bad input, a refusal, a 4xx…)."""

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


class ResumeRejected(TickflowError):
    """The engine refused a resume (wrong event, payload not matching the schema, run not waiting)."""

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

    def __init__(self, message: str, *, status: int, code: ErrorCode | str = ErrorCode.INTERNAL) -> None:
        super().__init__(message)
        self.status = status
        self.api_code = code
