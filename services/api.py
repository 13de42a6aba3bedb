"""The HTTP API: commands in, status out. Bound to 127.0.0.1 unless configured otherwise.

Commands are produced to Kafka and acknowledged (acks=all) before the API answers 202, so an accepted
command is never lost. Reads go to the projections in ClickHouse; in embedded mode this process owns the chDB
data directory, which is why the CLI and SDK read through here.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from events.codec import MAX_RECORD_BYTES, InvalidRecord, RecordTooLarge, encode
from events.envelope import Envelope
from events.schemas import CancelRun, ResumeRun, SetPoolConcurrency, StartRun
from events.spec import Name
from events.topics import TopicNames
from projections.rows import RunRow
from projections.store import ProjectionStore
from services.claimcheck import PayloadTooLarge, offload

__all__ = ["ApiDeps", "RunStatus", "StartRequest", "create_api", "produce_command"]


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workflow: Name
    input: Any = None
    run_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9_.:\-]+$",
        description="Supply your own id to make start idempotent: starting the same id twice starts one run.",
    )
    priority: int = Field(
        default=0, ge=-1000, le=1000, description="Order among runs queued for the same concurrency key."
    )


class StartResponse(BaseModel):
    run_id: str
    accepted: bool = True


class CommandAccepted(BaseModel):
    run_id: str
    command_id: str


class ResumeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:\-]+$")
    payload: Any = None


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="cancelled through the API", max_length=1_000)


class VacuumRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    older_than_s: float = Field(ge=0, le=100 * 365 * 86_400)


class PoolLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(ge=1, le=100_000)


class RunStatus(BaseModel):
    run_id: str
    workflow: str
    status: Literal["pending", "running", "completed", "failed", "rejected"] | str
    spec_hash: str
    current_step: str
    step_index: int
    current_path: str = ""
    waiting_for: str = ""
    attempt: int
    steps_total: int
    steps_completed: int
    input: Any = None
    output: Any = None
    error_type: str = ""
    error_message: str = ""
    started_at_ms: int
    updated_at_ms: int
    finished_at_ms: int
    last_seq: int

    @classmethod
    def from_row(cls, row: RunRow) -> RunStatus:
        import orjson

        data = {k: getattr(row, k) for k in RunRow.__dataclass_fields__}
        data["input"] = orjson.loads(row.input) if row.input else None
        data["output"] = orjson.loads(row.output) if row.output else None
        return cls(**data)


@dataclass(frozen=True)
class ApiDeps:
    """What the routers of the API share: the projection store, a started producer, topic names, the bearer
    guard to put on every route, and (when this process hosts it) the engine, for replay diffs."""

    store: ProjectionStore
    producer: Any
    topics: TopicNames
    guard: list[DependsParam]
    bootstrap: str = ""
    engine: Any = None
    #: Workflows the engine of this process knows (None: the engine runs elsewhere; accept any name).
    workflows: set[str] | None = None
    #: The live projector of this process (None: it runs elsewhere), which a rebuild pauses to swap in.
    projector: Any = None


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _has_lone_surrogate(body: bytes) -> bool:
    """True when the JSON body decodes to text with an unpaired surrogate (a pair is one valid character)."""
    if not _SURROGATE_ESCAPE.search(body):
        return False
    try:
        json.dumps(json.loads(body), ensure_ascii=False).encode()
    except UnicodeEncodeError:  # only an unpaired surrogate cannot be encoded as UTF-8
        return True
    except (ValueError, RecursionError):  # not JSON (or absurdly nested): FastAPI answers that itself
        return False
    return False


async def produce_command(producer: Any, topic: str, command: Envelope) -> None:
    """Produce ``command`` keyed by its key and wait for Kafka's acknowledgement (the API answers only then).

    A command that cannot be encoded is the caller's mistake: 413 when it is too big, 422 otherwise.
    """
    try:
        raw = encode(command)
    except InvalidRecord as exc:
        raise HTTPException(413 if isinstance(exc, RecordTooLarge) else 422, str(exc)) from None
    await producer.send_and_wait(topic, raw, key=command.key.encode())


def _router_builders() -> list[Any]:
    """The API's other route modules; each exposes ``build_router(deps) -> APIRouter``."""
    from services import (  # they import ApiDeps from this module
        api_analytics,
        api_live,
        api_memory,
        api_rebuild,
        api_replay,
        api_sql,
        api_stacks,
    )

    return [
        api_analytics.build_router,
        api_live.build_router,
        api_memory.build_router,
        api_rebuild.build_router,
        api_replay.build_router,
        api_sql.build_router,
        api_stacks.build_router,
    ]


def create_api(
    *,
    store: ProjectionStore,
    producer: Any,
    topics: TopicNames,
    workflows: set[str] | None,
    token: str | None = None,
    metrics: Any = None,
    blobs: Any = None,
    offload_bytes: int = MAX_RECORD_BYTES // 4,
    max_body_bytes: int = MAX_RECORD_BYTES,
    bootstrap: str = "",
    engine: Any = None,
    projector: Any = None,
) -> FastAPI:
    """Build the FastAPI app. ``workflows`` is the set the engine knows (None: accept any name)."""
    api = FastAPI(
        title="tickflow",
        version="0.1.0",
        description="Durable workflows on a Kafka log; status and analytics from ClickHouse.",
    )

    async def authorize(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and secrets.compare_digest(given[7:], token)):
            raise HTTPException(401, "missing or wrong bearer token: send 'Authorization: Bearer <TICKFLOW_API_TOKEN>'")

    @api.middleware("http")
    async def refuse_lone_surrogates(request: Request, call_next: Any) -> Any:
        # JSON may escape a lone UTF-16 surrogate ("\ud800"); Python turns it into a str that cannot be encoded
        # again, so it failed deep inside (the Kafka codec, chDB, even the error response) as a 500.
        if request.method in ("POST", "PUT", "PATCH") and _has_lone_surrogate(await request.body()):
            detail = "the JSON body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff): send valid Unicode text"
            return JSONResponse({"detail": detail}, status_code=422)
        return await call_next(request)

    @api.middleware("http")  # added last, so it runs first: a too-big body is refused before it is read
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return JSONResponse(
                {"detail": f"request body is {length} bytes; the limit is {max_body_bytes}"}, status_code=413
            )
        return await call_next(request)

    guard = [Depends(authorize)]
    deps = ApiDeps(
        store=store,
        producer=producer,
        topics=topics,
        guard=guard,
        bootstrap=bootstrap,
        engine=engine,
        workflows=workflows,
        projector=projector,
    )
    for build_router in _router_builders():
        api.include_router(build_router(deps))

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.post("/runs", status_code=202, response_model=StartResponse, dependencies=guard)
    async def start_run(body: StartRequest) -> StartResponse:
        if workflows is not None and body.workflow not in workflows:
            known = ", ".join(sorted(workflows)) or "none"
            raise HTTPException(404, f"unknown workflow {body.workflow!r}; registered workflows: {known}")
        run_id = body.run_id or uuid.uuid4().hex
        value = body.input
        if blobs is not None:  # claim-check: a big input is stored out of band, the log gets a reference
            try:
                value = await asyncio.to_thread(
                    offload, value, blobs, offload_bytes, max_body_bytes, f"the input of run {run_id!r}"
                )
            except PayloadTooLarge as exc:
                raise HTTPException(413, str(exc)) from None
            except TypeError as exc:  # e.g. an integer beyond 64 bits
                raise HTTPException(422, f"the input cannot be stored as JSON: {exc}") from None
        command = Envelope.wrap(
            StartRun(workflow=body.workflow, input=value, priority=body.priority),
            id=f"start/{run_id}",
            key=run_id,
            occurred_at_ms=int(time.time() * 1000),
            correlation_id=run_id,
        )
        await produce_command(producer, topics.commands, command)
        return StartResponse(run_id=run_id)

    async def send_command(run_id: str, payload: Any, command_id: str) -> None:
        rows = await asyncio.to_thread(store.runs_by_id, [run_id])
        if run_id not in rows:
            raise HTTPException(404, f"no run {run_id!r} is visible: check the id, or wait until its start is visible")
        command = Envelope.wrap(
            payload, id=command_id, key=run_id, occurred_at_ms=int(time.time() * 1000), correlation_id=run_id
        )
        await produce_command(producer, topics.commands, command)

    @api.post("/runs/{run_id}/resume", status_code=202, response_model=CommandAccepted, dependencies=guard)
    async def resume_run(run_id: str, body: ResumeRequest) -> CommandAccepted:
        """Deliver an event to a run suspended in a wait node. The engine validates the payload against the
        wait's schema; a refusal appears in the run's events as ResumeRejected with this command id."""
        command_id = f"resume/{run_id}/{uuid.uuid4().hex}"
        await send_command(run_id, ResumeRun(event=body.event, payload=body.payload), command_id)
        return CommandAccepted(run_id=run_id, command_id=command_id)

    @api.post("/runs/{run_id}/cancel", status_code=202, response_model=CommandAccepted, dependencies=guard)
    async def cancel_run(run_id: str, body: CancelRequest | None = None) -> CommandAccepted:
        command_id = f"cancel/{run_id}/{uuid.uuid4().hex}"
        reason = body.reason if body is not None else "cancelled through the API"
        await send_command(run_id, CancelRun(reason=reason), command_id)
        return CommandAccepted(run_id=run_id, command_id=command_id)

    @api.put("/pools/{pool}/concurrency", status_code=202, dependencies=guard)
    async def set_pool_concurrency(pool: str, body: PoolLimit) -> dict[str, Any]:
        """Change how many steps each worker of ``pool`` runs at once; workers apply it within seconds."""
        try:
            control = SetPoolConcurrency(pool=pool, limit=body.limit)
        except ValueError as exc:
            raise HTTPException(422, f"invalid pool name {pool!r}: {exc}") from None
        now = int(time.time() * 1000)
        env = Envelope.wrap(control, id=f"pool/{pool}/{uuid.uuid4().hex}", key=pool, occurred_at_ms=now)
        await producer.send_and_wait(topics.control, encode(env), key=pool.encode())
        return {"pool": pool, "limit": body.limit}

    @api.post("/admin/vacuum", dependencies=guard)
    async def vacuum(body: VacuumRequest) -> dict[str, Any]:
        """Delete finished runs (and their events) that ended more than ``older_than_s`` ago from ClickHouse.
        The log keeps them: a rebuild from the events topic brings them back."""
        cutoff = int(time.time() * 1000) - int(body.older_than_s * 1000)
        removed = await asyncio.to_thread(store.vacuum, cutoff)
        return {"runs_removed": removed, "finished_before_ms": cutoff}

    @api.get("/runs/{run_id}", response_model=RunStatus, dependencies=guard)
    async def get_run(run_id: str) -> RunStatus:
        rows = await asyncio.to_thread(store.runs_by_id, [run_id])
        if run_id not in rows:
            raise HTTPException(
                404, f"no run {run_id!r} is visible yet: it was never started, or its start is still in flight"
            )
        return RunStatus.from_row(rows[run_id])

    @api.get("/runs", response_model=list[RunStatus], dependencies=guard)
    async def list_runs(
        status: str | None = Query(default=None, max_length=32),
        workflow: str | None = Query(default=None, max_length=128),
        limit: int = Query(default=50, ge=1, le=1000),
        offset: int = Query(default=0, ge=0, le=10_000_000),
    ) -> list[RunStatus]:
        rows = await asyncio.to_thread(store.list_runs, status=status, workflow=workflow, limit=limit, offset=offset)
        return [RunStatus.from_row(r) for r in rows]

    @api.get("/runs/{run_id}/events", dependencies=guard)
    async def run_events(run_id: str) -> list[dict[str, Any]]:
        import orjson

        rows = await asyncio.to_thread(store.run_events, run_id)
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

    @api.get("/stats", dependencies=guard)
    async def stats(workflow: str | None = Query(default=None, max_length=128)) -> dict[str, Any]:
        counts = await asyncio.to_thread(store.status_counts, workflow)
        out: dict[str, Any] = {"runs": counts, "total": sum(counts.values())}
        if metrics is not None:
            out["projector"] = {
                "events_projected": metrics.events_projected,
                "lag": sum(metrics.lag.values()),
                "last_freshness_ms": metrics.last_freshness_ms,
                "already_projected": metrics.already_projected,
            }
        return out

    return api
