"""Exactly once at the seams, on the paths users take: a graceful stop (SIGTERM in a rolling deploy) and a crash
between a transaction and the offset commit that follows it.

* **SIGTERM cycles**: the engine process is stopped with SIGTERM and started again, cycle after cycle, under a
  steady load of starts, resumes, cancels and stack commands. The test keeps every command the broker acknowledged:
  each start has its run, each resume took effect exactly once, each cancel ended its run, each stack ends as its
  last command left it, and the shared checker finds nothing lost, duplicated, missing or applied twice.
* **Redelivery**: an engine whose offsets lag far behind its transactions (a long commit interval) is killed; the
  next one reads those inputs again. Nothing is applied twice: not a resume of a run waiting for two approvals
  (taken twice, it would complete both), not a chat message, not a stack's Pause that changed nothing before a Play
  (taken again, it would pause the stack the Play set going). The group's offsets say nothing of what the
  transactions applied; the applied-offsets note each transaction ends with does.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.checker import STACK_COMMANDED, Integrity, check_log
from tests.integration.flows import registry
from tests.integration.harness import settings_for, spawn_roles, worker_node
from tests.integration.runtime.test_faults import stop
from tickflow.events import CancelRun, Envelope, ResumeRun, StartRun, encode
from tickflow.events.agents import CreateStack, PauseStack, PlayStack, stack_key
from tickflow.events.schemas import Payload
from tickflow.node import Node
from tickflow.runtime.engine import Engine
from tickflow.runtime.kafka import new_producer
from tickflow.settings import Settings

pytestmark = pytest.mark.integration
CYCLES = 20


@pytest.fixture
async def workers(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=1)
    async with worker_node(settings, registry) as node:
        yield node


class Commands:
    """Produces commands (acks=all) and keeps each one the broker acknowledged."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = new_producer(settings.bootstrap)
        self.acked: list[Envelope] = []
        self._ids = itertools.count()

    async def __aenter__(self) -> Commands:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()

    async def send(self, key: str, payload: Payload, id: str | None = None) -> Envelope:
        command = Envelope.wrap(
            payload, id=id or f"{type(payload).__name__}/{key}/{next(self._ids)}", key=key, occurred_at_ms=1
        )
        await self.producer.send_and_wait(self.settings.topics.commands, encode(command), key=key.encode())
        self.acked.append(command)
        return command


async def _until(check: Callable[[Integrity], bool], settings: Settings, what: str, timeout: float) -> Integrity:
    deadline = time.monotonic() + timeout
    while True:
        found = await check_log(settings)
        if check(found):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {found.summary()}")
        await asyncio.sleep(0.3)


def _events(found: Integrity, key: str, *types: str) -> list[Envelope]:
    return [e for e in found.events if e.key == key and (not types or e.type in types)]


def _completed_waits(found: Integrity, key: str) -> list[str]:
    """The wait nodes of run ``key`` a resume completed, in order."""
    completed = _events(found, key, "NodeCompleted")
    return [e.payload.path for e in completed if (e.causation_id or "").startswith("resume/")]  # type: ignore[attr-defined]


async def _recovered(log: Path, partitions: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and log.read_text().count(" recovered: ") >= partitions:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the engine did not recover its partitions:\n{log.read_text()[-3000:]}")


async def test_inputs_read_again_after_a_crash_between_transaction_and_offset_commit_are_applied_once(
    workers: Node, tmp_path: Path
) -> None:
    settings = workers.settings
    stack = stack_key("s1")
    # Offsets are committed at the engine's first turn, then not for a minute: everything below is read again.
    lagging = spawn_roles(settings.with_(commit_interval_ms=60_000), "engine", tmp_path / "lagging.log")
    engine: subprocess.Popen[bytes] | None = None
    try:
        async with Commands(settings) as commands:
            await commands.send("ta", StartRun(workflow="two_approvals"))
            await commands.send("chat", StartRun(workflow="chat"))
            await commands.send(stack, CreateStack(workflow="stack_tick", interval_s=3600, playing=False))
            await _until(
                lambda f: {"ta", "chat"} <= {e.key for e in f.events} and bool(_events(f, stack)),
                settings, "the runs and the stack", 60,
            )
            await commands.send("ta", ResumeRun(event="approve", payload="yes"), id="resume/ta/1")
            await commands.send("chat", ResumeRun(event="message", payload="hello"), id="resume/chat/1")
            await commands.send(stack, PauseStack(reason="already paused: changes nothing"), id="pause/s1/1")
            await commands.send(stack, PlayStack(), id="play/s1/1")
            await _until(
                lambda f: _completed_waits(f, "ta") == ["first"]
                and len(_events(f, "chat", "StepCompleted")) == 1
                and bool(_events(f, stack, "StackPlayed")),
                settings, "the commands' effects", 60,
            )
            lagging.send_signal(signal.SIGKILL)  # after the transactions, before the offsets: all read again
            await asyncio.to_thread(lagging.wait, 30)

            engine = spawn_roles(settings, "engine", tmp_path / "engine.log")
            await _recovered(tmp_path / "engine.log", settings.partitions)
            await asyncio.sleep(3)  # every redelivered input is handled by now
            found = await check_log(settings)
            assert found.commands_applied_twice == [], found.commands_applied_twice
            assert _completed_waits(found, "ta") == ["first"], "one resume completed both approvals"
            assert len(_events(found, "chat", "StepCompleted")) == 1, "one chat message answered twice"
            last = _events(found, stack, *STACK_COMMANDED)[-1]
            assert last.type == "StackPlayed", f"the stack ends {last.type} after the Pause it skipped was taken again"

            await commands.send("ta", ResumeRun(event="approve", payload="again"), id="resume/ta/2")
            await commands.send("chat", ResumeRun(event="message", payload="bye"), id="resume/chat/2")
            await commands.send(stack, PauseStack(), id="pause/s1/2")
            found = await _until(lambda f: not f.problems(), settings, "every run to finish", 60)
            assert found.resumes_without_effect == []
            assert _completed_waits(found, "ta") == ["first", "second"]
            print(f"\nredelivery: {found.summary()}")
    finally:
        stop(lagging)
        if engine is not None:
            stop(engine)


async def _steady_load(commands: Commands, stacks: list[str], stop_at: asyncio.Event, rate: float) -> None:
    """Starts, resumes, cancels and stack commands at about ``rate`` commands per second until ``stop_at``."""
    rng = random.Random(7)
    for n in itertools.count():
        if stop_at.is_set():
            return
        kind = n % 4
        if kind == 0:
            await commands.send(f"sq-{n}", StartRun(workflow="square", input=n))
        elif kind == 1:  # both resumes follow the start on the run's partition: each completes one wait
            await commands.send(f"ta-{n}", StartRun(workflow="two_approvals"))
            await commands.send(f"ta-{n}", ResumeRun(event="approve", payload=1), id=f"resume/ta-{n}/1")
            await commands.send(f"ta-{n}", ResumeRun(event="approve", payload=2), id=f"resume/ta-{n}/2")
        elif kind == 2:
            await commands.send(f"st-{n}", StartRun(workflow="stuck"))
            await commands.send(f"st-{n}", CancelRun(reason="load"))
        else:
            stack = rng.choice(stacks)
            await commands.send(stack, rng.choice([PauseStack(reason="load"), PlayStack()]))
        await asyncio.sleep(1 / rate)


async def test_sigterm_cycles_lose_and_repeat_nothing(workers: Node, tmp_path: Path) -> None:
    settings = workers.settings
    stacks = [stack_key(f"s{i}") for i in range(3)]
    stop_at = asyncio.Event()
    async with Commands(settings) as commands:
        for stack in stacks:
            await commands.send(stack, CreateStack(workflow="stack_tick", interval_s=1, playing=True))
        load = asyncio.create_task(_steady_load(commands, stacks, stop_at, rate=40))
        exits = []
        rng = random.Random(11)
        try:
            for cycle in range(CYCLES):
                engine = spawn_roles(settings, "engine", tmp_path / f"engine-{cycle}.log")
                await _recovered(tmp_path / f"engine-{cycle}.log", settings.partitions)
                await asyncio.sleep(rng.uniform(0.5, 2.0))  # serving under load, mid-turn at the signal
                engine.send_signal(signal.SIGTERM)
                exits.append(await asyncio.to_thread(engine.wait, 40))
                assert not load.done(), load
        finally:
            stop_at.set()
            await load
        assert exits == [0] * CYCLES, exits
        for stack in stacks:  # the end: every stack paused, so every tick run can finish
            await commands.send(stack, PauseStack(reason="end of the test"))
        final = spawn_roles(settings, "engine", tmp_path / "final.log")
        try:
            found = await _until(lambda f: not f.problems(), settings, "every run to finish", 120)
        finally:
            stop(final)
    found.assert_clean()
    starts = {c.key for c in commands.acked if isinstance(c.payload, StartRun)}
    assert starts <= found.started and not found.lost
    assert found.resumes_without_effect == [] and found.commands_applied_twice == []
    for key in {c.key for c in commands.acked if c.key.startswith("ta-")}:
        assert _completed_waits(found, key) == ["first", "second"], key
    cancelled = {e.key for e in found.events if e.type == "RunCancelled"}
    assert {c.key for c in commands.acked if isinstance(c.payload, CancelRun)} <= cancelled
    for stack in stacks:
        assert _events(found, stack, *STACK_COMMANDED)[-1].type == "StackPaused", stack
    print(
        f"\nSIGTERM x{CYCLES}: {len(commands.acked)} commands acknowledged, {len(starts)} runs; {found.summary()}"
    )


async def test_a_transaction_the_coordinator_aborted_is_rebuilt_not_left_as_fenced(
    workers: Node, tmp_path: Path
) -> None:
    """A turn outlasts the transaction timeout (here: the loop is held 16 s with a 2 s timeout; in production a
    long stall). The coordinator aborts the transaction and bumps the epoch, which aiokafka reports as
    ``ProducerFenced`` — as it does a newer owner's fence. The group still gives the partition to this engine (the
    30 s session outlasts the stall), so the engine rebuilds the partition with a new writer and its runs finish.
    Before, it gave the partition up as fenced and left it paused for good: its runs never finished."""
    settings = workers.settings.with_(transaction_timeout_ms=2_000, session_timeout_ms=30_000)
    armed, stalled = False, False

    def stall(point: str, key: str) -> None:
        nonlocal stalled
        if armed and point == "txn-open" and not stalled:
            stalled = True
            time.sleep(16)  # past the timeout and the coordinator's 10 s sweep for timed-out transactions

    engine = Engine(settings, registry, crash=stall)
    await engine.start()
    try:
        for _ in range(300):
            if len(engine.recovered_partitions) == settings.partitions:
                break
            await asyncio.sleep(0.1)
        armed = True
        async with Commands(settings) as commands:
            for i in range(20):
                await commands.send(f"sq-{i}", StartRun(workflow="square", input=i))
        found = await _until(lambda f: len(f.started) == 20 and not f.problems(), settings, "the runs", 90)
        assert stalled and engine.given_up >= 1 and engine.fenced == 0, (engine.given_up, engine.fenced)
        assert engine.recovered_partitions == set(range(settings.partitions))
        print(f"\naborted for its timeout: {engine.given_up} partition(s) rebuilt; {found.summary()}")
    finally:
        await engine.stop()
