"""The dashboard's pages, served by the API process under ``/ui`` (server-rendered Jinja2 templates, htmx, SSE).

Every asset ships in the package (``static/vendor`` holds htmx, its JSON-encoding extension and uPlot, with their
licenses); nothing comes from a CDN, so the dashboard works offline. Pages read the projection for what is settled
and the log for what is live: the stacks board folds the log itself (``board.py``), a run page follows the run's
live SSE stream (``/runs/{id}/live``) and refreshes its timeline on each event. Buttons and forms call the same
HTTP API as the SDK, so the dashboard can do nothing the API does not allow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
from aiokafka import TopicPartition
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sse_starlette import EventSourceResponse, ServerSentEvent

from tickflow.api.blobs import DIGEST
from tickflow.api.dashboard.board import BoardFeed
from tickflow.api.deps import ApiDeps, ApiProblem, Deps, app_state, authorize
from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.connection import KafkaTarget
from tickflow.events.errors import ErrorCode
from tickflow.events.schemas import PAYLOAD_TYPES, DeadLetter
from tickflow.projections import analytics
from tickflow.projections.analytics import AnalyticsUnavailable
from tickflow.projections.facts import StackRow
from tickflow.projections.queries import RunQuery
from tickflow.projections.rows import RUN_STATUSES
from tickflow.runtime.claimcheck import BlobStore, is_ref, resolve
from tickflow.runtime.kafka import new_consumer

__all__ = ["HERE", "DeadLetterTail", "LiveFeeds", "live_feeds", "router", "templates", "wait_schema"]

HERE = Path(__file__).parent
EVENT_TYPES = sorted(t for (kind, t) in PAYLOAD_TYPES if kind == "event")
PAGE_SIZE = 50
#: A run's claim-checked output up to this size is shown on its page; a bigger one as its size and a link to
#: ``/blobs/{sha256}`` (the page refreshes on each of the run's events, and a browser chokes on megabytes of text).
INLINE_OUTPUT_BYTES = 1_000_000


def wait_schema(spec: dict[str, Any], event: str, path: str = "") -> dict[str, Any] | None:
    """The JSON schema of the wait node of ``spec`` that the run waits in (None: none, or no schema): the node
    ``path`` names (its last segment is the node's name, unique in a spec), or without a path (a row projected
    before waits had paths) the first wait node for ``event``."""
    name = path.rsplit("/", 1)[-1]
    stack: list[Any] = [spec.get("root")]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("kind") == "wait" and node.get("event") == event and (not name or node.get("name") == name):
                schema = node.get("schema_", node.get("schema"))  # the spec's field name, or its alias
                return schema if isinstance(schema, dict) else None
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def _ms(value: int) -> str:
    if not value:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value / 1000)) + f".{value % 1000:03d}"


def _claim_checked(text: str) -> dict[str, Any] | None:
    """The ``{"sha256", "size"}`` of a value shown as JSON text when it is a claim-check reference, else None."""
    if not text.startswith('{"$blob"'):
        return None
    value = orjson.loads(text)
    if not is_ref(value):
        return None
    ref = value["$blob"]
    digest, size = ref.get("sha256"), ref.get("size")
    if not (isinstance(digest, str) and DIGEST.fullmatch(digest) and isinstance(size, int)):
        return None  # a step's own value that merely looks like a reference
    return {"sha256": digest, "size": size}


async def _output_view(text: str, blobs: BlobStore | None) -> dict[str, Any]:
    """A run's output as its page shows it: the JSON text (a claim-checked one read from the blob store, off the
    loop, when it is small enough to show), or its size and a link to the authenticated ``/blobs/{sha256}``."""
    ref = _claim_checked(text)
    if ref is None:
        return {"text": text}
    view: dict[str, Any] = {"blob": ref, "text": ""}
    if blobs is not None and ref["size"] <= INLINE_OUTPUT_BYTES:
        try:
            value = await asyncio.to_thread(resolve, {"$blob": ref}, blobs)
        except (OSError, ValueError) as exc:  # deleted, or not shared with this process: say so, keep the link
            view["missing"] = f"{type(exc).__name__}: {exc}"
        else:
            view["text"] = orjson.dumps(value).decode()
    return view


def _folded(text: str, limit: int = 300) -> dict[str, Any]:
    """A value as the page shows it: short ones whole, long ones folded (the full text behind a <details>)."""
    return {"short": text if len(text) <= limit else text[:limit] + "…", "full": text, "long": len(text) > limit}


#: The pages' templates, with the filters they use (shared by every app: they hold no state of one).
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.filters["ms"] = _ms
templates.env.filters["folded"] = _folded
templates.env.filters["claim_checked"] = _claim_checked


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    context.update(request=request, csrf=request.cookies.get("tickflow_csrf", ""), nav=name.split(".")[0])
    return templates.TemplateResponse(request, name, context)


@dataclass
class LiveFeeds:
    """What the pages of one app read live: the stacks board's fold of the log and the dead-letter tail."""

    board: BoardFeed
    dead_letters: DeadLetterTail

    @classmethod
    def of(cls, deps: ApiDeps) -> LiveFeeds:
        return cls(
            board=BoardFeed(deps.store, deps.kafka, deps.topics.events, deps.topics.partitions),
            dead_letters=DeadLetterTail(deps.kafka, deps.topics.dead_letter),
        )


def live_feeds(request: Request) -> LiveFeeds:
    """The live feeds of the app serving ``request``."""
    return app_state(request, "dashboard_feeds", LiveFeeds)


#: A route's parameter for its app's live feeds.
Feeds = Annotated[LiveFeeds, Depends(live_feeds)]

#: The pages, under ``/ui``; they need the credentials (a page asked for before signing in redirects to sign-in).
router = APIRouter(prefix="/ui", dependencies=[Depends(authorize)], include_in_schema=False)


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/ui/board", status_code=303)


# -- stacks board ------------------------------------------------------------------------------------


@router.get("/board", response_class=HTMLResponse)
async def board_page(request: Request, deps: Deps, feeds: Feeds) -> HTMLResponse:
    rows = await feeds.board.snapshot()
    known = sorted(deps.workflows) if deps.workflows is not None else []
    agents = [w for w in deps.agent_workflows if w in known]  # what stacks tick, first (and chosen by default)
    workflows = agents + [w for w in known if w not in agents]
    costs = await feeds.board.cost_notes()
    return _page(request, "board.html", rows=rows, workflows=workflows, agent_workflows=agents, costs=costs)


@router.get("/board/stream")
async def board_stream(request: Request, feeds: Feeds) -> EventSourceResponse:
    """Each stack whose row changes, as its rendered row (``data``) for the page to swap in by id."""
    row_template = templates.get_template("_stack_row.html")
    csrf = request.cookies.get("tickflow_csrf", "")
    board = feeds.board

    async def changes() -> AsyncIterator[ServerSentEvent]:
        async for row in board.subscribe():
            html = row_template.render(row=row, csrf=csrf, costs=await board.cost_notes())
            yield ServerSentEvent(data=orjson.dumps({"id": _row_id(row), "html": html}).decode(), event="row")

    return EventSourceResponse(changes(), ping=15)


# -- runs --------------------------------------------------------------------------------------------


@router.get("/runs", response_class=HTMLResponse)
async def runs_page(request: Request) -> HTMLResponse:
    return _page(request, "runs.html", statuses=RUN_STATUSES)


@router.get("/runs/table", response_class=HTMLResponse)
async def runs_table(
    request: Request,
    deps: Deps,
    query: Annotated[RunQuery, Query()],
    within_s: int = Query(default=0, ge=0, le=400 * 86_400, description="Only runs started this recently."),
) -> HTMLResponse:
    """A page of the runs table, for the form's filters (a ``RunQuery``; ``within_s`` sets its start time from
    now), read one row beyond the page to know whether an older page exists."""
    since = int(time.time() * 1000) - within_s * 1000 if within_s else query.started_since_ms
    rows = await asyncio.to_thread(
        deps.store.list_runs, RunQuery.of(query, limit=PAGE_SIZE + 1, started_since_ms=since)
    )
    return _page(
        request,
        "_runs_table.html",
        rows=rows[:PAGE_SIZE],
        offset=query.offset,
        more=len(rows) > PAGE_SIZE,
        page_size=PAGE_SIZE,
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
async def run_page(request: Request, deps: Deps, run_id: str) -> HTMLResponse:
    rows = await asyncio.to_thread(deps.store.runs_by_id, [run_id])
    row = rows.get(run_id)
    accepted = deps.accepted.get(run_id)
    if row is None and accepted is None:
        raise ApiProblem(404, ErrorCode.RUN_NOT_FOUND, f"no run {run_id!r} is visible yet")
    return _page(request, "run.html", run_id=run_id, event_types=EVENT_TYPES)


@router.get("/runs/{run_id}/panel", response_class=HTMLResponse)
async def run_panel(request: Request, deps: Deps, run_id: str) -> HTMLResponse:
    """The run's status, timeline and (when it waits) resume form: refreshed on each of its live events."""
    store = deps.store
    rows = await asyncio.to_thread(store.runs_by_id, [run_id])
    row = rows.get(run_id)
    steps = await asyncio.to_thread(store.run_steps, run_id)
    events = await asyncio.to_thread(store.run_events, run_id) if row is not None else []
    values: dict[tuple[str, int], dict[str, str]] = {}
    handoffs: list[dict[str, Any]] = []  # between a step's agents (an OpenAI Agents SDK run), in order
    schema = None
    for event in events:
        payload = orjson.loads(event.payload)
        if event.type == "AgentHandoff":
            handoffs.append(payload)
        elif event.type == "RunStarted" and row is not None and row.waiting_for:
            schema = wait_schema(payload.get("spec", {}), row.waiting_for, row.waiting_path)
        elif event.type in ("StepScheduled", "StepCompleted", "StepFailed"):
            slot = values.setdefault((payload.get("path", ""), int(payload.get("attempt", 0))), {})
            if event.type == "StepScheduled":
                slot["in"] = orjson.dumps(payload.get("input")).decode()
            elif event.type == "StepCompleted":
                slot["out"] = orjson.dumps(payload.get("output")).decode()
            else:
                error = payload.get("error") or {}
                slot["error"] = f"{error.get('type', '')}: {error.get('message', '')}"
    try:
        calls = await asyncio.to_thread(analytics.run_llm_calls, store, run_id) if row is not None else []
    except AnalyticsUnavailable:
        calls = []
    output = await _output_view(row.output, deps.blobs) if row is not None and row.output else None
    return _page(
        request, "_run_panel.html", run_id=run_id, row=row, steps=steps, values=values, calls=calls, schema=schema,
        output=output, handoffs=handoffs,
    )


# -- analytics and system ----------------------------------------------------------------------------


@router.get("/analytics", response_class=HTMLResponse)
async def analytics_page(request: Request) -> HTMLResponse:
    """Charts drawn in the browser (uPlot) from the analytics API: tokens and cost by model, agent or stack,
    run rates and failures over time, step latency percentiles."""
    return _page(request, "analytics.html")


@router.get("/system", response_class=HTMLResponse)
async def system_page(request: Request) -> HTMLResponse:
    return _page(request, "system.html")


@router.get("/system/panel", response_class=HTMLResponse)
async def system_panel(request: Request, deps: Deps, feeds: Feeds) -> HTMLResponse:
    """The projector's lag and freshness, the engine's partitions, the dead letters, the rebuilds."""
    engine_view = deps.engine.status() if deps.engine is not None else None
    letters = await feeds.dead_letters.latest()
    return _page(request, "_system_panel.html", projector=deps.metrics, engine=engine_view, letters=letters)


class DeadLetterTail:
    """How many records the dead-letter topic holds and the latest few, read at most every ``every_s`` seconds."""

    def __init__(self, kafka: KafkaTarget | None, topic: str, keep: int = 10, every_s: float = 2.0) -> None:
        self.kafka, self.topic, self.keep, self.every_s = kafka, topic, keep, every_s
        self._read_at = 0.0
        self._view: dict[str, Any] = {"count": 0, "latest": [], "error": ""}

    async def latest(self) -> dict[str, Any]:
        if time.monotonic() - self._read_at >= self.every_s and self.kafka is not None:
            self._read_at = time.monotonic()
            try:
                self._view = await self._read(self.kafka)
            except Exception as exc:  # the page says so; it must never fail because Kafka is away
                self._view = {**self._view, "error": f"cannot read {self.topic}: {exc!r}"}
        return self._view

    async def _read(self, kafka: KafkaTarget) -> dict[str, Any]:
        tp = TopicPartition(self.topic, 0)
        consumer = new_consumer(kafka, group_id=None, fetch_max_wait_ms=50)
        await consumer.start()
        try:
            consumer.assign([tp])
            first, end = (await consumer.beginning_offsets([tp]))[tp], (await consumer.end_offsets([tp]))[tp]
            consumer.seek(tp, max(first, end - self.keep))
            records = []
            while await consumer.position(tp) < end:
                records += (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
        finally:
            await consumer.stop()
        latest = []
        for record in reversed(records):
            try:
                env = decode(record.value)
            except InvalidRecord:
                continue
            if isinstance(letter := env.payload, DeadLetter):
                source = f"{letter.source_topic}[{letter.source_partition}]@{letter.source_offset}"
                at, by = env.occurred_at_ms, letter.consumer
                latest.append({"at_ms": at, "consumer": by, "source": source, "reason": letter.reason})
        return {"count": end - first, "latest": latest, "error": ""}


def _row_id(row: StackRow) -> str:
    return "stack-" + row.stack_id

