"""Prometheus /metrics on every role process: the API process serves every role it hosts (behind the API token);
a process without the API serves them on ``TICKFLOW_METRICS_PORT``. Values come from real runs on the broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.client import Client
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics

pytestmark = pytest.mark.integration
TOKEN = "metrics-test-token"


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if all(got.get(k) == want for k, want in labels.items()))


async def test_every_role_process_serves_its_metrics(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), api_token=TOKEN)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    main = Node(settings, registry, frozenset({"engine", "projector", "api"}))
    worker_port = free_port()
    workers = Node(settings.with_(metrics_port=worker_port), registry, frozenset({"worker"}))
    await main.start()
    await workers.start()
    try:

        def runs() -> None:
            with Client(settings.api_url, token=TOKEN) as c:
                ids = [c.start("math", 1, run_id=f"m-{i}") for i in range(5)]
                for run_id in ids:
                    assert c.wait(run_id, timeout=60).status == "completed"

        await asyncio.to_thread(runs)
        await asyncio.sleep(1.5)  # the projector's lag is sampled about once a second
        async with httpx.AsyncClient() as http:
            refused = await http.get(f"{settings.api_url}/metrics")
            assert refused.status_code == 401
            api = await http.get(f"{settings.api_url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            assert api.status_code == 200 and api.headers["content-type"].startswith("text/plain")
            worker = await http.get(f"http://{settings.api_host}:{worker_port}/metrics")
            assert worker.status_code == 200
        engine, steps = _samples(api.text), _samples(worker.text)
        assert _total(engine, "tickflow_engine_inputs_total", type="StartRun") >= 5
        assert _total(engine, "tickflow_engine_inputs_total", type="StepSucceeded") >= 15
        assert _total(engine, "tickflow_engine_events_total", type="RunCompleted") >= 5
        assert _total(engine, "tickflow_engine_decision_seconds_count") >= 20
        assert _total(engine, "tickflow_engine_partitions", role="engine") == settings.partitions
        assert _total(engine, "tickflow_engine_recoveries_total", role="engine") == settings.partitions
        assert _total(engine, "tickflow_projector_events_total", role="projector") >= 5 * 8
        assert "tickflow_projector_freshness_seconds" in engine
        assert any(labels.get("role") == "engine" for labels, _ in engine["tickflow_consumer_lag"])
        assert any(labels.get("role") == "projector" for labels, _ in engine["tickflow_consumer_lag"])
        # The worker process: its own steps, durations and levels.
        assert _total(steps, "tickflow_steps_total", workflow="math", step="add_one", outcome="succeeded") >= 5
        assert _total(steps, "tickflow_steps_total", workflow="math", outcome="started") >= 15
        assert _total(steps, "tickflow_step_duration_seconds_count", workflow="math", step="double") >= 5
        assert _total(steps, "tickflow_worker_concurrency", pool="default") == settings.worker_concurrency
        assert any(labels.get("role") == "worker:default" for labels, _ in steps["tickflow_consumer_lag"])
    finally:
        await workers.stop()
        await main.stop()
