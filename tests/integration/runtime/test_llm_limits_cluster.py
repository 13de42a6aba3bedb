"""A provider's limits hold for a pool as a whole: three worker processes serve one pool against the local
OpenAI-compatible test server, which counts the requests that arrive in any time window and at once.

Scaled down to run in under a minute: a concurrency limit of 4 against a model that answers in 0.2 s, then 60
requests/min with a 2 s burst window, measured over 8 s windows. With a limiter per process and no sharing, three
workers sent about three times each limit (30 requests in 8 s, 6 at once with 2 slots each); with shares, the pool
stays within one. Then the worker with the most partitions is killed: the two left re-split the limit and the pool
keeps its full rate (without the re-split it would fall to half).

Each worker runs 2 steps at once: a rebalance waits for the steps in flight (up to 30 s), and steps held by a rate
limit finish slowly, so few slots keep the re-split after the kill quick.
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
from tests.integration.runtime.test_faults import start_runs, wait_until
from tests.llm_server import LlmTestServer, running_llm_server
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration

RPM = 60.0
BURST_WINDOW_S = 2.0
WINDOW_S = 8.0
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


async def _split(logs: list[Path]) -> None:
    """Until the workers logging to ``logs`` hold shares that cover the pool's partitions once each."""

    async def covered() -> bool:
        shares, partitions = _shares(logs)
        return (all(shares) and partitions > 0 and sum(len(s) for s in shares) == partitions
                and set().union(*shares) == set(range(partitions)))

    await wait_until(covered, 90, f"{len(logs)} workers to split the pool's partitions")


async def measure(server: LlmTestServer, kafka_bootstrap: str, prefix: str, tmp_path: Path, workers: int,
                  monkeypatch: pytest.MonkeyPatch, *, runs: int = 100, wait_for_shares: bool = True,
                  kill_one: bool = False, window_s: float = WINDOW_S) -> tuple[Seen, Seen | None]:
    """Start ``workers`` worker processes of the pool, 60 runs of the concurrency-limited agent and, once they are
    done, ``runs`` of the rate-limited one; count what the server saw at once, and in ``window_s`` seconds plus the
    skew from the first rate-limited request. ``kill_one``: then kill the worker with the most partitions and count
    again once the rest re-split."""
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
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), session_timeout_ms=6_000,
                            worker_concurrency=2)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    logs = [tmp_path / f"worker{i}.log" for i in range(workers)]
    procs = [spawn_roles(settings, "worker", log, app="tests.integration.limited_flows:registry") for log in logs]
    engine = Node(settings, registry, frozenset({"engine"}))
    await engine.start()
    after = None
    try:
        if wait_for_shares:
            await _split(logs)
        else:  # the code before shares logs none: give the group time to settle
            await asyncio.sleep(20)
        crowd = [f"w{i:03d}" for i in range(60)]
        await start_runs(settings, crowd, "agent_crowded", {rid: f"question {rid}" for rid in crowd})

        async def crowd_served() -> bool:
            return sum(1 for r in server.for_model("slow-counted") if r.finished) == len(crowd)

        await wait_until(crowd_served, 60, "the concurrency-limited runs' LLM calls")
        ids = [f"c{i:03d}" for i in range(runs)]
        await start_runs(settings, ids, "agent_capped", {rid: f"question {rid}" for rid in ids})

        async def first_request() -> bool:
            return bool(server.for_model("ok"))

        await wait_until(first_request, 60, "the first LLM request")
        first = min(r.started for r in server.for_model("ok"))
        await asyncio.sleep(max(first + window_s + SKEW_S - time.monotonic(), 0))
        shares, partitions = _shares(logs)
        before = Seen(server.most_in_window("ok", window_s), server.peak_overlap("slow-counted"), shares,
                      partitions or settings.partitions)
        if kill_one:
            biggest = max(range(workers), key=lambda i: len(shares[i]))
            procs[biggest].kill()  # its partitions go to the others after its session times out
            procs[biggest].wait(10)
            rest = [log for i, log in enumerate(logs) if i != biggest]
            await (_split(rest) if wait_for_shares else asyncio.sleep(20))
            since = time.monotonic()
            await asyncio.sleep(window_s + SKEW_S)
            assert len(server.for_model("ok")) < runs, "the runs ran out while measuring: it would prove nothing"
            shares, partitions = _shares(rest)
            after = Seen(server.most_in_window("ok", window_s, since=since), 0, shares,
                         partitions or settings.partitions)
    finally:
        for proc in procs:  # the runs are not needed to finish: kill, not the graceful stop that drains them
            proc.kill()
            proc.wait(10)
        await engine.stop()
    return before, after


def allowed_in_window(seen: Seen) -> float:
    """The most requests the pool may send in ``WINDOW_S`` seconds: each worker's burst capacity (its share of the
    burst, at least one whole request) plus the pool's rate over the window and the skew."""
    bursts = sum(max(RPM * len(s) / seen.partitions * BURST_WINDOW_S / 60, 1.0) for s in seen.shares)
    return bursts + RPM * (WINDOW_S + SKEW_S) / 60


async def test_three_workers_keep_a_pool_within_one_providers_limits_and_re_split_when_one_dies(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_llm_server() as server:
        seen, after = await measure(server, kafka_bootstrap, prefix, tmp_path, 3, monkeypatch, kill_one=True)
    assert after is not None
    allowed = allowed_in_window(seen)
    print(f"\n3 workers, shares {seen.shares} of {seen.partitions}: {seen.most_in_window} requests in "
          f"{WINDOW_S:.0f} s (allowed {allowed:.1f}), {seen.peak_overlap} at once (limit {CONCURRENCY}); "
          f"after a kill, shares {after.shares}: {after.most_in_window} (allowed {allowed_in_window(after):.1f})")
    assert seen.most_in_window <= allowed, "the workers together passed the provider's requests/min"
    # The shares add up to the whole limit: the pool gets its full rate, not a third of it.
    assert seen.most_in_window >= RPM * WINDOW_S / 60
    assert seen.peak_overlap <= CONCURRENCY, "the workers together passed the provider's concurrency"
    assert seen.peak_overlap >= 2, "the concurrency limit was never approached: it proves nothing"
    # Two workers left, re-split: still within the limit, and at the full rate again. Had they kept their old shares
    # (half the partitions: the dead worker had the most), they would pass at most half of it plus one request each.
    assert after.most_in_window <= allowed_in_window(after)
    assert after.most_in_window >= RPM * (WINDOW_S - SKEW_S) / 60
