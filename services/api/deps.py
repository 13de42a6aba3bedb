"""What the API's routers share: the dependencies one process wires in, the credential check, and errors with codes.

Routes are plain functions of their module's ``router``; they reach what this process wires in (the projection
store, the command producer, the engine…) through FastAPI's ``Depends``: ``Deps`` is the ``ApiDeps`` that
``create_api`` put on ``app.state``, read per request, so a role the node restarts (a new engine or projector put
in place) is what the next request sees. What a route uses of the engine, the projector, its metrics and the
producer is said by the small protocols below: a test can bring a stand-in, and a change to those classes that a
route depends on shows up in mypy.

Every error the API answers carries a machine-readable ``code`` next to its human ``detail`` (see
``tickflow.events.errors.ErrorCode``); routers raise :class:`ApiProblem` for a specific code, and a plain
``HTTPException`` gets the code its status implies.
"""

from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Header, HTTPException, Request

from tickflow.api.sessions import Credentials
from tickflow.events.codec import MAX_RECORD_BYTES, InvalidRecord, RecordTooLarge, encode
from tickflow.events.connection import KafkaTarget
from tickflow.events.envelope import Envelope
from tickflow.events.errors import ErrorCode
from tickflow.events.topics import TopicNames
from tickflow.projections.rebuild import LiveProjector
from tickflow.projections.store import ProjectionStore
from tickflow.runtime.claimcheck import BlobStore
from tickflow.runtime.replay import VerifiableEngine

__all__ = [
    "AcceptedRuns",
    "ApiDeps",
    "ApiProblem",
    "CommandProducer",
    "Deps",
    "HostedEngine",
    "IdempotencyKey",
    "ProjectorGauges",
    "app_state",
    "authorize",
    "code_for_status",
    "command_token",
    "deps_of",
    "produce_command",
]

_T = TypeVar("_T")

#: The ``Idempotency-Key`` header of every command route: a retry with the same key is the same command.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description=(
            "Any string of yours (a UUID, say). A request sent again with the same key (a retry after a lost answer) "
            "is the same command: the engine applies it once."
        ),
    ),
]


def command_token(idempotency_key: str | None) -> str:
    """The part of a command id that makes it unique: derived from the client's idempotency key, so a retry
    carries the same id and the engine recognises it; random without a key. The key itself never enters the log
    (a client may put anything in it), only a digest of it."""
    if idempotency_key is None:
        return uuid.uuid4().hex
    return "k-" + hashlib.blake2b(idempotency_key.encode(), digest_size=16).hexdigest()

_CODE_BY_STATUS = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    429: ErrorCode.BUSY,
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


class AcceptedRuns:
    """Runs this API process accepted whose first projection may not have landed yet: read-your-writes.

    A ``GET /runs/{id}`` right after ``POST /runs`` answers ``pending`` instead of 404 while the start travels
    through the engine and the projector (tens of milliseconds to a second). Bounded (least recently accepted go
    first) and per process: a run started through another API process or straight to Kafka is visible once
    projected.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self._runs: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def add(self, run_id: str, workflow: str, accepted_at_ms: int) -> None:
        self._runs[run_id] = (workflow, accepted_at_ms)
        self._runs.move_to_end(run_id)
        while len(self._runs) > self.limit:
            self._runs.popitem(last=False)

    def get(self, run_id: str) -> tuple[str, int] | None:
        """(workflow, accepted at) of a run accepted here and not yet seen projected."""
        return self._runs.get(run_id)

    def projected(self, run_id: str) -> None:
        """The run's row is in the store now: it needs no stand-in any more."""
        self._runs.pop(run_id, None)


class CommandProducer(Protocol):
    """What the routes use of the Kafka producer (aiokafka's, started): send one record, wait for its ack."""

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> object: ...


class HostedEngine(VerifiableEngine, Protocol):
    """What the routes use of the engine of their own process: its status (``/stats``, the System page) and what
    ``verify_engine`` compares with a refold of the log."""

    def status(self) -> dict[str, Any]: ...


class ProjectorGauges(Protocol):
    """What ``/stats`` and the System page show of the live projector's metrics (``ProjectorMetrics``)."""

    @property
    def events_projected(self) -> int: ...

    @property
    def lag(self) -> Mapping[str, int]: ...

    @property
    def last_freshness_ms(self) -> float: ...

    @property
    def already_projected(self) -> int: ...

    @property
    def last_insert_ms(self) -> float: ...

    @property
    def last_batch_size(self) -> int: ...


@dataclass  # not frozen: the node puts a restarted engine or projector in place (``Node._replace``)
class ApiDeps:
    """What the routers of the API share: the projection store, a started producer, topic names, the credentials
    ``authorize`` checks, and (when this process hosts them) the engine and the projector. The routers that keep
    state of their own (stream slots, SQL pool, rebuild jobs…) keep it on ``app.state`` beside it."""

    store: ProjectionStore
    producer: CommandProducer
    topics: TopicNames
    credentials: Credentials
    #: How this API reaches Kafka (None: it does not; live streams, rebuilds and the dead-letter tail are off).
    kafka: KafkaTarget | None = None
    #: The engine of this process (None: it runs elsewhere; ``/admin/engine/verify`` then answers 409).
    engine: HostedEngine | None = None
    #: Workflows the engine of this process knows (None: the engine runs elsewhere; accept any name).
    workflows: set[str] | None = None
    #: Of those, the ones that call an LLM (``Registry.agent_workflows``): the board's create form offers them first.
    agent_workflows: tuple[str, ...] = ()
    #: The live projector of this process (None: it runs elsewhere), which a rebuild pauses to swap in.
    projector: LiveProjector | None = None
    #: The projector's metrics (``/stats`` shows them), when this process runs it.
    metrics: ProjectorGauges | None = None
    #: The claim-check blob store: run inputs above ``offload_bytes`` go there, the log gets a reference.
    blobs: BlobStore | None = None
    offload_bytes: int = MAX_RECORD_BYTES // 4
    max_body_bytes: int = MAX_RECORD_BYTES
    #: Restarts of this process's roles by their node (``/stats`` shows them): name → {restarts, last_error, …}.
    role_failures: Callable[[], dict[str, Any]] | None = None
    #: Runs accepted here and not yet projected (``GET /runs/{id}`` answers ``pending`` for them).
    accepted: AcceptedRuns = field(default_factory=AcceptedRuns)


def app_state(request: Request, name: str, kind: type[_T]) -> _T:
    """The ``kind`` object ``create_api`` put on the serving app's state as ``name`` (one per app: tests build many
    apps in one process, so per-app state never lives in a module)."""
    value = getattr(request.app.state, name, None)
    if not isinstance(value, kind):
        raise RuntimeError(f"the app has no {name} ({kind.__name__}) on its state: build it with create_api")
    return value


def deps_of(request: Request) -> ApiDeps:
    """The dependencies of the app serving ``request``, read when the request arrives (see the module doc)."""
    return app_state(request, "deps", ApiDeps)


#: A route's parameter for its app's ``ApiDeps``.
Deps = Annotated[ApiDeps, Depends(deps_of)]


async def authorize(request: Request, deps: Deps) -> None:
    """The credential check on every route but sign-in, health and the dashboard's assets (unsafe requests
    already passed the same check in the gate, before their body was read). A dashboard page asked for before
    signing in redirects to the sign-in page (the app's handler turns the 303 into a redirect)."""
    refusal = deps.credentials.check(request.method, request.headers, request.cookies)
    if refusal is None:
        return
    if refusal.status == 401 and request.url.path.startswith("/ui/") and request.method == "GET":
        raise HTTPException(303, "sign in first", headers={"Location": f"/ui/login?next={request.url.path}"})
    raise HTTPException(refusal.status, refusal.detail)


async def produce_command(producer: CommandProducer, topic: str, command: Envelope) -> None:
    """Produce ``command`` keyed by its key and wait for Kafka's acknowledgement (the API answers only then).

    A command that cannot be encoded is the caller's mistake: 413 when it is too big, 422 otherwise.
    """
    try:
        raw = encode(command)
    except InvalidRecord as exc:
        raise HTTPException(413 if isinstance(exc, RecordTooLarge) else 422, str(exc)) from None
    await producer.send_and_wait(topic, raw, key=command.key.encode())
