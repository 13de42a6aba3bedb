"""Commands from any Kafka client: runs started and resumed by records nobody built with tickflow.

Two producers that know nothing of tickflow: a plain aiokafka producer sending JSON typed out by hand, and Apache
Kafka's own console producer (a JVM, through ``tickflow broker console-producer``) fed the docs' lines as
printed, while ``tickflow follow`` watches the run to its end. Malformed commands land in the dead-letter topic
with a reason that names the field to fix; the docs' dead-letter example is read back with Kafka's console
consumer (a kafka-tools class, so the tools' jars are exercised too).
"""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.conftest import free_port
from tests.integration.harness import read_topic, role_env, settings_for
from tests.paths import REPO_ROOT
from tickflow import Client
from tickflow.demo import registry as demo_registry
from tickflow.events import DeadLetter
from tickflow.node import Node
from tickflow.settings import Settings

pytestmark = pytest.mark.integration

START = (
    '{"id": "start/%(run)s", "kind": "command", "type": "StartRun", "key": "%(run)s", "occurred_at_ms": %(now)d, '
    '"payload": {"workflow": "approval", "input": 1}}'
)
RESUME = (
    '{"id": "approve/%(run)s", "kind": "command", "type": "ResumeRun", "key": "%(run)s", "occurred_at_ms": %(now)d, '
    '"payload": {"event": "approve", "payload": {"approved": true, "by": "ops"}}}'
)
TYPO = (
    '{"id": "start/%(run)s", "kind": "command", "type": "StartRun", "key": "%(run)s", "occurred_at_ms": %(now)d, '
    '"payload": {"workflow": "approval", "inptu": 1}}'
)


async def test_hand_written_json_from_a_plain_producer_starts_resumes_and_completes_a_run(node: Node) -> None:
    topics, now = node.topics, int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=node.settings.bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topics.commands, (START % {"run": "hand-1", "now": now}).encode(), key=b"hand-1")
        await producer.send_and_wait(topics.commands, (TYPO % {"run": "hand-2", "now": now}).encode(), key=b"hand-2")
        misrouted = (START % {"run": "hand-3", "now": now}).encode()
        await producer.send_and_wait(topics.commands, misrouted, key=b"someone-else")
        unknown = (START % {"run": "hand-4", "now": now}).replace('"approval"', '"aproval"').encode()
        await producer.send_and_wait(topics.commands, unknown, key=b"hand-4")

        def until_waiting() -> None:
            with Client(node.settings.api_url) as c:
                for status in c.watch("hand-1", poll_s=0.05, timeout=60):
                    if status.waiting_for == "approve":
                        return
                raise AssertionError("hand-1 ended without waiting for 'approve'")

        await asyncio.to_thread(until_waiting)
        await producer.send_and_wait(topics.commands, (RESUME % {"run": "hand-1", "now": now}).encode(), key=b"hand-1")
    finally:
        await producer.stop()

    def finished() -> Any:
        with Client(node.settings.api_url) as c:
            return c.wait("hand-1", timeout=60)

    final = await asyncio.to_thread(finished)
    assert final.status == "completed" and final.output == "shipped after ops approved", final
    reasons = await _dead_letter_reasons(node.settings, 3)
    assert reasons["hand-2"].startswith(
        "invalid StartRun: payload.inptu: Extra inputs are not permitted (remove it; allowed here: workflow, input, "
    ), reasons["hand-2"]
    assert reasons["someone-else"].startswith(
        "key: the Kafka record has key 'someone-else', but its envelope's key is 'hand-3'; send the record with the "
        "envelope's key as its Kafka key"
    ), reasons["someone-else"]
    assert reasons["hand-4"].startswith("payload.workflow: unknown workflow 'aproval'; registered workflows: "), reasons


async def _dead_letter_reasons(settings: Settings, count: int) -> dict[str, str]:
    deadline = time.monotonic() + 30
    while True:
        letters = [e.payload for _, _, e in await read_topic(settings.kafka, settings.topics.dead_letter, 1)]
        reasons = {p.source_key or "": p.reason for p in letters if isinstance(p, DeadLetter)}
        if len(reasons) >= count or time.monotonic() > deadline:
            return reasons
        await asyncio.sleep(0.2)


# --- the docs' console-producer walk-through (docs/open-log.md), as printed ----------------------------------


def docs_commands() -> list[tuple[list[str], str | None]]:
    """The ``$ …`` commands of docs/open-log.md's "Commands from any Kafka client" section, in order, each with the
    lines its ``<<'EOF'`` heredoc feeds it (None: no stdin)."""
    page = (REPO_ROOT / "docs" / "open-log.md").read_text()
    section = page.split("## Commands from any Kafka client", 1)[1].split("\n## ", 1)[0]
    commands: list[tuple[list[str], str | None]] = []
    lines = iter(line for block in re.findall(r"^```console\n(.*?)^```", section, flags=re.S | re.M)
                 for line in block.splitlines())
    for line in lines:
        if not line.startswith("$ "):
            continue
        command = line[2:].split("  #")[0].strip()
        stdin = None
        if command.endswith("<<'EOF'"):
            command = command.removesuffix("<<'EOF'").strip()
            stdin = "".join(f"{body}\n" for body in _until_eof(lines))
        commands.append((shlex.split(command), stdin))
    return commands


def _until_eof(lines: Iterator[str]) -> Iterator[str]:
    for line in lines:
        if line == "EOF":
            return
        yield line


def _tickflow(argv: list[str], settings: Settings, **popen: Any) -> subprocess.Popen[str]:
    assert argv[0] == "tickflow", argv
    # The docs' topics are the default prefix's; this test's are its own.
    args = [a.replace("tickflow.", f"{settings.prefix}.", 1) if a.startswith("tickflow.") else a for a in argv[1:]]
    return subprocess.Popen([sys.executable, "-m", "tickflow.cli", *args], env=role_env(settings), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _wait_for_line(stream: IO[str], needle: str, timeout: float) -> list[str]:
    """Lines of ``stream`` up to the first that holds ``needle`` (AssertionError if it ends or times out first)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen.append(line)
        if needle in line:
            return seen
    raise AssertionError(f"no {needle!r} from follow; it printed:\n{''.join(seen)}")


async def test_the_docs_console_producer_walk_through_runs_as_printed(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    commands = docs_commands()
    assert [argv[:3] for argv, _ in commands] == [
        ["tickflow", "broker", "console-producer"], ["tickflow", "follow", "refund-1001"],
        ["tickflow", "broker", "console-producer"], ["tickflow", "broker", "console-producer"],
        ["tickflow", "broker", "console-consumer"],
    ]
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    settings = settings.with_(pools=tuple(sorted(demo_registry.pools())))
    node = Node(settings, demo_registry)
    await node.start()
    try:
        await asyncio.to_thread(_walk_through, commands, settings)
        with Client(settings.api_url) as c:
            final = await asyncio.to_thread(c.wait, "refund-1001", timeout=30)
        assert final.status == "completed" and final.output == {"status": "refunded", "by": "dana"}, final
    finally:
        await node.stop()


def _run(argv: list[str], settings: Settings, stdin: str | None) -> tuple[str, str]:
    """Run a docs command to its end (a producer reads its heredoc, then exits); its stdout and stderr."""
    process = _tickflow(argv, settings, stdin=subprocess.PIPE)
    out, err = process.communicate(stdin or "", timeout=180)
    assert process.returncode == 0, (argv, out, err)
    return out, err


def _walk_through(commands: list[tuple[list[str], str | None]], settings: Settings) -> None:
    (start, start_lines), (follow, _), (resume, resume_lines), (typo, typo_lines), (consume, _) = commands
    _run(start, settings, start_lines)
    following = _tickflow(follow, settings)
    try:
        assert following.stdout is not None
        before = _wait_for_line(following.stdout, "WaitStarted", 90)  # the run waits for "approval" now
        assert any("RunStarted" in line for line in before) and any("check_refund" in line for line in before)
        _run(resume, settings, resume_lines)
        rest, err = following.communicate(timeout=90)
        assert following.returncode == 0, (rest, err)
        assert "pay_refund" in rest and "RunCompleted" in rest.splitlines()[-1], rest
    finally:
        if following.poll() is None:
            following.kill()
            following.wait()
    _run(typo, settings, typo_lines)
    out, _ = _run([*consume, "--timeout-ms", "60000"], settings, None)
    assert "payload.inputs: Extra inputs are not permitted (remove it; allowed here: workflow, input" in out, out
