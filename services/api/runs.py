"""Run routes: start, resume and cancel runs (commands, 202 once Kafka acknowledged them), read their status,
change a pool's concurrency, vacuum finished runs, and the overall counts of ``/stats``."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query

import tickflow.tracing as tracing
from tickflow.api.deps import (
    ApiDeps,
    ApiProblem,
    Deps,
    IdempotencyKey,
    authorize,
    command_token,
    produce_command,
)
from tickflow.events.codec import encode
from tickflow.events.envelope import Envelope
from tickflow.events.errors import ErrorCode, PayloadTooLarge
from tickflow.events.schemas import CancelRun, Payload, ReleaseRun, ResumeRun, SetPoolConcurrency, StartRun
from tickflow.projections.queries import RunQuery
from tickflow.projections.rows import RunRow
from tickflow.runtime.claimcheck import offload
from tickflow.wire import (
    CancelRequest,
    CommandAccepted,
    PoolLimit,
    ReleaseRequest,
    ResumeRequest,
    RunStatus,
    StartRequest,
    StartResponse,
    VacuumRequest,
    WaitingOn,
)

__all__ = ["router", "run_status"]


def run_status(row: RunRow) -> RunStatus:
    """A projected run row as the API shows it (input and output parsed back from their JSON text)."""
    data: dict[str, Any] = {k: getattr(row, k) for k in RunRow.__dataclass_fields__}
    data["input"] = orjson.loads(row.input) if row.input else None
    data["output"] = orjson.loads(row.output) if row.output else None
    data["waits"] = [WaitingOn(path=path, event=event) for path, event in row.waits]
    return RunStatus(**data)


def _run_not_found(run_id: str, why: str) -> ApiProblem:
    return ApiProblem(404, ErrorCode.RUN_NOT_FOUND, f"no run {run_id!r} is visible{why}")


#: Every route here needs the credentials.
router = APIRouter(dependencies=[Depends(authorize)])


async def _claim_check(deps: ApiDeps, value: Any, what: str) -> Any:
    """``value``, or a reference to it in the blob store when it is above ``offload_bytes`` (written off the
    loop): a run input or a resume payload of any size up to the body limit fits in a command record."""
    if deps.blobs is None:
        return value
    try:
        return await asyncio.to_thread(offload, value, deps.blobs, deps.offload_bytes, deps.max_body_bytes, what)
    except PayloadTooLarge as exc:
        raise HTTPException(413, str(exc)) from None
    except TypeError as exc:  # e.g. an integer beyond 64 bits
        raise HTTPException(422, f"{what} cannot be stored as JSON: {exc}") from None


async def _send_command(deps: ApiDeps, run_id: str, payload: Payload, command_id: str) -> None:
    """Produce a command to an existing run; 404 for a run neither projected nor accepted by this process."""
    rows = await asyncio.to_thread(deps.store.runs_by_id, [run_id])
    if run_id not in rows and deps.accepted.get(run_id) is None:  # a start accepted here precedes it in the log
        raise _run_not_found(run_id, ": check the id, or wait until its start is visible")
    with tracing.span(f"send {type(payload).__name__}", None, tickflow__run_id=run_id):
        command = Envelope.wrap(
            payload,
            id=command_id,
            key=run_id,
            occurred_at_ms=int(time.time() * 1000),
            correlation_id=run_id,
            trace_parent=tracing.current_trace_parent(),
        )
        await produce_command(deps.producer, deps.topics.commands, command)


@router.post("/runs", status_code=202, response_model=StartResponse)
async def start_run(deps: Deps, body: StartRequest, idempotency_key: IdempotencyKey = None) -> StartResponse:
    """Start a run. Its id is the start's idempotency: with ``run_id`` (or an ``Idempotency-Key``, from which the
    id is then derived) a retried request starts one run."""
    workflows = deps.workflows
    if workflows is not None and body.workflow not in workflows:
        known = ", ".join(sorted(workflows)) or "none"
        raise ApiProblem(
            404, ErrorCode.UNKNOWN_WORKFLOW, f"unknown workflow {body.workflow!r}; registered workflows: {known}"
        )
    run_id = body.run_id or command_token(idempotency_key)
    value = await _claim_check(deps, body.input, f"the input of run {run_id!r}")
    with tracing.span("start run", None, tickflow__run_id=run_id, tickflow__workflow=body.workflow):
        command = Envelope.wrap(
            StartRun(workflow=body.workflow, input=value, priority=body.priority, version=body.version),
            id=f"start/{run_id}",
            key=run_id,
            occurred_at_ms=int(time.time() * 1000),
            correlation_id=run_id,
            trace_parent=tracing.current_trace_parent(),  # the root of the run's trace
        )
        await produce_command(deps.producer, deps.topics.commands, command)
    deps.accepted.add(run_id, body.workflow, command.occurred_at_ms)
    return StartResponse(run_id=run_id)


@router.post("/runs/{run_id}/resume", status_code=202, response_model=CommandAccepted)
async def resume_run(
    deps: Deps, run_id: str, body: ResumeRequest, idempotency_key: IdempotencyKey = None
) -> CommandAccepted:
    """Deliver an event to a run suspended in a wait node. The engine validates the payload against the
    wait's schema; a refusal appears in the run's events as ResumeRejected with this command id. Sent again
    with the same ``Idempotency-Key``, it is the same command: the run takes it once. A payload above
    ``TICKFLOW_OFFLOAD_BYTES`` travels through the claim-check (the log holds a reference; the wait's schema
    is checked against the value, and the next step receives the value)."""
    command_id = f"resume/{run_id}/{command_token(idempotency_key)}"
    payload = await _claim_check(deps, body.payload, f"the {body.event!r} payload for run {run_id!r}")
    await _send_command(deps, run_id, ResumeRun(event=body.event, payload=payload), command_id)
    return CommandAccepted(run_id=run_id, command_id=command_id)


@router.post("/runs/{run_id}/cancel", status_code=202, response_model=CommandAccepted)
async def cancel_run(
    deps: Deps, run_id: str, body: CancelRequest | None = None, idempotency_key: IdempotencyKey = None
) -> CommandAccepted:
    command_id = f"cancel/{run_id}/{command_token(idempotency_key)}"
    reason = body.reason if body is not None else "cancelled through the API"
    await _send_command(deps, run_id, CancelRun(reason=reason), command_id)
    return CommandAccepted(run_id=run_id, command_id=command_id)


@router.post("/runs/{run_id}/release", status_code=202, response_model=CommandAccepted)
async def release_run(
    deps: Deps, run_id: str, body: ReleaseRequest | None = None, idempotency_key: IdempotencyKey = None
) -> CommandAccepted:
    """Release a quarantined run (status ``quarantined``: the engine could not fold its log): it resumes from
    its last good state, skipping the stretch of log it could not read. A run not in quarantine is refused
    (the command goes to the dead-letter topic with the reason)."""
    command_id = f"release/{run_id}/{command_token(idempotency_key)}"
    reason = body.reason if body is not None else "released through the API"
    await _send_command(deps, run_id, ReleaseRun(reason=reason), command_id)
    return CommandAccepted(run_id=run_id, command_id=command_id)


@router.put("/pools/{pool}/concurrency", status_code=202)
async def set_pool_concurrency(deps: Deps, pool: str, body: PoolLimit) -> dict[str, Any]:
    """Change how many steps each worker of ``pool`` runs at once; workers apply it within seconds."""
    try:
        control = SetPoolConcurrency(pool=pool, limit=body.limit)
    except ValueError as exc:
        raise HTTPException(422, f"invalid pool name {pool!r}: {exc}") from None
    now = int(time.time() * 1000)
    env = Envelope.wrap(control, id=f"pool/{pool}/{command_token(None)}", key=pool, occurred_at_ms=now)
    await deps.producer.send_and_wait(deps.topics.control, encode(env), key=pool.encode())
    return {"pool": pool, "limit": body.limit}


@router.post("/admin/vacuum")
async def vacuum(deps: Deps, body: VacuumRequest) -> dict[str, Any]:
    """Delete the runs that finished more than ``older_than_s`` ago from every per-run ClickHouse table (runs,
    events, steps, llm_calls, ticks); runs in flight are never touched.
    The log keeps them: a rebuild from the events topic brings them back."""
    cutoff = int(time.time() * 1000) - int(body.older_than_s * 1000)
    removed = await asyncio.to_thread(deps.store.vacuum, cutoff)
    return {"runs_removed": removed, "finished_before_ms": cutoff}


@router.get("/runs/{run_id}", response_model=RunStatus)
async def get_run(deps: Deps, run_id: str) -> RunStatus:
    rows = await asyncio.to_thread(deps.store.runs_by_id, [run_id])
    if run_id in rows:
        deps.accepted.projected(run_id)
        return run_status(rows[run_id])
    if (known := deps.accepted.get(run_id)) is not None:  # accepted here, not projected yet: read-your-writes
        workflow, accepted_at_ms = known
        return run_status(RunRow(run_id=run_id, workflow=workflow, status="pending", updated_at_ms=accepted_at_ms))
    raise _run_not_found(run_id, " yet: it was never started, or its start is still in flight")


@router.get("/runs", response_model=list[RunStatus])
async def list_runs(deps: Deps, query: Annotated[RunQuery, Query()]) -> list[RunStatus]:
    """Runs, the latest started first, filtered by status, workflow and start time."""
    rows = await asyncio.to_thread(deps.store.list_runs, query)
    return [run_status(r) for r in rows]


@router.get("/runs/{run_id}/events")
async def run_events(deps: Deps, run_id: str) -> list[dict[str, Any]]:
    rows = await asyncio.to_thread(deps.store.run_events, run_id)
    return [
        {
            "seq": r.seq,
            "type": r.type,
            "occurred_at_ms": r.occurred_at_ms,
            "causation_id": r.causation_id,
            "payload": orjson.loads(r.payload),
        }
        for r in rows
    ]


@router.get("/stats")
async def stats(deps: Deps, workflow: str | None = Query(default=None, max_length=128)) -> dict[str, Any]:
    counts = await asyncio.to_thread(deps.store.status_counts, workflow)
    out: dict[str, Any] = {"runs": counts, "total": sum(counts.values())}
    metrics = deps.metrics
    if metrics is not None:
        out["projector"] = {
            "events_projected": metrics.events_projected,
            "lag": sum(metrics.lag.values()),
            "last_freshness_ms": metrics.last_freshness_ms,
            "already_projected": metrics.already_projected,
        }
    if deps.role_failures is not None:
        out["role_restarts"] = deps.role_failures()
    if deps.engine is not None:
        out["engine"] = deps.engine.status()
    return out
