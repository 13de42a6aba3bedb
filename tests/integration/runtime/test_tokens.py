"""LLM token streaming end to end: a real worker streams a reply from the local OpenAI-compatible server over HTTP
to the tokens topic; the API serves it as SSE resumable by offset; the reply is still one event in the log; and a
worker killed in the middle of a stream loses no recorded result."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from click.testing import CliRunner

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import read_topic, settings_for, spawn_roles
from tests.llm_server import SLOW_ANSWER, LlmTestServer, running_llm_server
from tickflow.cli import main
from tickflow.client import Client
from tickflow.events.codec import decode
from tickflow.node import Node
from tickflow.runtime.kafka import read_partition
from tickflow.runtime.live import partition_of
from tickflow.settings import Settings

pytestmark = pytest.mark.integration

LLM_STEP = "narrator#1/narrator.llm"


@pytest.fixture
def llm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LlmTestServer, Path]]:
    with running_llm_server() as server:
        config = tmp_path / "llm.json"
        config.write_text(json.dumps({
            "providers": [{"name": "local", "base_url": server.base_url, "timeout_s": 20,
                           "retry": {"max_attempts": 1}}],
            "models": [{"id": "slow-writer", "provider": "local", "model": "stream-slow"}],
            "chains": {"stream": ["slow-writer"]},
        }))
        monkeypatch.setenv("TICKFLOW_LLM_CONFIG", str(config))  # for workers in child processes
        yield server, config


def follow_tokens(settings: Settings, run_id: str, **kw: Any) -> list[tuple[float, dict[str, Any]]]:
    with Client(settings.api_url) as c:
        return [(time.monotonic(), chunk) for chunk in c.tokens(run_id, **kw)]


def finish(settings: Settings, run_id: str) -> tuple[float, dict[str, Any]]:
    with Client(settings.api_url) as c:
        status = c.wait(run_id, timeout=90)
        return time.monotonic(), status.model_dump()


def start(settings: Settings, run_id: str) -> None:
    with Client(settings.api_url) as c:
        c.start("agent_stream", "tell me a story", run_id=run_id)


def streams(chunks: list[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Chunks by (execution, stream), each list in index order."""
    out: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for chunk in chunks:
        out[(chunk["execution"], chunk["stream"])].append(chunk)
    return out


async def test_a_reply_streams_live_over_sse_resumes_by_offset_and_is_one_event_in_the_log(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, llm: tuple[LlmTestServer, Path],
) -> None:
    server, config = llm
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), llm_config=config), registry)
    await node.start()
    s = node.settings
    try:
        await asyncio.to_thread(start, s, "story-1")
        heard, (ended_at, final) = await asyncio.gather(
            asyncio.to_thread(follow_tokens, s, "story-1"), asyncio.to_thread(finish, s, "story-1")
        )
        assert final["status"] == "completed", final
        assert final["output"]["answer"] == SLOW_ANSWER
        chunks = [c for _, c in heard]
        (stream,) = streams(chunks).values()
        assert [c["index"] for c in stream] == list(range(len(stream)))
        assert "".join(c["text"] for c in stream) == SLOW_ANSWER  # the deltas add up to the recorded reply
        last = stream[-1]
        assert (last["done"], last["outcome"], last["finish_reason"]) == (True, "ok", "stop")
        assert all(c["path"] == LLM_STEP and c["model"] == "slow-writer" for c in stream)
        # 24 words 60 ms apart, gathered 50 ms at a time: many chunks, the first long before the run ended.
        assert len(stream) >= 8, f"only {len(stream)} chunks: not streamed"
        lead = ended_at - heard[0][0]
        print(f"\nfirst token chunk reached the SDK {lead:.2f} s before the run's end; {len(stream)} chunks")
        assert lead > 0.7

        # Resumable by offset: after the third chunk come exactly the others; after the last, nothing (204).
        offsets = [c["offset"] for c in stream]
        again = await asyncio.to_thread(follow_tokens, s, "story-1", after=offsets[2])
        assert [c["offset"] for _, c in again] == offsets[3:]
        assert await asyncio.to_thread(follow_tokens, s, "story-1", after=offsets[-1]) == []
        # A page opened after the end still gets the whole stream (the topic keeps it for hours), then the end.
        replay = await asyncio.to_thread(follow_tokens, s, "story-1")
        assert [c for _, c in replay] == chunks
        # The CLI prints the reply under a header naming the step and model, then the outcome.
        cli = await asyncio.to_thread(CliRunner().invoke, main, ["follow", "story-1", "--tokens"],
                                      env={"TICKFLOW_API_PORT": str(s.api_port)}, catch_exceptions=False)
        assert cli.exit_code == 0, cli.output
        assert f"── {LLM_STEP} · slow-writer · reply (attempt 1, request 1) ──\n{SLOW_ANSWER}\n── ok (stop) ──" \
            in cli.output, cli.output
        # The server was asked to stream.
        assert [r.body.get("stream") for r in server.for_model("stream-slow")] == [True]

        # The log has the reply once, whole, and no token record; the tokens topic has only token chunks.
        log = [e for _, _, e in await read_topic(s.bootstrap, s.topics.events, s.partitions)]
        assert not any(e.kind == "token" for e in log)
        completed = [e for e in log if e.key == "story-1" and e.type == "StepCompleted"]
        assert [e.payload.output["answer"] for e in completed] == [SLOW_ANSWER]  # type: ignore[attr-defined]
        token_log = await read_topic(s.bootstrap, s.topics.tokens, s.partitions)
        assert {e.kind for _, _, e in token_log} == {"token"} and len(token_log) == len(stream)
        (await check_log(s)).assert_clean()

        admin = AIOKafkaAdminClient(bootstrap_servers=s.bootstrap)
        await admin.start()
        try:
            (described,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, s.topics.tokens)])
        finally:
            await admin.close()
        configs = {c[0]: c[1] for c in described.resources[0][4]}
        assert configs["retention.ms"] == str(s.tokens_retention_ms)
    finally:
        await node.stop()


async def test_a_worker_killed_mid_stream_loses_no_result_and_the_rerun_streams_anew(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, llm: tuple[LlmTestServer, Path],
) -> None:
    server, _ = llm
    # Engine, projector and API here; the worker in a child process, killed with SIGKILL while it streams.
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry,
                frozenset({"engine", "projector", "api"}))
    await node.start()
    s = node.settings
    worker = spawn_roles(s, "worker", tmp_path / "worker1.log")
    try:
        await asyncio.to_thread(start, s, "story-2")
        deadline = time.monotonic() + 60
        while not await _token_chunks(s, "story-2"):
            assert time.monotonic() < deadline, "no token chunk within 60 s"
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        cut = await _token_chunks(s, "story-2")
        assert not any(c["done"] for c in cut), "the stream had ended before the kill: it would prove nothing"
        worker = spawn_roles(s, "worker", tmp_path / "worker2.log")
        _, final = await asyncio.to_thread(finish, s, "story-2")
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(15)
        await node.stop()

    assert final["status"] == "completed" and final["output"]["answer"] == SLOW_ANSWER, final
    assert len(server.for_model("stream-slow")) == 2  # the cut-off request, then the whole one
    by_stream = streams(await _token_chunks(s, "story-2"))
    assert len(by_stream) == 2, "expected the cut-off stream and the rerun's"
    cut_off, rerun = sorted(by_stream.values(), key=lambda chunks: chunks[0]["at_ms"])
    assert not any(c["done"] for c in cut_off) and SLOW_ANSWER.startswith("".join(c["text"] for c in cut_off))
    assert "".join(c["text"] for c in rerun) == SLOW_ANSWER and rerun[-1]["outcome"] == "ok"
    assert {c["step_attempt"] for c in cut_off + rerun} == {1}  # the same attempt, redelivered: a new execution
    # The log: the reply applied once, every (run, seq) once, nothing lost.
    log = [e for _, _, e in await read_topic(s.bootstrap, s.topics.events, s.partitions) if e.key == "story-2"]
    assert [e.payload.path for e in log if e.type == "StepCompleted"] == [LLM_STEP]  # type: ignore[attr-defined]
    (await check_log(s)).assert_clean()


async def _token_chunks(s: Settings, run_id: str) -> list[dict[str, Any]]:
    records = await read_partition(s.bootstrap, s.topics.tokens, partition_of(run_id, s.partitions))
    chunks = [decode(r.value, expect="token") for r in records if r.key == run_id.encode()]
    return [{**c.payload.model_dump(), "at_ms": c.occurred_at_ms} for c in chunks]
