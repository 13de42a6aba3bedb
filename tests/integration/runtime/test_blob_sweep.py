"""The blob sweep on a real node: a run whose state is over 1 MB leaves a new snapshot blob every round; after
``tickflow vacuum --blobs`` only the blobs something retained refers to are left (its latest state, a finished
run's big output), those still resolve, a blob no record names is gone, and an engine restarted afterwards
recovers from its snapshots (it no longer reads the superseded ones) and finishes the run."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import free_port
from tests.integration.harness import role_env, settings_for
from tests.paths import REPO_ROOT
from tickflow.client import Client
from tickflow.events.topics import TopicNames
from tickflow.node import Node
from tickflow.runtime.blobstores import S3BlobStore, open_blob_store
from tickflow.runtime.blobsweep import NothingToMarkFrom, sweep_blobs
from tickflow.runtime.claimcheck import resolve
from tickflow.runtime.kafka import read_partition
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration

registry = Registry()


async def fat(value: Any) -> str:
    """200 kB: under the claim-check threshold, so it stays in the run's state, which passes 1 MB at step 5."""
    await asyncio.sleep(0.3)  # a few snapshot rounds per step
    return "x" * 200_000


async def big_output(value: Any) -> dict[str, str]:
    return {"blob": "y" * 1_500_000}  # claim-checked: the log holds a reference


async def done(value: Any) -> str:
    return "done"


flow = Workflow("fatstate")
for i in range(8):
    flow = flow.step(fat, name=f"s{i}")
registry.add(flow.wait_for_event("go").step(done, name="end"))
registry.add(Workflow("bigout").step(big_output, name="big"))


@pytest.fixture
def settings(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> Settings:
    return settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), snapshot_interval_s=0.2)


async def _latest_state_blob(settings: Settings, run_id: str) -> str:
    """The blob the state topic's latest record of ``run_id`` names."""
    latest: bytes | None = None
    for partition in range(settings.partitions):
        for record in await read_partition(settings.kafka, settings.topics.state, partition):
            if record.key == run_id.encode():
                latest = record.value
    assert latest is not None and latest.startswith(b'{"blob":'), "the state was not claim-checked"
    return str(orjson.loads(latest)["blob"]["sha256"])


def _vacuum_blobs(settings: Settings, *args: str) -> str:
    """``tickflow vacuum --blobs`` as an operator runs it: its own process, configured by the environment."""
    env = role_env(settings)
    done = subprocess.run(
        [sys.executable, "-m", "tickflow.cli", "vacuum", *args, "--blobs", "--grace-minutes", "0"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return done.stdout


def _disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


async def test_sweep_leaves_what_is_referenced_and_recovery_still_works(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_blob_store(settings)
    node = Node(settings, registry)
    await node.start()
    try:
        await _scenario(node, settings, store, caplog)
    finally:
        await node.stop()


async def _scenario(node: Node, settings: Settings, store: Any, caplog: pytest.LogCaptureFixture) -> None:

    def start() -> tuple[str, str]:
        with Client(settings.api_url) as c:
            out = c.wait(c.start("bigout"), timeout=60)
            assert out.status == "completed"
            run = c.start("fatstate")
            deadline = time.monotonic() + 60
            while c.status(run).waiting_for != "go":
                assert time.monotonic() < deadline, "the run never reached its wait"
                time.sleep(0.1)
            return out.run_id, run

    out_id, run_id = await asyncio.to_thread(start)
    await asyncio.sleep(1.0)  # the last rounds write the waiting state; then nothing is dirty
    orphan = store.put(b"z" * 500_000)  # a writer that died before its record committed, an hour ago
    path = settings.blob_dir / orphan[:2] / orphan
    os.utime(path, (time.time() - 3600, time.time() - 3600))

    latest = await _latest_state_blob(settings, run_id)
    def output_of(run: str) -> Any:
        with Client(settings.api_url) as c:
            return c.status(run, resolve=False).output  # the reference, not the value the SDK would fetch

    output_ref = await asyncio.to_thread(output_of, out_id)  # the API serves on this loop: ask from a thread
    assert isinstance(output_ref, dict) and "$blob" in output_ref
    before = {b.digest: b.size for b in store.list()}
    assert latest in before and orphan in before and output_ref["$blob"]["sha256"] in before
    assert len(before) >= 5, f"expected several superseded state blobs, found {len(before)} blobs"
    disk_before = _disk_bytes(settings.blob_dir)

    dry = await asyncio.to_thread(_vacuum_blobs, settings, "--dry-run")
    assert f"would delete {len(before) - 2} (" in dry and {b.digest: b.size for b in store.list()} == before
    printed = await asyncio.to_thread(_vacuum_blobs, settings, "--older-than-days", "0")

    assert printed.startswith("1 finished runs removed\n"), printed  # bigout's rows; fatstate is in flight

    def runs_left() -> list[str]:
        with Client(settings.api_url) as c:
            return [r.run_id for r in c.list_runs(limit=100)]

    assert await asyncio.to_thread(runs_left) == [run_id]  # only the run in flight is left in ClickHouse
    after = {b.digest for b in store.list()}
    # The finished run's output blob stays although its rows are gone: the log (kept forever) still names it.
    assert after == {latest, output_ref["$blob"]["sha256"]}, printed
    assert resolve(output_ref, store) == {"blob": "y" * 1_500_000}
    disk_after = _disk_bytes(settings.blob_dir)
    assert disk_after == before[latest] + before[output_ref["$blob"]["sha256"]] < disk_before
    assert f"{disk_before:,} bytes) before" in printed and f"{disk_after:,} bytes after" in printed
    print(f"\n$ tickflow vacuum --older-than-days 0 --blobs --grace-minutes 0\n{printed}"
          f"on disk: {disk_before:,} -> {disk_after:,} bytes")

    # A restart: recovery reads the state topic, where the superseded snapshots' records still are (the cleaner
    # has not compacted them), and must not need their blobs.
    await node.stop()
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="tickflow.engine"):
        again = Node(settings, registry)
        await again.start()
        try:

            def finish() -> str:
                with Client(settings.api_url) as c:
                    c.resume(run_id, "go")
                    return c.wait(run_id, timeout=60).status

            assert await asyncio.to_thread(finish) == "completed"
        finally:
            await again.stop()
    assert not [r for r in caplog.records if "ignoring snapshots" in r.getMessage()]


async def test_a_sweep_that_finds_no_log_deletes_nothing(settings: Settings) -> None:
    """A wrong prefix (or cluster) must not read as "a log that refers to no blob"."""
    store = open_blob_store(settings)
    digest = store.put(b"precious" * 1000)
    os.utime(settings.blob_dir / digest[:2] / digest, (time.time() - 86_400, time.time() - 86_400))
    with pytest.raises(NothingToMarkFrom, match="check TICKFLOW_PREFIX"):
        await sweep_blobs(settings.kafka, TopicNames(prefix=f"{settings.prefix}-typo"), store, grace_s=0)
    assert store.get(digest) == b"precious" * 1000


@pytest.fixture
def s3_settings(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The same node with its blobs in an S3-compatible store (moto's S3 API on 127.0.0.1), as on several machines."""
    import boto3
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="tickflow-blobs")
    try:
        yield settings.with_(blob_url=f"s3://tickflow-blobs/{settings.prefix}", blob_s3_endpoint=endpoint)
    finally:
        server.stop()


async def test_every_role_shares_an_s3_blob_store_and_the_sweep_cleans_it(s3_settings: Settings) -> None:
    settings = s3_settings
    store = open_blob_store(settings)
    assert isinstance(store, S3BlobStore)
    node = Node(settings, registry)
    await node.start()
    try:

        def start() -> tuple[Any, str]:
            with Client(settings.api_url) as c:
                big_in = c.wait(c.start("bigout", {"note": "n" * 400_000}), timeout=60, resolve=False)  # offloaded
                assert big_in.status == "completed"
                run = c.start("fatstate")
                deadline = time.monotonic() + 60
                while c.status(run).waiting_for != "go":
                    assert time.monotonic() < deadline, "the run never reached its wait"
                    time.sleep(0.1)
                return big_in.output, run

        output_ref, run_id = await asyncio.to_thread(start)
        await asyncio.sleep(1.0)
        latest = await _latest_state_blob(settings, run_id)
        before = {b.digest for b in store.list()}
        assert latest in before and output_ref["$blob"]["sha256"] in before and len(before) >= 6
        assert not settings.blob_dir.exists() or not any(settings.blob_dir.rglob("*"))  # nothing went to disk

        report = await sweep_blobs(settings.kafka, settings.topics, store, grace_s=0)

        after = {b.digest for b in store.list()}
        assert latest in after and output_ref["$blob"]["sha256"] in after
        assert len(after) == 3  # + the offloaded run input, which the StartRun command and RunStarted name
        assert report.deleted == len(before) - 3 and report.bytes_after < report.bytes_before
        assert resolve(output_ref, store) == {"blob": "y" * 1_500_000}

        def finish() -> str:
            with Client(settings.api_url) as c:
                c.resume(run_id, "go")
                return c.wait(run_id, timeout=60).status

        assert await asyncio.to_thread(finish) == "completed"
    finally:
        await node.stop()
