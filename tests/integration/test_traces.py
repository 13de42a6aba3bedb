"""One trace per run across the roles, carried only by the log: the API accepting the start, every engine decision,
every step attempt in the worker and every LLM call in it share one trace id, and every span's parent is a span of
that trace (no orphan, no second root). The roles run as separate nodes that share nothing but Kafka; the spans are
collected with OpenTelemetry's in-memory exporter.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import tickflow.tracing as tracing
from tests.conftest import free_port
from tests.integration.harness import settings_for, spawn_roles
from tests.integration.runtime.test_faults import stop
from tickflow.agents import Agent
from tickflow.client import Client
from tickflow.demo.workflows import write_demo_llm_config
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow

pytestmark = pytest.mark.integration


def add_one(n: int) -> int:
    return n + 1


def double(n: int) -> int:
    return n * 2


helper = Agent("helper", chain=["offline/echo"], instructions="Answer briefly.")
registry = Registry()
registry.add(Workflow("traced").step(add_one).sleep(0.2).step(double).agent(helper, input="value"))


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use(provider)
    yield exporter
    tracing.use(None)


def _dump(run: list[ReadableSpan]) -> str:
    """The trace as an indented tree: name, process role, duration."""
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for s in run:
        by_parent.setdefault(s.parent.span_id if s.parent else None, []).append(s)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for s in sorted(by_parent.get(parent, []), key=lambda s: s.start_time or 0):
            ms = ((s.end_time or 0) - (s.start_time or 0)) / 1e6
            lines.append(f"{'  ' * depth}{s.name}  ({ms:.1f} ms)")
            assert s.context is not None
            walk(s.context.span_id, depth + 1)

    walk(None, 0)
    return "\n".join(lines)


async def _settings(prefix: str, bootstrap: str, tmp_path: Path) -> Settings:
    """Settings with the offline LLM models and every pool the workflow uses; its topics created."""
    llm = write_demo_llm_config(tmp_path / "llm.json")
    settings = settings_for(prefix, bootstrap, tmp_path, free_port(), llm_config=llm)
    settings = settings.with_(pools=tuple(sorted(set(settings.pools) | registry.pools())))
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    return settings


async def test_a_run_is_one_connected_trace_across_roles(
    spans: InMemorySpanExporter, kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = await _settings(prefix, kafka_bootstrap, tmp_path)
    nodes = [Node(settings, registry, frozenset({role})) for role in ("engine", "worker")]
    nodes.append(Node(settings, registry, frozenset({"api", "projector"})))
    for node in nodes:
        await node.start()
    try:

        def run() -> None:
            with Client(settings.api_url) as c:
                c.start("traced", 1, run_id="traced-1")
                done = c.wait("traced-1", timeout=60)
                assert done.status == "completed", done

        await asyncio.to_thread(run)
    finally:
        for node in reversed(nodes):
            await node.stop()
    finished = list(spans.get_finished_spans())
    run = [s for s in finished if s.attributes and s.attributes.get("tickflow.run_id") == "traced-1"]
    assert run, [s.name for s in finished]
    trace_ids = {s.context.trace_id for s in run if s.context}
    assert len(trace_ids) == 1, Counter(s.name for s in run)
    whole = [s for s in finished if s.context and s.context.trace_id in trace_ids]
    ids = {s.context.span_id for s in whole if s.context}
    roots = [s for s in whole if s.parent is None]
    assert [r.name for r in roots] == ["start run"], [r.name for r in roots]
    assert all(s.parent.span_id in ids for s in whole if s.parent is not None), "a span's parent is missing"
    names = Counter(s.name.split(" ")[0] for s in whole)
    assert names["decide"] >= 5 and names["step"] >= 3 and names["chat"] >= 1, names
    chat = next(s for s in whole if s.name.startswith("chat"))
    assert chat.attributes is not None and chat.attributes.get("gen_ai.request.model") == "offline/echo"
    assert int(chat.attributes.get("gen_ai.usage.input_tokens", 0)) > 0
    print(f"\none trace, {len(whole)} spans:\n{_dump(whole)}")


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver (POST /v1/traces, protobuf) on 127.0.0.1, collecting spans as dicts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.spans: list[dict[str, Any]] = []

        async def receive(request: Request) -> Response:
            message = trace_service_pb2.ExportTraceServiceRequest()
            message.ParseFromString(await request.body())
            for resource in message.resource_spans:
                named = (a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
                service = next(named, "")
                for scope in resource.scope_spans:
                    for s in scope.spans:
                        self.spans.append(
                            {
                                "trace_id": s.trace_id.hex(),
                                "span_id": s.span_id.hex(),
                                "parent": s.parent_span_id.hex() or None,
                                "name": s.name,
                                "service": service,
                                "attributes": {a.key: a.value.string_value or a.value.int_value for a in s.attributes},
                            }
                        )
            return Response(trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

        app = Starlette(routes=[Route("/v1/traces", receive, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))

    async def __aenter__(self) -> OtlpReceiver:
        self._task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await self._task


async def test_the_trace_crosses_real_processes_over_otlp(
    spans: InMemorySpanExporter, kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    """Engine and worker in processes of their own, exporting over OTLP/HTTP as deployed; the API in this one."""
    settings = await _settings(prefix, kafka_bootstrap, tmp_path)
    api = Node(settings, registry, frozenset({"api", "projector"}))
    async with OtlpReceiver() as receiver:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{receiver.port}")
            env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
            env.setenv("TICKFLOW_LLM_CONFIG", str(settings.llm_config))
            roles = [
                spawn_roles(settings, role, tmp_path / f"{role}.log", app="tests.integration.test_traces:registry")
                for role in ("engine", "worker")
            ]
        await api.start()
        try:

            def run() -> None:
                with Client(settings.api_url) as c:
                    c.start("traced", 2, run_id="traced-2")
                    assert c.wait("traced-2", timeout=60).status == "completed"

            await asyncio.to_thread(run)
            root = next(s for s in spans.get_finished_spans() if s.name == "start run")
            assert root.context is not None
            trace_id = f"{root.context.trace_id:032x}"
            for _ in range(100):  # the processes export in batches
                names = {s["name"].split(" ")[0] for s in receiver.spans if s["trace_id"] == trace_id}
                if {"decide", "step", "chat"} <= names:
                    break
                await asyncio.sleep(0.1)
        finally:
            await api.stop()
            for proc in roles:
                stop(proc)
    remote = [s for s in receiver.spans if s["trace_id"] == trace_id]
    services = {s["service"] for s in remote}
    assert services == {"tickflow-engine", "tickflow-worker"}, services
    ids = {f"{root.context.span_id:016x}"} | {s["span_id"] for s in remote}
    assert all(s["parent"] in ids for s in remote), "a span's parent is not in the trace"
    assert {s["name"].split(" ")[0] for s in remote} >= {"decide", "step", "chat"}
    print(f"\none trace across 3 processes: {len(remote) + 1} spans ({Counter(s['service'] for s in remote)})")
