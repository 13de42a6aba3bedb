"""Per-provider client-side limits: a concurrency gate and token buckets for requests and tokens per minute.

Why hand-written buckets: a tokens-per-minute limit must be charged *before* the call with an estimate and
corrected *after* it with the provider's usage (refund, or debt that delays the next callers). Leaky-bucket
libraries such as aiolimiter only take positive amounts up front, so they cannot express the correction.

Limits across worker processes. A provider's limits are the pool's, however many workers serve it: each step worker
holds a :class:`LimitShare`, its task partitions out of all of its pool's, and a call made by one of its steps passes
limits scaled to that share as well as the process's whole limits. Why partitions (and not leases granted through
the log, or a count of the group's members):

* tasks are spread over a pool's workers by partition, so a worker's share of the limits follows its share of the
  work, and the shares of all members sum to the whole limit exactly (every partition has one owner);
* the consumer group already tells each member its partitions on every rebalance, so re-splitting needs no traffic,
  no leader and no clock agreement — a lease scheme would add a round trip to the log before calls, and its own
  failure modes (expired or orphaned leases) to the path of every LLM call.

Rules, as :meth:`LimitShare.concurrency` and :meth:`LimitShare.fraction` apply them:

* rates (requests and tokens per minute) scale exactly: ``limit * owned / partitions``; so do the burst capacities,
  except that a worker with partitions may always bank one whole request (a request is indivisible; a smaller
  bucket would let fractions of requests through — at most one extra request per worker, once);
* concurrency is split with partition ``i`` carrying ``⌊C(i+1)/N⌋ - ⌊Ci/N⌋`` of the ``C`` slots, which sums to
  exactly ``C`` and spreads the remainder evenly; a worker that owns partitions keeps at least one slot, so when
  ``C`` is below the number of partitions the pool may run up to one more call per worker whose partitions carry no
  slot (never when ``C ≥ N``);
* a worker that owns no partition passes nothing (it has no tasks; a step still draining after a rebalance waits for
  a share); one that has not been assigned anything yet uses the whole limit (what a lone worker would);
* the share belongs to the worker, so several pools in one process each use their own share of a provider, and the
  process's whole limit still bounds them together. Pools that call the same provider from different processes
  may together reach the limit once per pool: put a provider's LLM steps in one pool (an ``Agent``'s ``llm_pool``)
  and the bound is exact. Calls made outside a step worker (a script, the API) are limited per process, as before.

A rebalance re-sizes the buckets and the gate live: banked units above the new capacity are dropped, debt is kept
(it was spent on the pool's account), and waiters see the new rate at their next check.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

from tickflow.llm.config import ProviderLimits

__all__ = ["LimitShare", "ProviderLimiter", "TokenBucket", "current_share", "use_share"]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

#: How often a caller held by a zero share (a worker without partitions) checks whether it got one.
CLOSED_RECHECK_S = 0.5


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

        A bucket resized to nothing (rate 0) holds its callers until it is resized again. Returns the seconds waited.
        """
        waited = 0.0
        async with self._lock:
            while True:
                self._refill()
                want = min(amount, self.capacity)  # read each time round: a resize may have changed it
                if self.rate > 0 and self._level >= want:
                    self._level -= want
                    return waited
                delay = (want - self._level) / self.rate if self.rate > 0 else CLOSED_RECHECK_S
                await self._sleep(delay)
                waited += delay

    def adjust(self, delta: float) -> None:
        """Give back (``delta > 0``) or charge extra (``delta < 0``) after the real cost is known."""
        self._refill()
        self._level = min(self.capacity, self._level + delta)

    def resize(self, rate_per_s: float, capacity: float) -> None:
        """Change the rate and capacity now: what accrued so far accrued at the old rate, banked units above the new
        capacity are dropped, and debt is kept. Rate and capacity 0 close the bucket."""
        if rate_per_s < 0 or capacity < 0:
            raise ValueError("a token bucket's rate and capacity cannot be negative")
        self._refill()
        self.rate, self.capacity = rate_per_s, capacity
        self._level = min(self._level, capacity)


class _Gate:
    """A semaphore whose size can change while callers hold or wait for it (``asyncio.Semaphore`` cannot shrink).

    Shrinking lets holders finish; nobody enters until fewer than the new size hold it. Waiters enter in order.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if not self._waiters and self.held < self.size:
            self.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot was handed over just as the caller was cancelled: pass it on
            else:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self.held -= 1
        self._wake()

    def resize(self, size: int) -> None:
        self.size = size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.held < self.size:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.held += 1
                waiter.set_result(None)


class LimitShare:
    """A step worker's part of its pool's provider limits: the task partitions it owns out of the pool's.

    The worker calls :meth:`assign` on every rebalance; limits created for the share follow it at once. Compared by
    identity: two workers of one pool in one process each hold their own share.
    """

    def __init__(self, pool: str) -> None:
        self.pool = pool
        #: None until the first assignment: the whole limit, as a lone worker would have.
        self.owned: frozenset[int] | None = None
        self.partitions = 0
        self._followers: weakref.WeakSet[_Limits] = weakref.WeakSet()

    def __repr__(self) -> str:
        if self.owned is None:
            return f"LimitShare({self.pool!r}, whole)"
        return f"LimitShare({self.pool!r}, {len(self.owned)}/{self.partitions} partitions {sorted(self.owned)})"

    def assign(self, owned: Iterable[int], partitions: int) -> None:
        """This worker now owns task partitions ``owned`` of ``partitions``; re-size every limit following it."""
        owned = frozenset(owned)
        if partitions < 1 or any(not 0 <= p < partitions for p in owned):
            raise ValueError(f"partitions {sorted(owned)} are not among the {partitions} of pool {self.pool!r}")
        self.owned, self.partitions = owned, partitions
        for follower in list(self._followers):
            follower.follow(self)

    @property
    def fraction(self) -> float:
        """Rates scale by this: owned partitions over all of them (1 before the first assignment)."""
        return 1.0 if self.owned is None else len(self.owned) / self.partitions

    def concurrency(self, limit: int) -> int:
        """This worker's slots of ``limit``: its partitions' slots (see the module docstring), at least one if it owns
        any partition, none if it owns none."""
        if self.owned is None:
            return limit
        n = self.partitions
        slots = sum((limit * (i + 1)) // n - (limit * i) // n for i in self.owned)
        return max(slots, 1) if self.owned else 0


_SHARE: contextvars.ContextVar[LimitShare | None] = contextvars.ContextVar("tickflow_llm_share", default=None)


def use_share(share: LimitShare | None) -> None:
    """Make ``share`` apply to LLM calls made in the current context (a worker sets it in the context its steps start
    from)."""
    _SHARE.set(share)


def current_share() -> LimitShare | None:
    """The share of the worker running the current step, or None outside a step worker."""
    return _SHARE.get()


class _Limits:
    """One provider's limits scaled to a share (or whole): a gate and two buckets, re-sized when the share changes."""

    def __init__(self, limits: ProviderLimits, share: LimitShare | None, clock: Clock, sleep: Sleep) -> None:
        self._limits = limits
        self.gate = _Gate(limits.max_concurrency) if limits.max_concurrency else None
        self.requests = TokenBucket(1, 1, clock=clock, sleep=sleep) if limits.requests_per_minute else None
        self.tokens = TokenBucket(1, 1, clock=clock, sleep=sleep) if limits.tokens_per_minute else None
        self._fill_up = True  # a new bucket starts full at its first size
        self.follow(share)
        if share is not None:
            share._followers.add(self)

    def follow(self, share: LimitShare | None) -> None:
        lim = self._limits
        fraction = 1.0 if share is None else share.fraction
        if self.gate is not None and lim.max_concurrency:
            self.gate.resize(lim.max_concurrency if share is None else share.concurrency(lim.max_concurrency))
        if self.requests is not None and lim.requests_per_minute:
            rate = lim.requests_per_minute * fraction / 60
            # A request is indivisible: a bucket that cannot bank a whole one would let fractions of them through.
            capacity = max(rate * lim.burst_window_s, 1.0) if rate > 0 else 0.0
            self._size(self.requests, rate, capacity)
        if self.tokens is not None and lim.tokens_per_minute:
            rate = lim.tokens_per_minute * fraction / 60
            self._size(self.tokens, rate, rate * lim.burst_window_s)
        self._fill_up = False

    def _size(self, bucket: TokenBucket, rate: float, capacity: float) -> None:
        bucket.resize(rate, capacity)
        if self._fill_up:
            bucket.adjust(capacity)


class ProviderLimiter:
    """The limits of one provider, shared by every model it serves: the process's whole limits, and for a call made
    by a step worker's step, that worker's share of them (see the module docstring)."""

    def __init__(self, limits: ProviderLimits, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._config = limits
        self._clock = clock
        self._sleep = sleep
        self.whole = _Limits(limits, None, clock, sleep)
        self._shares: weakref.WeakKeyDictionary[LimitShare, _Limits] = weakref.WeakKeyDictionary()

    @property
    def requests(self) -> TokenBucket | None:
        """The process's requests-per-minute bucket."""
        return self.whole.requests

    @property
    def tokens(self) -> TokenBucket | None:
        """The process's tokens-per-minute bucket."""
        return self.whole.tokens

    def share_limits(self, share: LimitShare) -> _Limits:
        """The limits of ``share``'s part of this provider (made, full, on first use; they follow the share)."""
        if share not in self._shares:
            self._shares[share] = _Limits(self._config, share, self._clock, self._sleep)
        return self._shares[share]

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[_Slot]:
        """Wait for a concurrency slot, one request and ``estimated_tokens`` tokens; hold the slot in the body.

        Buckets are charged before the gates are entered so a request waiting on a rate limit does not hold a
        concurrency slot other requests could use. The worker's share is passed first, then the process's whole
        limits (which bind only when several pools of this process call the provider at once).
        """
        started = self._clock()
        share = current_share()
        levels = [self.share_limits(share), self.whole] if share is not None else [self.whole]
        charged: list[tuple[TokenBucket, float]] = []
        for level in levels:
            if level.requests is not None:
                await level.requests.acquire(1)
            if level.tokens is not None:
                amount = min(float(estimated_tokens), level.tokens.capacity)
                await level.tokens.acquire(amount)
                charged.append((level.tokens, amount))
        gates = [level.gate for level in levels if level.gate is not None]
        entered: list[_Gate] = []
        try:
            for gate in gates:  # always in the same order (share, then whole): no two callers wait on each other
                await gate.acquire()
                entered.append(gate)
            slot = _Slot(charged)
            slot.waited_s = self._clock() - started
            yield slot
        finally:
            for gate in entered:
                gate.release()


class _Slot:
    def __init__(self, charged: list[tuple[TokenBucket, float]]) -> None:
        self._charged = charged
        self.waited_s = 0.0

    def settle(self, actual_tokens: int) -> None:
        """Correct the token buckets with what the call really used (0 when it failed without usage)."""
        for bucket, amount in self._charged:
            bucket.adjust(amount - actual_tokens)
