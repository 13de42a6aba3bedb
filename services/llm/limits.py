"""Per-provider client-side limits: a concurrency semaphore and token buckets for requests and tokens per minute.

Why hand-written buckets: a tokens-per-minute limit must be charged *before* the call with an estimate and
corrected *after* it with the provider's usage (refund, or debt that delays the next callers). Leaky-bucket
libraries such as aiolimiter only take positive amounts up front, so they cannot express the correction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from tickflow.llm.config import ProviderLimits

__all__ = ["ProviderLimiter", "TokenBucket"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """``rate`` units per second, at most ``capacity`` banked. The level may go negative (debt) after a
    correction; waiters are served in arrival order, so a large request is not starved by small ones."""

    def __init__(self, rate_per_s: float, capacity: float, *, clock: Clock = time.monotonic,
                 sleep: Sleep = asyncio.sleep) -> None:
        if rate_per_s <= 0 or capacity <= 0:
            raise ValueError("a token bucket needs a positive rate and capacity")
        self.rate = rate_per_s
        self.capacity = capacity
        self._clock = clock
        self._sleep = sleep
        self._level = capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    @property
    def level(self) -> float:
        self._refill()
        return self._level

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, amount: float) -> float:
        """Take ``amount`` (clamped to the capacity, or it could never fit), waiting as long as needed.

        Returns the seconds waited.
        """
        amount = min(amount, self.capacity)
        waited = 0.0
        async with self._lock:
            while True:
                self._refill()
                if self._level >= amount:
                    self._level -= amount
                    return waited
                delay = (amount - self._level) / self.rate
                await self._sleep(delay)
                waited += delay

    def adjust(self, delta: float) -> None:
        """Give back (``delta > 0``) or charge extra (``delta < 0``) after the real cost is known."""
        self._refill()
        self._level = min(self.capacity, self._level + delta)


class ProviderLimiter:
    """The limits of one provider, shared by every model it serves."""

    def __init__(self, limits: ProviderLimits, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._semaphore = asyncio.Semaphore(limits.max_concurrency) if limits.max_concurrency else None
        self.requests = (
            TokenBucket(limits.requests_per_minute / 60, limits.requests_per_minute * limits.burst_window_s / 60,
                        clock=clock, sleep=sleep)
            if limits.requests_per_minute else None
        )
        self.tokens = (
            TokenBucket(limits.tokens_per_minute / 60, limits.tokens_per_minute * limits.burst_window_s / 60,
                        clock=clock, sleep=sleep)
            if limits.tokens_per_minute else None
        )
        self._clock = clock

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[_Slot]:
        """Wait for a concurrency slot, one request and ``estimated_tokens`` tokens; hold the slot in the body.

        Buckets are charged before the semaphore is taken so a request waiting on a rate limit does not hold
        a concurrency slot other requests could use.
        """
        started = self._clock()
        if self.requests is not None:
            await self.requests.acquire(1)
        charged = 0.0
        if self.tokens is not None:
            charged = min(float(estimated_tokens), self.tokens.capacity)
            await self.tokens.acquire(charged)
        slot = _Slot(self, charged)
        if self._semaphore is None:
            slot.waited_s = self._clock() - started
            yield slot
            return
        async with self._semaphore:
            slot.waited_s = self._clock() - started
            yield slot


class _Slot:
    def __init__(self, limiter: ProviderLimiter, charged_tokens: float) -> None:
        self._limiter = limiter
        self._charged = charged_tokens
        self.waited_s = 0.0

    def settle(self, actual_tokens: int) -> None:
        """Correct the token bucket with what the call really used (0 when it failed without usage)."""
        if self._limiter.tokens is not None:
            self._limiter.tokens.adjust(self._charged - actual_tokens)
