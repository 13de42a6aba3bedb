"""Regenerate the dashboard screenshots in docs/: ``python docs/make_screenshots.py`` (local broker running).

Starts every role on a fresh topic prefix with 12 agent stacks of the demo (offline scripted model) and a waiting
run, lets them tick, and photographs the board, a run page, the analytics and the system page in Debian's
Chromium through Playwright.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from playwright.sync_api import sync_playwright

from tickflow.client import Client
from tickflow.demo import registry
from tickflow.demo.runner import demo_settings
from tickflow.node import Node
from tickflow.settings import Settings

DOCS = Path(__file__).resolve().parent


def shoot(base: str, run_id: str) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for name, path in (("board", "/ui/board"), ("run", f"/ui/runs/{run_id}"), ("analytics", "/ui/analytics"),
                           ("system", "/ui/system")):
            page.goto(base + path)
            page.wait_for_timeout(2500)
            page.screenshot(path=str(DOCS / f"dashboard-{name}.png"), full_page=False)
        browser.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = demo_settings(Settings(prefix=f"shots{uuid.uuid4().hex[:6]}", state_dir=Path(tmp), api_port=8799))
        node = Node(settings, registry)
        await node.start()
        try:
            def start() -> str:
                with Client(settings.api_url) as c:
                    for i in range(12):
                        c.create_stack(f"team-{i:02d}", "stack_tick", interval_s=5)
                    time.sleep(75)
                    for i in range(0, 12, 4):
                        c.pause_stack(f"team-{i:02d}", reason="paused from the board")
                    for failed in c.list_runs(status="failed", limit=3):
                        print(f"failed tick run {failed.run_id}: {failed.error_type}: {failed.error_message[:300]}")
                    runs = c.list_runs(status="completed", limit=5)
                    return runs[0].run_id

            run_id = await asyncio.to_thread(start)
            await asyncio.sleep(3)
            await asyncio.to_thread(shoot, settings.api_url, run_id)
            def clean_up() -> None:
                with Client(settings.api_url, timeout=60) as c:
                    for i in range(12):
                        c.delete_stack(f"team-{i:02d}")

            await asyncio.to_thread(clean_up)
        finally:
            await node.stop()


if __name__ == "__main__":
    asyncio.run(main())
