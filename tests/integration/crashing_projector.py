"""A projector process that kills itself (SIGKILL) after its first insert, before the offset commit.

``python -m tests.integration.crashing_projector`` reads the usual ``TICKFLOW_*`` settings; the fault is injected
through ``Projector(after_insert=...)``, so no switch for it exists in the production code paths.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from tickflow.projections.projector import Projector, ProjectorMetrics
from tickflow.projections.store import open_store
from tickflow.settings import Settings

log = logging.getLogger("tickflow.test.crash")


def kill_after_first_insert(metrics: ProjectorMetrics) -> None:
    log.warning("fault injection: SIGKILL between the insert and the offset commit (batch %d)", metrics.batches)
    os.kill(os.getpid(), signal.SIGKILL)


async def main() -> None:
    s = Settings()
    s.chdb_path.parent.mkdir(parents=True, exist_ok=True)
    store = open_store(path=str(s.chdb_path), url=None, database=s.clickhouse_database)
    projector = Projector(
        store,
        kafka=s.kafka,
        events_topic=s.topics.events,
        group_id=s.topics.projector_group,
        dead_letter_topic=s.topics.dead_letter,
        batch_ms=s.projector_batch_ms,
        after_insert=kill_after_first_insert,
    )
    await projector.start()
    assert projector.task is not None
    await projector.task


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
