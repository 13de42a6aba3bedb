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
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request

from tickflow.api.deps import ApiProblem, Deps, app_state, authorize
from tickflow.events.errors import ErrorCode
from tickflow.projections.models import RebuildReport
from tickflow.projections.rebuild import LiveProjector, Rebuild, RebuildError, rebuild_and_swap, rollback
from tickflow.projections.store import ClickHouseStore
from tickflow.projections.verify import PROJECTIONS
from tickflow.wire import RebuildJob, RebuildRequest

__all__ = ["RebuildJobs", "rebuild_jobs_of", "router"]

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


class RebuildJobs:
    """The rebuilds of one API process (its app): the jobs started, and the lock that makes starting one (or a
    rollback) single flight. Jobs do not survive a restart."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}
        self.starting = asyncio.Lock()

    def running(self) -> str | None:
        """The id of a rebuild still running, if any."""
        return next((j.job_id for j in self.jobs.values() if not j.done), None)


def rebuild_jobs_of(request: Request) -> RebuildJobs:
    """The rebuild jobs of the app serving ``request``."""
    return app_state(request, "rebuild_jobs", RebuildJobs)


#: A route's parameter for its app's rebuild jobs.
Jobs = Annotated[RebuildJobs, Depends(rebuild_jobs_of)]

#: Routes under ``/admin/rebuild`` and ``/admin/rollback``; all need the credentials.
router = APIRouter(dependencies=[Depends(authorize)])


async def _run(job: _Job, projector: LiveProjector | None) -> RebuildReport:
    try:
        return await rebuild_and_swap(job.rebuild, swap=job.swap, projector=projector)
    except Exception as exc:
        log.exception("rebuild %s failed", job.job_id)
        job.error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        job.done = True


@router.post("/admin/rebuild", status_code=202, response_model=RebuildJob)
async def start_rebuild(deps: Deps, jobs: Jobs, body: RebuildRequest | None = None) -> RebuildJob:
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
    if (running := jobs.running()) is not None:
        raise HTTPException(409, f"rebuild {running} is still running; follow it at /admin/rebuild/{running}")
    if jobs.starting.locked():
        raise ApiProblem(409, ErrorCode.BUSY, "a rebuild is being started or a rollback runs; try again shortly")
    table = body.table if body is not None else None
    if table is not None and table not in PROJECTIONS:
        raise HTTPException(422, f"no projection {table!r}: choose one of {', '.join(PROJECTIONS)}")
    async with jobs.starting:  # single flight: the check above and the job's registration are one step
        rebuild = await asyncio.to_thread(Rebuild, store, kafka=deps.kafka, topic=deps.topics.events, table=table)
    job = _Job(uuid.uuid4().hex[:12], swap, rebuild, int(time.time() * 1000))
    job.task = asyncio.create_task(_run(job, deps.projector), name=f"tickflow-rebuild-{job.job_id}")
    job.task.add_done_callback(lambda t: t.cancelled() or t.exception())  # the error is kept on the job
    jobs.jobs[job.job_id] = job
    return job.view()


@router.post("/admin/rollback", response_model=RebuildReport)
async def rollback_swap(deps: Deps, jobs: Jobs) -> RebuildReport:
    """Swap back to the database the last swap replaced: it is caught up to the log's end from its own
    watermarks, then switched in like a rebuild (queries go on). A second rollback swaps forward again."""
    store = deps.store
    if not isinstance(store, ClickHouseStore) or deps.kafka is None or deps.projector is None:
        raise HTTPException(409, "a rollback needs the ClickHouse store, the log and the live projector here")
    if jobs.starting.locked() or jobs.running() is not None:
        raise ApiProblem(409, ErrorCode.BUSY, "a rebuild is running; roll back once it has ended")
    async with jobs.starting:
        try:
            return await rollback(store, kafka=deps.kafka, topic=deps.topics.events, projector=deps.projector)
        except RebuildError as exc:
            raise HTTPException(409, str(exc)) from None


@router.get("/admin/rebuild", response_model=list[RebuildJob])
async def rebuild_jobs(jobs: Jobs) -> list[RebuildJob]:
    """The rebuilds this process has run or runs, the latest first (jobs do not survive a restart)."""
    return [j.view() for j in sorted(jobs.jobs.values(), key=lambda j: j.started_at_ms, reverse=True)]


@router.get("/admin/rebuild/{job_id}", response_model=RebuildJob)
async def rebuild_status(jobs: Jobs, job_id: str) -> RebuildJob:
    """Progress of a rebuild and, once it ended, its report (counts, checksums, mismatches, events/s)."""
    job = jobs.jobs.get(job_id)
    if job is None:
        known = ", ".join(sorted(jobs.jobs)) or "none"
        detail = f"no rebuild {job_id!r} in this process (known: {known}); jobs do not survive a restart"
        raise HTTPException(404, detail)
    return job.view()
