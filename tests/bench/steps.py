"""Benchmark: durable steps/s, step-to-step latency, projection freshness, engine RSS.

    python -m tests.bench.steps [--runs 1000] [--concurrency 1,16,128]

Engine and worker run as separate processes (the scale-out shape); the projector runs here, in-process with
chDB. Each scenario uses fresh topics. Prints one JSON document, then a human summary. Not part of the test
suite: performance is measured here, never asserted in unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.conftest import free_port
from tests.integration.harness import spawn_roles
from tickflow.demo import registry
from tickflow.events import Envelope, StartRun, decode, encode
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics
from tickflow.settings import Settings

STEPS = 10


def pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def dist(values: list[float]) -> dict[str, float | int | None]:
    """n, p50/p90/p99 (nearest rank, as ``pct``) and max of a sample, rounded to 0.1."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None}
    ordered = sorted(values)
    quantiles = {f"p{round(q * 100)}": round(pct(ordered, q), 1) for q in (0.5, 0.9, 0.99)}
    return {"n": len(ordered), **quantiles, "max": round(ordered[-1], 1)}


async def scenario(bootstrap: str, runs: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap=bootstrap,
        prefix=prefix,
        partitions=8,
        state_dir=workdir / prefix,
        api_port=free_port(),
        worker_concurrency=concurrency,
        commit_interval_ms=200,
        projector_batch_ms=100,
    )
    await ensure_topics(bootstrap, settings.topics, settings.pools)
    engine = spawn_roles(settings, "engine", workdir / f"{prefix}-engine.log", app="tickflow.demo:registry")
    worker = spawn_roles(settings, "worker", workdir / f"{prefix}-worker.log", app="tickflow.demo:registry")
    projector = Node(settings, registry, frozenset({"projector"}))
    await projector.start()
    watcher = AIOKafkaConsumer(
        settings.topics.events,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=20,
        isolation_level="read_committed",
    )
    await watcher.start()
    try:
        await asyncio.sleep(4)  # let both processes join their groups
        # Warm-up and unloaded latency: one run at a time.
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
        await producer.start()
        done: set[str] = set()
        scheduled: dict[str, list[int]] = defaultdict(list)

        async def pump(until: set[str], timeout: float) -> None:
            deadline = time.monotonic() + timeout
            while not until <= done:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{len(until - done)} runs unfinished after {timeout}s")
                batch = await watcher.getmany(timeout_ms=200, max_records=20_000)
                for records in batch.values():
                    for r in records:
                        e = decode(r.value)
                        if e.type == "StepScheduled":
                            scheduled[e.key].append(r.timestamp)
                        elif e.type == "RunCompleted":
                            done.add(e.key)

        async def start(ids: list[str]) -> None:
            for rid in ids:
                cmd = Envelope.wrap(
                    StartRun(workflow="noop10", input=0), id=f"s/{rid}", key=rid, occurred_at_ms=int(time.time() * 1000)
                )
                await producer.send(settings.topics.commands, encode(cmd), key=rid.encode())
            await producer.flush()

        serial = [f"serial-{i}" for i in range(20)]
        for rid in serial:
            await start([rid])
            await pump({rid}, 60)
        unloaded = [b - a for rid in serial for a, b in zip(scheduled[rid], scheduled[rid][1:], strict=False)]

        ids = [f"load-{i:05d}" for i in range(runs)]
        t0 = time.monotonic()
        await start(ids)
        await pump(set(ids), 600)
        elapsed = time.monotonic() - t0
        loaded = [b - a for rid in ids for a, b in zip(scheduled[rid], scheduled[rid][1:], strict=False)]
        engine_rss = psutil.Process(engine.pid).memory_info().rss / 2**20
        worker_rss = psutil.Process(worker.pid).memory_info().rss / 2**20
        await producer.stop()

        # Freshness: wait for the projector to catch up, then ask ClickHouse itself.
        store = projector.store
        expected = (len(ids) + len(serial)) * (2 + 2 * STEPS)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and await asyncio.to_thread(store.event_count) < expected:
            await asyncio.sleep(0.2)
        q = (
            "SELECT quantile(0.5)(d), quantile(0.99)(d), count() FROM "
            "(SELECT toUnixTimestamp64Milli(projected_at) - toUnixTimestamp64Milli(occurred_at) AS d "
            "FROM {db}.events WHERE startsWith(run_id, 'load-'))"
        )
        f50, f99, projected = (await asyncio.to_thread(store.query, q))[0]
        return {
            "concurrency": concurrency,
            "runs": runs,
            "steps": runs * STEPS,
            "seconds": round(elapsed, 3),
            "steps_per_s": round(runs * STEPS / elapsed, 1),
            "step_to_step_ms_unloaded": {"p50": pct(unloaded, 0.5), "p99": pct(unloaded, 0.99)},
            "step_to_step_ms_loaded": {"p50": pct(loaded, 0.5), "p99": pct(loaded, 0.99)},
            "freshness_ms": {"p50": float(f50), "p99": float(f99), "events": int(projected)},
            "engine_rss_mib": round(engine_rss, 1),
            "worker_rss_mib": round(worker_rss, 1),
        }
    finally:
        await watcher.stop()
        await projector.stop()
        for proc in (engine, worker):
            proc.terminate()
            proc.wait(20)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--concurrency", default="1,16,128")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-") as tmp:
        for c in (int(x) for x in args.concurrency.split(",")):
            results.append(await scenario(args.bootstrap, args.runs, c, Path(tmp)))
    report = {"benchmark": "durable no-op steps", "cpus": psutil.cpu_count(), "results": results}
    print(json.dumps(report, indent=2))
    print("\nSummary (one run on a shared, noisy 2-core box):")
    for r in results:
        print(
            f"  concurrency {r['concurrency']:>3}: {r['steps_per_s']:>7,.0f} steps/s "
            f"({r['steps']} steps in {r['seconds']}s); step→step unloaded p50 {r['step_to_step_ms_unloaded']['p50']} ms"
            f" p99 {r['step_to_step_ms_unloaded']['p99']} ms, loaded p50 {r['step_to_step_ms_loaded']['p50']} ms"
            f" p99 {r['step_to_step_ms_loaded']['p99']} ms; freshness p50 {r['freshness_ms']['p50']:.0f} ms"
            f" p99 {r['freshness_ms']['p99']:.0f} ms; engine RSS {r['engine_rss_mib']} MiB"
        )


if __name__ == "__main__":
    asyncio.run(main())
