"""tickflow.faust against the real broker, with real Faust workers (each its own process, as users run them).

* Aborted transactions: events written in a transaction that is then aborted — what a fenced zombie engine or a
  turn cut short leaves in the log — never reach an agent or a table of a ``tickflow.faust.App``; the same app
  built as a plain ``faust.App`` does see them (so the test can fail). A record the codec refuses on the way is
  skipped, and the agent reads on.
* The example (examples/faust_failures): its table of failures per workflow per minute equals the count read from
  the log, and every failed checkout got exactly one refund run, which completed.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from examples.faust_failures.workflows import CHECKOUT, REFUND
from examples.faust_failures.workflows import registry as example_registry
from tests.conftest import free_port
from tests.integration.harness import role_env, settings_for
from tests.paths import REPO_ROOT
from tickflow.events.codec import decode, encode
from tickflow.events.envelope import Envelope, event_id
from tickflow.events.schemas import ErrorInfo, RunFailed
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics, read_partition
from tickflow.settings import Settings

pytestmark = pytest.mark.integration

T = TypeVar("T")


@contextlib.contextmanager
def faust_worker(settings: Settings, args: list[str], log_path: Path, **env: str) -> Iterator[subprocess.Popen[bytes]]:
    """A Faust worker process on the test's prefix; stopped (SIGTERM, then SIGKILL) on the way out."""
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=REPO_ROOT, env={**role_env(settings), **env}, stdout=out, stderr=subprocess.STDOUT
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, worker: subprocess.Popen[bytes], log_path: Path,
    timeout_s: float = 120,
) -> T:
    """Poll ``check`` until it returns something other than None; fail with the worker's log tail if it does not in
    time, or if the worker exits."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found is not None:
            return found
        if time.monotonic() > deadline or worker.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4_000:] if log_path.exists() else "(no log)"
            pytest.fail(f"{what} within {timeout_s:.0f} s (worker exit code {worker.poll()}); its log ends with:\n"
                        f"{tail}")
        await asyncio.sleep(1.0)


async def read_records(settings: Settings, topic: str, partitions: int) -> list[Any]:
    """Every record of ``topic`` (empty while it does not exist yet)."""
    try:
        return [r for p in range(partitions) for r in await read_partition(settings.bootstrap, topic, p, wait_s=1)]
    except Exception:  # not created yet by the Faust worker
        return []


def failed(run_id: str, now_ms: int) -> Envelope:
    return Envelope.wrap(
        RunFailed(error=ErrorInfo(type="Boom", message="a step failed")),
        id=event_id(run_id, 2), key=run_id, seq=2, occurred_at_ms=now_ms,
    )


@pytest.mark.parametrize("plain", [False, True], ids=["tickflow.faust.App", "plain-faust.App"])
async def test_aborted_transactions_never_reach_an_agent_or_a_table(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, plain: bool
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    now_ms = int(time.time() * 1000)
    parts = range(settings.partitions)
    # In every partition: a transaction's events, aborted (a zombie's or a cut-short turn's), then committed ones.
    aborted = {p: failed(f"aborted-{p}", now_ms) for p in parts}
    committed = {p: failed(f"committed-{p}", now_ms) for p in parts}
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, transactional_id=f"{prefix}.writer", acks="all")
    await producer.start()
    try:
        for batch, commit in ((aborted, False), (committed, True)):
            await producer.begin_transaction()
            for p, env in batch.items():
                if commit and p == 0:  # a record no tickflow reads: logged and skipped, the agent goes on
                    await producer.send_and_wait(settings.topics.events, b'{"kind": "event", "type": "Unheard"}',
                                                 key=b"committed-0", partition=0)
                await producer.send_and_wait(settings.topics.events, encode(env), key=env.key.encode(), partition=p)
            await (producer.commit_transaction() if commit else producer.abort_transaction())
    finally:
        await producer.stop()
    aborted_ids = {e.id for e in aborted.values()}
    committed_ids = {e.id for e in committed.values()}

    # The probe's names (tests/integration/faust_probe.py), derived from the prefix the same way.
    seen_topic, changelog = f"{prefix}.faust-probe-seen", f"{prefix}.faust-probe-seen-changelog"
    log_path = tmp_path / "faust.log"
    args = ["-m", "faust", "-A", "tests.integration.faust_probe:app", "worker", "--loglevel", "info"]
    with faust_worker(settings, args, log_path, FAUST_PROBE_PLAIN="1" if plain else "0") as worker:

        async def seen_by_agent() -> set[str] | None:
            ids = {r.key.decode() for r in await read_records(settings, seen_topic, settings.partitions)}
            return ids if committed_ids <= ids and (not plain or aborted_ids <= ids) else None

        async def in_table() -> set[str] | None:
            ids = {orjson.loads(r.key) for r in await read_records(settings, changelog, settings.partitions)}
            return ids if committed_ids <= ids and (not plain or aborted_ids <= ids) else None

        by_agent = await eventually(seen_by_agent, "the agent saw the committed events", worker, log_path)
        by_table = await eventually(in_table, "the table counted the committed events", worker, log_path)
        # Each partition's aborted events precede its committed ones: a reader that reached the latter has passed
        # over the former. One more second for anything in flight.
        await asyncio.sleep(1.0)
        by_agent |= {r.key.decode() for r in await read_records(settings, seen_topic, settings.partitions)}
        by_table |= {orjson.loads(r.key) for r in await read_records(settings, changelog, settings.partitions)}
    if plain:  # the hazard this module removes is real: a plain Faust app reads the aborted events
        assert aborted_ids <= by_agent and aborted_ids <= by_table
    else:
        assert by_agent == committed_ids, f"the agent saw aborted events: {by_agent - committed_ids}"
        assert by_table == committed_ids, f"the table holds aborted events: {by_table - committed_ids}"


async def test_example_counts_failures_per_workflow_per_minute_and_refunds_each_failed_checkout(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    orders = 15  # every fifth card is declined: 3 checkouts fail
    node = Node(settings, example_registry, frozenset({"engine", "worker"}))
    await node.start()
    log_path = tmp_path / "faust.log"
    changelog = f"{prefix}.faust-failures-failures-per-minute-changelog"
    try:
        with faust_worker(settings, ["-m", "examples.faust_failures", "--orders", str(orders)], log_path) as worker:

            async def settled() -> tuple[dict[str, str], dict[tuple[str, int], int], Counter[str], set[str]] | None:
                """The log once every checkout and every refund has finished: (workflow of each run, failures per
                (workflow, minute start), terminal events per run, the failed checkouts)."""
                events = await read_records(settings, settings.topics.events, settings.partitions)
                workflow_of: dict[str, str] = {}
                ends: Counter[str] = Counter()
                failures: Counter[tuple[str, int]] = Counter()
                decoded = [decode(r.value) for r in events]
                for env in decoded:
                    if env.type == "RunStarted":
                        workflow_of[env.key] = env.payload.workflow  # type: ignore[attr-defined]
                for env in decoded:
                    if env.type in ("RunCompleted", "RunFailed", "RunCancelled"):
                        ends[env.key] += 1
                    if env.type == "RunFailed":
                        failures[(workflow_of[env.key], env.occurred_at_ms // 60_000 * 60)] += 1
                checkouts = [r for r, w in workflow_of.items() if w == CHECKOUT]
                failed_checkouts = {e.key for e in decoded if e.type == "RunFailed" and workflow_of[e.key] == CHECKOUT}
                if len(checkouts) < orders or not all(ends[r] for r in checkouts):
                    return None
                if not all(ends[f"{r}.{REFUND}"] for r in failed_checkouts):
                    return None
                return workflow_of, dict(failures), ends, failed_checkouts

            workflow_of, failures, ends, failed_checkouts = await eventually(
                settled, "every checkout and its refund finished", worker, log_path
            )

            async def table_matches() -> dict[tuple[str, int], int] | None:
                table: dict[tuple[str, int], int] = {}
                for r in await read_records(settings, changelog, settings.partitions):
                    workflow, (start, _end) = orjson.loads(r.key)
                    if r.value is not None:
                        table[(workflow, int(start))] = orjson.loads(r.value)
                return table if table == failures else None

            table = await eventually(
                table_matches, f"the table equal to the log's failures {failures}", worker, log_path, 60
            )
    finally:
        await node.stop()

    checkouts = sorted(r for r, w in workflow_of.items() if w == CHECKOUT)
    assert len(checkouts) == orders
    assert sum(n for (w, _), n in table.items() if w == CHECKOUT) == orders // 5 == len(failed_checkouts)
    # One refund per failed checkout (its id derives from the failed run's), none for the others, each finished once.
    refunds = {r for r, w in workflow_of.items() if w == REFUND}
    assert refunds == {f"{r}.{REFUND}" for r in failed_checkouts}
    assert all(ends[r] == 1 for r in refunds)
