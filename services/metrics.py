"""Prometheus metrics of every role process (prometheus-client), served at ``/metrics``.

Two kinds, chosen by cost on the hot paths:

* **Recorded as they happen**: distributions and per-label counts only a role's code path knows (a decision's
  latency, a step's duration by workflow and step, an LLM call's tokens by model, a tick's lateness). Label
  children are cached by prometheus-client; one ``inc``/``observe`` costs well under a microsecond.
* **Read at scrape time** (``RoleCollector``): counts and levels the roles already keep as plain attributes
  (records consumed, recoveries, partitions given up, snapshot rounds, dead letters, projector freshness and lag,
  consumer lag per partition). Reading them when Prometheus asks costs the hot paths nothing.

The API process serves ``/metrics`` on its own port (behind the same bearer token as the API); a process without
the API serves it on ``TICKFLOW_METRICS_PORT`` when that is set. Several roles in one process share one registry:
the collector reports each role it tracks, labelled ``role``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tickflow.events.agents import TickFired, TickQueued, TickSkipped
from tickflow.events.envelope import Envelope

__all__ = [
    "DECISION_SECONDS",
    "LLM_CALLS",
    "LLM_COST",
    "LLM_TOKENS",
    "LLM_UNPRICED",
    "ROLE_RESTARTS",
    "STEPS",
    "STEP_SECONDS",
    "TICKS",
    "TICK_LAG_SECONDS",
    "MetricsSource",
    "RoleCollector",
    "observe_ticks",
    "serve_metrics",
    "track",
    "untrack",
]

_LATENCY = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_DURATION = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

DECISION_SECONDS = Histogram(
    "tickflow_engine_decision_seconds",
    "Time the engine took to decide one input and encode its records.",
    buckets=_LATENCY,
)
STEPS = Counter(
    "tickflow_steps",
    "Step attempts by workflow, step and outcome (started, succeeded, failed).",
    ["workflow", "step", "outcome"],
)
STEP_SECONDS = Histogram(
    "tickflow_step_duration_seconds",
    "Duration of step attempts in the worker.",
    ["workflow", "step"],
    buckets=_DURATION,
)
TICKS = Counter("tickflow_ticks", "Agent stack ticks, fired or skipped (the previous tick still running).", ["outcome"])
TICK_LAG_SECONDS = Histogram(
    "tickflow_tick_lag_seconds", "How late a stack's tick fired after it was due.", buckets=(*_LATENCY, 2.5, 5.0, 10.0)
)
LLM_CALLS = Counter(
    "tickflow_llm_calls", "LLM call attempts by provider, model and outcome.", ["provider", "model", "outcome"]
)
LLM_TOKENS = Counter(
    "tickflow_llm_tokens", "LLM tokens by provider, model and direction (in, out).", ["provider", "model", "direction"]
)
ROLE_RESTARTS = Counter("tickflow_role_restarts", "Roles restarted by their node after they failed.", ["role"])
LLM_COST = Counter(
    "tickflow_llm_cost_usd", "LLM cost in US dollars by provider and model (priced calls; not illustrative prices).",
    ["provider", "model"],
)
LLM_UNPRICED = Counter(
    "tickflow_llm_calls_unpriced",
    "LLM attempts whose cost is not money known: price unknown, or an illustrative price (offline demo models).",
    ["provider", "model", "price"],
)


def observe_ticks(events: Iterable[Envelope]) -> None:
    """Count the ticks among a stack's new events (fired, with how late; queued; skipped)."""
    for event in events:
        p = event.payload
        if isinstance(p, TickFired):
            TICKS.labels("fired").inc()
            TICK_LAG_SECONDS.observe(max(0, event.occurred_at_ms - p.due_at_ms) / 1000)
        elif isinstance(p, TickSkipped):
            TICKS.labels("skipped").inc()
        elif isinstance(p, TickQueued):
            TICKS.labels("queued").inc()


class MetricsSource(Protocol):
    """A role whose plain counters and levels the collector reads at scrape time."""

    def metric_values(self) -> Iterable[tuple[str, str, str, dict[str, str], float]]:
        """(kind 'counter'|'gauge', name, help, labels, value) of each of its samples."""
        ...


class RoleCollector(Collector):
    """Reads every tracked role's ``metric_values`` when Prometheus scrapes (no cost on the hot paths)."""

    def __init__(self) -> None:
        self._roles: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def track(self, role: MetricsSource) -> None:
        with self._lock:
            self._roles[id(role)] = role

    def untrack(self, role: MetricsSource) -> None:
        with self._lock:
            self._roles.pop(id(role), None)

    def collect(self) -> Iterator[Metric]:
        """One family per name; samples with the same labels from several roles of a kind (two worker pools'
        lag on one partition cannot happen, two engines in one process can) are summed."""
        with self._lock:
            roles = list(self._roles.values())
        kinds: dict[str, tuple[str, str]] = {}
        values: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for role in roles:
            for kind, name, help_text, labels, value in role.metric_values():
                kinds.setdefault(name, (kind, help_text))
                key = tuple(sorted(labels.items()))
                per_name = values.setdefault(name, {})
                per_name[key] = per_name.get(key, 0.0) + value
        for name, samples in values.items():
            kind, help_text = kinds[name]
            make = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = make(name, help_text, labels=[k for k, _ in next(iter(samples))])
            for key, value in samples.items():
                family.add_metric([v for _, v in key], value)
            yield family


_COLLECTOR = RoleCollector()
REGISTRY.register(_COLLECTOR)
_served: set[tuple[str, int]] = set()


def track(role: MetricsSource) -> None:
    """Report ``role``'s counters and levels at every scrape, until ``untrack`` (or until it is garbage)."""
    _COLLECTOR.track(role)


def untrack(role: MetricsSource) -> None:
    """Stop reporting a stopped role (its counters would otherwise linger until it is garbage collected)."""
    _COLLECTOR.untrack(role)


def serve_metrics(host: str, port: int) -> None:
    """Serve ``/metrics`` on ``host:port`` from a background thread (for a process without the API); once."""
    if (host, port) not in _served:
        start_http_server(port, addr=host)
        _served.add((host, port))
