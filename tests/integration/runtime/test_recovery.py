"""Recovery runs outside the rebalance callback: a fold longer than the session timeout costs no eviction.

The log of one partition holds ~200,000 events (16,000 finished runs), so folding it takes several seconds more
than the engine's 6 s session timeout (the broker's minimum). Folded inside aiokafka's rebalance callback, where no
heartbeats are sent, the engine was evicted mid-fold and rebuilt the partition again and again. Now it rebuilds
once, in the background, with its inputs paused until the state is installed, and then serves new runs at once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.harness import settings_for
from tickflow.core.decider import RunState, Start, WorkerResult, run
from tickflow.events import Envelope, StartRun, StepSucceeded
from tickflow.events.codec import decode, encode
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics, new_producer, read_partition
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration
RUNS = 16_000
SESSION_TIMEOUT_MS = 6_000


def step(value: int) -> int:
    return value


registry = Registry()
_flow = Workflow("five")
for _i in range(5):
    _flow = _flow.step(step, name=f"s{_i}")
SPEC = registry.add(_flow)


def template(run_id: str, now_ms: int) -> list[bytes]:
    """The 13 events of one finished run of ``five``, encoded."""
    start = Envelope.wrap(StartRun(workflow="five", input=1), id=f"c/{run_id}", key=run_id, occurred_at_ms=now_ms)
    decision = run(RunState(run_id), Start(start, SPEC), now_ms, registry)
    events, state = list(decision.events), decision.state
    for i in range(5):
        done = StepSucceeded(path=f"s{i}", step=f"s{i}", attempt=1, output=1, duration_ms=1)
        result = Envelope.wrap(done, id=f"r/{run_id}/{i}", key=run_id, occurred_at_ms=now_ms)
        decision = run(state, WorkerResult(result), now_ms + i, registry)
        events, state = events + decision.events, decision.state
    assert state.status == "completed"
    return [encode(e) for e in events]


async def test_a_fold_longer_than_the_session_timeout_costs_no_eviction(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(
        prefix,
        kafka_bootstrap,
        tmp_path,
        free_port(),
        partitions=1,
        snapshot_interval_s=0,  # no snapshots: the engine folds the whole log
        session_timeout_ms=SESSION_TIMEOUT_MS,
    )
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    one = template("RUN0000000", int(time.time() * 1000))
    producer = new_producer(kafka_bootstrap, linger_ms=20)
    await producer.start()
    try:
        for n in range(RUNS):
            rid = f"RUN{n:07d}".encode()
            for raw in one:
                await producer.send(settings.topics.events, raw.replace(b"RUN0000000", rid), key=rid, partition=0)
        await producer.flush()
        node = Node(settings, registry, frozenset({"engine", "worker"}))
        began = time.monotonic()
        await node.start()
        try:
            engine = node.engine
            assert engine is not None
            for _ in range(1_200):
                if engine.recovered_partitions == {0}:
                    break
                await asyncio.sleep(0.1)
            took = time.monotonic() - began
            assert engine.recovered_partitions == {0}, "the partition was never rebuilt"
            assert took * 1000 > SESSION_TIMEOUT_MS, f"the fold took {took:.1f}s: too quick to prove anything"
            new = Envelope.wrap(StartRun(workflow="five", input=7), id="c/after", key="after", occurred_at_ms=1)
            await producer.send_and_wait(settings.topics.commands, encode(new), key=b"after")
            for _ in range(300):  # only the new events: decoding the whole log here would stall this loop
                tail = await read_partition(settings.bootstrap, settings.topics.events, 0, start=RUNS * len(one))
                if any(decode(r.value).type == "RunCompleted" for r in tail if r.key == b"after"):
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the engine did not run a new workflow after its recovery")
            assert (engine.recoveries_started, engine.recoveries) == (1, 1), "the engine was evicted and rebuilt again"
            assert len(engine.partitions[0].runs) == RUNS + 1
            print(f"\nrecovered {RUNS * len(one):,} events in {took:.1f}s with a {SESSION_TIMEOUT_MS} ms session")
        finally:
            await node.stop()
    finally:
        await producer.stop()
