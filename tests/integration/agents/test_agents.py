"""Agents on the real broker and real ClickHouse (chDB): the LLM ↔ tool loop, memory recall across runs,
kill -9 in the middle of the loop, and no API key anywhere (log, tables, process logs)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from tests.conftest import free_port
from tests.integration.flows import TOOL_LOG_ENV, registry
from tests.integration.harness import read_topic, settings_for, spawn_roles
from tests.llm_server import running_llm_server
from tickflow.client import Client
from tickflow.events import Envelope
from tickflow.llm import HashedBagOfWordsEmbedder
from tickflow.node import Node
from tickflow.runtime.kafka import read_partition
from tickflow.settings import Settings

pytestmark = pytest.mark.integration


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def run_to_end(settings: Settings, workflow: str, value: Any, run_id: str) -> dict[str, Any]:
    def go() -> dict[str, Any]:
        with Client(settings.api_url) as c:
            c.start(workflow, value, run_id=run_id)
            return c.wait(run_id, timeout=90).model_dump()

    return await asyncio.to_thread(go)


async def run_events(settings: Settings, run_id: str) -> list[Envelope]:
    log = await read_topic(settings.bootstrap, settings.topics.events, settings.partitions)
    return sorted((e for _, _, e in log if e.key == run_id), key=lambda e: e.seq or 0)


def count(node: Node, sql: str, **params: Any) -> Callable[[], Awaitable[int]]:
    async def rows() -> int:
        return int((await asyncio.to_thread(node.store.query, sql, params))[0][0])

    return rows


async def test_an_agent_calls_a_tool_answers_and_a_later_run_recalls_it(node: Node) -> None:
    s = node.settings
    thread = f"lib-{uuid.uuid4().hex[:8]}"
    first = await run_to_end(s, "agent_lookup", {"message": "please lookup kafka logs", "thread_id": thread}, "a1")
    assert first["status"] == "completed", first
    assert first["output"]["final"] is True and first["output"]["thread_id"] == thread
    # The offline model makes its tool arguments up from the schema; the answer quotes the tool's result.
    assert "from the tool results — lookup: the library says offline-" in first["output"]["answer"]

    events = await run_events(s, "a1")
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1))
    steps = [(e.type, e.payload.path) for e in events if e.type in ("StepScheduled", "StepCompleted")]  # type: ignore[attr-defined]
    llm1, tool, llm2 = "librarian#1/librarian.llm", "librarian#1/librarian.tools[0]/librarian.tool", \
        "librarian#2/librarian.llm"
    assert steps == [("StepScheduled", llm1), ("StepCompleted", llm1), ("StepScheduled", tool),
                     ("StepCompleted", tool), ("StepScheduled", llm2), ("StepCompleted", llm2)]
    order = [(e.type, getattr(e.payload, "path", None)) for e in events]
    done1 = order.index(("StepCompleted", llm1))
    assert order[done1 - 2: done1] == [("LlmCallAttempted", llm1), ("MessageAppended", None)]
    done2 = order.index(("StepCompleted", llm2))
    assert order[done2 - 3: done2] == [("LlmCallAttempted", llm2), ("MessageAppended", None), ("MessageAppended", None)]
    appended = [e.payload for e in events if e.type == "MessageAppended"]
    assert [m.role for m in appended] == ["user", "tool", "assistant"]  # type: ignore[attr-defined]

    await wait_until(lambda: _at_least(count(node, "SELECT count() FROM {db}.llm_calls FINAL WHERE run_id = "
                                                   "{r:String}", r="a1"), 2), 30, "llm_calls rows")
    await wait_until(lambda: _at_least(count(node, "SELECT count() FROM {db}.messages FINAL WHERE thread_id = "
                                                   "{t:String}", t=thread), 3), 30, "messages rows")
    calls = await asyncio.to_thread(node.store.query, "SELECT agent, model, outcome, call, tokens_in > 0 FROM "
                                    "{db}.llm_calls FINAL WHERE run_id = 'a1' ORDER BY call", None)
    assert calls == [("librarian", "offline/tool-then-answer", "ok", 1, 1),
                     ("librarian", "offline/tool-then-answer", "ok", 2, 1)]

    def through_the_api() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with Client(s.api_url) as c:
            recent = c.thread_messages(thread, limit=10)
            query = HashedBagOfWordsEmbedder().embed_one("kafka logs")
            return recent, c.recall(thread, query, k=2, embedder="offline/hashed-bag-of-words-256")

    recent, recalled = await asyncio.to_thread(through_the_api)
    assert [m["role"] for m in recent] == ["user", "tool", "assistant"]
    assert recalled[0]["content"] == "please lookup kafka logs" and recalled[0]["distance"] < recalled[1]["distance"]

    second = await run_to_end(s, "agent_lookup", {"message": "more about kafka logs", "thread_id": thread}, "a2")
    assert second["status"] == "completed", second
    memory = second["output"]["memory"]
    # Window of 2: the first run's tool result and answer; recall adds its user message, the window left out.
    assert memory["window"] == [m["message_id"] for m in recent[1:]]
    assert memory["recalled"] == [recent[0]["message_id"]]
    turn1 = next(e for e in await run_events(s, "a2") if e.type == "StepCompleted")
    prompt = turn1.payload.output["messages"][0]  # type: ignore[attr-defined]
    assert prompt["role"] == "system" and "please lookup kafka logs" in prompt["content"]


async def _at_least(rows: Callable[[], Awaitable[int]], n: int) -> bool:
    return await rows() >= n


async def test_kill_9_in_the_tool_loop_resumes_and_applies_every_call_once(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = [f"k{i:02d}" for i in range(8)]
    tool_log = tmp_path / "tool-executions.log"
    config = tmp_path / "llm.json"
    config.write_text(json.dumps({
        "providers": [{"name": "offline", "kind": "offline", "offline": {"latency_ms": [150, 300], "seed": 1}}],
        "models": [{"id": "offline/tool-then-answer", "provider": "offline"}],
        "chains": {"default": ["offline/tool-then-answer"]},
    }))
    monkeypatch.setenv(TOOL_LOG_ENV, str(tool_log))
    monkeypatch.setenv("TICKFLOW_LLM_CONFIG", str(config))
    # Projector and API here; engine and workers in a child process, whose memory reads come over HTTP.
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry,
                frozenset({"projector", "api"}))
    await node.start()
    s = node.settings
    proc = spawn_roles(s, "engine,worker", tmp_path / "roles1.log")
    try:
        def start_all() -> None:
            with Client(s.api_url) as c:
                for rid in runs:
                    c.start("agent_lookup", f"please lookup topic {rid}", run_id=rid)

        await asyncio.to_thread(start_all)

        async def a_tool_call_finished() -> bool:
            log = await read_topic(s.bootstrap, s.topics.events, s.partitions)
            return any(e.type == "StepCompleted" and e.payload.path.endswith(".tool") for _, _, e in log)  # type: ignore[attr-defined]

        await wait_until(a_tool_call_finished, 90, "a first tool call to complete")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        before_restart = Counter(tool_log.read_text().split())
        at_kill = await read_topic(s.bootstrap, s.topics.events, s.partitions)
        finished_tools = {f"{e.key}/{e.payload.path}" for _, _, e in at_kill  # type: ignore[attr-defined]
                          if e.type == "StepCompleted" and e.payload.path.endswith(".tool")}  # type: ignore[attr-defined]
        ended = sum(1 for _, _, e in at_kill if e.type == "RunCompleted")
        assert finished_tools and ended < len(runs), "the kill landed outside the tool loop; it would prove nothing"
        proc = spawn_roles(s, "engine,worker", tmp_path / "roles2.log")

        async def all_completed() -> bool:
            counts = await asyncio.to_thread(node.store.status_counts, "agent_lookup")
            return counts.get("completed", 0) == len(runs)

        await wait_until(all_completed, 120, "every agent run to complete after the restart")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        await node.stop()

    executions = Counter(tool_log.read_text().split())
    # A tool call that finished before the kill never runs again: the restarted worker reads the recent results
    # of its partitions first and answers a redelivered (or re-sent) task with the result it already produced.
    rerun = sorted(k for k in finished_tools if executions[k] > 1)
    assert not rerun, f"{len(rerun)} of {len(finished_tools)} finished tool calls ran again: {rerun}"
    assert all(before_restart[k] == 1 for k in finished_tools), before_restart
    log = await read_topic(s.bootstrap, s.topics.events, s.partitions)
    by_run: dict[str, list[Envelope]] = defaultdict(list)
    for _, _, e in log:
        by_run[e.key].append(e)
    for rid in runs:
        events = by_run[rid]
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), rid
        applied = Counter(e.payload.path for e in events if e.type == "StepCompleted")  # type: ignore[attr-defined]
        assert set(applied.values()) == {1} and len(applied) == 3, (rid, applied)
        calls = Counter(e.payload.path for e in events if e.type == "LlmCallAttempted")  # type: ignore[attr-defined]
        assert set(calls.values()) == {1} and len(calls) == 2, (rid, calls)
        assert events[-1].type == "RunCompleted"
        assert "the library says" in events[-1].payload.output["answer"]  # type: ignore[attr-defined]
    # Every execution was of a tool step the runs needed (a call cut short by the kill may run again).
    needed = {f"{e.key}/{e.payload.path}" for _, _, e in log  # type: ignore[attr-defined]
              if e.type == "StepCompleted" and e.payload.path.endswith(".tool")}  # type: ignore[attr-defined]
    assert set(executions) == needed and len(needed) == len(runs)


async def test_a_planted_api_key_appears_in_no_topic_table_or_log(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    key = f"sk-test-PLANTED-{uuid.uuid4().hex}"
    monkeypatch.setenv("TICKFLOW_TEST_PLANTED_KEY", key)
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with running_llm_server() as server:
            config = tmp_path / "llm.json"
            config.write_text(json.dumps({
                "providers": [{"name": "keyed", "base_url": server.base_url, "api_key_env": "TICKFLOW_TEST_PLANTED_KEY",
                               "timeout_s": 10, "retry": {"max_attempts": 1}}],
                "models": [{"id": "leaky", "provider": "keyed", "model": "echo-key-401"},
                           {"id": "weather", "provider": "keyed", "model": "tool-call"}],
                "chains": {"http": ["leaky", "weather"]},
            }))
            node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), llm_config=config), registry)
            await node.start()
            try:
                s = node.settings
                for rid in ("h1", "h2"):
                    out = await run_to_end(s, "agent_http", "how is the weather?", rid)
                    assert out["status"] == "completed", out
                    assert out["output"]["answer"] == "The weather: sunny in Paris"
                await wait_until(lambda: _at_least(count(node, "SELECT count() FROM {db}.llm_calls FINAL"), 6), 30,
                                 "llm_calls rows")
                # Controls: the key really went over the wire, and the 401 really echoed it back.
                assert {r.authorization for r in server.requests} == {f"Bearer {key}"}
                assert len(server.for_model("echo-key-401")) == 4  # one refused call per LLM step
                refused = await asyncio.to_thread(
                    node.store.query, "SELECT outcome, http_status, error_message FROM {db}.llm_calls FINAL "
                    "WHERE model = 'leaky'", None)
                assert len(refused) == 4 and all(r[0] == "client_error" and r[1] == 401 for r in refused)
                assert all("[redacted]" in r[2] for r in refused)
                tables = await asyncio.to_thread(dump_tables, node)
            finally:
                await node.stop()
        topics = await dump_topics(s)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    out, err = capfd.readouterr()
    assert len(topics) >= 7 and sum(len(v) for v in topics.values()) > 50
    for topic, values in topics.items():
        assert not any(key.encode() in v for v in values), f"the key leaked into topic {topic}"
    assert tables["messages"] and tables["llm_calls"] and tables["events"]
    for table, text in tables.items():
        assert key not in text, f"the key leaked into ClickHouse table {table}"
    logs = captured.getvalue()
    assert "llm attempt failed" in logs  # the refused attempts were logged, scrubbed
    assert key not in logs and key not in out and key not in err


def dump_tables(node: Node) -> dict[str, str]:
    """Every table of the database, every column as text (ClickHouse's TSV, aggregate states included)."""
    store = node.store
    names = [r[0] for r in store.query("SELECT name FROM system.tables WHERE database = {d:String}",
                                       {"d": store.database})]
    return {
        name: "".join(r[0] for r in store.query(f"SELECT formatRow('TabSeparated', *) FROM {{db}}.`{name}`", None))
        for name in names
    }


async def dump_topics(s: Settings) -> dict[str, list[bytes]]:
    """Every record (key and value) of every topic of the prefix, from offset 0."""
    consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap, isolation_level="read_committed")
    await consumer.start()
    try:
        names = sorted(t for t in await consumer.topics() if t.startswith(f"{s.prefix}."))
        consumer.subscribe(names)  # so the client fetches these topics' partition metadata
        await consumer._client.force_metadata_update()
        partitions = {t: sorted(consumer.partitions_for_topic(t) or ()) for t in names}
    finally:
        await consumer.stop()
    assert all(partitions.values()), partitions
    out: dict[str, list[bytes]] = {}
    for topic, parts in partitions.items():
        records = [r for p in parts for r in await read_partition(s.bootstrap, topic, p)]
        out[topic] = [(r.key or b"") + b"\x00" + (r.value or b"") for r in records]
    return out
