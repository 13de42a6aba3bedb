"""The HTTP API: commands in, status out. Bound to 127.0.0.1 unless configured otherwise.

Commands are produced to Kafka and acknowledged (acks=all) before the API answers 202, so an accepted
command is never lost. Reads go to the projections in ClickHouse; in embedded mode this process owns the chDB
data directory, which is why the CLI and SDK read through here. Each family of routes is a module of this
package with a module-level ``router``; this module builds the app: it puts what the routes share on
``app.state`` (``ApiDeps`` and the per-app state of the routers that keep some), includes the routers, and adds the
middleware and error handlers every route goes through.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tickflow.agents.memory import register_local_store
from tickflow.api import analytics, blobs, divergence, live, memory, rebuild, replay, runs, schemas, sql, stacks
from tickflow.api.dashboard import pages as dashboard
from tickflow.api.dashboard import session as sign_in
from tickflow.api.deps import ApiDeps, CommandProducer, HostedEngine, ProjectorGauges, authorize, code_for_status
from tickflow.api.gate import RequestGate
from tickflow.api.sessions import Credentials
from tickflow.events.codec import MAX_RECORD_BYTES
from tickflow.events.connection import KafkaTarget
from tickflow.events.errors import ErrorCode
from tickflow.events.topics import TopicNames
from tickflow.projections.rebuild import LiveProjector
from tickflow.projections.store import ProjectionStore
from tickflow.runtime.claimcheck import BlobStore

__all__ = ["ROUTERS", "create_api", "router"]

#: Every router of the API, in the order their routes are matched.
ROUTERS = (runs, blobs, analytics, live, memory, rebuild, replay, sql, stacks, divergence, schemas)
#: Swagger UI's vendored assets (``tickflow/api/dashboard/static/vendor``), without the suffix.
SWAGGER_UI = "/ui/static/vendor/swagger-ui-5.32.0"

def _error(status: int, detail: Any, code: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail, "code": code}, status_code=status, headers=headers)


def create_api(
    *,
    store: ProjectionStore,
    producer: CommandProducer,
    topics: TopicNames,
    workflows: set[str] | None,
    token: str | None = None,
    agent_workflows: Sequence[str] = (),
    metrics: ProjectorGauges | None = None,
    blobs: BlobStore | None = None,
    offload_bytes: int = MAX_RECORD_BYTES // 4,
    max_body_bytes: int = MAX_RECORD_BYTES,
    kafka: KafkaTarget | None = None,
    engine: HostedEngine | None = None,
    projector: LiveProjector | None = None,
    hosts: Sequence[str] | None = None,
    trusted_origins: Sequence[str] = (),
    max_json_values: int = 100_000,
    body_timeout_s: float = 30.0,
    session_ttl_s: float = 12 * 3600,
    sql_concurrency: int = 2,
    sql_url: str | None = None,
    streams_per_client: int = 32,
    max_streams: int = live.MAX_STREAMS,
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
    api.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]  # Starlette's loose signature
    api.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]

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
        credentials=credentials,
        kafka=kafka,
        engine=engine,
        workflows=workflows,
        agent_workflows=tuple(agent_workflows),
        projector=projector,
        metrics=metrics,
        blobs=blobs,
        offload_bytes=offload_bytes,
        max_body_bytes=max_body_bytes,
    )
    api.state.deps = deps  # the node updates its engine and projector when it restarts them
    # What some routers keep per app (never per module: one process may build many apps, tests do).
    api.state.stream_slots = live.StreamSlots(max_streams, streams_per_client)
    api.state.sql_queries = sql.SqlQueries(store, reader_url=sql_url, concurrency=sql_concurrency)
    api.state.rebuild_jobs = rebuild.RebuildJobs()
    api.state.verify_lock = asyncio.Lock()
    api.state.dashboard_feeds = dashboard.LiveFeeds.of(deps)
    # Agent steps running in this process read memory from this store directly (``tickflow.api.memory`` serves
    # the others over HTTP).
    register_local_store(topics.prefix, store)
    for module in ROUTERS:
        api.include_router(module.router)
    # The dashboard: pages under /ui, its assets (shipped in the package) under /ui/static, sign-in with the token.
    api.include_router(sign_in.router)
    api.include_router(dashboard.router)
    # follow_symlink: an editable install links the files (a wheel holds them as they are).
    static = StaticFiles(directory=dashboard.HERE / "static", follow_symlink=True)
    api.mount("/ui/static", static, name="ui-static")

    # The app's own routes last: health, the OpenAPI document and its Swagger UI, Prometheus' metrics.
    api.include_router(router)
    return api


async def _http_error(_request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 303 and exc.headers:  # a dashboard page before signing in
        return RedirectResponse(exc.headers["Location"], status_code=303)
    code = getattr(exc, "code", None) or code_for_status(exc.status_code)
    return _error(exc.status_code, exc.detail, str(code), exc.headers)


async def _invalid_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(422, jsonable_encoder(exc.errors()), ErrorCode.INVALID_REQUEST)


#: The app's own routes (every router of ``ROUTERS`` and the dashboard come before them).
router = APIRouter()


@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    """The address ``tickflow up`` prints opens the dashboard (which asks to sign in when there is a token)."""
    return RedirectResponse("/ui/board", status_code=307)


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/openapi.json", dependencies=[Depends(authorize)], include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    return JSONResponse(request.app.openapi())


@router.get("/docs", dependencies=[Depends(authorize)], include_in_schema=False)
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


@router.get("/metrics", dependencies=[Depends(authorize)], include_in_schema=False)
async def prometheus_metrics() -> Response:
    """Every role of this process in Prometheus' text format (``tickflow.metrics``); behind the API token."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
