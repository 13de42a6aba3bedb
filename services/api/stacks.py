"""Stack commands over HTTP: create, update, pause, play, delete. Reads (the board) live in ``analytics``.

A command is produced to the stack's key on the commands topic and acknowledged by Kafka before the answer
(202). The engine owning the stack validates it again (a refused command lands on the dead-letter topic with
the reason), but what can be checked here — the workflow exists, the fields are in range — is answered 4xx now.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, ConfigDict, Field

from tickflow.api.deps import ApiDeps, ApiProblem, Deps, IdempotencyKey, authorize, command_token, produce_command
from tickflow.events.agents import CreateStack, DeleteStack, PauseStack, PlayStack, StackId, UpdateStack, stack_key
from tickflow.events.envelope import Envelope
from tickflow.events.errors import ErrorCode
from tickflow.events.schemas import Payload

__all__ = ["StackAccepted", "router"]


class StackAccepted(BaseModel):
    stack_id: str
    command_id: str


class CreateStackRequest(CreateStack):
    """The stack's settings; ``stack_id`` names it (letters, digits, '_', '.', '-')."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    stack_id: StackId


class ReasonRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=1_000)


StackPath = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")]


#: Every route here needs the credentials.
router = APIRouter(dependencies=[Depends(authorize)])


async def _send(
    deps: ApiDeps, stack_id: str, payload: Payload, verb: str, idempotency_key: str | None
) -> StackAccepted:
    """Produce a stack command; with an idempotency key its id is derived from it, so a retry is taken once."""
    key = stack_key(stack_id)
    command_id = f"{verb}/{key}/{command_token(idempotency_key)}"
    env = Envelope.wrap(payload, id=command_id, key=key, occurred_at_ms=int(time.time() * 1000), correlation_id=key)
    await produce_command(deps.producer, deps.topics.commands, env)
    return StackAccepted(stack_id=stack_id, command_id=command_id)


def _check_workflow(deps: ApiDeps, name: str | None) -> None:
    known = deps.workflows
    if name is not None and known is not None and name not in known:
        raise ApiProblem(
            404,
            ErrorCode.UNKNOWN_WORKFLOW,
            f"unknown workflow {name!r}; registered workflows: {', '.join(sorted(known))}",
        )


@router.post("/stacks", status_code=202, response_model=StackAccepted)
async def create_stack(deps: Deps, body: CreateStackRequest, idempotency_key: IdempotencyKey = None) -> StackAccepted:
    """Create a stack (a no-op if it exists): it runs ``workflow`` every ``interval_s`` seconds while playing."""
    _check_workflow(deps, body.workflow)
    command = CreateStack(**body.model_dump(exclude={"stack_id"}))
    return await _send(deps, body.stack_id, command, "create", idempotency_key)


@router.patch("/stacks/{stack_id}", status_code=202, response_model=StackAccepted)
async def update_stack(
    deps: Deps, stack_id: StackPath, body: UpdateStack, idempotency_key: IdempotencyKey = None
) -> StackAccepted:
    """Change some settings (interval, budget, overlap, idle backoff, priority, workflow, input)."""
    _check_workflow(deps, body.workflow)
    return await _send(deps, stack_id, body, "update", idempotency_key)


@router.post("/stacks/{stack_id}/pause", status_code=202, response_model=StackAccepted)
async def pause_stack(
    deps: Deps, stack_id: StackPath, body: ReasonRequest | None = None, idempotency_key: IdempotencyKey = None
) -> StackAccepted:
    return await _send(deps, stack_id, PauseStack(reason=body.reason if body else ""), "pause", idempotency_key)


@router.post("/stacks/{stack_id}/play", status_code=202, response_model=StackAccepted)
async def play_stack(deps: Deps, stack_id: StackPath, idempotency_key: IdempotencyKey = None) -> StackAccepted:
    """Resume ticking; the next tick fires at once."""
    return await _send(deps, stack_id, PlayStack(), "play", idempotency_key)


@router.delete("/stacks/{stack_id}", status_code=202, response_model=StackAccepted)
async def delete_stack(deps: Deps, stack_id: StackPath, idempotency_key: IdempotencyKey = None) -> StackAccepted:
    """Stop the stack for good (a running tick finishes); its history stays in the log."""
    return await _send(deps, stack_id, DeleteStack(reason="deleted through the API"), "delete", idempotency_key)
