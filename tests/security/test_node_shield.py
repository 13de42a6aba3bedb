"""The shield on a real node (engine, worker, projector and API on one loop, the real broker and chDB): a page of
another origin in headless Chromium changes nothing, hostile bodies leave the engine in its group, and analysts'
slow queries leave freshness and status reads alone."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser

from tests.bench.api_shield import send_hostile_bodies
from tests.conftest import free_port
from tests.integration.api.dashboard.test_dashboard import in_browser
from tests.integration.flows import registry
from tests.integration.harness import http_service, settings_for
from tickflow.node import Node
from tickflow.settings import Settings

pytestmark = pytest.mark.integration
TOKEN = "node-shield-token"


@contextlib.asynccontextmanager
async def _node(settings: Settings) -> AsyncIterator[Node]:
    node = Node(settings, registry)
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


async def _until(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if result := await check():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true within {timeout_s} s: {check.__doc__ or check}")


# --- a page of another origin -----------------------------------------------------------------------------------------

_EVIL_PAGE = """<!doctype html><html><body>
<iframe name="sink" style="display:none"></iframe>
<form id="play" method="post" target="sink" action="{api}/stacks/{stack}/play"></form>
<form id="start" method="post" target="sink" enctype="text/plain" action="{api}/runs">
  <input name='{{"workflow": "two_approvals", "run_id": "evil-run", "x": "' value='"}}'>
</form>
<script>
const api = "{api}";
window.tried = (async () => {{
  const quiet = (p) => p.then(() => "sent", (e) => "blocked: " + e);
  const results = [];
  results.push(await quiet(fetch(api + "/runs/{run}/cancel", {{method: "POST", mode: "no-cors"}})));
  results.push(await quiet(fetch(api + "/stacks/{stack}/play", {{method: "POST", mode: "no-cors"}})));
  const start = JSON.stringify({{workflow: "two_approvals", run_id: "evil-run"}});
  results.push(await quiet(fetch(api + "/runs", {{method: "POST", mode: "no-cors",
      headers: {{"content-type": "text/plain"}}, body: start}})));
  document.getElementById("play").submit();
  await new Promise((r) => setTimeout(r, 500));
  document.getElementById("start").submit();
  await new Promise((r) => setTimeout(r, 500));
  return results;
}})();
</script></body></html>"""


@contextlib.contextmanager
def _serve_page(html: str) -> Iterator[str]:
    """Serve ``html`` at http://localhost:<port>/ — another site than the API's 127.0.0.1."""
    with http_service(lambda _body: ("text/html", html.encode())) as port:
        yield f"http://localhost:{port}/"


async def test_a_page_of_another_origin_cannot_cancel_a_run_or_play_a_stack(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())  # the token-less default on loopback
    async with _node(settings), httpx.AsyncClient(base_url=settings.api_url) as http:
        assert (await http.post("/runs", json={"workflow": "two_approvals", "run_id": "victim"})).status_code == 202
        stack = {"stack_id": "calm", "workflow": "stack_tick", "interval_s": 1, "playing": False}
        assert (await http.post("/stacks", json=stack)).status_code == 202

        async def ready() -> bool:
            """the run waits and the stack exists, paused"""
            run = (await http.get("/runs/victim")).json()
            found = await http.get("/stacks/calm")
            paused = found.status_code == 200 and found.json()["stack"]["status"] == "paused"
            return run.get("status") == "waiting" and paused

        await _until(ready)
        page = _EVIL_PAGE.format(api=settings.api_url, run="victim", stack="calm")

        def attack(browser: Browser) -> list[str]:
            with _serve_page(page) as url:
                tab = browser.new_page()
                tab.goto(url)
                results: list[str] = tab.evaluate("window.tried")
                tab.close()
                return results

        tried = await asyncio.to_thread(in_browser, attack)
        assert len(tried) == 3  # the browser sent them (no-cors: the page never sees an answer)
        await asyncio.sleep(3)  # ample time for a command that got through to be applied and projected
        assert (await http.get("/runs/victim")).json()["status"] == "waiting"
        assert (await http.get("/stacks/calm")).json()["stack"]["status"] == "paused"
        assert (await http.get("/runs/evil-run")).status_code == 404
        # The same requests from a client that is not a browser page work: the refusal was the origin's.
        assert (await http.post("/runs/victim/cancel")).status_code == 202

        async def cancelled() -> bool:
            """the run is cancelled"""
            return bool((await http.get("/runs/victim")).json().get("status") == "cancelled")

        await _until(cancelled)


# --- hostile bodies against the node ----------------------------------------------------------------------------------


async def test_two_hundred_hostile_bodies_leave_the_engine_in_its_group(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port(), api_token=TOKEN)
    async with _node(settings) as node:
        assert node.engine is not None
        await _until(_all_recovered(node))
        recoveries, owned = node.engine.recoveries_started, set(node.engine.recovered_partitions)
        lags: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            while not stop.is_set():
                began = time.monotonic()
                await asyncio.sleep(0.01)
                lags.append(time.monotonic() - began - 0.01)

        ticking = asyncio.create_task(tick())
        strangers = await send_hostile_bodies(settings.api_url, requests=100, concurrency=8, token=None)
        holders = await send_hostile_bodies(settings.api_url, requests=100, concurrency=8, token=TOKEN)
        stop.set()
        await ticking
        assert {status for status, _ in strangers} <= {401, "closed"}, strangers
        assert {status for status, _ in holders} == {422}, holders
        assert node.engine.recoveries_started == recoveries and node.engine.recovered_partitions == owned
        assert max(lags) < 0.5, f"loop lag up to {max(lags):.3f} s"
        async with httpx.AsyncClient(base_url=settings.api_url, headers={"authorization": f"Bearer {TOKEN}"}) as http:
            started = await http.post("/runs", json={"workflow": "math", "input": 1})
            assert started.status_code == 202


def _all_recovered(node: Node) -> Any:
    async def check() -> bool:
        """the engine owns and serves every partition"""
        engine = node.engine
        return engine is not None and len(engine.recovered_partitions) == node.settings.partitions

    return check


# --- slow SQL ---------------------------------------------------------------------------------------------------------

#: About 10 s of sleeping in ClickHouse (each branch 2.5 s; two run at once), no CPU.
SLOW_QUERY = " UNION ALL ".join(["SELECT sleep(2.5)"] * 8)


async def test_eight_ten_second_queries_leave_freshness_and_status_reads_under_a_second(
    kafka_bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    async with _node(settings), httpx.AsyncClient(base_url=settings.api_url, timeout=60) as http:
        await _until(_first_run_done(http))
        queries = [asyncio.create_task(http.post("/sql", json={"query": SLOW_QUERY, "timeout_s": 30}))
                   for _ in range(8)]
        await asyncio.sleep(1)  # the queries are running or queued
        freshness, reads, posts, whole = [], [], [], []
        for i in range(12):
            run_id = f"fresh-{i}"
            began = time.monotonic()
            assert (await http.post("/runs", json={"workflow": "square", "run_id": run_id, "input": i})).status_code \
                == 202
            posts.append(time.monotonic() - began)
            while True:
                asked = time.monotonic()
                row = (await http.get(f"/runs/{run_id}")).json()
                reads.append(time.monotonic() - asked)
                if row.get("status") == "completed":
                    freshness.append(time.time() * 1000 - row["finished_at_ms"])
                    whole.append(time.monotonic() - began)
                    break
                assert time.monotonic() - began < 60, "a run did not show completed within a minute"
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)
        answers = await asyncio.gather(*queries)
        assert all(a.status_code == 200 for a in answers), [a.text[:200] for a in answers if a.status_code != 200]
        print(f"under 8 slow queries: start -> seen completed max {max(whole):.3f} s, median "
              f"{statistics.median(whole):.3f} s; POST /runs max {max(posts) * 1000:.0f} ms; freshness max "
              f"{max(freshness):.0f} ms; GET /runs/{{id}} max {max(reads) * 1000:.0f} ms")
        assert max(posts) < 1.0, f"POST /runs took up to {max(posts):.3f} s"
        assert max(reads) < 1.0, f"GET /runs/{{id}} took up to {max(reads):.3f} s"
        assert max(freshness) < 1_000, f"freshness {sorted(freshness)} ms"
        assert max(whole) < 2.0, f"start -> seen completed took up to {max(whole):.3f} s"


def _first_run_done(http: httpx.AsyncClient) -> Any:
    async def check() -> bool:
        """a first run completes (the node is warm)"""
        await http.post("/runs", json={"workflow": "square", "run_id": "warm", "input": 2})
        return bool((await http.get("/runs/warm")).json().get("status") == "completed")

    return check
