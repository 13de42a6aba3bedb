"""A paid call is paid once: an answer a provider gave a step survives the step's crash, timeout or retry.

``paid_once`` wraps one call a step body makes to a paid service (an LLM request through the router, or a
framework's model request): when a previous run of the same step already got an answer for this call, that answer
is returned and nothing is sent; otherwise the call is made, its answer made durable in the step's journal
(``tickflow.runtime.journal``) before the body goes on, and its cost logged once — by the engine, from the journal
record, or, when there is no journal (outside a worker, or an answer too big for a record), in the step's report.

What makes the answers line up: calls are numbered in the order the body makes them, so a body must make the same
paid calls in the same order on every run of the step (an agent turn makes one). A call that failed is not
journaled: there is no answer to keep, and the step's report counts what its attempts cost.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from tickflow.events.schemas import LlmAttemptFields
from tickflow.workflow import StepContext

__all__ = ["paid_once"]

T = TypeVar("T")


async def paid_once(
    ctx: StepContext | None,
    call: Callable[[], Awaitable[T]],
    *,
    save: Callable[[T], Any],
    load: Callable[[Any], T],
    ledger: Callable[[T], Sequence[LlmAttemptFields]],
) -> T:
    """Make ``call`` unless a previous run of this step already paid for it; see the module docstring.

    Args:
        ctx: the running step (``current_step()``), or None outside a step: the call is simply made.
        call: makes the request.
        save: the answer as JSON-ready data, to keep in the journal.
        load: the answer back from that data.
        ledger: what the answer cost, as the attempts to log.
    """
    journal = ctx.journal if ctx is not None else None
    index = journal.next_call() if journal is not None else 0
    if journal is not None and (saved := journal.recall(index)) is not None:
        return load(saved)  # logged when it was paid for
    answer = await call()
    attempts = ledger(answer)
    if journal is not None and await journal.record(index, save(answer), attempts):
        return answer  # the engine logs the attempts from the journal record
    if ctx is not None:
        for attempt in attempts:
            ctx.report.add_llm_attempt(attempt)
    return answer
