"""The shared checker finds what it must: a crafted log with one of each violation is counted exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.harness import settings_for
from tickflow.events import Envelope, ErrorInfo, RunCompleted, RunFailed, StartRun, StepCompleted, encode
from tickflow.events.agents import StackPlayed
from tickflow.events.schemas import Event, NodeCompleted, ResumeRejected, ResumeRun, RunStarted, WaitStarted
from tickflow.runtime.kafka import ensure_topics, new_producer
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration


def step(value: int) -> int:
    return value


async def test_each_violation_is_counted(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), partitions=1)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    spec = Registry().add(Workflow("w").step(step, name="s"))

    def event(key: str, seq: int, payload: Event, cause: str | None = None) -> bytes:
        return encode(
            Envelope.wrap(payload, id=f"{key}/{seq}", key=key, seq=seq, occurred_at_ms=1, causation_id=cause)
        )

    started = RunStarted(workflow="w", spec_hash="h", spec=spec, input=1)
    done = StepCompleted(path="s", step="s", attempt=1, output=1, duration_ms=1)
    log = [
        event("ok", 1, started),
        event("ok", 2, RunCompleted(output=1)),
        event("dup", 1, started),
        event("dup", 1, started),
        event("dup", 2, RunCompleted(output=1)),
        event("gap", 1, started),
        event("gap", 3, RunCompleted(output=1)),
        event("twice", 1, started),
        event("twice", 2, done),
        event("twice", 3, done),
        event("twice", 4, RunFailed(error=ErrorInfo(type="x", message="y"))),
        event("open", 1, started),
        event("resumed", 1, started),
        event("resumed", 2, WaitStarted(path="w1", event="e")),
        event("resumed", 3, NodeCompleted(path="w1", output=1), "resume-1"),
        event("resumed", 4, WaitStarted(path="w2", event="e")),
        event("resumed", 5, NodeCompleted(path="w2", output=1), "resume-1"),  # the same resume, taken again
        event("resumed", 6, ResumeRejected(event="e", reason="r", command_id="resume-2"), "resume-2"),
        event("resumed", 7, RunCompleted(output=1)),
        event("stack:s", 1, StackPlayed(), "play-1"),
        event("stack:s", 2, StackPlayed(), "play-1"),
    ]
    producer = new_producer(kafka_bootstrap)
    await producer.start()
    try:
        for key in ("ok", "dup", "gap", "twice", "open", "lost", "resumed"):
            start = Envelope.wrap(StartRun(workflow="w"), id=f"start/{key}", key=key, occurred_at_ms=1)
            await producer.send_and_wait(settings.topics.commands, encode(start), key=key.encode())
        for command_id in ("resume-1", "resume-2", "resume-3"):
            resume = Envelope.wrap(ResumeRun(event="e"), id=command_id, key="resumed", occurred_at_ms=1)
            await producer.send_and_wait(settings.topics.commands, encode(resume), key=b"resumed")
        for raw in log:
            await producer.send_and_wait(settings.topics.events, raw, partition=0)
        await producer.send_and_wait(settings.topics.events, b"not json", partition=0)
    finally:
        await producer.stop()
    found = await check_log(settings)
    assert found.lost == ["lost"]
    assert found.duplicates == [("dup", 1)]
    assert found.gaps == [("gap", [1, 3])]
    assert found.results_applied_twice == [("twice", "s", 1)]
    assert found.unfinished == ["lost", "open"]
    assert found.commands_applied_twice == [("resumed", "resume-1"), ("stack:s", "play-1")]
    assert found.resumes_without_effect == [("resumed", "resume-3")]
    assert found.unreadable == 1 and len(found.events) == len(log)
    assert len(found.problems()) == 6 and len(found.problems(finished=False)) == 5
    with pytest.raises(AssertionError, match="1 lost"):
        found.assert_clean()
