"""The metrics a role keeps as plain attributes reach Prometheus' text format at scrape time, labelled by role; a
finished step attempt counts its LLM calls, tokens and cost by provider and model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tickflow import metrics
from tickflow.events.schemas import LlmAttemptFields, RunStep
from tickflow.runtime.engine import Engine
from tickflow.runtime.step_results import observe_step
from tickflow.settings import Settings
from tickflow.workflow import Registry


def _value(name: str, registry: CollectorRegistry = REGISTRY, **labels: str) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def _private() -> tuple[metrics.RoleCollector, CollectorRegistry]:
    """A collector on a registry of its own: roles other tests left running in this process do not count."""
    collector, registry = metrics.RoleCollector(), CollectorRegistry()
    registry.register(collector)
    return collector, registry


class FakeRole:
    def __init__(self, n: int) -> None:
        self.n = n

    def metric_values(self) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
        yield "counter", "tickflow_test_things", "Things.", {"role": f"fake{self.n}"}, float(self.n)
        yield "gauge", "tickflow_test_level", "A level.", {"role": f"fake{self.n}"}, self.n / 2


def test_tracked_roles_are_read_at_scrape_time_and_forgotten_when_gone() -> None:
    collector, registry = _private()
    one, two, twin = FakeRole(3), FakeRole(4), FakeRole(4)
    for role in (one, two, twin):
        collector.track(role)
    assert _value("tickflow_test_things_total", registry, role="fake3") == 3
    assert _value("tickflow_test_level", registry, role="fake4") == 4  # two roles, one label set: summed
    one.n = 5  # read when scraped, not when tracked
    assert _value("tickflow_test_things_total", registry, role="fake5") == 5
    collector.untrack(twin)
    assert _value("tickflow_test_level", registry, role="fake4") == 2
    del one, two, twin
    assert "fake" not in generate_latest(registry).decode()  # weakly tracked: a dropped role leaves no series


def test_an_engine_reports_its_counters_before_it_has_started(tmp_path: Path) -> None:
    collector, registry = _private()
    engine = Engine(Settings(state_dir=tmp_path), Registry())
    engine.inputs["StartRun"] += 2
    engine.events_out["RunStarted"] += 2
    collector.track(engine)
    assert _value("tickflow_engine_inputs_total", registry, type="StartRun") == 2
    assert _value("tickflow_engine_events_total", registry, type="RunStarted") == 2
    assert _value("tickflow_engine_partitions", registry, role="engine") == 0


def test_a_step_counts_its_llm_calls_tokens_and_cost() -> None:
    task = RunStep(workflow="wf-m", path="p", step="ask", fn="ask", attempt=1, idempotency_key="k")
    attempts = [
        LlmAttemptFields(provider="prov-m", model="m1", tokens_in=10, tokens_out=5, cost_usd=0.25, outcome="ok"),
        LlmAttemptFields(provider="prov-m", model="m1", outcome="rate_limited"),
    ]
    observe_step(task, "succeeded", 12.0, attempts)
    assert _value("tickflow_steps_total", workflow="wf-m", step="ask", outcome="succeeded") == 1
    assert _value("tickflow_step_duration_seconds_count", workflow="wf-m", step="ask") == 1
    assert _value("tickflow_llm_calls_total", provider="prov-m", model="m1", outcome="ok") == 1
    assert _value("tickflow_llm_calls_total", provider="prov-m", model="m1", outcome="rate_limited") == 1
    assert _value("tickflow_llm_tokens_total", provider="prov-m", model="m1", direction="in") == 10
    assert _value("tickflow_llm_tokens_total", provider="prov-m", model="m1", direction="out") == 5
    assert _value("tickflow_llm_cost_usd_total", provider="prov-m", model="m1") == 0.25


def test_unknown_and_illustrative_prices_add_no_money_and_are_counted_apart() -> None:
    task = RunStep(workflow="wf-u", path="p", step="ask", fn="ask", attempt=1, idempotency_key="k")
    attempts = [
        LlmAttemptFields(provider="prov-u", model="m2", tokens_in=10, outcome="ok", price_known=False),
        LlmAttemptFields(provider="prov-u", model="m2", cost_usd=0.1, outcome="ok", price_illustrative=True),
    ]
    observe_step(task, "succeeded", 1.0, attempts)
    with pytest.raises(AssertionError, match="no sample"):  # no money was counted for them
        _value("tickflow_llm_cost_usd_total", provider="prov-u", model="m2")
    assert _value("tickflow_llm_calls_unpriced_total", provider="prov-u", model="m2", price="unknown") == 1
    assert _value("tickflow_llm_calls_unpriced_total", provider="prov-u", model="m2", price="illustrative") == 1
