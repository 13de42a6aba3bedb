"""HTTP routes of projection rebuilds: start one (``POST /admin/rebuild``), follow it (``GET /admin/rebuild/{job}``),
swap back (``POST /admin/rollback``).

A rebuild reads the whole log, so it runs as a background job of this process (the one that owns the ClickHouse
engine in embedded mode) and the POST answers 202 with the job's id at once. One rebuild runs at a time. A swap
needs the live projector of this process, which it pauses for the last moment of the switch.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

from fastapi import APIRouter, HTTPException

from tickflow.api.deps import ApiDeps, ApiProblem
from tickflow.events.errors import ErrorCode
from tickflow.projections.models import RebuildReport
from tickflow.projections.rebuild import Rebuild, RebuildError, rebuild_and_swap, rollback
from tickflow.projections.store import ClickHouseStore
from tickflow.projections.verify import PROJECTIONS
from tickflow.wire import RebuildJob, RebuildRequest

__all__ = ["build_router"]

log = logging.getLogger("tickflow.rebuild")


@dataclass
class _Job:
    job_id: str
    swap: bool
    rebuild: Rebuild
    started_at_ms: int
    task: asyncio.Task[RebuildReport] | None = None
    error: str = ""
    done: bool = field(default=False)

    def view(self) -> RebuildJob:
        state: Literal["running", "succeeded", "failed"] = "running"
        report = None
        if self.done:
            report = self.rebuild.report
            state = "failed" if self.error or not report.ok else "succeeded"
        return RebuildJob(
            job_id=self.job_id,
            state=state,
            database=self.rebuild.database,
            swap=self.swap,
            started_at_ms=self.started_at_ms,
            progress=self.rebuild.progress,
            report=report,
            error=self.error,
        )


def build_router(deps: ApiDeps) -> APIRouter:
    """Routes under ``/admin/rebuild``."""
    router = APIRouter(dependencies=deps.guard)
    jobs: dict[str, _Job] = {}
    starting = asyncio.Lock()

    async def run(job: _Job) -> RebuildReport:
        try:
            return await rebuild_and_swap(job.rebuild, swap=job.swap, projector=deps.projector)
        except Exception as exc:
            log.exception("rebuild %s failed", job.job_id)
            job.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            job.done = True

    @router.post("/admin/rebuild", status_code=202, response_model=RebuildJob)
    async def start_rebuild(body: RebuildRequest | None = None) -> RebuildJob:
        """Rebuild every projection (or one, ``table``) from the log into a fresh database, check every table
        against an independent fold of the log, and (with ``swap``, the default) switch reads and the live
        projector to it without stopping queries; any table that differs refuses the swap (the report names it)."""
        swap = body.swap if body is not None else True
        store = deps.store
        if not isinstance(store, ClickHouseStore):
            raise HTTPException(409, "rebuilds need the ClickHouse store; this API runs on the in-memory one")
        if deps.kafka is None:
            raise HTTPException(409, "this API was started without a Kafka bootstrap, so it cannot read the log")
        if swap and deps.projector is None:
            raise HTTPException(
                409,
                "swapping needs the live projector in this process (start it with the projector and api roles), "
                "or rebuild with swap=false to build and verify only",
            )
        if any(not j.done for j in jobs.values()):
            running = next(j.job_id for j in jobs.values() if not j.done)
            raise HTTPException(409, f"rebuild {running} is still running; follow it at /admin/rebuild/{running}")
        if starting.locked():
            raise ApiProblem(409, ErrorCode.BUSY, "a rebuild is being started or a rollback runs; try again shortly")
        table = body.table if body is not None else None
        if table is not None and table not in PROJECTIONS:
            raise HTTPException(422, f"no projection {table!r}: choose one of {', '.join(PROJECTIONS)}")
        async with starting:  # single flight: the check above and the job's registration are one step
            rebuild = await asyncio.to_thread(Rebuild, store, kafka=deps.kafka, topic=deps.topics.events, table=table)
        job = _Job(uuid.uuid4().hex[:12], swap, rebuild, int(time.time() * 1000))
        job.task = asyncio.create_task(run(job), name=f"tickflow-rebuild-{job.job_id}")
        job.task.add_done_callback(lambda t: t.cancelled() or t.exception())  # the error is kept on the job
        jobs[job.job_id] = job
        return job.view()

    @router.post("/admin/rollback", response_model=RebuildReport)
    async def rollback_swap() -> RebuildReport:
        """Swap back to the database the last swap replaced: it is caught up to the log's end from its own
        watermarks, then switched in like a rebuild (queries go on). A second rollback swaps forward again."""
        store = deps.store
        if not isinstance(store, ClickHouseStore) or deps.kafka is None or deps.projector is None:
            raise HTTPException(409, "a rollback needs the ClickHouse store, the log and the live projector here")
        if starting.locked() or any(not j.done for j in jobs.values()):
            raise ApiProblem(409, ErrorCode.BUSY, "a rebuild is running; roll back once it has ended")
        async with starting:
            try:
                return await rollback(store, kafka=deps.kafka, topic=deps.topics.events, projector=deps.projector)
            except RebuildError as exc:
                raise HTTPException(409, str(exc)) from None

    @router.get("/admin/rebuild", response_model=list[RebuildJob])
    async def rebuild_jobs() -> list[RebuildJob]:
        """The rebuilds this process has run or runs, the latest first (jobs do not survive a restart)."""
        return [j.view() for j in sorted(jobs.values(), key=lambda j: j.started_at_ms, reverse=True)]

    @router.get("/admin/rebuild/{job_id}", response_model=RebuildJob)
    async def rebuild_status(job_id: str) -> RebuildJob:
        """Progress of a rebuild and, once it ended, its report (counts, checksums, mismatches, events/s)."""
        job = jobs.get(job_id)
        if job is None:
            known = ", ".join(sorted(jobs)) or "none"
            detail = f"no rebuild {job_id!r} in this process (known: {known}); jobs do not survive a restart"
            raise HTTPException(404, detail)
        return job.view()

    return router
