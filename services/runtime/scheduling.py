"""Which fetched tasks a step worker starts, which wait, and which offsets it may commit: no Kafka, no asyncio.

A worker fetches more tasks than it runs (up to ``QUEUE_FACTOR`` times its concurrency), starts them by priority as
slots free up, skips the ones cancelled before they start, and finishes them out of order. These parts hold those
rules alone, so they are tested without a broker; ``runtime.worker.StepWorker`` drives them.
"""

from __future__ import annotations

import heapq
import itertools
from collections import defaultdict
from collections.abc import Callable
from typing import Generic, TypeVar

from aiokafka import TopicPartition

__all__ = ["CANCELLED_MEMORY", "QUEUE_FACTOR", "CancelledKeys", "LocalQueue", "Scheduler", "TaskOffsets"]

T = TypeVar("T")
#: Cancelled keys remembered, so a task redelivered after its cancel is skipped; older ones are forgotten.
CANCELLED_MEMORY = 10_000
#: Fetching pauses while this many times the concurrency tasks wait locally, which bounds the worker's memory.
QUEUE_FACTOR = 2


class TaskOffsets:
    """Per-partition bookkeeping so commits cover only tasks whose results are already sent."""

    def __init__(self) -> None:
        self.running: dict[TopicPartition, set[int]] = defaultdict(set)
        self.fetched: dict[TopicPartition, int] = {}

    def begin(self, tp: TopicPartition, offset: int) -> None:
        self.running[tp].add(offset)
        self.fetched[tp] = offset + 1

    def done(self, tp: TopicPartition, offset: int) -> None:
        self.running[tp].discard(offset)

    def committable(self) -> dict[TopicPartition, int]:
        return {tp: min(self.running[tp]) if self.running[tp] else end for tp, end in self.fetched.items()}


class LocalQueue(Generic[T]):
    """Tasks fetched but not started: highest priority first, FIFO among equal priorities (a heap with a
    sequence number as tie-breaker, so items themselves are never compared)."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str, T]] = []
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, item: T, *, key: str, priority: int = 0) -> None:
        heapq.heappush(self._heap, (-priority, next(self._seq), key, item))

    def pop(self) -> T:
        return heapq.heappop(self._heap)[3]

    def remove_if(self, pred: Callable[[str, T], bool]) -> list[T]:
        """Take out every item ``pred(key, item)`` selects, in arrival order. O(n), for rare events only."""
        removed = sorted((e for e in self._heap if pred(e[2], e[3])), key=lambda e: e[1])
        if removed:
            self._heap = [e for e in self._heap if not pred(e[2], e[3])]
            heapq.heapify(self._heap)
        return [e[3] for e in removed]


class CancelledKeys:
    """The most recent ``capacity`` cancelled idempotency keys. Bounded because cancels never expire on
    their own; a task redelivered after more than ``capacity`` later cancels would run (and be ignored)."""

    def __init__(self, capacity: int = CANCELLED_MEMORY) -> None:
        self.capacity = capacity
        self._keys: dict[str, None] = {}  # insertion-ordered: the first key is the oldest

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, key: str) -> None:
        self._keys.pop(key, None)
        self._keys[key] = None
        while len(self._keys) > self.capacity:
            del self._keys[next(iter(self._keys))]


class Scheduler(Generic[T]):
    """Decides which fetched tasks start now and which wait, with no Kafka or asyncio in it (so it is tested
    alone). ``start`` is called for each item that gets a slot; the owner calls ``finished`` when it ends."""

    def __init__(self, limit: int, start: Callable[[T], None], *, remember: int = CANCELLED_MEMORY) -> None:
        self.limit = self.running = 0
        self.stopped = False  # set on shutdown: queued items stay uncommitted and are redelivered
        self.queue: LocalQueue[T] = LocalQueue()
        self.cancelled = CancelledKeys(remember)
        self._start = start
        self.set_limit(limit)

    @property
    def capacity(self) -> int:
        return QUEUE_FACTOR * self.limit

    @property
    def room(self) -> int:
        """How many more items may be fetched before the queue is full (0: pause fetching)."""
        return max(self.capacity - len(self.queue), 0)

    def offer(self, item: T, *, key: str, priority: int = 0) -> bool:
        """Queue (and maybe start) an item; False if its key was cancelled, and then it must be skipped."""
        if key in self.cancelled:
            return False
        self.queue.push(item, key=key, priority=priority)
        self.dispatch()
        return True

    def cancel(self, key: str) -> list[T]:
        """Remember ``key`` as cancelled and return its queued items, which will never start."""
        self.cancelled.add(key)
        return self.queue.remove_if(lambda k, _: k == key)

    def set_limit(self, limit: int) -> None:
        """Grow (queued items start at once) or shrink (running ones finish; none start until below)."""
        if limit < 1:
            raise ValueError(f"concurrency must be at least 1, got {limit}")
        self.limit = limit
        self.dispatch()

    def finished(self) -> None:
        self.running = max(self.running - 1, 0)
        self.dispatch()

    def dispatch(self) -> None:
        while not self.stopped and self.running < self.limit and self.queue:
            item = self.queue.pop()
            self.running += 1
            self._start(item)
