"""Benchmark: rebuild every projection from a log of 1M events into a fresh database, then verify it (every table
against an independent fold of the log: the ``verify`` phase).

    python -m tests.bench.rebuild [--events 1000000] [--partitions 8] [--keep-topic]

Setup (not measured): realistic events — runs of a five-step workflow with retries, failures, a few agent
steps with LLM call attempts and memory messages, and agent stacks ticking — are produced straight to the
events topic of a bench prefix, as the engine would have written them (the same codec output, byte for byte).
Measured: ``projections.rebuild.rebuild_database`` reading that topic from offset 0 into a fresh chDB database,
with seconds per phase, events/s and peak RSS. Prints one JSON document, then a human summary. Deletes only its
own topic. ``--fold`` measures the Python fold instead of the bulk path (``projections.bulk``).

Phases of the bulk path: ``read`` (the reading loop waiting on Kafka), ``stage`` (ClickHouse checking each
staged block and inserting its run documents, in a thread, overlapping the reading; the events insert of a block
runs in the background of the next one), ``derive`` (the last events insert, then the fact and status tables),
``verify``. The CPU figure is this process's (Python and the embedded ClickHouse), the broker's not included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tickflow.demo import registry
from tickflow.events.agents import LlmCallAttempted, MessageAppended, StackCreated, TickFinished, TickFired, stack_key
from tickflow.events.envelope import Envelope, event_id
from tickflow.events.schemas import (
    ErrorInfo,
    NodeCompleted,
    Payload,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
)
from tickflow.events.topics import TopicNames
from tickflow.projections.models import RebuildReport
from tickflow.projections.rebuild import rebuild_database
from tickflow.projections.store import ClickHouseStore

__all__ = ["synthetic_log"]

STEPS = ("validate", "price", "reserve", "charge", "notify")


def _template(payload: Payload) -> dict[str, Any]:
    """The envelope dict the engine's codec would serialise for ``payload`` (see ``events.codec.encode``)."""
    env = Envelope.wrap(payload, id="x/1", key="x", seq=1, occurred_at_ms=0, causation_id="c", correlation_id="x")
    return env.model_dump(mode="python")


class _Log:
    """Builds canonical event records cheaply: a template per event type, with the varying fields replaced."""

    def __init__(self) -> None:
        spec = registry.specs["order"]
        err = ErrorInfo(type="ConnectionError", message="payment gateway timed out (transient; will retry)")
        self.t = {
            "started": _template(
                RunStarted(workflow="order", spec_hash=spec.content_hash(), spec=spec, input=None, deadline_ms=None)
            ),
            "scheduled": _template(StepScheduled(path="x", step="x", attempt=1, pool="default", input=None)),
            "completed": _template(StepCompleted(path="x", step="x", attempt=1, output=None, duration_ms=1.0)),
            "failed": _template(StepFailed(path="x", step="x", attempt=1, error=err, will_retry=True, duration_ms=1.0)),
            "node": _template(NodeCompleted(path="__root__", output=None)),
            "run_completed": _template(RunCompleted(output=None)),
            "run_failed": _template(RunFailed(error=err, path="charge")),
            "llm": _template(
                LlmCallAttempted(path="x", call=0, attempt=1, provider="openai", model="gpt-4o-mini", outcome="ok")
            ),
            "message": _template(
                MessageAppended(thread_id="t", message_id="m", role="assistant", content="", embedding=[0.0])
            ),
            "stack": _template(StackCreated(stack_id="s", workflow="order", interval_s=10.0)),
            "tick_fired": _template(TickFired(tick=1, run_id="r", due_at_ms=0)),
            "tick_finished": _template(TickFinished(tick=1, run_id="r", status="completed")),
        }

    def event(self, kind: str, key: str, seq: int, at_ms: int, **payload: Any) -> bytes:
        env = dict(self.t[kind])
        env["id"] = event_id(key, seq)
        env["key"] = key
        env["seq"] = seq
        env["occurred_at_ms"] = at_ms
        env["causation_id"] = f"cmd/{key}/{seq}"
        env["correlation_id"] = key
        if payload:
            env["payload"] = {**env["payload"], **payload}
        return orjson.dumps(env)


def _run(log: _Log, rng: random.Random, run_id: str, at: int) -> Iterator[bytes]:
    """One order run: five steps (a transient failure retried for 8 %, a card declined for 2 %), an agent
    step with LLM call attempts and memory messages for 5 %."""
    order = {"id": run_id, "items": [{"sku": f"sku-{rng.randrange(500)}", "qty": 1 + rng.randrange(3), "price": 9.5}]}
    seq = 1
    yield log.event("started", run_id, seq, at, input=order)
    value: Any = order
    fate = rng.random()
    for step in STEPS:
        attempt = 1
        if step == "charge" and fate < 0.10:
            seq += 1
            at += 2
            yield log.event("scheduled", run_id, seq, at, path=step, step=step, attempt=1, input=value)
            seq += 1
            at += 5 + rng.randrange(20)
            final = fate < 0.02
            yield log.event(
                "failed", run_id, seq, at, path=step, step=step, attempt=1, will_retry=not final,
                duration_ms=float(rng.randrange(1, 900)), worker="w-1",
            )  # fmt: skip
            if final:
                for kind in ("run_failed",):
                    seq += 1
                    yield log.event(kind, run_id, seq, at + 1)
                return
            attempt = 2
        seq += 1
        at += 2
        yield log.event("scheduled", run_id, seq, at, path=step, step=step, attempt=attempt, input=value)
        if step == "reserve" and fate > 0.95:  # an agent step: two LLM calls (one retried), a memory message
            for call, (attempt_n, outcome) in enumerate(((1, "rate_limited"), (2, "ok"), (1, "ok"))):
                seq += 1
                at += 300
                yield log.event(
                    "llm", run_id, seq, at, path=step, call=call, attempt=attempt_n, outcome=outcome,
                    tokens_in=rng.randrange(100, 2000), tokens_out=rng.randrange(10, 500),
                    cost_usd=rng.randrange(1, 300) / 100_000, latency_ms=float(rng.randrange(80, 2000)),
                    started_at_ms=at - 250,
                )  # fmt: skip
            seq += 1
            yield log.event(
                "message", run_id, seq, at, thread_id=run_id, message_id=f"m{seq}", content="reserved the items",
                embedding=[rng.random() for _ in range(8)],
            )  # fmt: skip
        value = {**order, "step": step}
        seq += 1
        at += 3 + rng.randrange(30)
        yield log.event(
            "completed", run_id, seq, at, path=step, step=step, attempt=attempt, output=value,
            duration_ms=float(rng.randrange(1, 60)), worker="w-1",
        )  # fmt: skip
    seq += 1
    yield log.event("node", run_id, seq, at, output=value)
    seq += 1
    yield log.event("run_completed", run_id, seq, at, output=value)


def synthetic_log(events: int, seed: int = 7) -> Iterator[tuple[bytes, bytes]]:
    """About ``events`` (key, value) records: order runs, plus 20 agent stacks whose ticks start some of them."""
    log, rng = _Log(), random.Random(seed)
    at = 1_700_000_000_000
    produced = 0
    stacks = [f"bench-stack-{i}" for i in range(20)]
    stack_seq = dict.fromkeys(stacks, 0)
    for sid in stacks:
        stack_seq[sid] += 1
        yield stack_key(sid).encode(), log.event("stack", stack_key(sid), 1, at, stack_id=sid)
        produced += 1
    n = 0
    while produced < events:
        n += 1
        at += 7
        run_id = f"run-{n:08d}"
        for value in _run(log, rng, run_id, at):
            yield run_id.encode(), value
            produced += 1
        if n % 50 == 0:  # a stack tick that started this run: fired, then finished
            sid = stacks[n // 50 % len(stacks)]
            key = stack_key(sid)
            tick = stack_seq[sid] // 2 + 1
            for kind, extra in (("tick_fired", {"due_at_ms": at - 3}), ("tick_finished", {"tokens": 1200})):
                stack_seq[sid] += 1
                yield key.encode(), log.event(kind, key, stack_seq[sid], at + 40, tick=tick, run_id=run_id, **extra)
                produced += 1


async def produce(bootstrap: str, topic: str, partitions: int, events: int) -> tuple[int, float]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=1024 * 1024, compression_type=None
    )
    await producer.start()
    started = time.perf_counter()
    count = 0
    try:
        pending: list[asyncio.Future[Any]] = []
        for key, value in synthetic_log(events):
            pending.append(await producer.send(topic, value, key=key))
            count += 1
            if len(pending) >= 50_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return count, time.perf_counter() - started


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    finally:
        await admin.close()


def _human(report: RebuildReport, produced: int, produce_s: float, rss_mb: float, cpu_s: float) -> str:
    p = report.phases
    lines = [
        f"setup: produced {produced:,} events in {produce_s:.1f} s (not measured)",
        f"build: {report.events:,} events in {report.duration_s:.2f} s = {report.events_per_s:,.0f} events/s "
        f"(method: {report.method} {report.method_reason})",
        f"verify (events per partition, then {len(report.table_checks)} tables against an independent fold of the "
        f"log): {p.get('verify', 0.0):.2f} s, {'ok' if report.ok else 'MISMATCH'}; build + verify "
        f"{report.duration_s + p.get('verify', 0.0):.2f} s = "
        f"{report.events / (report.duration_s + p.get('verify', 0.0) or 1):,.0f} events/s",
        "where the time goes (seconds; read overlaps the rest):",
        *(f"  {name:<8} {seconds:8.2f}" for name, seconds in p.items() if seconds),
        "rows: " + ", ".join(f"{t}={n:,}" for t, n in report.tables.items()),
        f"CPU of this process (Python and the embedded ClickHouse): {cpu_s:.1f} s for "
        f"{report.duration_s + p.get('verify', 0.0):.1f} s wall (build + verify)",
        f"peak RSS of this process: {rss_mb:,.0f} MB",
    ]
    return "\n".join(lines)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--keep-topic", action="store_true", help="Leave the bench topic in place afterwards.")
    parser.add_argument("--fold", action="store_true", help="Fold every event in Python (the reference path).")
    args = parser.parse_args()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    topics = TopicNames(prefix=prefix, partitions=args.partitions)
    produced, produce_s = await produce(args.bootstrap, topics.events, args.partitions, args.events)
    try:
        with tempfile.TemporaryDirectory(prefix="tickflow-rebuild-bench-") as tmp:
            store = ClickHouseStore(path=str(Path(tmp) / "chdb"), database=prefix)
            try:
                rss_before = psutil.Process().memory_info().rss / 1e6
                cpu_before = time.process_time()
                report = await asyncio.to_thread(
                    rebuild_database,
                    store,
                    kafka=args.bootstrap,
                    topic=topics.events,
                    database=f"{prefix}_rebuilt",
                    bulk=not args.fold,
                )
                cpu_s = time.process_time() - cpu_before
            finally:
                store.close()
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = {
            "events": report.events,
            "partitions": args.partitions,
            "seconds": round(report.duration_s, 3),
            "events_per_s": round(report.events_per_s),
            "method": report.method,
            "phases_s": {k: round(v, 3) for k, v in report.phases.items()},
            "tables": report.tables,
            "verified": report.ok,
            "mismatches": report.mismatches,
            "cpu_s": round(cpu_s, 2),
            "rss_before_mb": round(rss_before),
            "peak_rss_mb": round(peak_mb),
            "setup_produce_s": round(produce_s, 1),
        }
        print(json.dumps(out, indent=2))
        print(_human(report, produced, produce_s, peak_mb, cpu_s))
    finally:
        if not args.keep_topic:
            await delete_topic(args.bootstrap, topics.events)


if __name__ == "__main__":
    asyncio.run(main())
