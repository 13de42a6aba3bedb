"""The stacks benchmark's reading of the log afterwards (``tests.bench.stacks``): every figure comes from the topics.

Split from the benchmark's driver so that each stays readable, and so that the pieces that must be right — reading a
transactional topic to its end, counting records per tick, the memory figures — can be tested on their own.

Reading to the end: the engine writes in Kafka transactions, so the last offsets of a partition are often commit
markers, which a consumer is never handed. A reader that waits for a *record* at ``end - 1`` waits forever; this one
compares ``consumer.position()`` (which moves past markers) with the end offset (the last stable offset, under
read_committed) taken when it began, as ``tickflow.runtime.kafka.partition_batches`` does for one partition.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from tests.bench.steps import dist
from tickflow.events.agents import STACK_PREFIX
from tickflow.runtime.snapshots import APPLIED_KEY

__all__ = [
    "Log",
    "TopicCount",
    "analyse",
    "count_topic",
    "in_flight",
    "key_kind",
    "memory_figures",
    "owned",
    "partition_owners",
    "per_tick",
    "read_log",
    "read_to_end",
]

Handler = Callable[[int, list[ConsumerRecord[bytes, bytes]]], None]


async def read_to_end(bootstrap: str, topic: str, partitions: int, handle: Handler) -> dict[str, int]:
    """Hand every committed record of ``topic`` from its first offset to its end as of now to ``handle(partition,
    records)``; return the offsets spanned and the records handed over (the difference: transaction markers and
    aborted records)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=50,
        max_partition_fetch_bytes=8 * 2**20,
        fetch_max_bytes=64 * 2**20,
        isolation_level="read_committed",
    )
    await consumer.start()
    spanned = handed = 0
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # read_committed: each partition's last stable offset
        firsts = await consumer.beginning_offsets(tps)
        spanned = sum(ends[tp] - firsts[tp] for tp in tps)
        left = {tp for tp in tps if await consumer.position(tp) < ends[tp]}
        while left:
            batch = await consumer.getmany(*left, timeout_ms=1000, max_records=50_000)
            for tp, records in batch.items():
                mine = [r for r in records if r.offset < ends[tp]]  # committed after we began: not ours
                handed += len(mine)
                if mine:
                    handle(tp.partition, mine)
            for tp in list(left):
                if await consumer.position(tp) >= ends[tp]:  # past the markers too, which are never handed over
                    left.discard(tp)
    finally:
        await consumer.stop()
    return {"offsets": spanned, "records": handed}


# -- the events topic ----------------------------------------------------------------------------------------------

_TYPE = re.compile(rb'"type":"([A-Za-z]+)"')  # the envelope's own type comes before its payload
_PARSED = frozenset(
    {
        "StackCreated",
        "TickFired",
        "TickSkipped",
        "TickFinished",
        "RunStarted",
        "StepScheduled",
        "LlmCallAttempted",
        "RunCompleted",
        "RunFailed",
    }
)


def key_kind(key: bytes | None, tick_run: re.Pattern[bytes]) -> str:
    """Whose record: a stack's (``stack:<id>``), a tick run's (``<stack id>.t<n>``), the engine's note of the input
    offsets a transaction applied (one per partition per transaction, on the state topic), or another entity's."""
    if key is None:
        return "other"
    if key == APPLIED_KEY:
        return "applied_note"
    if key.startswith(STACK_PREFIX.encode()):
        return "stack"
    return "tick_run" if tick_run.fullmatch(key) else "other"


@dataclass
class TopicCount:
    """Records of one topic whose Kafka timestamp falls in a window, by envelope type and by whose key."""

    lo: int
    hi: int
    tick_run: re.Pattern[bytes]
    by_type: Counter[str] = field(default_factory=Counter)
    by_key_kind: Counter[str] = field(default_factory=Counter)
    bytes_by_type: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    records_in_window: int = 0
    total: dict[str, int] = field(default_factory=dict)  # offsets spanned, records read (whole topic)

    def add(self, r: ConsumerRecord[bytes, bytes]) -> None:
        if not self.lo <= r.timestamp < self.hi:
            return
        raw = r.value or b""
        m = _TYPE.search(raw, 0, 200)
        kind = m.group(1).decode() if m else "?"
        size = len(raw) + len(r.key or b"")
        self.by_type[kind] += 1
        self.bytes_by_type[kind] += size
        self.by_key_kind[key_kind(r.key, self.tick_run)] += 1
        self.bytes += size
        self.records_in_window += 1


@dataclass
class Log:
    """What the events topic says, the parts the figures need (every event counted by type, some parsed)."""

    types: Counter[str] = field(default_factory=Counter)
    records: int = 0
    created_at: list[int] = field(default_factory=list)  # StackCreated occurred_at_ms
    created_by_partition: Counter[int] = field(default_factory=Counter)
    fired: list[tuple[int, int, int, str, int]] = field(default_factory=list)  # (occurred, due, ts, run id, partition)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (occurred, due)
    finished: dict[str, int] = field(default_factory=dict)  # run id → TickFinished occurred
    finished_status: Counter[str] = field(default_factory=Counter)
    run_started: dict[str, int] = field(default_factory=dict)
    step_scheduled: dict[str, int] = field(default_factory=dict)
    llm: list[tuple[str, int, float, str]] = field(default_factory=list)  # (run id, started, latency, outcome)
    run_done: dict[str, tuple[int, str]] = field(default_factory=dict)  # run id → (occurred, type)
    window: TopicCount | None = None  # the window's events by type and key kind
    offsets: dict[str, int] = field(default_factory=dict)


async def read_log(bootstrap: str, topic: str, partitions: int, window: TopicCount) -> Log:
    """Every record of the events topic from offset 0 to its end now; only the types the figures use are parsed."""
    out = Log(window=window)

    def handle(partition: int, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for r in records:
            out.records += 1
            window.add(r)
            raw = r.value or b""
            m = _TYPE.search(raw, 0, 200)
            kind = m.group(1).decode() if m else "?"
            out.types[kind] += 1
            if kind in _PARSED:
                _parse(out, orjson.loads(raw), r.timestamp, partition)

    out.offsets = await read_to_end(bootstrap, topic, partitions, handle)
    window.total = out.offsets
    return out


async def count_topic(bootstrap: str, topic: str, partitions: int, window: TopicCount) -> TopicCount:
    """Count a whole topic's records in ``window`` (by type and key kind)."""

    def handle(_: int, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        for r in records:
            window.add(r)

    window.total = await read_to_end(bootstrap, topic, partitions, handle)
    return window


def _parse(out: Log, e: dict[str, Any], ts: int, partition: int) -> None:
    kind, key, at, p = e["type"], e["key"], e["occurred_at_ms"], e["payload"]
    if kind == "StackCreated":
        out.created_at.append(at)
        out.created_by_partition[partition] += 1
    elif kind == "TickFired":
        out.fired.append((at, p["due_at_ms"], ts, p["run_id"], partition))
    elif kind == "TickSkipped":
        out.skipped.append((at, p["due_at_ms"]))
    elif kind == "TickFinished":
        out.finished[p["run_id"]] = at
        out.finished_status[p["status"]] += 1
    elif kind == "RunStarted":
        out.run_started[key] = at
    elif kind == "StepScheduled":
        out.step_scheduled.setdefault(key, at)
    elif kind == "LlmCallAttempted":
        out.llm.append((key, p["started_at_ms"], p["latency_ms"], p["outcome"]))
    elif kind in ("RunCompleted", "RunFailed"):
        out.run_done[key] = (at, kind)


# -- figures -------------------------------------------------------------------------------------------------------


def in_flight(intervals: list[tuple[float, float]], lo: float, hi: float) -> dict[str, float]:
    """Peak and time-weighted mean of overlapping [start, end) intervals, clipped to [lo, hi)."""
    points: list[tuple[float, int]] = []
    for a, b in intervals:
        a, b = max(a, lo), min(b, hi)
        if b > a:
            points += [(a, 1), (b, -1)]
    points.sort()
    level = peak = 0
    area, last = 0.0, lo
    for t, d in points:
        area += level * (t - last)
        level, last = level + d, t
        peak = max(peak, level)
    return {"peak": peak, "mean": round(area / (hi - lo), 1) if hi > lo else 0.0}


def analyse(log: Log, lo: int, hi: int, owners: dict[int, str] | None = None) -> dict[str, Any]:
    """Figures over ticks that fired (or were skipped, or calls that started) in [lo, hi) ms; with ``owners``
    (partition → process label), the ticks each process fired."""
    window_s = (hi - lo) / 1000
    fired = [f for f in log.fired if lo <= f[0] < hi]
    skipped = [s for s in log.skipped if lo <= s[0] < hi]
    calls = [c for c in log.llm if lo <= c[1] < hi]
    completed: list[float] = []
    failed = unfinished = 0
    to_run_started: list[float] = []
    to_step_scheduled: list[float] = []
    to_llm_start: list[float] = []
    to_tick_finished: list[float] = []
    llm_start = {c[0]: c[1] for c in log.llm}
    for at, _, _, run_id, _ in fired:
        done = log.run_done.get(run_id)
        if done is None:
            unfinished += 1
        elif done[1] == "RunFailed":
            failed += 1
        else:
            completed.append(float(done[0] - at))
        if run_id in log.run_started:
            to_run_started.append(float(log.run_started[run_id] - at))
        if run_id in log.step_scheduled:
            to_step_scheduled.append(float(log.step_scheduled[run_id] - at))
            if run_id in llm_start:
                to_llm_start.append(float(llm_start[run_id] - log.step_scheduled[run_id]))
        if run_id in log.finished:
            to_tick_finished.append(float(log.finished[run_id] - at))
    per_second = Counter((f[0] - lo) // 1000 for f in fired)
    by_partition = Counter(f[4] for f in fired)
    counts = owned(by_partition, owners) if owners is not None else Counter[str]()
    by_process = {label: round(n / window_s, 1) for label, n in sorted(counts.items())} if owners is not None else None
    return {
        "window_s": window_s,
        "ticks_fired": len(fired),
        "ticks_per_s": round(len(fired) / window_s, 1),
        "ticks_per_s_by_second": dist([float(per_second.get(i, 0)) for i in range(int(window_s))]),
        # Minute by minute: whether the rate holds as the retention windows fill (beside CPU by minute).
        "ticks_per_s_by_minute": [
            [minute, round(sum(per_second.get(i, 0) for i in range(60 * minute, min(60 * minute + 60, int(window_s))))
                           / max(1, min(60, int(window_s) - 60 * minute)), 1)]
            for minute in range(math.ceil(int(window_s) / 60))
        ],
        "ticks_per_s_by_process": by_process,
        "ticks_by_process": dict(sorted(counts.items())) if owners is not None else None,
        "ticks_by_partition": dict(sorted(by_partition.items())),
        "tick_lag_ms": dist([float(f[0] - f[1]) for f in fired]),
        "tick_due_to_record_ts_ms": dist([float(f[2] - f[1]) for f in fired]),
        "ticks_skipped": len(skipped),
        "llm_calls": len(calls),
        "llm_calls_per_s": round(len(calls) / window_s, 1),
        "llm_outcomes": dict(Counter(c[3] for c in calls)),
        "llm_latency_ms": dist([c[2] for c in calls]),
        "llm_in_flight": in_flight([(c[1], c[1] + c[2]) for c in log.llm], lo, hi),
        "tick_to_run_completed_ms": dist(completed),
        "tick_to_run_started_ms": dist(to_run_started),
        "tick_to_step_scheduled_ms": dist(to_step_scheduled),
        "step_scheduled_to_llm_start_ms": dist(to_llm_start),
        "tick_to_tick_finished_ms": dist(to_tick_finished),
        "runs_failed": failed,
        "runs_unfinished_at_cutoff": unfinished,
    }


def owned(by_partition: Counter[int], owners: dict[int, str]) -> Counter[str]:
    """What each process owns of a per-partition count (stacks, ticks)."""
    out: Counter[str] = Counter()
    for partition, n in by_partition.items():
        out[owners.get(partition, "unowned")] += n
    return out


def per_tick(counts: dict[str, TopicCount], ticks: int, ticks_all: int = 0) -> dict[str, Any]:
    """Records per tick fired, per topic (by envelope type, and by whose key: the stack's or the tick run's), from
    the records whose Kafka timestamp falls in the window — in a steady state each tick's records fall in it. And,
    over the whole run (``ticks_all`` ticks fired in all), the offsets that were no record: transaction markers
    (one per partition a transaction wrote to) and aborted records, which the broker writes too."""
    if not ticks:
        return {"ticks": 0}
    out: dict[str, Any] = {"ticks": ticks}
    markers = 0
    for name, c in counts.items():
        not_records = c.total.get("offsets", 0) - c.total.get("records", 0)
        markers += not_records
        out[name] = {
            "records_per_tick": round(c.records_in_window / ticks, 3),
            "bytes_per_tick": round(c.bytes / ticks, 1),
            "by_type_per_tick": {k: round(v / ticks, 3) for k, v in c.by_type.most_common()},
            "bytes_by_type_per_tick": {k: round(v / ticks, 1) for k, v in c.bytes_by_type.most_common()},
            "by_key_per_tick": {k: round(v / ticks, 3) for k, v in c.by_key_kind.most_common()},
            "whole_topic": {**c.total, "not_records": not_records},
        }
    out["records_per_tick_all_topics"] = round(sum(c.records_in_window for c in counts.values()) / ticks, 3)
    out["not_records_per_tick_whole_run"] = round(markers / ticks_all, 3) if ticks_all else None
    return out


def memory_figures(
    series: list[tuple[float, float]], before_mib: float, stacks: int, flat_after_s: float | None
) -> dict[str, Any]:
    """From RSS samples ``(seconds into the window, MiB)``: the series per minute, the growth per minute over the
    last third of the window (a least-squares slope, robust to one sample's swing) and after ``flat_after_s`` (when
    the retention windows are full and memory should stop growing), and bytes per stack (RSS at the end minus RSS
    before the stacks were created, over the number of stacks)."""
    if not series:
        return {}
    end_s, end_mib = series[-1]
    by_minute: list[list[float]] = []
    for minute in range(int(end_s // 60) + 1):
        nearest = min(series, key=lambda s: abs(s[0] - 60 * minute))
        by_minute.append([minute, round(nearest[1], 1)])
    if by_minute[-1][0] * 60 < end_s:
        by_minute.append([round(end_s / 60, 2), round(end_mib, 1)])
    tail = [s for s in series if s[0] >= end_s * 2 / 3]
    after = [s for s in series if flat_after_s is not None and s[0] >= flat_after_s]
    return {
        "rss_mib_before_stacks": round(before_mib, 1),
        "rss_mib_window_start": round(series[0][1], 1),
        "rss_mib_end": round(end_mib, 1),
        "rss_mib_max": round(max(m for _, m in series), 1),
        "rss_mib_by_minute": by_minute,
        "growth_mib_per_min_last_third": _slope_per_min(tail),
        "growth_mib_per_min_after_retention_full": _slope_per_min(after),
        "bytes_per_stack": round((end_mib - before_mib) * 2**20 / stacks) if stacks else None,
    }


def _slope_per_min(points: list[tuple[float, float]]) -> float | None:
    if len(points) < 3 or points[-1][0] - points[0][0] < 10:
        return None
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(m for _, m in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    return round(60 * sum((t - mx) * (m - my) for t, m in points) / var, 2) if var else None


_OWNS = re.compile(r"engine owns partitions \[([0-9, ]*)\]")


def partition_owners(logs: Mapping[str, Iterable[str]]) -> tuple[dict[int, str], list[str]]:
    """Partition → process label, from the last ``engine owns partitions [...]`` line of each process's log; and
    what is wrong with it (a partition owned twice), empty when it is one consistent split."""
    owners: dict[int, str] = {}
    problems: list[str] = []
    for label, lines in logs.items():
        last = None
        for line in lines:
            if m := _OWNS.search(line):
                last = m.group(1)
        for part in (p for p in (last or "").replace(" ", "").split(",") if p):
            if int(part) in owners:
                problems.append(f"partition {part} owned by {owners[int(part)]} and {label}")
            owners[int(part)] = label
    return owners, problems
