"""The store every contract test runs against: the in-memory twin, embedded chDB, and a ClickHouse server (by URL,
or testcontainers where a Docker engine exists; skipped with the reason otherwise)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickflow.projections.store import ClickHouseStore, MemoryStore, ProjectionStore


@pytest.fixture(params=["memory", "chdb", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProjectionStore]:
    s: ProjectionStore
    if request.param == "server":
        url = request.getfixturevalue("clickhouse_server_url")
        s = ClickHouseStore(url=url, database=f"t{uuid.uuid4().hex[:12]}")
    else:
        s = MemoryStore() if request.param == "memory" else ClickHouseStore(path=str(tmp_path / "ch"))
    s.migrate()
    s.migrate()  # idempotent
    yield s
    s.close()
