"""The projector role applies ``TICKFLOW_CLICKHOUSE_TTL_DAYS`` as a vacuum at start and every
``TICKFLOW_RETENTION_INTERVAL_S``, survives a failed pass, and stops between passes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tickflow.node import Node
from tickflow.projections.retention import DAY_MS
from tickflow.settings import Settings
from tickflow.workflow import Registry


async def test_the_ttl_is_a_periodic_vacuum_of_runs_finished_before_the_cutoff(tmp_path: Path) -> None:
    node = Node(Settings(state_dir=tmp_path), Registry())
    cutoffs: list[int] = []

    class Store:
        def vacuum(self, finished_before_ms: int) -> int:
            cutoffs.append(finished_before_ms)
            if len(cutoffs) == 1:
                raise RuntimeError("ClickHouse is restarting")  # logged; the next pass tries again
            if len(cutoffs) == 3:
                node._retention_stop.set()
            return 2

    node.store = Store()
    await asyncio.wait_for(node._retention_loop(7, 0.01), 5)
    assert len(cutoffs) == 3
    assert all(abs(c - (time.time() * 1000 - 7 * DAY_MS)) < 60_000 for c in cutoffs)
