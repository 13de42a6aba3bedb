"""The demo: start N order runs through the SDK, show progress, then summarise from ClickHouse."""

from __future__ import annotations

import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from services.client import Client
from services.config import Settings
from services.demo import registry
from services.runtime import Node

__all__ = ["run_demo"]


def _start_all(settings: Settings, count: int, batch: str, callers: int = 8) -> list[str]:
    """Start the runs from ``callers`` threads, each with its own SDK client, as concurrent users would."""
    items = [{"sku": "tea", "qty": 2, "price": 3.5}, {"sku": "cup", "qty": 1, "price": 9.0}]

    def share(k: int) -> list[str]:
        with Client(settings.api_url, token=settings.api_token) as c:
            return [
                c.start("order", {"id": f"{batch}-{i}", "items": items}, run_id=f"{batch}-{i:05d}")
                for i in range(k, count, callers)
            ]

    with ThreadPoolExecutor(callers) as pool:
        return [rid for ids in pool.map(share, range(callers)) for rid in ids]


async def run_demo(settings: Settings, count: int) -> None:
    node = Node(settings, registry)
    await node.start()
    batch = f"demo-{time.strftime('%H%M%S')}"
    try:
        t0 = time.monotonic()
        print(f"tickflow demo: starting {count} 'order' runs (5 steps each) through the API on {settings.api_url}")
        await asyncio.to_thread(_start_all, settings, count, batch)
        started_s = time.monotonic() - t0
        q = "SELECT status, count() FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String}) GROUP BY status"
        done = 0
        while True:
            rows = dict(await asyncio.to_thread(node.store.query, q, {"b": batch}))
            done = sum(rows.get(s, 0) for s in ("completed", "failed", "rejected"))
            elapsed = time.monotonic() - t0
            sys.stdout.write(
                f"\r  {done:>6}/{count} finished · {rows.get('running', 0):>5} running · "
                f"{rows.get('completed', 0):>6} completed · {rows.get('failed', 0):>4} failed · {elapsed:5.1f}s"
            )
            sys.stdout.flush()
            if done >= count or elapsed > 300:
                break
            await asyncio.sleep(0.25)
        total_s = time.monotonic() - t0
        print()
        await _summary(node, batch, count, started_s, total_s)
    finally:
        await node.stop()


async def _summary(node: Node, batch: str, count: int, started_s: float, total_s: float) -> None:
    store = node.store
    p = {"b": batch}
    statuses = await asyncio.to_thread(
        store.query,
        "SELECT status, count(), quantile(0.5)(finished_at - started_at), quantile(0.99)(finished_at - started_at) "
        "FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String}) GROUP BY status ORDER BY status",
        p,
    )
    events = await asyncio.to_thread(
        store.query,
        "SELECT type, count() FROM {db}.events FINAL WHERE startsWith(run_id, {b:String}) GROUP BY type ORDER BY type",
        p,
    )
    errors = await asyncio.to_thread(
        store.query,
        "SELECT error_message, count() FROM {db}.runs FINAL WHERE startsWith(run_id, {b:String}) "
        "AND status = 'failed' GROUP BY error_message ORDER BY count() DESC LIMIT 3",
        p,
    )
    ev = dict(events)
    print(f"\nSummary (read from ClickHouse, runs '{batch}-*'):")
    print(f"  started {count} runs in {started_s:.1f}s; all finished in {total_s:.1f}s")
    for status, n, p50, p99 in statuses:
        print(
            f"  {status:<10} {n:>6} runs   duration p50 {float(p50) * 1000:7.1f} ms   p99 {float(p99) * 1000:7.1f} ms"
        )
    steps = ev.get("StepCompleted", 0)
    print(
        f"  steps completed {steps}, step attempts failed {ev.get('StepFailed', 0)} "
        f"({steps / total_s:,.0f} durable steps/s end to end); events in the log {sum(ev.values())}"
    )
    for message, n in errors:
        print(f"  failure: {n} x {message}")
    print(f"\nTry: tickflow up   (in another shell)   then   tickflow status {batch}-00000 --events")
