"""The public face of ``tickflow``, pinned (temporal's ``test_workflow_exports.py`` is the model).

Adding a name here is a decision to support it; removing one breaks users, so it must be deliberate: move it to
``REMOVED`` with the release that dropped it.
"""

from __future__ import annotations

import importlib

import pytest

import tickflow

PUBLIC = {
    "tickflow": [
        "Agent",
        "ApiError",
        "Client",
        "ErrorCode",
        "Flow",
        "Memory",
        "Node",
        "NonRetryableError",
        "PayloadTooLarge",
        "Registry",
        "ResumeRefused",
        "RetryableError",
        "RunNotFound",
        "RunStatus",
        "Settings",
        "StepContext",
        "TickflowError",
        "Tool",
        "Trigger",
        "UnknownStepFunction",
        "UnknownWorkflow",
        "Workflow",
        "current_step",
        "named",
        "serve",
    ],
    "tickflow.agents": [
        "MAX_TOOL_CONTENT",
        "Agent",
        "AgentMaxTurns",
        "LlmCallFailed",
        "LlmCallRefused",
        "Memory",
        "MemoryReadFailed",
        "Tool",
        "ToolError",
        "attempt_fields",
        "finished",
        "has_tool_calls",
        "memory_prompt",
        "paid_once",
        "stack_id_of",
        "start_message",
        "turn_input",
    ],
    "tickflow.client": ["TERMINAL", "Client"],
    "tickflow.events.errors": [
        "ApiError",
        "ErrorCode",
        "NonRetryableError",
        "PayloadTooLarge",
        "ResumeRefused",
        "RetryableError",
        "RunNotFound",
        "TickflowError",
        "UnknownStepFunction",
        "UnknownWorkflow",
    ],
    "tickflow.cli": ["main"],
    "tickflow.settings": ["Settings"],
}

#: Names users of the layout before ``tickflow`` wrote, and where they went (``services`` was the old root).
REMOVED = {
    "tickflow.config": "tickflow.settings (Settings)",
    "tickflow.runtime.Node": "tickflow.node (Node, serve)",
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_exactly_the_pinned_ones(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module])
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_the_face_resolves_each_name_to_its_home_module() -> None:
    from tickflow.client import Client
    from tickflow.events.errors import NonRetryableError
    from tickflow.workflow import Workflow

    assert tickflow.Client is Client and tickflow.Workflow is Workflow
    assert tickflow.NonRetryableError is NonRetryableError
    assert set(tickflow.__all__) <= set(dir(tickflow))


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        tickflow.Nope  # noqa: B018


def test_errors_form_one_hierarchy_with_codes() -> None:
    from tickflow.events.errors import ErrorCode, TickflowError

    for name in PUBLIC["tickflow.events.errors"]:
        value = getattr(tickflow, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, TickflowError), name
            assert isinstance(value.code, ErrorCode), name
    assert issubclass(tickflow.UnknownStepFunction, tickflow.NonRetryableError)
    assert not issubclass(tickflow.RetryableError, tickflow.NonRetryableError)


@pytest.mark.parametrize("old", sorted(REMOVED))
def test_removed_paths_stay_removed(old: str) -> None:
    module, _, attr = old.rpartition(".") if old.count(".") > 1 and old.split(".")[-1][0].isupper() else (old, "", "")
    if attr:
        assert not hasattr(importlib.import_module(module), attr), f"{old} is back; it moved to {REMOVED[old]}"
    else:
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(module)
