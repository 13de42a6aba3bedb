"""Large step outputs go out of band (claim-check) and come back for the next step; the hard cap is clear."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for
from tickflow.client import Client
from tickflow.node import Node

pytestmark = pytest.mark.integration


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    settings = settings_for(
        prefix, kafka_bootstrap, tmp_path, free_port(), offload_bytes=50_000, max_payload_bytes=4_000_000
    )
    n = Node(settings, registry)
    await n.start()
    yield n
    await n.stop()


async def test_big_outputs_are_claim_checked_and_capped(node: Node) -> None:
    def scenario() -> tuple[str, str]:
        with Client(node.settings.api_url) as c:
            ok = c.wait(c.start("bigdata", 2_500_000), timeout=60)  # 2.5 MB: above Kafka's 1 MB record limit
            assert ok.status == "completed" and ok.output == 2_500_000
            capped = c.wait(c.start("bigdata", 5_000_000), timeout=60)
            assert capped.status == "failed" and capped.error_type == "PayloadTooLarge"
            assert "above the hard cap of 4,000,000 (TICKFLOW_MAX_PAYLOAD_BYTES)" in capped.error_message
            bigin = c.wait(c.start("measure_input", {"blob": "y" * 1_500_000}), timeout=60)
            assert bigin.status == "completed" and bigin.output == 1_500_000  # a run input above 1 MB
            return ok.run_id, capped.run_id

    ok_id, _ = await asyncio.to_thread(scenario)
    log = await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)
    [big] = [e for _, _, e in log if e.key == ok_id and e.type == "StepCompleted" and e.payload.path == "big"]
    ref = big.payload.output["$blob"]  # type: ignore[attr-defined]
    assert ref["size"] > 2_500_000 and len(ref["sha256"]) == 64
    assert (node.settings.blob_dir / ref["sha256"][:2] / ref["sha256"]).stat().st_size == ref["size"]
