"""What the API's routers share: the dependencies one process wires in, the command producer, and errors with codes.

Every error the API answers carries a machine-readable ``code`` next to its human ``detail`` (see
``tickflow.events.errors.ErrorCode``); routers raise :class:`ApiProblem` for a specific code, and a plain
``HTTPException`` gets the code its status implies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException
from fastapi.params import Depends as DependsParam

from tickflow.events.codec import MAX_RECORD_BYTES, InvalidRecord, RecordTooLarge, encode
from tickflow.events.envelope import Envelope
from tickflow.events.errors import ErrorCode
from tickflow.events.topics import TopicNames
from tickflow.projections.store import ProjectionStore

__all__ = ["ApiDeps", "ApiProblem", "code_for_status", "produce_command"]

_CODE_BY_STATUS = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    422: ErrorCode.INVALID_REQUEST,
    501: ErrorCode.UNAVAILABLE,
    503: ErrorCode.UNAVAILABLE,
}


def code_for_status(status: int) -> ErrorCode:
    """The code an error answer carries when its router named none."""
    return _CODE_BY_STATUS.get(status, ErrorCode.INVALID_REQUEST if 400 <= status < 500 else ErrorCode.INTERNAL)


class ApiProblem(HTTPException):
    """An HTTP error with a specific machine-readable code (e.g. 404 ``unknown_workflow`` vs ``run_not_found``)."""

    def __init__(self, status: int, code: ErrorCode, detail: str) -> None:
        super().__init__(status, detail)
        self.code = code


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
    #: The projector's metrics (``/stats`` shows them), when this process runs it.
    metrics: Any = None
    #: The claim-check blob store: run inputs above ``offload_bytes`` go there, the log gets a reference.
    blobs: Any = None
    offload_bytes: int = MAX_RECORD_BYTES // 4
    max_body_bytes: int = MAX_RECORD_BYTES


async def produce_command(producer: Any, topic: str, command: Envelope) -> None:
    """Produce ``command`` keyed by its key and wait for Kafka's acknowledgement (the API answers only then).

    A command that cannot be encoded is the caller's mistake: 413 when it is too big, 422 otherwise.
    """
    try:
        raw = encode(command)
    except InvalidRecord as exc:
        raise HTTPException(413 if isinstance(exc, RecordTooLarge) else 422, str(exc)) from None
    await producer.send_and_wait(topic, raw, key=command.key.encode())
