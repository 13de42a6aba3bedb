"""The dashboard's pure parts: the wait schema a resume form is built from, and where a sign-in may send you."""

from __future__ import annotations

from tickflow.dashboard.pages import wait_schema
from tickflow.dashboard.session import _next_page
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
    assert wait_schema(dumped, "other") is None


def test_sign_in_only_returns_to_dashboard_pages() -> None:
    assert _next_page("/ui/runs/abc") == "/ui/runs/abc"
    for evil in ("https://evil.example/", "//evil.example/ui/", "/ui//evil.example", "/api", "javascript:alert(1)"):
        assert _next_page(evil) == "/ui/board"
