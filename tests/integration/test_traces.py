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

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import tickflow.tracing as tracing
from tests.conftest import free_port
from tests.integration.harness import settings_for
from tickflow.agents import Agent
from tickflow.client import Client
from tickflow.demo.workflows import write_demo_llm_config
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics
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


async def test_a_run_is_one_connected_trace_across_roles(
    spans: InMemorySpanExporter, kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    llm = write_demo_llm_config(tmp_path / "llm.json")
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), llm_config=llm)
    settings = settings.with_(pools=tuple(sorted(set(settings.pools) | registry.pools())))
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
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
