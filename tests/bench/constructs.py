"""Benchmark: fan-out/fan-in and durable-timer lateness.

    python -m tests.bench.constructs [--fan-runs 100 --fan-width 100] [--sleepers 10000 --sleep-s 30]

* fan: ``--fan-runs`` runs, each a foreach of ``--fan-width`` no-op steps (all at once) joined into one
  list — how fast the engine forks and joins, and what a wide run costs it.
* timers: ``--sleepers`` runs that each sleep ``--sleep-s`` seconds and then finish; lateness is measured
  from the log itself: the firing event's time minus the timer's due time.

Engine and worker run in this process (one Node, no projector: the figures are about the engine). Each
scenario uses fresh topics. Prints one JSON document, then a human summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.bench.steps import pct
from tests.conftest import free_port
from tickflow.events import Envelope, StartRun, decode, encode
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics
from tickflow.settings import Settings
from tickflow.workflow import Flow, Registry, Workflow


async def leaf(value: Any) -> Any:
    return value


SNAPSHOT_INTERVAL_S = 60.0


async def _run(bootstrap: str, workdir: Path, wf: Workflow, inputs: list[Any], done_type: str) -> dict[str, Any]:
    reg = Registry()
    reg.add(wf)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap=bootstrap,
        prefix=prefix,
        partitions=8,
        state_dir=workdir / prefix,
        api_port=free_port(),
        worker_concurrency=256,
        snapshot_interval_s=SNAPSHOT_INTERVAL_S,
    )
    await ensure_topics(bootstrap, settings.topics, settings.pools)
    node = Node(settings, reg, frozenset({"engine", "worker"}))
    await node.start()
    watcher = AIOKafkaConsumer(
        settings.topics.events,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await watcher.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    ids = [f"{wf.name}-{i:05d}" for i in range(len(inputs))]
    started = time.perf_counter()
    for rid, value in zip(ids, inputs, strict=True):
        env = Envelope.wrap(StartRun(workflow=wf.name, input=value), id=f"s/{rid}", key=rid, occurred_at_ms=0)
        await producer.send(settings.topics.commands, encode(env), key=rid.encode())
    await producer.flush()
    submit_s = time.perf_counter() - started
    due: dict[str, int] = {}
    fired: dict[str, int] = {}
    finished: set[str] = set()
    events = 0
    deadline = time.monotonic() + 900
    while len(finished) < len(ids) and time.monotonic() < deadline:
        batch = await watcher.getmany(timeout_ms=200, max_records=10_000)
        for records in batch.values():
            for r in records:
                events += 1
                e = decode(r.value)
                p: Any = e.payload
                if e.type == "TimerStarted":
                    due[e.key] = p.due_at_ms
                elif e.type == "NodeCompleted" and e.key in due and p.path == "nap":
                    fired[e.key] = e.occurred_at_ms
                elif e.type == done_type:
                    finished.add(e.key)
    wall = time.perf_counter() - started
    rss = psutil.Process().memory_info().rss / 2**20
    engine = node.engine
    await producer.stop()
    await watcher.stop()
    await node.stop()
    lateness = [fired[k] - due[k] for k in fired]
    return {
        "runs": len(ids),
        "finished": len(finished),
        "submit_s": round(submit_s, 2),
        "wall_s": round(wall, 2),
        "events": events,
        "events_per_s": round(events / wall),
        "process_rss_mib": round(rss, 1),
        "timer_lateness_ms": {
            "p50": pct(lateness, 0.5),
            "p99": pct(lateness, 0.99),
            "max": max(lateness) if lateness else None,
            "early": sum(1 for x in lateness if x < 0),
        }
        if lateness
        else None,
        "engine_timer_firings": engine.timer_firings if engine else None,
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        fan = Workflow("fan").foreach(Flow().step(leaf), concurrency=args.fan_width, max_items=args.fan_width)
        out["fan"] = await _run(
            args.bootstrap, Path(tmp), fan, [list(range(args.fan_width))] * args.fan_runs, "RunCompleted"
        )
        out["fan"]["steps_per_s"] = round(args.fan_runs * args.fan_width / out["fan"]["wall_s"])
        nap = Workflow("nap").sleep(args.sleep_s, name="nap")
        out["timers"] = await _run(args.bootstrap, Path(tmp), nap, [None] * args.sleepers, "RunCompleted")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--fan-runs", type=int, default=100)
    parser.add_argument("--fan-width", type=int, default=100)
    parser.add_argument("--sleepers", type=int, default=10_000)
    parser.add_argument("--sleep-s", type=float, default=30.0)
    parser.add_argument("--snapshot-interval-s", type=float, default=60.0, help="engine snapshots (0: off)")
    parsed = parser.parse_args()
    SNAPSHOT_INTERVAL_S = parsed.snapshot_interval_s
    result = asyncio.run(main(parsed))
    print(json.dumps(result, indent=2))
    f, t = result["fan"], result["timers"]
    print(
        f"\nfan-out/fan-in: {f['finished']}/{f['runs']} runs joined, {f['events']} events in {f['wall_s']} s: "
        f"{f['steps_per_s']} steps/s, {f['events_per_s']} events/s"
    )
    lat = t["timer_lateness_ms"] or {}
    print(
        f"timers: {t['finished']}/{t['runs']} sleepers fired; lateness p50 {lat.get('p50')} ms, "
        f"p99 {lat.get('p99')} ms, max {lat.get('max')} ms, early {lat.get('early')}; RSS {t['process_rss_mib']} MiB"
    )
