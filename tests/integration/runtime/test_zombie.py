"""A zombie engine: frozen (SIGSTOP) with a transaction open, past its session timeout, then resumed (SIGCONT).

The engine freezes itself at the ``txn-open`` crash point: the broker holds every record of its turn (events,
tasks, commands, dead letters), none committed. A second engine is started; the group evicts the frozen one after
its session timeout and the second takes every partition over, fencing the first one's transactional ids. Then the
zombie is resumed, in the middle of its turn and well within its transaction timeout: it must get nothing accepted
(its commit is fenced, it gives its partitions up without writing more), rejoin the group, and serve its share
again. (With a transactional id per process instead of per partition, its commit succeeds and the checker finds
the duplicates: this was tried.)

What proves it: the shared checker, reading every topic from offset 0 the way every reader does (read_committed),
finds no duplicate, no gap, nothing lost and every result applied once; and the same events topic read
*uncommitted* holds the zombie's aborted records, which would have been duplicate (run, seq) without the fence.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import settings_for, spawn_roles
from tests.integration.runtime.test_faults import start_runs, stop
from tickflow.events import decode
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics, read_partition
from tickflow.settings import Settings

pytestmark = pytest.mark.integration
ZOMBIE = [sys.executable, "-m", "tests.integration.crashing_engine"]
SESSION_TIMEOUT_MS = 6_000  # the broker's minimum (group.min.session.timeout.ms)


@pytest.fixture
async def workers(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    settings = settings_for(
        prefix, kafka_bootstrap, tmp_path, free_port(), session_timeout_ms=SESSION_TIMEOUT_MS, snapshot_interval_s=1
    )
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    node = Node(settings, registry, frozenset({"worker"}))
    await node.start()
    yield node
    await node.stop()


async def _until(predicate_text: str, path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if predicate_text in text:
            return text
        await asyncio.sleep(0.2)
    raise AssertionError(f"{predicate_text!r} not in {path.name} after {timeout}s:\n{path.read_text()[-3000:]}")


async def _until_clean(settings: Settings, ids: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        found = await check_log(settings)
        done = ids <= found.started and not found.problems()
        if done or time.monotonic() > deadline:
            found.assert_clean()
            assert ids <= found.started, f"not started: {sorted(ids - found.started)[:5]}"
            return found.summary()
        await asyncio.sleep(0.5)


async def _uncommitted_duplicates(settings: Settings) -> int:
    """(run, seq) pairs written more than once to the events topic, counting aborted transactions' records."""
    seen: Counter[tuple[str, int]] = Counter()
    for partition in range(settings.partitions):
        for record in await read_partition(settings.bootstrap, settings.topics.events, partition, committed=False):
            event = decode(record.value)
            if event.seq is not None:
                seen[(event.key, event.seq)] += 1
    return sum(n - 1 for n in seen.values() if n > 1)


async def test_a_resumed_zombie_engine_gets_nothing_accepted(workers: Node, tmp_path: Path) -> None:
    settings = workers.settings
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TEST_CRASH_AT", "txn-open")
        env.setenv("TEST_CRASH_AFTER", "15")
        env.setenv("TEST_CRASH_SIGNAL", "STOP")
        zombie = spawn_roles(settings, "engine", tmp_path / "zombie.log", command=ZOMBIE)
    engine: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.sleep(1.0)  # it joins its group before the runs arrive
        first = [f"z-{i:03d}" for i in range(30)]
        await start_runs(settings, first)
        await _until("fault injection: SIGSTOP", tmp_path / "zombie.log", 60)
        await asyncio.sleep(0.3)
        assert psutil.Process(zombie.pid).status() == psutil.STATUS_STOPPED
        assert (await check_log(settings)).unfinished, "every run had finished at the freeze: it would prove nothing"

        engine = spawn_roles(settings, "engine", tmp_path / "engine.log")
        # Resume the zombie as soon as the new engine has taken every partition over (its producers registered,
        # the partitions rebuilt), well within the zombie's transaction timeout: without the fence, the zombie's
        # open transaction would now commit, and its events would duplicate the new engine's.
        for _ in range(300):
            if (tmp_path / "engine.log").read_text().count(" recovered: ") >= settings.partitions:
                break
            await asyncio.sleep(0.2)
        else:
            raise AssertionError("the new engine did not take the partitions over")
        zombie.send_signal(signal.SIGCONT)  # it resumes in the middle of its turn, past its session
        text = await _until("fenced by a newer owner", tmp_path / "zombie.log", 60)
        fenced_at = text.index("fenced by a newer owner")
        taken_over = await _until_clean(settings, set(first), 120)
        # It rejoins the group and serves its share again: new runs finish, whoever owns them.
        later = [f"y-{i:03d}" for i in range(20)]
        await start_runs(settings, later)
        summary = await _until_clean(settings, set(first) | set(later), 120)
        assert zombie.poll() is None, "the zombie must stay up and rejoin, not crash"
        text = (tmp_path / "zombie.log").read_text()
        assert "recovered" in text[fenced_at:], (
            f"the zombie never served a partition again:\n{text[fenced_at:][-3000:]}"
        )
        aborted = await _uncommitted_duplicates(settings)  # the zombie's turn is in the log, aborted: never seen
        assert aborted > 0, "the zombie's open transaction held no event: the test would prove nothing"
        found = await check_log(settings)
        assert found.started == set(first) | set(later)
        print(f"\nzombie: takeover {taken_over}; after resume {summary}; aborted duplicates invisible: {aborted}")
    finally:
        if zombie.poll() is None:
            zombie.send_signal(signal.SIGCONT)
        stop(zombie)
        if engine is not None:
            stop(engine)
