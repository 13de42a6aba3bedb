"""HTTP routes of replay: a run's state at any seq, forks, and the engine's refold-vs-live check.

Time travel and forks read the run's events from the ``events`` projection (the API's own store); a fork is
sent as a ``ForkRun`` command, so the engine that owns the new run stays the only writer of its events. The
verification needs the engine itself and therefore answers only in a process that hosts one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tickflow.api.deps import ApiDeps, ApiProblem, Deps, app_state, authorize
from tickflow.core.state import state_to_json
from tickflow.events.codec import InvalidRecord, RecordTooLarge, encode
from tickflow.events.envelope import Envelope
from tickflow.events.errors import ErrorCode
from tickflow.events.schemas import BlobRef, ForkRun
from tickflow.events.topics import RUN_ID_PATTERN
from tickflow.runtime.claimcheck import BLOB_KEY, BlobStore, offload
from tickflow.runtime.replay import ReplayError, fork_command, history_of, state_at, verify_engine
from tickflow.wire import EngineReport, top_level_run_id

__all__ = [
    "ForkRequest",
    "ForkResponse",
    "StateAtResponse",
    "fork_record",
    "router",
    "verify_lock",
]


class StateAtResponse(BaseModel):
    run_id: str
    at_seq: int
    last_seq: int = Field(description="The run's last event visible in the projection.")
    state: dict[str, Any] = Field(description="The fold of events 1..at_seq: a RunState as JSON.")


class ForkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    at_seq: int = Field(description="Fork from the source's state after this event (1..its last seq).")
    run_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=RUN_ID_PATTERN,
        description="The new run's id. Forking again with the same id forks once.",
    )

    _run_id = field_validator("run_id")(top_level_run_id)


class ForkResponse(BaseModel):
    run_id: str
    source_run_id: str
    at_seq: int


def _refuse(exc: ReplayError | InvalidRecord) -> HTTPException:
    if isinstance(exc, InvalidRecord):  # a stored event no longer decodes: the data, not the request, is bad
        return HTTPException(500, f"the run's events cannot be decoded: {exc}")
    return ApiProblem(exc.http_status, exc.code, str(exc))


def verify_lock(request: Request) -> asyncio.Lock:
    """The app's verify lock: one verify at a time, since each reads whole partitions of the log."""
    return app_state(request, "verify_lock", asyncio.Lock)


#: Routes under ``/runs/{id}/state``, ``/runs/{id}/fork`` and ``/admin/engine/verify``; all need the credentials.
router = APIRouter(dependencies=[Depends(authorize)])


async def _history(deps: ApiDeps, run_id: str) -> list[Envelope]:
    rows = await asyncio.to_thread(deps.store.run_events, run_id)
    try:
        return await asyncio.to_thread(history_of, run_id, rows)
    except (ReplayError, InvalidRecord) as exc:
        raise _refuse(exc) from None


@router.get("/runs/{run_id}/state", response_model=StateAtResponse)
async def get_state(
    deps: Deps, run_id: str, at_seq: int | None = Query(default=None, description="Default: the last visible event.")
) -> StateAtResponse:
    """The run's state after event ``at_seq``: the fold of its events 1..at_seq (time travel)."""
    events = await _history(deps, run_id)
    try:
        state = await asyncio.to_thread(state_at, run_id, events, at_seq)
    except ReplayError as exc:
        raise _refuse(exc) from None
    return StateAtResponse(run_id=run_id, at_seq=state.seq, last_seq=events[-1].seq or 0, state=state_to_json(state))


@router.post("/runs/{run_id}/fork", status_code=202, response_model=ForkResponse)
async def fork_run(deps: Deps, run_id: str, body: ForkRequest) -> ForkResponse:
    """Start a new run from this run's state at ``at_seq``. Steps completed by then are not run again;
    steps in flight then are issued again under the new run's id; the rest runs as in any run."""
    new_id = body.run_id or uuid.uuid4().hex
    events = await _history(deps, run_id)
    if body.run_id is not None and await _is_this_fork(deps, new_id, run_id, body.at_seq):
        return ForkResponse(run_id=new_id, source_run_id=run_id, at_seq=body.at_seq)  # a retry: forked once
    try:
        command = await asyncio.to_thread(fork_command, run_id, events, body.at_seq, new_id, int(time.time() * 1000))
        raw = await asyncio.to_thread(fork_record, command, deps.blobs)
    except ReplayError as exc:
        raise _refuse(exc) from None
    except InvalidRecord as exc:
        raise HTTPException(
            413, f"{exc}. A fork carries the source's events 1..{body.at_seq}; fork at an earlier seq"
        ) from None
    await deps.producer.send_and_wait(deps.topics.commands, raw, key=new_id.encode())
    return ForkResponse(run_id=new_id, source_run_id=run_id, at_seq=body.at_seq)


@router.post("/admin/engine/verify", response_model=EngineReport)
async def verify(deps: Deps, verifying: Annotated[asyncio.Lock, Depends(verify_lock)]) -> EngineReport:
    """Refold the log of the partitions this process's engine owns and compare with its live state."""
    if deps.engine is None:
        raise HTTPException(
            409,
            "no engine runs in this API process, so there is no live state to compare: call the API of a "
            "process started with both the engine and api roles (the default `tickflow up`)",
        )
    if verifying.locked():
        raise ApiProblem(409, ErrorCode.BUSY, "a verify is already running in this process; wait for its "
                         "answer (a second one would read the same partitions again)")
    async with verifying:
        return await verify_engine(deps.engine)


def fork_record(command: Envelope, blobs: BlobStore | None) -> bytes:
    """The encoded ForkRun command; a history too big for one record goes to the blob store (claim-check) and the
    command names it (``ForkRun.history_blob``), so a run of any length can be forked. Blocking: call off the loop."""
    try:
        return encode(command)
    except RecordTooLarge:
        if blobs is None:
            raise
    fork = command.payload
    assert isinstance(fork, ForkRun)
    history = [event.model_dump(mode="json") for event in fork.history]
    what = f"the history of run {fork.source_run_id!r} up to seq {fork.at_seq}"
    ref = offload(history, blobs, 0, 2**62, what)[BLOB_KEY]  # 0: always out of band; the store bounds the rest
    claimed = ForkRun(source_run_id=fork.source_run_id, at_seq=fork.at_seq, history_blob=BlobRef(**ref))
    return encode(command.model_copy(update={"payload": claimed}))


async def _is_this_fork(deps: ApiDeps, new_id: str, source_id: str, at_seq: int) -> bool:
    """True when ``new_id`` already is this very fork (a retry); 409 when another run has the id, because the
    engine would ignore the fork silently. False when the id is free (as far as the projection shows)."""
    rows = await asyncio.to_thread(deps.store.run_events, new_id)
    if not rows:
        return False
    marker = next((r for r in rows if r.seq == at_seq + 1 and r.type == "RunForked"), None)
    if marker is not None and orjson.loads(marker.payload).get("source_run_id") == source_id:
        return True
    if rows[0].type == "RunRejected":
        reason = orjson.loads(rows[0].payload).get("reason", "")
        raise HTTPException(409, f"run id {new_id!r} was refused before ({reason}); choose another run_id")
    raise HTTPException(409, f"run id {new_id!r} is already taken by another run; choose another run_id")
