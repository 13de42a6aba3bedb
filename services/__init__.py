"""tickflow: durable workflows and AI-agent stacks whose source of truth is a Kafka log.

The public face. Define workflows and agents, host them, talk to them::

    from tickflow import Client, Registry, Workflow

Names load lazily, on first use: ``from tickflow import Client`` pulls in the SDK (httpx, pydantic) and nothing of
the server (FastAPI, Kafka, ClickHouse), while ``from tickflow import Node`` loads the roles. Everything listed in
``__all__`` is public and pinned by ``tests/unit/test_exports.py``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tickflow.agents import Agent, Memory, Tool
    from tickflow.client import Client
    from tickflow.events.errors import (
        ApiError,
        ErrorCode,
        NonRetryableError,
        PayloadTooLarge,
        ResumeRefused,
        RetryableError,
        RunNotFound,
        TickflowError,
        UnknownStepFunction,
        UnknownWorkflow,
    )
    from tickflow.node import Node, serve
    from tickflow.settings import Settings
    from tickflow.wire import RunStatus
    from tickflow.workflow import Flow, Registry, StepContext, Trigger, Workflow, current_step, named

__all__ = [
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
]

#: Where each public name lives; a name is imported from there the first time it is used.
_HOMES = {
    "Agent": "tickflow.agents",
    "Memory": "tickflow.agents",
    "Tool": "tickflow.agents",
    "Client": "tickflow.client",
    "RunStatus": "tickflow.wire",
    "Node": "tickflow.node",
    "serve": "tickflow.node",
    "Settings": "tickflow.settings",
    **dict.fromkeys(
        ["Flow", "Registry", "StepContext", "Trigger", "Workflow", "current_step", "named"], "tickflow.workflow"
    ),
    **dict.fromkeys(
        [
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
        "tickflow.events.errors",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tickflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
