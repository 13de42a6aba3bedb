"""A secret planted where careless code and configurations put one — a step's exception, its printed and logged
output, an LLM provider's base_url with credentials, a malformed command sent to Kafka — reaches no topic, no
ClickHouse table and no log line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.agents.test_agents import dump_tables, dump_topics, run_to_end
from tests.integration.flows import PLANTED_ENV, registry
from tests.integration.harness import settings_for
from tickflow.node import Node
from tickflow.runtime.kafka import new_producer

pytestmark = pytest.mark.integration


async def test_a_planted_secret_reaches_no_topic_table_or_log(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    secret = f"acme-PLANTED-{uuid.uuid4().hex}"
    monkeypatch.setenv(PLANTED_ENV, secret)
    config = tmp_path / "llm.json"
    dead_port = free_port()  # nothing listens: the provider's requests fail with a connection error
    config.write_text(json.dumps({
        "providers": [{"name": "creds", "base_url": f"http://svc:{secret}@127.0.0.1:{dead_port}/v1",
                       "timeout_s": 2, "retry": {"max_attempts": 1}}],
        "models": [{"id": "weather", "provider": "creds", "model": "tool-call"}],
        "chains": {"http": ["weather"]},
    }))
    captured = io.StringIO()  # tickflow's own log lines (a step's own logger's handlers are the user's to configure)
    handler = logging.StreamHandler(captured)
    root = logging.getLogger("tickflow")
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), llm_config=config), registry)
    await node.start()
    s = node.settings
    try:
        leaked = await run_to_end(s, "leaky", None, "leaky-1")
        assert leaked["status"] == "failed" and "[redacted]" in leaked["error_message"], leaked
        agent = await run_to_end(s, "agent_http", "how is the weather?", "creds-1")
        assert agent["status"] == "failed", agent
        producer = new_producer(s.bootstrap)
        await producer.start()
        try:  # not an envelope: dead-lettered with an excerpt of it
            await producer.send_and_wait(s.topics.commands, f'{{"oops": "{secret}"}}'.encode(), key=b"junk")
        finally:
            await producer.stop()
        for _ in range(100):
            if (await dump_topics(s)).get(s.topics.dead_letter):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # the projector's last batch
        tables = await asyncio.to_thread(dump_tables, node)
    finally:
        await node.stop()
        root.removeHandler(handler)
        root.setLevel(old_level)
    topics = await dump_topics(s)
    out, err = capfd.readouterr()
    # Controls: the secret really went through each place, and was redacted there.
    assert topics[s.topics.dead_letter] and any(b"[redacted]" in v for v in topics[s.topics.dead_letter])
    events = b"".join(topics[s.topics.events])
    assert b"calling the billing API with [redacted]" in events and b"https://[redacted]@" in events
    for topic, values in topics.items():
        holding = [v for v in values if secret.encode() in v]
        if topic == s.topics.commands:  # the malformed command the test itself wrote, and nothing else
            assert len(holding) == 1 and b'{"oops": ' in holding[0], holding
        else:
            assert not holding, f"the secret leaked into topic {topic}"
    for table, text in tables.items():
        assert secret not in text, f"the secret leaked into ClickHouse table {table}"
    assert secret not in captured.getvalue() and secret not in out and secret not in err, "the secret was logged"
