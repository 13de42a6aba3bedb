"""The projector killed with SIGKILL between a ClickHouse insert and its offset commit: after a restart every
table holds each fact once — raw row counts, not FINAL reads — and the per-minute rollups add up to the log."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.harness import read_topic, settings_for, spawn_roles
from tests.integration.runtime.test_faults import start_runs, stop, wait_until
from tickflow.projections.store import ClickHouseStore
from tickflow.runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration
RUNS = 300


async def test_kill_between_insert_and_commit_leaves_no_duplicates(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    ids = [f"pk-{i:04d}" for i in range(RUNS)]
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools, settings.log_retention_ms)
    engine = spawn_roles(settings, "engine,worker", tmp_path / "engine.log")
    projector = None
    try:
        await start_runs(settings, ids[: RUNS // 2], workflow="math", inputs={i: 1 for i in ids})
        crashing = [sys.executable, "-m", "tests.integration.crashing_projector"]
        projector = spawn_roles(settings, "projector", tmp_path / "projector1.log", command=crashing)
        await start_runs(settings, ids[RUNS // 2 :], workflow="math", inputs={i: 1 for i in ids})
        code = await asyncio.to_thread(projector.wait, 120)
        assert code == -signal.SIGKILL, f"the projector should have killed itself, exit code {code}"
        assert "fault injection" in (tmp_path / "projector1.log").read_text()

        async def runs_done() -> bool:
            log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
            return sum(1 for _, _, e in log if e.type == "RunCompleted") == RUNS

        await wait_until(runs_done, 180, f"all {RUNS} runs to complete in the log")
        in_log = len(await read_topic(settings.bootstrap, settings.topics.events, settings.partitions))

        projector = spawn_roles(settings, "projector,api", tmp_path / "projector2.log")
        async with httpx.AsyncClient(base_url=settings.api_url, timeout=5) as http:

            async def all_projected() -> bool:
                # Not /stats' run counts: the killed projector's insert may already show every run completed.
                try:
                    body = {"query": "SELECT count() FROM events"}
                    answer = await http.post("/sql", json=body)
                    stats = (await http.get("/stats")).json()
                except httpx.HTTPError:
                    return False
                projected = answer.status_code == 200 and answer.json()["rows"] == [[in_log]]
                return projected and stats["projector"]["already_projected"] > 0

            await wait_until(all_projected, 180, f"all {in_log} events projected after the restart")
            stats = (await http.get("/stats")).json()
    finally:
        stop(engine)
        if projector is not None:
            stop(projector)

    log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
    types = Counter(e.type for _, _, e in log)
    store = ClickHouseStore(path=str(settings.chdb_path), database=prefix)
    try:
        raw_events = store.query("SELECT count(), uniqExact(run_id, seq) FROM {db}.events")[0]
        assert raw_events == (len(log), len(log)), "a raw row count above the log's means a duplicate insert"
        runs = store.query("SELECT sum(started), sum(completed), sum(failed) FROM {db}.runs_per_minute")[0]
        assert runs == (RUNS, RUNS, 0)
        attempts = store.query("SELECT sum(attempts), sum(failures) FROM {db}.step_latency_per_minute")[0]
        assert attempts == (types["StepCompleted"] + types["StepFailed"], types["StepFailed"])
        assert store.query("SELECT count() FROM {db}.steps FINAL")[0][0] == types["StepScheduled"]
    finally:
        store.close()
    # Last, so that a failure above says which guarantee broke: the restart did re-read rows it had inserted.
    restart_log = (tmp_path / "projector2.log").read_text()
    assert stats["projector"]["already_projected"] > 0, f"the restart re-read nothing: {restart_log[-3000:]}"
