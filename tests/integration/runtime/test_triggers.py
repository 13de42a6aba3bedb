"""Event-triggered starts on the real broker: each record on a topic starts one run, once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.conftest import free_port
from tests.integration.harness import settings_for
from tickflow.client import Client
from tickflow.node import Node
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration


async def describe(value: Any) -> str:
    return f"{value['key']}={value['value']}"


async def test_records_on_a_topic_start_runs_once(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    topic = f"{prefix}.orders"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    await admin.close()
    registry = Registry()
    registry.add(Workflow("on_order").step(describe))
    rule = registry.trigger(topic, "on_order", name="orders")
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await node.start()
        await producer.send_and_wait(topic, b'{"sku": 1}', key=b"a")
        await producer.send_and_wait(topic, b"plain text", key=b"b")

        def check() -> None:
            with Client(node.settings.api_url) as c:
                first = c.wait(f"{rule.name}.0.0", timeout=60)
                second = c.wait(f"{rule.name}.0.1", timeout=60)
                assert first.status == "completed" and first.output == "a={'sku': 1}"
                assert second.output == "b=plain text"

        await asyncio.to_thread(check)
        await node.stop()
        # A second trigger role in the same group starting from scratch would reread nothing: offsets were
        # committed. Even if it did, the run ids are the records' coordinates, so no second run would start.
        node = Node(node.settings, registry)
        await node.start()
        await asyncio.sleep(2)
        runs = await asyncio.to_thread(node.store.status_counts, "on_order")
        assert sum(runs.values()) == 2
    finally:
        await producer.stop()
        await node.stop()
