"""The dashboard's pure parts: the wait schema a resume form is built from, and where a sign-in may send you."""

from __future__ import annotations

from tickflow.api.dashboard.pages import wait_schema
from tickflow.api.dashboard.session import _next_page
from tickflow.workflow import Flow, Registry, Workflow


def noop(value: object) -> object:
    return value


def test_the_resume_form_finds_its_wait_schema_anywhere_in_the_spec() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    registry = Registry()
    spec = registry.add(
        Workflow("w").step(noop).parallel(a=Flow().wait_for_event("approve", schema=schema), b=Flow().step(noop))
    )
    dumped = spec.model_dump(mode="json")
    assert wait_schema(dumped, "approve") == schema
    assert wait_schema(dumped, "approve", "parallel1/a") == schema  # the branch names its one node
    assert wait_schema(dumped, "other") is None


def test_the_resume_form_takes_the_schema_of_the_wait_the_run_is_in() -> None:
    """Two waits for one event may ask for different payloads: the row's ``waiting_path`` says which one waits."""
    first, second = ({"type": "object", "required": [key]} for key in ("draft_ok", "final_ok"))
    spec = Registry().add(
        Workflow("w").wait_for_event("approve", schema=first, name="draft").wait_for_event("approve", schema=second,
                                                                                           name="final")
    )
    dumped = spec.model_dump(mode="json")
    assert wait_schema(dumped, "approve", "draft") == first
    assert wait_schema(dumped, "approve", "final") == second


def test_sign_in_only_returns_to_dashboard_pages() -> None:
    assert _next_page("/ui/runs/abc") == "/ui/runs/abc"
    for evil in ("https://evil.example/", "//evil.example/ui/", "/ui//evil.example", "/api", "javascript:alert(1)"):
        assert _next_page(evil) == "/ui/board"


def test_the_board_offers_the_workflows_that_call_an_llm_first() -> None:
    """What a stack ticks is an agent workflow: the create form lists those first (chosen by default)."""
    import re

    from fastapi.testclient import TestClient

    from tests.unit.api.test_api_errors import RecordingProducer
    from tickflow.api.app import create_api
    from tickflow.demo import registry as demo
    from tickflow.events.topics import TopicNames
    from tickflow.projections.store import MemoryStore

    assert demo.agent_workflows() == ["stack_tick", "stack_tick_pai"]  # the second: one agent is Pydantic AI
    app = create_api(store=MemoryStore(), producer=RecordingProducer(), topics=TopicNames("b"),
                     workflows=set(demo.specs), agent_workflows=demo.agent_workflows())
    with TestClient(app, base_url="http://127.0.0.1:8700") as client:
        html = client.get("/ui/board").text
    options = re.findall(r'<option value="([^"]+)">([^<]+)</option>', html)
    assert options[0] == ("stack_tick", "stack_tick (agents)") and {v for v, _ in options} == set(demo.specs)
