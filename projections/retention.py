"""Retention of the projections: finished runs leave ClickHouse ``ttl_days`` after they finished; runs in flight stay.

Why not a ClickHouse ``TTL`` clause: a TTL expression sees only its own row, and only the ``runs`` row knows whether
a run has finished. A TTL on event time (what older versions set on ``events``) expires the history of a run that
is still waiting for a resume; a TTL on ``runs`` alone would orphan the run's events, steps, LLM calls and ticks,
which then could no longer be found by run. So retention is the same delete as ``vacuum`` — finished runs only,
every per-run table, the status row last — run by the projector role every ``retention_interval_s``.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["DAY_MS", "expire", "retention_cutoff_ms"]

DAY_MS = 86_400_000


class _Vacuums(Protocol):
    def vacuum(self, finished_before_ms: int) -> int: ...


def retention_cutoff_ms(ttl_days: float, now_ms: int) -> int:
    """Runs that finished before this instant are due to leave the projections."""
    return now_ms - int(ttl_days * DAY_MS)


def expire(store: _Vacuums, ttl_days: float, now_ms: int) -> int:
    """Delete the runs that finished more than ``ttl_days`` before ``now_ms`` (an input, so a test can move the
    clock forward); returns how many runs went."""
    return store.vacuum(retention_cutoff_ms(ttl_days, now_ms))
