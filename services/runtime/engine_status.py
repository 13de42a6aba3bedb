"""What an engine reports of itself: its counters and levels for /metrics, and its status for /stats."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from aiokafka import TopicPartition

from tickflow.runtime.eager import EagerDispatch
from tickflow.runtime.kafka import consumer_lag
from tickflow.runtime.partition import Partition

__all__ = ["EngineFacts", "metric_values", "status"]


class _Offsets(Protocol):
    committable: dict[TopicPartition, int]


class _Snapshots(Protocol):
    written: int
    rounds: int


class EngineFacts(Protocol):
    """What an engine shows of itself (``runtime.engine.Engine`` has it); a Protocol, so this module does not import
    the engine that imports it."""

    processed: int
    dead_lettered: int
    recoveries: int
    recoveries_started: int
    fenced: int
    given_up: int
    timer_firings: int
    resent: int
    shrunk: int
    inputs: Counter[str]
    events_out: Counter[str]
    partitions: dict[int, Partition]
    eager: EagerDispatch | None

    @property
    def offsets(self) -> _Offsets: ...

    @property
    def snapshots(self) -> _Snapshots: ...


def metric_values(engine: EngineFacts) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
    """This engine's counters and levels for /metrics (``tickflow.metrics.RoleCollector`` reads them)."""
    role = {"role": "engine"}
    for kind, name, help_text, value_of in _ENGINE_METRICS:
        yield kind, name, help_text, role, float(value_of(engine))
    for type_, n in list(engine.inputs.items()):  # copies: a scrape may run in another thread
        yield "counter", "tickflow_engine_inputs", "Commands and results consumed, by type.", {"type": type_}, n
    for type_, n in list(engine.events_out.items()):
        yield "counter", "tickflow_engine_events", "Events appended to the log, by type.", {"type": type_}, n
    if hasattr(engine, "consumer"):  # started
        yield from consumer_lag("engine", engine.consumer, engine.offsets.committable)
    if engine.eager is not None:
        eager = engine.eager
        for name, help_text, value in (
            ("tickflow_engine_eager_dispatched", "Steps handed to this process's worker in memory.", eager.dispatched),
            (
                "tickflow_engine_eager_declined",
                "Steps offered in memory that went to the topic (no free slot).",
                eager.declined,
            ),
            (
                "tickflow_engine_eager_lost",
                "Steps handed over in memory whose worker stopped: sent to the topic.",
                eager.lost,
            ),
        ):
            yield "counter", name, help_text, role, float(value)
        yield "gauge", "tickflow_engine_eager_in_flight", "Steps handed over in memory now.", role, eager.in_flight


def status(engine: EngineFacts) -> dict[str, Any]:
    """What ``/stats`` and the dashboard's System page show of this engine: the partitions it serves, those
    parked (recovery keeps failing: partition → last error), recoveries, fences, failed transactions."""
    owned = _owned(engine)
    return {
        "partitions": sorted(part.number for part in owned if part.live),
        "parked": {str(part.number): part.parked for part in owned if part.parked is not None},
        "recoveries_started": engine.recoveries_started,
        "recoveries": engine.recoveries,
        "fenced": engine.fenced,
        "given_up": engine.given_up,
        "runs": sum(len(part.runs) for part in owned),
        "quarantined": sorted(run_id for part in owned for run_id in part.quarantined),
        "processed": engine.processed,
    }


def _owned(engine: EngineFacts) -> list[Partition]:
    """The engine's partitions in order, copied: a scrape may run in another thread."""
    return sorted(engine.partitions.values(), key=lambda part: part.number)


#: (kind, name, help, value) of the engine's plain counters and levels.
_ENGINE_METRICS: tuple[tuple[str, str, str, Callable[[EngineFacts], int]], ...] = (
    ("counter", "tickflow_engine_records_consumed", "Input records the engine consumed.", lambda e: e.processed),
    (
        "counter",
        "tickflow_engine_dead_letters",
        "Inputs the engine refused to the dead-letter topic.",
        lambda e: e.dead_lettered,
    ),
    ("counter", "tickflow_engine_recoveries", "Partitions rebuilt from the log.", lambda e: e.recoveries),
    ("counter", "tickflow_engine_fenced", "Partitions given up because a newer owner fenced them.", lambda e: e.fenced),
    (
        "counter",
        "tickflow_engine_transactions_failed",
        "Partitions given up after a failed transaction.",
        lambda e: e.given_up,
    ),
    ("counter", "tickflow_engine_snapshots", "Snapshots written to the state topic.", lambda e: e.snapshots.written),
    ("counter", "tickflow_engine_snapshot_rounds", "Snapshot rounds begun.", lambda e: e.snapshots.rounds),
    (
        "counter",
        "tickflow_engine_timer_firings",
        "Timers (sleeps, retries, deadlines) that fired.",
        lambda e: e.timer_firings,
    ),
    ("counter", "tickflow_engine_resent", "Messages re-sent by recoveries (work in flight).", lambda e: e.resent),
    (
        "gauge",
        "tickflow_engine_partitions",
        "Partitions this engine serves.",
        lambda e: sum(part.live for part in _owned(e)),
    ),
    (
        "gauge",
        "tickflow_engine_partitions_parked",
        "Partitions whose recovery keeps failing (retried with backoff, not served).",
        lambda e: sum(part.parked is not None for part in _owned(e)),
    ),
    ("gauge", "tickflow_engine_runs", "Run states in memory.", lambda e: sum(len(part.runs) for part in _owned(e))),
    ("counter", "tickflow_engine_runs_shrunk", "Finished runs shrunk to id, seq and status.", lambda e: e.shrunk),
    (
        "gauge",
        "tickflow_engine_quarantined_runs",
        "Runs set aside until released.",
        lambda e: sum(len(part.quarantined) for part in _owned(e)),
    ),
)
