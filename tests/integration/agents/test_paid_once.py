"""A paid LLM call is paid once: a worker SIGKILLed right after the provider answered (before its step could
report) does not make the restarted worker call the provider again, and the ledger logs the call once.

The local OpenAI-compatible server answers the chat call at once and then holds the turn's next request (the
memory embedding of the answer, which an agent turn makes after the call), so the kill lands, every time, between
a paid answer and the step's report — the window the journal of paid calls exists for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.agents.test_agents import wait_until
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import kill_and_respawn, read_topic, run_end, settings_for, spawn_roles, stop_roles
from tests.llm_server import LlmTestServer, running_llm_server
from tickflow.client import Client
from tickflow.node import Node

pytestmark = pytest.mark.integration

LLM_PATH = "accountant#1/accountant.llm"


@pytest.fixture
def llm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LlmTestServer]:
    with running_llm_server() as server:
        config = tmp_path / "llm.json"
        config.write_text(json.dumps({
            "providers": [{"name": "local", "base_url": server.base_url, "timeout_s": 90,
                           "retry": {"max_attempts": 1}}],
            "models": [{"id": "answer", "provider": "local", "model": "ok"},
                       {"id": "stall-embed", "provider": "local", "model": "embed-stall-2nd"}],
            "chains": {"paid": ["answer"]},
        }))
        monkeypatch.setenv("TICKFLOW_LLM_CONFIG", str(config))  # for the engine and worker in child processes
        yield server


async def test_a_worker_killed_after_the_provider_answered_does_not_pay_for_the_call_again(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, llm: LlmTestServer
) -> None:
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry,
                frozenset({"projector", "api"}))
    await node.start()
    s = node.settings
    proc = spawn_roles(s, "engine,worker", tmp_path / "roles1.log")
    try:
        def start() -> None:
            with Client(s.api_url) as c:
                c.start("agent_paid", "what did we spend?", run_id="paid-1")

        await asyncio.to_thread(start)

        async def held_after_the_answer() -> bool:
            return len(llm.for_model("embed-stall-2nd")) >= 2

        await wait_until(held_after_the_answer, 90, "the turn to be held after its paid answer")
        assert len(llm.for_model("ok")) == 1
        proc = kill_and_respawn(proc, s, "engine,worker", tmp_path / "roles2.log")
        out = await run_end(s, "paid-1")
    finally:
        stop_roles(proc)
        await node.stop()

    assert out["status"] == "completed", out
    assert out["output"]["answer"] == "hello from ok"  # type: ignore[index]
    # The restarted worker ran the turn again (its embedding requests say so) but took the answer from the journal.
    assert len(llm.for_model("embed-stall-2nd")) >= 3
    assert len(llm.for_model("ok")) == 1, "the provider was paid twice for one call"
    log = await read_topic(s.bootstrap, s.topics.events, s.partitions)
    events = [e for _, _, e in log if e.key == "paid-1"]
    paid = [e for e in events if e.type == "LlmCallAttempted"]
    assert len(paid) == 1 and paid[0].payload.path == LLM_PATH, paid  # type: ignore[attr-defined]
    assert paid[0].payload.tokens_in == 11 and paid[0].payload.tokens_out == 3  # type: ignore[attr-defined]
    (await check_log(s)).assert_clean()
