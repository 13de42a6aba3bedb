"""OpenTelemetry traces across processes: one trace per run, carried through the log in each envelope.

Every record the API, the engine or a worker writes carries the W3C ``traceparent`` of the span that wrote it
(``Envelope.trace_parent``). The reader of a record starts its span as a child of that context, so a run's spans —
the API accepting its start, each engine decision, each step attempt in a worker, each LLM call in it — form one
connected trace even though the only thing the processes share is the Kafka log. A run remembers the context of its
start (``RunState.trace_parent``), so decisions no record caused (a timer firing) stay in the run's trace.

Off by default, at no cost: without ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or a provider a test installs with ``use``)
no span is made and no envelope is touched. With it, spans go out over OTLP/HTTP in batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["configure", "current_trace_parent", "enabled", "span", "use"]

_PROPAGATOR = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None


def use(provider: TracerProvider | None) -> None:
    """Trace with ``provider`` (None: stop tracing). Tests install one with an in-memory exporter."""
    global _provider
    _provider = provider


def configure(service: str) -> bool:
    """Trace to the OTLP/HTTP endpoint of ``OTEL_EXPORTER_OTLP_ENDPOINT``, if set (once per process)."""
    if _provider is not None or not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return _provider is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use(provider)
    return True


def enabled() -> bool:
    return _provider is not None


@contextmanager
def span(name: str, parent: str | None = None, **attributes: Any) -> Iterator[trace.Span | None]:
    """A span named ``name``, a child of the W3C ``parent`` context when given (else of the current span);
    yields None, doing nothing, when tracing is off."""
    if _provider is None:
        yield None
        return
    ctx = _PROPAGATOR.extract({"traceparent": parent}) if parent else None
    tracer = _provider.get_tracer("tickflow")
    attrs = {k.replace("__", "."): v for k, v in attributes.items() if v is not None}
    with tracer.start_as_current_span(name, context=ctx, attributes=attrs) as current:
        yield current


def current_trace_parent() -> str | None:
    """The W3C ``traceparent`` of the current span, to put in the envelope of a record written now."""
    if _provider is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, otel_context.get_current())
    return carrier.get("traceparent")
