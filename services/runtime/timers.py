"""When each owned run (or stack, or taken id) must be looked at again."""

from __future__ import annotations

import heapq
from typing import Any

__all__ = ["Timers"]


class Timers:
    """When each owned run must be looked at again: a heap with lazy invalidation.

    Timers are not a separate mechanism: a due time is part of the run's state (a sleep's due time, a
    retry's backoff, a wait's or step's deadline, the time a finished run's state expires), so a restart
    re-arms them by folding the log, a firing is just a ``Recover`` decision at ``now`` — deduplicated by
    state, since a fired timer's node is no longer waiting — and nothing can fire early: the decider checks
    ``now >= due`` itself.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, str]] = []
        self._armed: dict[str, tuple[int, int]] = {}  # run id -> (due, partition)

    def __len__(self) -> int:
        """Entries in the heap, stale ones included (what it costs in memory)."""
        return len(self._heap)

    def arm(self, partition: int, run_id: str, due_ms: int | None) -> None:
        if due_ms is None:
            self._armed.pop(run_id, None)
            return
        if self._armed.get(run_id) == (due_ms, partition):
            return
        self._armed[run_id] = (due_ms, partition)
        heapq.heappush(self._heap, (due_ms, partition, run_id))
        self._compact_if_stale()

    def _live(self, entry: tuple[int, int, str]) -> bool:
        return self._armed.get(entry[2]) == (entry[0], entry[1])

    def next_due(self) -> int | None:
        while self._heap and not self._live(self._heap[0]):
            heapq.heappop(self._heap)  # superseded or disarmed
        return self._heap[0][0] if self._heap else None

    def _compact_if_stale(self) -> None:
        """Rebuild the heap from the armed entries once stale ones outnumber them: entries invalidated lazily (a
        re-armed run, a dropped partition) would otherwise stay until their due time, days for a finished run's
        id marker, and every rebalance re-arming a partition's ids would add a copy of each."""
        if len(self._heap) > 2 * len(self._armed) + 1_024:
            self._heap = [(due, partition, run_id) for run_id, (due, partition) in self._armed.items()]
            heapq.heapify(self._heap)

    def pop_due(self, now_ms: int) -> list[tuple[int, str]]:
        due = []
        while (first := self.next_due()) is not None and first <= now_ms:
            _, partition, run_id = heapq.heappop(self._heap)
            del self._armed[run_id]
            due.append((partition, run_id))
        return due

    def drop_partition(self, runs: dict[str, Any]) -> None:
        for run_id in runs:
            self._armed.pop(run_id, None)
        self._compact_if_stale()
