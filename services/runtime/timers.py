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
        self._armed: dict[str, int] = {}

    def arm(self, partition: int, run_id: str, due_ms: int | None) -> None:
        if due_ms is None:
            self._armed.pop(run_id, None)
            return
        if self._armed.get(run_id) == due_ms:
            return
        self._armed[run_id] = due_ms
        heapq.heappush(self._heap, (due_ms, partition, run_id))

    def next_due(self) -> int | None:
        while self._heap and self._armed.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)  # superseded or disarmed
        return self._heap[0][0] if self._heap else None

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
