"""What a finished step attempt reports: its result envelope and record, its error, and its metrics.

Pure functions of an attempt's end, kept apart from ``runtime.worker.StepWorker`` (which runs attempts and sends
their results) so the worker reads as scheduling and delivery, and these rules can be read and tested alone.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Sequence
from typing import Any, NamedTuple

import tickflow.tracing as tracing
from tickflow.events.codec import MAX_JSON_DEPTH, MAX_RECORD_BYTES, InvalidRecord, encode
from tickflow.events.envelope import Envelope
from tickflow.events.errors import RetryableError
from tickflow.events.redact import redact
from tickflow.events.schemas import ErrorInfo, LlmAttemptFields, RunStep, StepErrored, StepSucceeded
from tickflow.metrics import LLM_CALLS, LLM_COST, LLM_TOKENS, LLM_UNPRICED, STEP_SECONDS, STEPS

__all__ = [
    "TRACEBACK_LIMIT",
    "Outcome",
    "error_info",
    "observe_step",
    "result_envelope",
    "retry_after_ms",
    "surely_fits",
]

#: The tail of an attempt's traceback the log keeps.
TRACEBACK_LIMIT = 8_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def retry_after_ms(exc: BaseException) -> int | None:
    """How long a ``RetryableError`` asked to wait before the next attempt, if it did."""
    if isinstance(exc, RetryableError) and exc.retry_after is not None:
        return int(exc.retry_after * 1000)
    return None


def observe_step(task: RunStep, outcome: str, ms: float, llm: Sequence[LlmAttemptFields]) -> None:
    """A finished attempt, and the LLM calls it made, for /metrics."""
    STEPS.labels(task.workflow, task.step, outcome).inc()
    STEP_SECONDS.labels(task.workflow, task.step).observe(ms / 1000)
    for a in llm:
        LLM_CALLS.labels(a.provider, a.model, a.outcome).inc()
        LLM_TOKENS.labels(a.provider, a.model, "in").inc(a.tokens_in)
        LLM_TOKENS.labels(a.provider, a.model, "out").inc(a.tokens_out)
        if not a.price_known:
            LLM_UNPRICED.labels(a.provider, a.model, "unknown").inc()
        elif a.price_illustrative:
            LLM_UNPRICED.labels(a.provider, a.model, "illustrative").inc()
        else:
            LLM_COST.labels(a.provider, a.model).inc(a.cost_usd)


def error_info(task: RunStep, exc: BaseException) -> ErrorInfo:
    """What the log keeps of the exception an attempt of ``task`` ended with (secrets redacted)."""
    if isinstance(exc, TimeoutError):
        message = f"step {task.step!r} exceeded its timeout of {task.timeout_s}s"
    elif isinstance(exc, InvalidRecord):
        message = f"step {task.step!r} returned an output that cannot be recorded: {exc}"
    else:
        message = str(exc) or type(exc).__name__
    return ErrorInfo(
        type=type(exc).__name__,
        # A step's exception may quote a secret it handled (a URL with credentials, a key): the log keeps none.
        message=redact(message[:60_000]),
        traceback=redact("".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:]),
    )


class Outcome(NamedTuple):
    """One run of an attempt: its result, as an envelope and as its record (None: not encoded yet, and sure to
    encode), and whether it paid for or recalled journaled LLM calls (``StepJournal.on_the_log``): such a result
    goes to the results topic, after the calls' checkpoints."""

    result: Envelope
    record: bytes | None
    on_the_log: bool

    def encoded(self) -> bytes:
        return self.record if self.record is not None else encode(self.result)


#: Below these, a success's record cannot pass the codec's limits, so one handed back in memory is not encoded.
_SURE_BYTES = MAX_RECORD_BYTES // 4
_SURE_DEPTH = MAX_JSON_DEPTH - 8


def surely_fits(output: bytes, logs: str, llm: Sequence[Any], messages: Sequence[Any]) -> bool:
    """Whether a success's record is certain to encode (``encode`` refuses only size, depth and 64-bit overflow;
    ``output`` is already JSON, so its integers fit), without encoding it: an eager result that stays in memory
    saves the encode. A success with LLM calls or memory messages, or a big output or log, is encoded as before."""
    return (
        not llm
        and not messages
        and len(output) + len(logs) < _SURE_BYTES
        and output.count(b"{") + output.count(b"[") < _SURE_DEPTH
    )


def result_envelope(task: Envelope, payload: StepSucceeded | StepErrored) -> Envelope:
    """The result of an attempt of ``task``, as the engine reads it (in the current trace span, if any)."""
    return Envelope.wrap(
        payload,
        # Deterministic id: a re-executed attempt reports under the same id.
        id=f"{task.id}/result",
        trace_parent=tracing.current_trace_parent(),
        key=task.key,
        occurred_at_ms=_now_ms(),
        causation_id=task.id,
        correlation_id=task.correlation_id,
    )
