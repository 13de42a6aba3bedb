"""Every code sample of README.md and of the docs pages runs, as printed, against a real node.

Python samples run in reading order — README.md, then the pages in the order of the site's navigation — in one
namespace (like doctest's globals): those that define workflows first, then a node hosts the ``registry`` they
built, then the samples that talk to it through ``Client`` (the docs' URL is pointed at this test's API). The
``tickflow …`` lines of the shell samples run as the installed command against the same node; ``tickflow up`` and
the ``make`` targets host tickflow themselves and are exercised by the wheel test (``test_package.py``) and by CI
running ``make test``.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from tests.conftest import free_port
from tests.integration.harness import settings_for
from tests.paths import REPO_ROOT, site_pages
from tickflow import Client, RunNotFound
from tickflow.events.errors import ApiError
from tickflow.node import Node

pytestmark = pytest.mark.integration

DOCS_URL = "http://127.0.0.1:8700"
#: Pages about agents written with other frameworks: each builds a registry of its own, tested apart.
FRAMEWORK_PAGES = "integrations/"
HOSTING = ("tickflow up", "tickflow broker", "tickflow demo")


def documents() -> list[Path]:
    """README.md, then every page of the docs site in the order its navigation lists them."""
    return [REPO_ROOT / "README.md",
            *(REPO_ROOT / "docs" / page for page in site_pages() if not page.startswith(FRAMEWORK_PAGES))]


def samples(language: str, docs: list[Path] | None = None) -> list[str]:
    return [sample for doc in (documents() if docs is None else docs)
            for sample in re.findall(rf"^```{language}\n(.*?)^```", doc.read_text(), flags=re.S | re.M)]


@pytest.mark.parametrize("page", sorted((REPO_ROOT / "docs" / FRAMEWORK_PAGES).glob("*.md")), ids=lambda p: p.name)
def test_each_framework_page_builds_the_workflows_it_shows(page: Path) -> None:
    """A framework's page is a story of its own (its own ``registry``): its samples run in order in a namespace of
    their own and every workflow they register compiles. Running such agents on a node is what
    ``tests/integration/integrations/test_framework_agents.py`` does, with the examples these samples come from."""
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}"}
    for sample in samples("python", [page]):
        exec(compile(sample, str(page), "exec"), namespace)
    assert namespace["registry"].specs, f"{page.name} registers no workflow"  # registering compiled each one


def stand_ins() -> dict[str, Any]:
    """What the order example names without defining it (its steps and conditions), as the smallest real code."""

    class Approval(BaseModel):
        ok: bool

    def step(value: Any) -> Any:
        return value

    def condition(scope: Any) -> bool:
        return True

    names = ["refund", "validate", "charge", "reserve", "escalate", "auto_approve", "poll_carrier"]
    out: dict[str, Any] = {name: _renamed(step, name) for name in names}
    out.update(is_big=_renamed(condition, "is_big"), delivered=_renamed(condition, "delivered"), Approval=Approval)
    return out


def _renamed(fn: Any, name: str) -> Any:
    def renamed(value: Any) -> Any:
        return fn(value)

    renamed.__name__ = renamed.__qualname__ = name
    return renamed


def test_the_docs_have_the_samples_this_test_runs() -> None:
    python = samples("python")
    assert len(python) >= 5 and any("Client(" in s for s in python)
    assert any(line.startswith("tickflow start") for s in samples("bash") for line in s.splitlines())


async def test_every_docs_sample_runs(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "readme", **stand_ins()}
    defining = [s for s in samples("python") if "Client(" not in s]
    talking = [s for s in samples("python") if "Client(" in s]
    for sample in defining:
        exec(compile(sample, "docs", "exec"), namespace)
    registry = namespace["registry"]
    assert {"crawl", "forecast"} <= set(registry.specs)
    namespace["order"].compile()  # the order example is a valid workflow

    settings = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    settings = settings.with_(pools=tuple(sorted(registry.pools())))
    node = Node(settings, registry)
    await node.start()
    try:
        for sample in talking:
            code = sample.replace(DOCS_URL, settings.api_url).replace("Client()", f"Client({settings.api_url!r})")
            await asyncio.to_thread(exec, compile(code, "docs", "exec"), namespace)
        with Client(settings.api_url) as c:
            final = await asyncio.to_thread(c.wait, "crawl-42", timeout=60)
            assert final.status == "completed", final
            assert final.output == ["https://example.org/about", "https://example.org/blog"]
            for _ in range(300):  # the stack's creation is a command: visible once the projector has it
                try:
                    board = await asyncio.to_thread(c.stack, "team-7")
                    break
                except (ApiError, RunNotFound):
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("the docs' stack team-7 never became visible")
            assert "team-7" in str(board)
        await _run_shell_samples(settings.api_port)
    finally:
        with Client(settings.api_url) as c:
            await asyncio.to_thread(c.delete_stack, "team-7")
        await node.stop()


async def _run_shell_samples(api_port: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TICKFLOW_")}
    env.update(TICKFLOW_API_HOST="127.0.0.1", TICKFLOW_API_PORT=str(api_port))
    ran = 0
    for sample in samples("bash"):
        for line in sample.splitlines():
            command = line.split("  #")[0].strip()
            if not command.startswith("tickflow ") or command.startswith(HOSTING):
                continue
            argv = shlex.split(command.replace("<run-id>", "crawl-42"))
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tickflow.cli", *argv[1:]],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert done.returncode == 0, (command, done.stdout[-2000:], done.stderr[-2000:])
            ran += 1
    assert ran >= 4
