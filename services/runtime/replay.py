"""Replay for people and operators: a run's state at any seq, forks from there, and refold-vs-live checks.

Everything here rests on one fact: a run's state is the fold of its events. The state at seq N is the fold of
events 1..N (time travel); a fork is a new run whose log begins with a copy of events 1..N (the engine writes
it, see ``decider.ForkRun`` handling); and the engine's in-memory table, a cache of that fold, must equal a
refold of the log (``verify_engine``), which is checked here without stopping the engine or racing it.

Events for time travel and forks come from the ``events`` projection: each row holds the envelope's fields
and the payload as JSON, and ``envelope_from_row`` turns it back into an envelope through the one codec, so
old schema versions are upcast exactly as when the log itself is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import orjson
from aiokafka import ConsumerRecord
from pydantic import BaseModel

from tickflow.core.decider import fork_problem
from tickflow.core.retention import Retention
from tickflow.core.state import RunState, SequenceError, evolve, fold, shrink
from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.envelope import Envelope
from tickflow.events.errors import ErrorCode, RunNotFound, TickflowError
from tickflow.events.schemas import ForkRun, HistoryEvent, RunForked, RunRejected, RunReleased, RunStarted
from tickflow.projections.rows import EventRow
from tickflow.runtime.kafka import partition_batches
from tickflow.runtime.recovery import RECOVERY_THREADS
from tickflow.wire import Difference, EngineReport, PartitionReport

if TYPE_CHECKING:
    from tickflow.events.topics import TopicNames
    from tickflow.runtime.engine import Capture
    from tickflow.runtime.partition import Partition
    from tickflow.settings import Settings

__all__ = [
    "IncompleteHistory",
    "NotForkable",
    "PartitionComparison",
    "ReplayError",
    "SeqOutOfRange",
    "UnknownHistory",
    "VerifiableEngine",
    "compare_partition",
    "diff_states",
    "envelope_from_row",
    "fork_command",
    "history_of",
    "state_at",
    "verify_engine",
]

#: Lists in a verification report stop here; the counts next to them stay exact.
REPORT_LIMIT = 100


class ReplayError(TickflowError):
    """A replay request that cannot be honoured; ``http_status`` is how the API answers it."""

    http_status: ClassVar[int] = 400
    code = ErrorCode.INVALID_REQUEST


class UnknownHistory(ReplayError, RunNotFound):
    """No events of that run are visible, or the key is not a run (a slot or another entity); also a
    ``RunNotFound``, which it means."""

    http_status: ClassVar[int] = 404
    code = ErrorCode.RUN_NOT_FOUND


class SeqOutOfRange(ReplayError):
    """The seq asked for is below 1 or beyond the last visible event of the run."""

    http_status: ClassVar[int] = 422


class IncompleteHistory(ReplayError):
    """The projection holds the run's events with a gap, so no state can be folded there."""

    http_status: ClassVar[int] = 409
    code = ErrorCode.CONFLICT


class NotForkable(ReplayError):
    """The run's state at that seq cannot start a fork (finished, or a feature forks do not support)."""

    http_status: ClassVar[int] = 409
    code = ErrorCode.CONFLICT


# --- time travel ----------------------------------------------------------------------------------------


def envelope_from_row(row: EventRow) -> Envelope:
    """The envelope an ``events`` row was projected from, decoded (and upcast) by the codec."""
    raw = orjson.dumps(
        {
            "id": row.event_id,
            "kind": "event",
            "type": row.type,
            "schema_version": row.schema_version,
            "key": row.run_id,
            "seq": row.seq,
            "causation_id": row.causation_id or None,
            "correlation_id": row.correlation_id or None,
            "occurred_at_ms": row.occurred_at_ms,
            "payload": orjson.loads(row.payload),
        }
    )
    return decode(raw, expect="event")


def history_of(run_id: str, rows: Sequence[EventRow]) -> list[Envelope]:
    """A run's events from its projected rows; ``UnknownHistory`` when there are none or it is no run."""
    if not rows:
        raise UnknownHistory(
            f"no events of run {run_id!r} are visible: check the id, or wait until its start is projected"
        )
    events = [envelope_from_row(r) for r in rows]
    if not isinstance(events[0].payload, RunStarted | RunRejected):
        raise UnknownHistory(f"{run_id!r} is not a run (its first event is {events[0].type}); it has no run state")
    return events


def _check_seq(run_id: str, events: Sequence[Envelope], at_seq: int) -> None:
    last = events[-1].seq or 0
    if at_seq < 1:
        raise SeqOutOfRange(f"at_seq must be at least 1 (seqs start at 1); run {run_id!r} has events 1..{last}")
    if at_seq > last:
        raise SeqOutOfRange(
            f"run {run_id!r} has events 1..{last} visible, so there is no seq {at_seq}; "
            "if it is still running, the projection may not have caught up yet"
        )


def state_at(run_id: str, events: Sequence[Envelope], at_seq: int | None = None) -> RunState:
    """The run's state after its event ``at_seq`` (default: the last one): the fold of events 1..at_seq."""
    if not events:
        raise UnknownHistory(f"no events of run {run_id!r} are visible")
    seq = at_seq if at_seq is not None else events[-1].seq or 0
    _check_seq(run_id, events, seq)
    prefix = [e for e in events if (e.seq or 0) <= seq]
    if [e.seq for e in prefix] != list(range(1, seq + 1)):
        missing = sorted(set(range(1, seq + 1)) - {e.seq for e in prefix})[:5]
        raise IncompleteHistory(
            f"the projection lacks events {missing} of run {run_id!r}: it is catching up, or they were vacuumed "
            "(the log still has them; rebuild the projection)"
        )
    return fold(run_id, prefix)


# --- forks ----------------------------------------------------------------------------------------------


def fork_command(source_run_id: str, events: Sequence[Envelope], at_seq: int, new_run_id: str, now_ms: int) -> Envelope:
    """The ForkRun command that makes the engine start ``new_run_id`` from the source's state at ``at_seq``.

    Checks here what the engine checks again (it is the authority: anyone may produce commands), so a caller
    of the API learns at once why a fork cannot be made.
    """
    if new_run_id == source_run_id:
        raise NotForkable(f"a fork needs a new run id; {new_run_id!r} is the source run's own id")
    at = state_at(source_run_id, events, at_seq)
    problem = fork_problem(at)
    if problem is not None:
        raise NotForkable(f"cannot fork run {source_run_id!r} at seq {at_seq}: {problem}")
    history = [
        HistoryEvent(
            type=e.type,
            schema_version=e.schema_version,
            occurred_at_ms=e.occurred_at_ms,
            payload=e.payload.model_dump(mode="json"),
        )
        for e in events
        if (e.seq or 0) <= at_seq
    ]
    return Envelope.wrap(
        ForkRun(source_run_id=source_run_id, at_seq=at_seq, history=history),
        id=f"fork/{new_run_id}",  # one fork per new id: the engine ignores a second one
        key=new_run_id,
        occurred_at_ms=now_ms,
        causation_id=f"{source_run_id}/{at_seq}",
        correlation_id=new_run_id,
    )


# --- diffs ----------------------------------------------------------------------------------------------


def diff_states(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths of the fields where two states (or any dataclasses, models, dicts, lists) differ, in field order.

    ``nodes['t1'].attempt`` names a field of a node; ``nodes['t2']`` alone, a node only one side has. The
    first path is where a refold and the live state part ways, which is where to look for the bug.
    """
    if a is b or (type(a) is type(b) and a == b):
        return []
    if is_dataclass(a) and type(a) is type(b) and not isinstance(a, type):
        out: list[str] = []
        for f in fields(a):
            out += diff_states(getattr(a, f.name), getattr(b, f.name), f"{path}.{f.name}" if path else f.name)
        return out
    if isinstance(a, BaseModel) and type(a) is type(b):
        out = []
        for name in type(a).model_fields:
            out += diff_states(getattr(a, name), getattr(b, name), f"{path}.{name}" if path else name)
        return out
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in [*a, *(k for k in b if k not in a)]:
            sub = f"{path}[{key!r}]"
            out += diff_states(a[key], b[key], sub) if key in a and key in b else [sub]
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and type(a) is type(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            out += diff_states(x, y, f"{path}[{i}]")
        if len(a) != len(b):
            out.append(f"{path}[{min(len(a), len(b))}:]")
        return out
    return [path or "(value)"]


# --- refold vs live -------------------------------------------------------------------------------------


#: The type name as the codec writes it: a record holding it may be a release (then it is decoded to be sure).
_RELEASED_MARK = b'"RunReleased"'


@dataclass
class _Refold:
    """One key's refold, fed event by event in log order; the same rules as recovery (``runtime/recovery.py``):
    copies of already-applied seqs are skipped, nothing beyond ``up_to``, and past an event that cannot be folded
    only an operator's ``RunReleased`` applies."""

    state: RunState
    up_to: int
    skipped: set[int]
    is_run: bool
    first_at_ms: int
    forked_at_ms: int | None = None
    held: bool = False
    done: bool = False

    def apply(self, event: Envelope) -> None:
        if isinstance(event.payload, RunForked):
            self.forked_at_ms = event.occurred_at_ms  # the last marker: a fork of a fork copies its source's too
        seq = event.seq or 0
        if self.done or seq > self.up_to:
            self.done = True
            return
        if seq <= self.state.seq or seq in self.skipped or (self.held and not isinstance(event.payload, RunReleased)):
            return
        try:
            self.state, self.held = evolve(self.state, event), False
        except (SequenceError, KeyError, TypeError, ValueError):
            self.held = True

    @property
    def created_at_ms(self) -> int:
        """When the engine decided to create the run: its first event, or for a fork its own ``RunForked`` marker,
        since a fork's copies carry shifted times."""
        return self.forked_at_ms if self.forked_at_ms is not None else self.first_at_ms


class PartitionComparison:
    """Compares one partition's live states with the refold of its log, fed a batch of records at a time: memory
    holds one refolded state per key (what the engine holds anyway), never the partition's events.

    Two passes over the partition: ``note_releases`` first (a ``RunReleased`` skips seqs *before* it, even ones
    readable now, see ``core.state.released_seqs``; a byte search finds the few records to decode), then ``feed``.
    ``quarantined`` runs (set aside by the engine) are listed, not compared.
    """

    def __init__(self, partition: int, live: dict[str, RunState], taken_at_ms: int, retention: Retention,
                 quarantined: frozenset[str] = frozenset()) -> None:
        self.report = PartitionReport(partition=partition)
        self._live, self._taken_at_ms, self._retention, self._quarantined = live, taken_at_ms, retention, quarantined
        self._released: dict[str, set[int]] = {}
        self._runs: dict[str, _Refold] = {}

    def note_releases(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        for record in records:
            if record.value is None or _RELEASED_MARK not in record.value:
                continue
            with contextlib.suppress(InvalidRecord):
                event = decode(record.value, expect="event")
                if isinstance(event.payload, RunReleased) and event.seq is not None:
                    seqs = range(event.payload.resumed_from_seq + 1, event.seq)
                    self._released.setdefault(event.key, set()).update(seqs)

    def feed(self, records: Sequence[ConsumerRecord[bytes, bytes]]) -> None:
        self.report.events_read += len(records)
        for record in records:
            try:
                event = decode(record.value, expect="event")
            except InvalidRecord:
                self.report.unreadable_events += 1  # the engine logged and skipped it too; the diff shows the cost
                continue
            refold = self._runs.get(event.key)
            if refold is None:
                live = self._live.get(event.key)
                refold = self._runs[event.key] = _Refold(
                    state=RunState(event.key),
                    up_to=live.seq if live is not None else 1 << 62,
                    skipped=self._released.get(event.key, set()),
                    is_run=isinstance(event.payload, RunStarted | RunRejected),
                    first_at_ms=event.occurred_at_ms,
                )
            if refold.is_run and event.key not in self._quarantined:
                refold.apply(event)

    def result(self) -> PartitionReport:
        report = self.report
        for run_id, refold in self._runs.items():
            if run_id in self._quarantined:
                report.quarantined.append(run_id)
            elif not refold.is_run:
                report.other_entities += 1
            elif (state := self._live.get(run_id)) is None:
                if self._retention.stage(refold.state, self._taken_at_ms) == "expire":
                    report.expired += 1
                elif refold.created_at_ms >= self._taken_at_ms:
                    report.started_after_capture += 1
                elif len(report.missing_live) < REPORT_LIMIT:
                    report.missing_live.append(run_id)
            else:
                self._compare(run_id, state, refold)
        for run_id in self._live:
            if run_id not in self._runs and len(report.missing_in_log) < REPORT_LIMIT:
                report.missing_in_log.append(run_id)
        return report

    def _compare(self, run_id: str, state: RunState, refold: _Refold) -> None:
        report = self.report
        report.runs_compared += 1
        refolded = refold.state
        try:
            if state.shrunk and refolded.terminal:  # the engine keeps a long-finished run shrunk: compare the same
                refolded = shrink(refolded)
            paths = diff_states(state, refolded)
        except (SequenceError, KeyError, TypeError, ValueError) as exc:
            refolded, paths = RunState(run_id), [f"(refold failed: {exc})"[:500]]
        if not paths:
            report.equal += 1
            return
        report.differing_count += 1
        if len(report.differing) < REPORT_LIMIT:
            report.differing.append(
                Difference(
                    run_id=run_id, first_path=paths[0], paths=paths[:10], live_seq=state.seq, refold_seq=refolded.seq
                )
            )


def compare_partition(
    partition: int,
    live: dict[str, RunState],
    records: Sequence[ConsumerRecord[bytes, bytes]],
    taken_at_ms: int,
    retention: Retention,
    quarantined: frozenset[str] = frozenset(),
) -> PartitionReport:
    """Compare one partition's live states with the fold of its log records (pure apart from the clock value)."""
    comparison = PartitionComparison(partition, live, taken_at_ms, retention, quarantined)
    comparison.note_releases(records)
    comparison.feed(records)
    return comparison.result()


class VerifiableEngine(Protocol):
    """What ``verify_engine`` reads of an engine (``runtime.engine.Engine``; the API types its engine by it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def topics(self) -> TopicNames: ...

    @property
    def retention(self) -> Retention: ...

    @property
    def partitions(self) -> Mapping[int, Partition]: ...

    async def capture(self) -> Capture: ...


async def verify_engine(engine: VerifiableEngine) -> EngineReport:
    """Refold the events partitions ``engine`` owns and compare with its live states, while it keeps running.

    The live states are captured between two batches, after which the log holds every seq they contain; the
    refold of each run stops at its live seq, so events decided after the capture never count as a
    difference. Folding runs in a thread so the engine's loop (in this same process) keeps turning.
    """
    started = time.monotonic()
    captured, taken_at, events_end = await engine.capture()
    loop = asyncio.get_running_loop()
    reports = []
    for partition, live in captured.items():
        owned = engine.partitions.get(partition)
        held = frozenset(owned.quarantined if owned is not None else ())
        comparison = PartitionComparison(partition, live, taken_at, engine.retention, held)
        for step in (comparison.note_releases, comparison.feed):  # two passes, a batch in memory at a time
            async with contextlib.aclosing(partition_batches(
                engine.settings.kafka, engine.topics.events, partition, min_end=events_end.get(partition, 0)
            )) as batches:
                async for batch in batches:
                    await loop.run_in_executor(RECOVERY_THREADS, step, batch)
        reports.append(comparison.result())
    compared = sum(r.runs_compared for r in reports)
    equal = sum(r.equal for r in reports)
    ok = all(r.differing_count == 0 and not r.missing_in_log and not r.missing_live for r in reports)
    return EngineReport(
        ok=ok,
        captured_at_ms=taken_at,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
        runs_compared=compared,
        equal=equal,
        partitions=reports,
    )
