"""Live updates over SSE, read from the events topic: complete, ordered, resumable without loss or repeat."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from tests.conftest import free_port
from tests.integration.harness import read_topic
from tickflow.api.app import create_api
from tickflow.client import Client
from tickflow.node import Node

pytestmark = pytest.mark.integration

SLOW = "slow10"  # ten steps of 50 ms: ~23 events spread over a second or two


@pytest.fixture
async def http(node: Node) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.settings.api_url, timeout=httpx.Timeout(10, read=30)) as h:
        yield h


async def start(h: httpx.AsyncClient, workflow: str, run_id: str, value: Any = None) -> None:
    r = await h.post("/runs", json={"workflow": workflow, "input": value, "run_id": run_id})
    assert r.status_code == 202, r.text


async def read_sse(
    h: httpx.AsyncClient, path: str, *, headers: dict[str, str] | None = None, limit: int | None = None
) -> tuple[int, list[dict[str, str]]]:
    """The stream's messages as raw SSE fields (id, event, data); stops (disconnects) after ``limit``."""
    messages: list[dict[str, str]] = []

    async def consume() -> int:
        async with h.stream("GET", path, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                return r.status_code
            assert r.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in r.aiter_lines():
                if line.startswith(":"):
                    continue  # keep-alive ping
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                if fields:
                    messages.append(fields)
                    fields = {}
                    if limit is not None and len(messages) >= limit:
                        break
            return r.status_code

    status = await asyncio.wait_for(consume(), 60)
    return status, messages


def as_events(messages: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Decode the data of each message, checking that its SSE id and event name match it."""
    out = []
    for m in messages:
        data = orjson.loads(m["data"])
        assert m["id"] == str(data["offset"]) and m["event"] == data["type"], m
        assert set(data) == {"seq", "type", "occurred_at_ms", "causation_id", "payload", "offset"}
        out.append(data)
    return out


async def log_of(node: Node, key: str) -> list[tuple[int, int, str]]:
    """(offset, seq, type) of every record of ``key`` in the events topic, in log order."""
    records = await read_topic(node.settings.bootstrap, node.topics.events, node.settings.partitions)
    return [(offset, env.seq or 0, env.type) for _, offset, env in records if env.key == key]


def triples(events: list[dict[str, Any]]) -> list[tuple[int, int, str]]:
    return [(e["offset"], e["seq"], e["type"]) for e in events]


async def open_streams(h: httpx.AsyncClient) -> int:
    r = await h.get("/live/streams")
    return int(r.json()["open"])


async def until_no_stream_is_open(h: httpx.AsyncClient) -> None:
    for _ in range(100):
        if await open_streams(h) == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("a live stream was still open (its consumer leaked) 5 s after its client left")


async def test_a_stream_delivers_the_runs_log_in_order_and_ends_with_it(node: Node, http: httpx.AsyncClient) -> None:
    await start(http, SLOW, "live-1")
    status, messages = await read_sse(http, "/runs/live-1/live")
    assert status == 200
    events = as_events(messages)
    log = await log_of(node, "live-1")
    assert triples(events) == log
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert events[0]["type"] == "RunStarted" and events[-1]["type"] == "RunCompleted"
    assert len(events) >= 20
    assert events[-1]["payload"]["output"]["n"] == 10
    await until_no_stream_is_open(http)

    # Only later events with from_seq; the stream of a finished run still ends by itself.
    _, tail = await read_sse(http, "/runs/live-1/live?from_seq=20")
    assert triples(as_events(tail)) == [t for t in log if t[1] >= 20]


async def test_reconnecting_with_last_event_id_loses_and_repeats_nothing(node: Node, http: httpx.AsyncClient) -> None:
    await start(http, SLOW, "live-2")
    _, first = await read_sse(http, "/runs/live-2/live", limit=3)  # then the client goes away mid-run
    assert len(first) == 3
    await until_no_stream_is_open(http)
    # A browser reconnects to the same URL (here with a stale ?after=0) and sends the last id in the header.
    _, rest = await read_sse(http, "/runs/live-2/live?after=0", headers={"Last-Event-ID": first[-1]["id"]})
    events = as_events(first) + as_events(rest)
    assert triples(events) == await log_of(node, "live-2")
    assert len({e["seq"] for e in events}) == len(events)

    # ?after= alone resumes the same way, from any event.
    middle = events[9]["offset"]
    _, again = await read_sse(http, f"/runs/live-2/live?after={middle}")
    assert triples(as_events(again)) == triples(events[10:])

    # Reconnecting after the terminal event: 204, which tells an EventSource to stop retrying.
    status, none = await read_sse(http, "/runs/live-2/live", headers={"Last-Event-ID": rest[-1]["id"]})
    assert (status, none) == (204, [])
    # ... unless the client asked to follow past the end.
    async with http.stream("GET", "/runs/live-2/live?follow=true", headers={"Last-Event-ID": rest[-1]["id"]}) as r:
        assert r.status_code == 200
    status, _ = await read_sse(http, "/runs/live-2/live", headers={"Last-Event-ID": "yesterday"})
    assert status == 400
    await until_no_stream_is_open(http)


async def test_a_stream_opened_before_the_run_starts_gets_everything(node: Node, http: httpx.AsyncClient) -> None:
    reader = asyncio.create_task(read_sse(http, "/runs/live-3/live"))
    for _ in range(100):  # the stream is open (and waiting) before the run exists
        if await open_streams(http) == 1:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the stream of a run that does not exist yet was refused instead of waiting")
    await asyncio.sleep(0.3)
    await start(http, SLOW, "live-3")
    status, messages = await reader
    assert status == 200
    assert triples(as_events(messages)) == await log_of(node, "live-3")
    assert messages[-1]["event"] == "RunCompleted"


async def test_sdk_and_cli_follow_a_run(node: Node) -> None:
    def sdk_scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        with Client(node.settings.api_url) as c:
            rid = c.start(SLOW, run_id="live-4")
            events = list(c.live(rid))
            resumed = list(c.live(rid, after=events[4]["offset"]))
            assert list(c.live(rid, after=events[-1]["offset"])) == []  # at the end already: nothing, no hang
            return events, resumed

    events, resumed = await asyncio.to_thread(sdk_scenario)
    assert triples(events) == await log_of(node, "live-4")
    assert resumed == events[5:]

    env = {**os.environ, "TICKFLOW_API_PORT": str(node.settings.api_port)}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tickflow.cli", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    done = await asyncio.to_thread(cli, "follow", "live-4")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [tuple(line.split()[:3]) for line in lines] == [(str(o), str(s), t) for o, s, t in triples(events)]
    after = await asyncio.to_thread(cli, "follow", "live-4", "--after", str(events[-3]["offset"]))
    assert [line.split()[2] for line in after.stdout.splitlines()] == [e["type"] for e in events[-2:]]

    live = asyncio.create_task(asyncio.to_thread(cli, "follow", "live-5"))  # before the run exists
    await asyncio.sleep(1.0)
    with Client(node.settings.api_url) as c:
        await asyncio.to_thread(c.start, SLOW, run_id="live-5")
    followed = await live
    assert followed.returncode == 0, followed.stderr
    assert [line.split()[2] for line in followed.stdout.splitlines()] == [t for _, _, t in await log_of(node, "live-5")]


async def test_streams_above_the_cap_get_503_and_freed_slots_are_reused(node: Node) -> None:
    app = create_api(store=node.store, producer=None, topics=node.topics, workflows=None, kafka=node.settings.kafka,
                     max_streams=1)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as h:
            async with h.stream("GET", "/stacks/nobody/live") as first:  # a stack stream waits for events
                assert first.status_code == 200
                second = await h.get("/runs/anything/live")
                assert second.status_code == 503
                assert "1 live streams are already open" in second.json()["detail"]
                assert (await h.get("/live/streams")).json() == {"open": 1, "max": 1}
            await until_no_stream_is_open(h)
            async with httpx.AsyncClient(base_url=node.settings.api_url) as api:
                await start(api, "math", "capped", 1)
            status, messages = await read_sse(h, "/runs/capped/live")
            assert status == 200 and messages[-1]["event"] == "RunCompleted"
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 10)
