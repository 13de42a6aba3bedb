"""Benchmark: what a hostile request body costs the event loop the API shares with the engine.

    python -m tests.bench.api_shield [--requests 5] [--concurrency 1]

The API (in-memory store, a producer that records) is served by uvicorn on this process's event loop, as in
``tickflow up``; a task on the same loop wakes every 10 ms and records how late it woke (the loop lag every
engine turn, heartbeat and projector batch on that loop would see). A client in another process (its own GIL)
sends ``--requests`` bodies of 4 MiB of ``[[],[],…]`` (1.4 million empty arrays: the costliest JSON per byte to
parse) to ``POST /runs``, first without the token, then with it. Prints one JSON document, then a summary line
per case. ``measure`` is what ``tests/security/test_gate.py`` asserts on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import uvicorn

from tests.conftest import free_port
from tests.unit.api.test_api_errors import RecordingProducer
from tickflow.api.app import create_api
from tickflow.events.topics import TopicNames
from tickflow.projections.store import MemoryStore

__all__ = ["TOKEN", "hostile_body", "measure", "send_hostile_bodies"]

TOKEN = "shield-token"
BODY_BYTES = 4 * 1024 * 1024

#: Runs in its own process: sends the bodies and prints each answer's status and duration as JSON.
_CLIENT = """
import json, sys, time, concurrent.futures, httpx
url, n, concurrency, token, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
count = (size - 2) // 3
body = b"[" + b",".join([b"[]"] * count) + b"]"
headers = {"content-type": "application/json"}
if token:
    headers["authorization"] = "Bearer " + token
def one(_):
    started = time.perf_counter()
    try:
        with httpx.Client(timeout=60) as client:
            status = client.post(url + "/runs", content=body, headers=headers).status_code
    except httpx.TransportError:  # refused and closed before the whole body was sent
        status = "closed"
    return status, time.perf_counter() - started
with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
    print(json.dumps(list(pool.map(one, range(n)))))
"""


def hostile_body(size: int = BODY_BYTES) -> bytes:
    """``[[],[],…]`` of at most ``size`` bytes."""
    return b"[" + b",".join([b"[]"] * ((size - 2) // 3)) + b"]"


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        began = time.monotonic()
        await asyncio.sleep(0.01)
        lags.append(time.monotonic() - began - 0.01)


async def send_hostile_bodies(url: str, *, requests: int, concurrency: int, token: str | None) -> list[Any]:
    """Send ``requests`` hostile bodies to ``url``/runs from another process: [(status or "closed", seconds)]."""
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CLIENT, url, str(requests), str(concurrency), token or "", str(BODY_BYTES),
        stdout=subprocess.PIPE,
    )
    out, _ = await client.communicate()
    answers: list[Any] = json.loads(out)
    return answers


async def measure(*, with_token: bool, requests: int = 5, concurrency: int = 1) -> dict[str, Any]:
    """Serve the API on this loop, send the hostile bodies from another process, and report the answers' statuses,
    their durations and the loop's lag meanwhile (max and p99, ms)."""
    app = create_api(store=MemoryStore(), producer=RecordingProducer(), topics=TopicNames("shield"),
                     workflows={"known"}, token=TOKEN, hosts=["127.0.0.1"], max_body_bytes=BODY_BYTES)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    lags: list[float] = []
    stop = asyncio.Event()
    ticking = asyncio.create_task(_ticker(lags, stop))
    try:
        answers = await send_hostile_bodies(f"http://127.0.0.1:{port}", requests=requests, concurrency=concurrency,
                                            token=TOKEN if with_token else None)
    finally:
        stop.set()
        await ticking
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serving, 10)
    ordered = sorted(lags)
    return {
        "with_token": with_token,
        "requests": requests,
        "concurrency": concurrency,
        "statuses": dict(Counter(str(status) for status, _ in answers)),
        "answer_s_max": round(max(seconds for _, seconds in answers), 3),
        "loop_lag_ms_max": round(ordered[-1] * 1000, 1),
        "loop_lag_ms_p99": round(ordered[int(len(ordered) * 0.99)] * 1000, 1),
    }


async def _main(requests: int, concurrency: int) -> None:
    results = [await measure(with_token=t, requests=requests, concurrency=concurrency) for t in (False, True)]
    print(json.dumps(results, indent=2))
    for r in results:
        who = "with the token   " if r["with_token"] else "without the token"
        print(f"{who}: answers {r['statuses']}, slowest {r['answer_s_max']} s; loop lag max "
              f"{r['loop_lag_ms_max']} ms, p99 {r['loop_lag_ms_p99']} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(_main(args.requests, args.concurrency))
