"""What the projector does with one batch, for contract tests: fold from a cold cache, then write."""

from __future__ import annotations

from tickflow.projections.fold import ProjectionFold, Record, drop_projected
from tickflow.projections.store import ProjectionStore


def project(store: ProjectionStore, records: list[Record], *, skip_projected: bool = True) -> None:
    """One batch starting from a cold cache (as after a restart), skipping what the store already has unless
    ``skip_projected`` is false (then it is a redelivery the store itself must absorb)."""
    fold = ProjectionFold()
    need = fold.missing(records)
    fold.load(
        store.runs_by_id(need.runs),
        store.steps_by_key(need.steps),
        store.ticks_by_key(need.ticks),
        store.stacks_by_id(need.stacks),
    )
    rows = fold.fold(records, "t.events")
    store.write(drop_projected(rows, store.watermarks()) if skip_projected else rows)
