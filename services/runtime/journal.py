"""The worker's journal of paid calls: a provider's answer is made durable before the step goes on, and a later run
of the same step is given that answer instead of paying for the call again.

An agent turn is one step, and a step reports only when its body returns. Without a journal, a worker killed
between the provider's answer and that report (or an attempt the engine timed out after the answer came) makes
the next run of the step call the provider again: the same tokens paid twice. So each answered call is sent at once
as an ``LlmCallCheckpoint`` record to the results topic (keyed by run id, like the step's result) and awaited;
workers keep the checkpoints they sent and, when they take over task partitions, read those partitions' recent
ones back along with the results (``ProducedResults.learn``). The engine logs the checkpoint's attempts as
``LlmCallAttempted`` events when it arrives, so the ledger and the budgets see the call once.

A call is named by its step (``<run>/<path>``, the step's idempotency key) and its index among the calls the step
body makes, counted from 0: a step body that makes the same calls in the same order on each run (as an agent turn
does) gets each answer back at the same index. A body whose calls may run in any order (a framework agent's tool
calls, side by side) names each call instead, by something a re-run sees again (``tickflow.integrations``). Bounded
like the results: recent checkpoints only (what ``ProducedResults.learn`` reads) and ``max_bytes`` of memory; a step
re-run later than that pays again.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from tickflow.events.agents import HandoffFields, LlmCallCheckpoint
from tickflow.events.codec import InvalidRecord, decode, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import LlmAttemptFields, RunStep, step_key

__all__ = ["CHECKPOINT_TYPE", "CallId", "PaidCalls", "StepJournal", "call_key", "is_checkpoint"]

log = logging.getLogger("tickflow.worker")

CHECKPOINT_TYPE = LlmCallCheckpoint.TYPE

#: Sends one encoded record to the results topic under a run's key and returns once the broker has it.
SendDurably = Callable[[bytes, bytes], Awaitable[None]]

#: A call of a step: its index (counted calls) or its name (named calls).
CallId = int | str


def call_key(call: CallId) -> str:
    """The journal's key of a call: ``#<index>`` or the name (names never start with ``#``)."""
    if isinstance(call, int):
        return f"#{call}"
    if not call or call.startswith("#"):
        raise ValueError(f"a call's name must be non-empty and not start with '#', got {call!r}")
    return call


class PaidCalls:
    """Encoded checkpoints by (step key, call key), least recently used out first beyond ``max_bytes``."""

    def __init__(self, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._calls: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self.reused = 0

    def __len__(self) -> int:
        return len(self._calls)

    @property
    def memory_bytes(self) -> int:
        return self._bytes

    def add(self, step: str, call: CallId, raw: bytes) -> None:
        key = (step, call_key(call))
        kept = bytes(memoryview(raw))  # an exact-size copy: orjson's output buffer is larger (see produced.py)
        old = self._calls.pop(key, None)
        if old is not None:
            self._bytes -= sys.getsizeof(old)
        self._calls[key] = kept
        self._bytes += sys.getsizeof(kept)
        while self._calls and self._bytes > self.max_bytes:
            self._bytes -= sys.getsizeof(self._calls.popitem(last=False)[1])

    def add_record(self, data: dict[str, Any], raw: bytes) -> None:
        """Keep a checkpoint read from the results topic (``data`` is the record, parsed)."""
        payload = data["payload"]
        call: CallId = str(payload.get("name") or "") or int(payload["call"])
        self.add(step_key(str(data["key"]), str(payload["path"])), call, raw)

    def answer(self, step: str, call: CallId) -> Any | None:
        """The answer call ``call`` of step ``step`` was given, or None when this worker knows of none."""
        raw = self._calls.get((step, call_key(call)))
        if raw is None:
            return None
        try:
            payload = decode(raw, expect="result").payload
        except InvalidRecord:
            return None
        return payload.answer if isinstance(payload, LlmCallCheckpoint) else None


class StepJournal:
    """One run of one step's view of the journal (``tickflow.workflow.CallJournal``)."""

    def __init__(self, calls: PaidCalls, send: SendDurably, task: Envelope) -> None:
        assert isinstance(task.payload, RunStep)
        self._calls = calls
        self._send = send
        self._task = task
        self._step = task.payload
        self._key = step_key(task.key, task.payload.path)
        self._next = 0
        #: The attempts of the calls this run of the step paid for and journaled (the step's metrics count them).
        self.paid: list[LlmAttemptFields] = []
        #: How many calls this run of the step was given a journaled answer for, instead of paying.
        self.recalled = 0

    @property
    def on_the_log(self) -> bool:
        """Whether this run of the step paid for a journaled call or was given one's answer: its result must then
        travel by the results topic, after the checkpoints, whose costs the engine logs only while the run is
        going on (a result handed over in memory could end the run before a restarted engine read them)."""
        return bool(self.paid) or self.recalled > 0

    def next_call(self) -> int:
        call, self._next = self._next, self._next + 1
        return call

    def recall(self, call: CallId) -> Any | None:
        answer = self._calls.answer(self._key, call)
        if answer is not None:
            self._calls.reused += 1
            self.recalled += 1
            log.info("%s call %s: reusing the answer a previous run of this step paid for", self._key, call)
        return answer

    async def record(self, call: CallId, answer: Any, attempts: Sequence[LlmAttemptFields],
                     handoff: HandoffFields | None = None) -> bool:
        index, name = (0, call_key(call)) if isinstance(call, str) else (call, "")
        checkpoint = LlmCallCheckpoint(path=self._step.path, step=self._step.step, attempt=self._step.attempt,
                                       call=index, name=name, answer=answer, attempts=list(attempts), handoff=handoff)
        envelope = Envelope.wrap(
            checkpoint,
            # Deterministic: a step re-run that had to pay again (its checkpoint was lost) writes under the same id.
            id=f"{self._task.id}/call/{call}",
            key=self._task.key,
            occurred_at_ms=int(time.time() * 1000),
            causation_id=self._task.id,
            correlation_id=self._task.correlation_id,
        )
        try:
            raw = encode(envelope)
        except InvalidRecord as exc:  # an answer too big for a record: the step reports the call as before
            log.warning("%s call %s: not journaled (%s); a re-run of the step would pay for it again", self._key,
                        call, exc)
            return False
        try:
            await self._send(self._task.key.encode(), raw)
        except Exception as exc:  # the broker is away: go on without the journal rather than fail a paid call
            log.warning("%s call %s: could not journal the answer (%s); a re-run of the step would pay for it "
                        "again", self._key, call, exc)
            return False
        self._calls.add(self._key, call, raw)
        self.paid.extend(attempts)
        return True


def is_checkpoint(data: dict[str, Any]) -> bool:
    """Whether a parsed record of the results topic is a checkpoint (not a step's result)."""
    return data.get("type") == CHECKPOINT_TYPE and isinstance(data.get("payload"), dict)

