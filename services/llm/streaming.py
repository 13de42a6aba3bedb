"""Who hears an LLM reply while it streams: a listener set for the current task, told each delta as it arrives.

The router streams a request only when a listener is set here (a worker sets one around each step attempt, and
sends what it hears to the tokens topic) and the provider allows it (``ProviderConfig.stream``). Nothing else
changes: the router still returns one :class:`~tickflow.llm.types.ChatResult`, the same one a non-streamed
request would give, and only that result is recorded. Listening is synchronous and must not block: a listener
buffers, and ships from its own task.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol

__all__ = ["TokenListener", "TokenStream", "current_listener", "listening"]


class TokenStream(Protocol):
    """The deltas of one request to one model, in arrival order, then exactly one ``close``."""

    def text(self, delta: str) -> None:
        """More of the reply's content."""

    def tool(self, name: str, delta: str) -> None:
        """More of the arguments of a call to tool ``name``."""

    def close(self, outcome: str, finish_reason: str | None) -> None:
        """The request ended: ``ok`` or the failure outcome (the router's classification)."""


class TokenListener(Protocol):
    """Opens one :class:`TokenStream` per request the router sends while it is the current listener."""

    def open(self, *, provider: str, model: str) -> TokenStream: ...


_listener: contextvars.ContextVar[TokenListener | None] = contextvars.ContextVar("tickflow_tokens", default=None)


def current_listener() -> TokenListener | None:
    """The listener of the running task, if any."""
    return _listener.get()


@contextlib.contextmanager
def listening(listener: TokenListener | None) -> Iterator[None]:
    """Make ``listener`` hear the LLM requests made in this context (None: stop streaming in it)."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
