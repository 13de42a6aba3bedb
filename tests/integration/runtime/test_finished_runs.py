"""A finished run leaves the engine's memory as a shrunk state (id, seq, status, times) long before its retention:
late inputs get the same answers as from the full state, the shrunk state is what the state topic keeps and what
recovery brings back, and verify-engine finds the engine equal to the log."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for
from tickflow.client import Client
from tickflow.events.codec import encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import ResumeRejected, ResumeRun, StartRun
from tickflow.node import Node
from tickflow.runtime.kafka import new_producer
from tickflow.runtime.replay import verify_engine

pytestmark = pytest.mark.integration


async def _until(check: object, what: str, timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s * 10)):
        if check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_finished_runs_shrink_answer_late_inputs_alike_and_recover_shrunk(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), finished_state_s=0.5,
                            snapshot_interval_s=0.3, partitions=1)
    node = Node(settings, registry)
    await node.start()
    producer = new_producer(kafka_bootstrap)
    await producer.start()
    try:
        engine = node.engine
        assert engine is not None
        with Client(settings.api_url) as c:
            ids = [await asyncio.to_thread(c.start, "fanout", [1, 2, 3], run_id="fin-fan"),
                   await asyncio.to_thread(c.start, "math", 4, run_id="fin-math")]
            for run_id in ids:
                assert (await asyncio.to_thread(c.wait, run_id, timeout=60)).status == "completed"
        runs = engine.partitions[0].runs
        await _until(lambda: all(runs[r].shrunk for r in ids), "the finished runs to shrink")
        children = [r for r, s in runs.items() if s.parent_run_id == "fin-fan"]
        assert len(children) == 3
        await _until(lambda: all(runs[r].shrunk for r in children), "the children to shrink")
        assert runs["fin-math"].spec is None and runs["fin-math"].nodes == {} and runs["fin-math"].output is None
        seq_before = runs["fin-math"].seq

        # Late inputs: a repeated start is ignored, a resume is rejected with the reason, as the full state would.
        late = [
            Envelope.wrap(StartRun(workflow="math", input=9), id="late-start", key="fin-math", occurred_at_ms=1),
            Envelope.wrap(ResumeRun(event="approve"), id="late-resume", key="fin-math", occurred_at_ms=1),
        ]
        for env in late:
            await producer.send_and_wait(settings.topics.commands, encode(env), key=b"fin-math")
        await _until(lambda: runs["fin-math"].seq == seq_before + 1, "the resume's rejection")
        assert runs["fin-math"].shrunk and runs["fin-math"].status == "completed"
        report = await verify_engine(engine)
        assert report.ok and report.runs_compared >= 5, report
        await _until(lambda: not engine.snapshots.dirty[0], "a snapshot round to write the shrunk states")
        await asyncio.sleep(0.5)  # its checkpoint follows the snapshots
    finally:
        await node.stop()

    restarted = Node(settings, registry)  # the shrunk states come back from the state topic
    await restarted.start()
    try:
        engine = restarted.engine
        assert engine is not None
        await _until(lambda: bool(engine.recovered_partitions), "recovery")
        recovered = engine.partitions[0].runs
        assert all(recovered[r].shrunk for r in [*ids, *children]), {r: recovered[r].shrunk for r in ids}
        assert recovered["fin-math"].seq == seq_before + 1
        assert engine.resent == 0  # nothing re-sent for runs finished long ago: no report, no release
        report = await verify_engine(engine)
        assert report.ok, report
    finally:
        await producer.stop()
        await restarted.stop()
    log = [e for _, _, e in await read_topic(kafka_bootstrap, settings.topics.events, settings.partitions)]
    rejected = [e.payload for e in log if isinstance(e.payload, ResumeRejected)]
    assert len(rejected) == 1 and "(completed) is not waiting for 'approve'" in rejected[0].reason
    assert [e.seq for e in log if e.key == "fin-math"] == list(range(1, seq_before + 2))  # the start added nothing
