"""tickflow on a 3-broker KRaft cluster on loopback (the packaged launcher's cluster mode, real JVMs): topics are
replicated 3 times with min ISR 2, and under a steady load of runs and stack ticks the broker leading the most
partitions is killed with SIGKILL, left dead, then restarted — every run completes and the integrity checker, which
reads every topic from offset 0, finds nothing lost, duplicated or missing."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.broker import BrokerConfig, LocalBroker, LocalCluster
from tickflow.client import Client
from tickflow.events.codec import encode
from tickflow.events.envelope import Envelope
from tickflow.events.errors import TickflowError
from tickflow.events.schemas import StartRun
from tickflow.node import Node
from tickflow.runtime.kafka import TopicLayoutError, ensure_topics, new_producer
from tickflow.settings import Settings

pytestmark = pytest.mark.integration

RUNS = 60


def _free_block(size: int) -> int:
    """A base port with ``size`` free consecutive ports after it."""
    for _ in range(200):
        base = random.randrange(20_000, 40_000, 2)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + size):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no block of free ports")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    state = tmp_path_factory.mktemp("cluster")
    c = LocalCluster(BrokerConfig(state, port=_free_block(6), heap="384m"), 3)
    c.start(timeout_s=180)
    try:
        yield c
    finally:
        for node in c.nodes:  # the data is thrown away: no need for a clean shutdown
            node.kill()
            node.stop()


async def _leaders(bootstrap: str, topics: list[str]) -> Counter[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return Counter(p["leader"] for t in described for p in t["partitions"])


async def test_topics_are_replicated_three_times_and_a_partition_mismatch_refuses_to_start(
    cluster: LocalCluster, prefix: str, tmp_path: Path,
) -> None:
    s = settings_for(prefix, cluster.bootstrap, tmp_path, free_port())
    await ensure_topics(s.bootstrap, s.topics, s.pools)
    admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
    await admin.start()
    try:
        for _ in range(50):  # a broker the new topics' metadata has not reached yet describes them empty
            described = await admin.describe_topics([s.topics.events, s.topics.commands])
            if all(t["partitions"] for t in described):
                break
            await asyncio.sleep(0.1)
        assert {len(p["replicas"]) for t in described for p in t["partitions"]} == {3}
        assert sum(len(t["partitions"]) for t in described) == 2 * s.partitions
        values: dict[str, str] = {}
        for _ in range(50):  # the broker asked may not know the topic yet: it answers with an error and no configs
            (configs,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, s.topics.events)])
            values = {c[0]: c[1] for c in configs.resources[0][4]}
            if values:
                break
            await asyncio.sleep(0.1)
        assert values["min.insync.replicas"] == "2", configs.resources[0][:2]
    finally:
        await admin.close()
    other = s.with_(partitions=8)
    with pytest.raises(TopicLayoutError, match="8 partitions per keyed topic") as refused:
        await ensure_topics(other.bootstrap, other.topics, other.pools)
    assert f"{s.topics.events} has 4" in str(refused.value)


async def test_killing_the_busiest_broker_under_load_loses_nothing(
    cluster: LocalCluster, prefix: str, tmp_path: Path,
) -> None:
    settings = settings_for(prefix, cluster.bootstrap, tmp_path, free_port(), worker_concurrency=32)
    node = Node(settings, registry)
    await node.start()
    timeline: list[tuple[float, str]] = []
    began = time.monotonic()

    def mark(what: str) -> None:
        timeline.append((time.monotonic() - began, what))

    try:
        await asyncio.to_thread(_create_stack, settings)
        load = asyncio.create_task(asyncio.to_thread(_start_runs, settings, RUNS, 12.0))
        await asyncio.sleep(4)
        leaders = await _leaders(settings.bootstrap, settings.topics.all_topics(settings.pools))
        victim, led = leaders.most_common(1)[0]
        mark(f"SIGKILL broker {victim} (leader of {led} of {sum(leaders.values())} partitions)")
        await asyncio.to_thread(cluster.node(victim).kill)
        await asyncio.sleep(8)
        mark(f"restart broker {victim}")
        await asyncio.to_thread(cluster.node(victim).launch)
        await asyncio.to_thread(cluster.node(victim).wait_ready, 120)
        ticks_at_restart = await asyncio.to_thread(_ticks, settings)
        mark(f"broker {victim} ready; stack ticks fired so far: {ticks_at_restart}")
        accepted, refused = await load
        mark(f"{accepted} runs accepted ({refused} starts refused on the way and retried)")
        statuses = await asyncio.to_thread(_wait_all, settings, [f"c{i:03d}" for i in range(RUNS)], 180.0)
        mark(f"every run ended: {dict(Counter(statuses.values()))}")
        await asyncio.sleep(3)
        ticks = await asyncio.to_thread(_ticks, settings)
        mark(f"stack ticks fired: {ticks}")
    finally:
        await asyncio.to_thread(_pause_stack, settings)
        await node.stop()
    integrity = await check_log(settings)
    mark(f"checker: {integrity.summary()}")
    stack = [e for e in integrity.events if e.key == "stack:steady" and e.type.startswith("Tick")]
    wall0 = time.time() - (time.monotonic() - began)  # the test's t=0 on the wall clock
    letter = {"TickFired": "F", "TickFinished": "D", "TickSkipped": "S", "TickQueued": "Q"}
    ticks_line = " ".join(f"{letter.get(e.type, '?')}@{e.occurred_at_ms / 1000 - wall0:.1f}" for e in stack)
    mark(f"stack events (F fired, D done, S skipped, Q queued; s since t=0): {ticks_line}")
    print("\n" + "\n".join(f"{t:7.1f} s  {what}" for t, what in timeline))
    assert set(statuses.values()) == {"completed"}, statuses
    assert ticks > ticks_at_restart > 0, "the stack stopped ticking"
    integrity.assert_clean(finished=False)  # the stack's last tick run may be in flight when the node stops
    assert len(integrity.unfinished) <= 1 and not set(integrity.unfinished) & set(statuses), integrity.unfinished


def _create_stack(settings: Settings) -> None:
    with Client(settings.api_url) as c:
        c.create_stack("steady", "slow10", interval_s=1.0)


def _pause_stack(settings: Settings) -> None:
    with contextlib.suppress(Exception), Client(settings.api_url) as c:
        c.pause_stack("steady")


def _ticks(settings: Settings) -> int:
    with Client(settings.api_url) as c:
        return int(c.stack("steady")["stack"]["ticks_fired"])


def _start_runs(settings: Settings, n: int, over_s: float) -> tuple[int, int]:
    """Start ``n`` runs evenly over ``over_s`` seconds; a refused start (the API's producer riding out the kill) is
    retried with the same run id, which the engine deduplicates. Returns (started, refusals)."""
    refused = 0
    with Client(settings.api_url, timeout=30) as c:
        for i in range(n):
            for attempt in range(20):
                try:
                    c.start("slow10", {"n": i}, run_id=f"c{i:03d}")
                    break
                except TickflowError:
                    refused += 1
                    if attempt == 19:
                        raise
                    time.sleep(0.5)
            time.sleep(over_s / n)
    return n, refused


def _wait_all(settings: Settings, run_ids: list[str], timeout_s: float) -> dict[str, Any]:
    deadline, wanted = time.monotonic() + timeout_s, set(run_ids)
    with Client(settings.api_url) as c:
        while True:
            runs = {r.run_id: r.status for r in c.list_runs(workflow="slow10", limit=1000) if r.run_id in wanted}
            if all(runs.get(rid) in ("completed", "failed", "cancelled") for rid in run_ids) or \
                    time.monotonic() > deadline:
                return {rid: runs.get(rid) for rid in run_ids}
            time.sleep(0.5)


@pytest.fixture
def lone_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(BrokerConfig(tmp_path / "lone", port=_free_block(2), heap="384m"))
    b.start(timeout_s=120)
    try:
        yield b
    finally:
        b.kill()
        b.stop()


async def test_a_lone_broker_restarted_in_the_middle_of_10000_commands_loses_nothing(
    lone_broker: LocalBroker, prefix: str, tmp_path: Path,
) -> None:
    settings = settings_for(prefix, lone_broker.config.bootstrap, tmp_path, free_port(), worker_concurrency=64)
    node = Node(settings, registry)
    await node.start()
    supervisor = asyncio.create_task(node.wait())
    timeline: list[tuple[float, str]] = []
    began = time.monotonic()

    def mark(what: str) -> None:
        timeline.append((time.monotonic() - began, what))

    ids = [f"b{i:05d}" for i in range(COMMANDS)]
    try:
        sending = asyncio.create_task(_produce_starts(settings, ids))
        while sending_progress["sent"] < COMMANDS // 3:
            await asyncio.sleep(0.05)
        mark(f"{sending_progress['sent']} commands sent; SIGKILL the broker")
        await asyncio.to_thread(lone_broker.kill)
        await asyncio.sleep(3)
        mark("restart the broker")
        await asyncio.to_thread(lone_broker.start, 120)
        mark("broker ready")
        await sending
        mark(f"all {COMMANDS} commands acknowledged")
        deadline = time.monotonic() + 240
        while (done := (await asyncio.to_thread(node.store.status_counts, "square")).get("completed", 0)) < COMMANDS:
            assert time.monotonic() < deadline, f"{done} of {COMMANDS} runs completed; roles: {node.failures}"
            await asyncio.sleep(1)
        mark(f"all {COMMANDS} runs completed; role restarts: {({n: f.restarts for n, f in node.failures.items()})}")
    finally:
        supervisor.cancel()
        await asyncio.gather(supervisor, return_exceptions=True)
        await node.stop()
    integrity = await check_log(settings)
    mark(f"checker: {integrity.summary()}")
    print("\n" + "\n".join(f"{t:7.1f} s  {what}" for t, what in timeline))
    assert integrity.started >= set(ids)
    integrity.assert_clean()


COMMANDS = 10_000
sending_progress = {"sent": 0}


async def _produce_starts(settings: Settings, ids: list[str]) -> None:
    """StartRun commands straight to the commands topic, as an external producer would (idempotent, acks=all),
    500 at a time; a command whose send failed (the broker away) is sent again until acknowledged."""
    producer = new_producer(settings.bootstrap, request_timeout_ms=30_000)
    await producer.start()
    sending_progress["sent"] = 0

    def record(i: int, run_id: str) -> bytes:
        command = Envelope.wrap(StartRun(workflow="square", input=i), id=f"{run_id}/start", key=run_id,
                                occurred_at_ms=int(time.time() * 1000))
        return encode(command)

    try:
        for first in range(0, len(ids), 500):
            chunk = list(enumerate(ids[first:first + 500], start=first))
            pending: list[tuple[int, str, asyncio.Future[Any] | None]] = []
            for i, run_id in chunk:
                try:
                    pending.append((i, run_id, await producer.send(settings.topics.commands, record(i, run_id),
                                                                   key=run_id.encode())))
                except KafkaError:
                    pending.append((i, run_id, None))
            for i, run_id, delivery in pending:
                try:
                    if delivery is None:
                        raise KafkaError("not sent")
                    await delivery
                except KafkaError:
                    while True:
                        try:
                            await producer.send_and_wait(settings.topics.commands, record(i, run_id),
                                                         key=run_id.encode())
                            break
                        except KafkaError:
                            await asyncio.sleep(0.5)
                sending_progress["sent"] = i + 1
    finally:
        await producer.stop()
