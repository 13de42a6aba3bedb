"""A provider's limits hold for a pool as a whole: three worker processes serve one pool against the local
OpenAI-compatible test server, which counts the requests that arrive in any time window and at once.

Scaled down so it runs in well under a minute: 60 requests/min with a 2 s burst window, measured over 10 s windows,
and a concurrency limit of 4 against a model that answers in 0.2 s. With a limiter per process and no sharing, three
workers sent about three times each limit (36 requests in 10 s, 12 at once); with shares, the pool stays within one.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.harness import settings_for, spawn_roles
from tests.integration.limited_flows import registry
from tests.integration.test_faults import start_runs, wait_until
from tests.llm_server import LlmTestServer, running_llm_server
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration

RPM = 60.0
BURST_WINDOW_S = 2.0
WINDOW_S = 10.0
CONCURRENCY = 4
#: Allowance for the time from a request leaving its limiter to its arrival at the server: a window of arrivals can
#: hold the requests let through in that much more time (it is milliseconds; a loaded 2-core box gets a full second).
SKEW_S = 1.0
SHARED = re.compile(r"LLM provider limits shared as LimitShare\('default', (\d+)/(\d+) partitions \[([0-9, ]*)\]\)")


@dataclass
class Seen:
    """What the test server counted: the most requests in any window and the most at once, per limited model."""

    most_in_window: int
    peak_overlap: int
    shares: list[set[int]]
    partitions: int


def _shares(logs: list[Path]) -> tuple[list[set[int]], int]:
    """Each worker's latest share (its owned partitions) as it logged it, and the pool's partition count."""
    shares, partitions = [], 0
    for path in logs:
        found = SHARED.findall(path.read_text() if path.exists() else "")
        if found:
            partitions = int(found[-1][1])
            shares.append({int(p) for p in found[-1][2].split(",") if p.strip()})
        else:
            shares.append(set())
    return shares, partitions


async def measure(server: LlmTestServer, kafka_bootstrap: str, prefix: str, tmp_path: Path, workers: int,
                  monkeypatch: pytest.MonkeyPatch, *, runs: int = 60, wait_for_shares: bool = True) -> Seen:
    """Start ``workers`` worker processes of the pool, ``runs`` runs of each limited agent, and count what the server
    saw over ``WINDOW_S`` seconds plus the skew from the first request."""
    config = tmp_path / "llm.json"
    config.write_text(json.dumps({
        "providers": [
            {"name": "capped", "base_url": server.base_url, "timeout_s": 30, "retry": {"max_attempts": 1},
             "limits": {"requests_per_minute": RPM, "burst_window_s": BURST_WINDOW_S}},
            {"name": "crowded", "base_url": server.base_url, "timeout_s": 30, "retry": {"max_attempts": 1},
             "limits": {"max_concurrency": CONCURRENCY}},
        ],
        "models": [{"id": "ok", "provider": "capped"}, {"id": "slow-counted", "provider": "crowded"}],
        "chains": {"capped": ["ok"], "crowded": ["slow-counted"]},
    }))
    monkeypatch.setenv("TICKFLOW_LLM_CONFIG", str(config))
    # Slots for every run's step at once, so steps waiting on one provider's limit never keep the other's from a slot.
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), session_timeout_ms=6_000,
                            worker_concurrency=2 * runs)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    logs = [tmp_path / f"worker{i}.log" for i in range(workers)]
    procs = [spawn_roles(settings, "worker", log, app="tests.integration.limited_flows:registry") for log in logs]
    engine = Node(settings, registry, frozenset({"engine"}))
    await engine.start()
    try:
        if wait_for_shares:
            async def every_worker_has_its_share() -> bool:
                shares, partitions = _shares(logs)
                return (all(shares) and partitions > 0 and sum(len(s) for s in shares) == partitions
                        and set().union(*shares) == set(range(partitions)))

            await wait_until(every_worker_has_its_share, 90, f"{workers} workers to split the pool's partitions")
        else:  # the code before shares logs none: give the group time to settle
            await asyncio.sleep(20)
        ids = [f"c{i:03d}" for i in range(runs)]
        await start_runs(settings, ids, "agent_capped", {rid: f"question {rid}" for rid in ids})
        crowd = [f"w{i:03d}" for i in range(runs)]
        await start_runs(settings, crowd, "agent_crowded", {rid: f"question {rid}" for rid in crowd})

        async def first_request() -> bool:
            return bool(server.for_model("ok"))

        await wait_until(first_request, 60, "the first LLM request")
        first = min(r.started for r in server.for_model("ok"))
        await asyncio.sleep(max(first + WINDOW_S + SKEW_S - time.monotonic(), 0))
    finally:
        for proc in procs:  # the runs are not needed to finish: kill, not the graceful stop that drains them
            proc.kill()
            proc.wait(10)
        await engine.stop()
    shares, partitions = _shares(logs)
    return Seen(server.most_in_window("ok", WINDOW_S), server.peak_overlap("slow-counted"), shares,
                partitions or settings.partitions)


def allowed_in_window(shares: list[set[int]], partitions: int) -> float:
    """The most requests the pool may send in ``WINDOW_S`` seconds: each worker's burst capacity (its share of the
    burst, at least one whole request) plus the pool's rate over the window and the skew."""
    bursts = sum(max(RPM * len(s) / partitions * BURST_WINDOW_S / 60, 1.0) for s in shares)
    return bursts + RPM * (WINDOW_S + SKEW_S) / 60


async def test_three_workers_keep_a_pool_within_one_providers_limits(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_llm_server() as server:
        seen = await measure(server, kafka_bootstrap, prefix, tmp_path, 3, monkeypatch)
    allowed = allowed_in_window(seen.shares, seen.partitions)
    print(f"\n3 workers, shares {seen.shares} of {seen.partitions}: {seen.most_in_window} requests in "
          f"{WINDOW_S:.0f} s (allowed {allowed:.1f}), {seen.peak_overlap} at once (limit {CONCURRENCY})")
    assert seen.most_in_window <= allowed, "the workers together passed the provider's requests/min"
    # The shares add up to the whole limit: the pool gets its full rate, not a third of it.
    assert seen.most_in_window >= RPM * WINDOW_S / 60
    assert seen.peak_overlap <= CONCURRENCY, "the workers together passed the provider's concurrency"
    assert seen.peak_overlap >= 2, "the concurrency limit was never approached: it proves nothing"
