"""The HTTP API: commands in, status out. Bound to 127.0.0.1 unless configured otherwise.

Commands are produced to Kafka and acknowledged (acks=all) before the API answers 202, so an accepted
command is never lost. Reads go to the projections in ClickHouse; in embedded mode this process owns the chDB
data directory, which is why the CLI and SDK read through here. Each family of routes is a module of this
package with a ``build_router(deps)``; this module wires them together with the guards every route shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tickflow.api import analytics, blobs, divergence, live, memory, rebuild, replay, runs, schemas, sql, stacks
from tickflow.api.deps import ApiDeps, code_for_status
from tickflow.api.gate import RequestGate
from tickflow.api.sessions import Credentials
from tickflow.dashboard import pages as dashboard
from tickflow.dashboard.board import BoardFeed
from tickflow.dashboard.session import build_login_router
from tickflow.events.codec import MAX_RECORD_BYTES
from tickflow.events.connection import KafkaTarget
from tickflow.events.errors import ErrorCode
from tickflow.events.topics import TopicNames
from tickflow.projections.store import ProjectionStore

__all__ = ["create_api"]

#: Every router of the API, in the order their routes are matched.
ROUTERS = (runs, blobs, analytics, live, memory, rebuild, replay, sql, stacks, divergence, schemas)
#: Swagger UI's vendored assets (``tickflow/dashboard/static/vendor``), without the suffix.
SWAGGER_UI = "/ui/static/vendor/swagger-ui-5.32.0"

def _error(status: int, detail: Any, code: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def create_api(
    *,
    store: ProjectionStore,
    producer: Any,
    topics: TopicNames,
    workflows: set[str] | None,
    token: str | None = None,
    agent_workflows: Sequence[str] = (),
    metrics: Any = None,
    blobs: Any = None,
    offload_bytes: int = MAX_RECORD_BYTES // 4,
    max_body_bytes: int = MAX_RECORD_BYTES,
    kafka: KafkaTarget | None = None,
    engine: Any = None,
    projector: Any = None,
    hosts: Sequence[str] | None = None,
    trusted_origins: Sequence[str] = (),
    max_json_values: int = 100_000,
    body_timeout_s: float = 30.0,
    session_ttl_s: float = 12 * 3600,
    sql_concurrency: int = 2,
    sql_url: str | None = None,
    streams_per_client: int = 32,
) -> FastAPI:
    """Build the FastAPI app. ``workflows`` is the set the engine knows (None: accept any name); ``hosts`` the Host
    header values answered (None: any; see ``tickflow.api.guards``); the rest are the limits of
    ``tickflow.api.gate`` (every unsafe request) and of the SQL and live-stream routes."""
    api = FastAPI(
        title="tickflow",
        version="0.1.0",
        description="Durable workflows on a Kafka log; status and analytics from ClickHouse.",
        # Served below behind the token, like every other route.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    credentials = Credentials(token, session_ttl_s)

    async def authorize(request: Request) -> None:
        """The credential check on every route but sign-in, health and the dashboard's assets (unsafe requests
        already passed the same check in the gate, before their body was read)."""
        refusal = credentials.check(request.method, request.headers, request.cookies)
        if refusal is None:
            return
        if refusal.status == 401 and request.url.path.startswith("/ui/") and request.method == "GET":
            raise HTTPException(303, "sign in first", headers={"Location": f"/ui/login?next={request.url.path}"})
        raise HTTPException(refusal.status, refusal.detail)

    @api.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 303 and exc.headers:  # a dashboard page before signing in
            return RedirectResponse(exc.headers["Location"], status_code=303)
        code = getattr(exc, "code", None) or code_for_status(exc.status_code)
        return _error(exc.status_code, exc.detail, str(code), exc.headers)

    @api.exception_handler(RequestValidationError)
    async def invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, jsonable_encoder(exc.errors()), ErrorCode.INVALID_REQUEST)

    # Starlette runs the middleware added last first: the Host check, then the gate, then the routes.
    api.add_middleware(
        RequestGate,
        credentials=credentials,
        max_body_bytes=max_body_bytes,
        max_json_values=max_json_values,
        body_timeout_s=body_timeout_s,
        trusted_origins=frozenset(trusted_origins),
    )
    if hosts is not None:
        api.add_middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))

    deps = ApiDeps(
        store=store,
        producer=producer,
        topics=topics,
        guard=[Depends(authorize)],
        kafka=kafka,
        engine=engine,
        workflows=workflows,
        agent_workflows=tuple(agent_workflows),
        projector=projector,
        metrics=metrics,
        blobs=blobs,
        offload_bytes=offload_bytes,
        max_body_bytes=max_body_bytes,
        sql_concurrency=sql_concurrency,
        sql_url=sql_url,
        streams_per_client=streams_per_client,
    )
    api.state.deps = deps  # the node updates its engine and projector when it restarts them
    for module in ROUTERS:
        api.include_router(module.build_router(deps))
    # The dashboard: pages under /ui, its assets (shipped in the package) under /ui/static, sign-in with the token.
    api.include_router(build_login_router(credentials, dashboard.HERE / "templates"))
    board = BoardFeed(store, kafka, topics.events, topics.partitions)
    api.include_router(dashboard.build_router(deps, board))
    # follow_symlink: an editable install links the files (a wheel holds them as they are).
    static = StaticFiles(directory=dashboard.HERE / "static", follow_symlink=True)
    api.mount("/ui/static", static, name="ui-static")

    @api.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        """The address ``tickflow up`` prints opens the dashboard (which asks to sign in when there is a token)."""
        return RedirectResponse("/ui/board", status_code=307)

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/openapi.json", dependencies=[Depends(authorize)], include_in_schema=False)
    async def openapi_document() -> JSONResponse:
        return JSONResponse(api.openapi())

    @api.get("/docs", dependencies=[Depends(authorize)], include_in_schema=False)
    async def interactive_docs() -> HTMLResponse:
        """Swagger UI, served from the package like the dashboard's assets (no CDN: it works where the API has no
        internet, and nothing about the page is sent elsewhere; the spec validator badge is off for that reason)."""
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="tickflow API",
            swagger_js_url=f"{SWAGGER_UI}-bundle.js",
            swagger_css_url=f"{SWAGGER_UI}.css",
            swagger_favicon_url="/ui/static/vendor/swagger-ui-favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )

    @api.get("/metrics", dependencies=[Depends(authorize)], include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """Every role of this process in Prometheus' text format (``tickflow.metrics``); behind the API token."""
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return api

