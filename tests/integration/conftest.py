"""Fixtures of the integration tests: one Node (engine, worker, projector, API) on the test's own topics."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.node import Node


@pytest.fixture
async def node(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[Node]:
    """A started Node running the flows of ``tests.integration.flows`` (a module may define its own)."""
    n = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    await n.start()
    yield n
    await n.stop()
