"""Framework agents run durably on tickflow — a Pydantic AI agent and an OpenAI Agents SDK agent — against the real
frameworks, a real worker process, the local OpenAI-compatible server over HTTP and the real broker.

The agent (``tests.integration.framework_flows``, written once with each framework) makes three model requests and two
tool calls: ``note`` (an effect on the fake external service), then ``book`` (a read of a quote, then the booking
effect). The server holds the first quote read, so the worker is SIGKILLed inside ``book``, after the second model
request was answered. The restarted worker re-runs the step: the two answered requests and ``note`` come from the
journal, so the server sees no request twice and each effect happens once; each request is logged once as
``LlmCallAttempted``.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.agents.test_agents import wait_until
from tests.integration.checker import check_log
from tests.integration.harness import (
    kill_and_respawn,
    read_topic,
    role_env,
    run_end,
    settings_for,
    spawn_roles,
    stop_roles,
)
from tests.llm_server import LlmTestServer, running_llm_server
from tests.paths import REPO_ROOT
from tickflow.client import Client
from tickflow.events.errors import ResumeRefused
from tickflow.node import Node

pytestmark = pytest.mark.integration

APP = "tests.integration.framework_flows:registry"


@pytest.fixture
def llm(monkeypatch: pytest.MonkeyPatch) -> Iterator[LlmTestServer]:
    with running_llm_server() as server:
        monkeypatch.setenv("TICKFLOW_TEST_LLM_URL", server.base_url)  # read by the app in the role processes
        yield server


@pytest.mark.parametrize("workflow", ["trip", "trip_oa"])  # written with Pydantic AI, with the OpenAI Agents SDK
async def test_a_worker_killed_inside_a_tool_resumes_without_repeating_a_request_or_an_effect(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, llm: LlmTestServer, workflow: str
) -> None:
    from tests.integration.framework_flows import registry

    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry,
                frozenset({"projector", "api"}))
    await node.start()
    s = node.settings
    proc = spawn_roles(s, "engine,worker", tmp_path / "roles1.log", app=APP)
    try:
        def start() -> None:
            with Client(s.api_url) as c:
                c.start(workflow, "Paris in May, please", run_id="trip-1")

        await asyncio.to_thread(start)

        async def inside_book() -> bool:
            return llm.effects["quote"] >= 1

        await wait_until(inside_book, 90, "the worker to be inside the book tool")
        assert len(llm.for_model("trip-agent")) == 2 and llm.effects["effect/note"] == 1
        proc = kill_and_respawn(proc, s, "engine,worker", tmp_path / "roles2.log", app=APP)
        restarted = time.monotonic()
        out = await run_end(s, "trip-1")
        # Liveness, not speed: the re-run's journal writes once waited for the partition's next unrelated commit
        # (a snapshot round, a minute later); now the run ends within the node's start-up and recovery.
        assert time.monotonic() - restarted < 45, "the restarted run stalled"
    finally:
        stop_roles(proc)
        await node.stop()

    assert out["status"] == "completed", out
    assert out["output"]["output"] == "All set: booked flight for 420 EUR (book #1)", out  # type: ignore[index]
    requests = [json.dumps(r.body, sort_keys=True) for r in llm.for_model("trip-agent")]
    assert len(requests) == 3 and len(set(requests)) == 3, "a model request was sent again after the restart"
    assert llm.effects["effect/note"] == 1 and llm.effects["effect/book"] == 1
    assert llm.effects["quote"] == 2  # the read in flight at the kill ran again: reads are not journaled
    log = await read_topic(s.bootstrap, s.topics.events, s.partitions)
    events = [e for _, _, e in log if e.key == "trip-1"]
    paid = [e.payload for e in events if e.type == "LlmCallAttempted"]
    assert [(p.model, p.tokens_in, p.tokens_out, p.agent) for p in paid] == [  # type: ignore[attr-defined]
        ("trip-agent", 11, 3, workflow)] * 3
    (await check_log(s)).assert_clean()


@pytest.mark.parametrize("workflow", ["trip_approval", "trip_oa_approval"])  # Pydantic AI, OpenAI Agents SDK
async def test_a_tool_that_needs_approval_is_a_wait_that_survives_a_restart_and_runs_once_approved(
    kafka_bootstrap: str, prefix: str, tmp_path: Path, llm: LlmTestServer, workflow: str
) -> None:
    """An agent whose ``book`` tool needs approval: the run waits for ``<workflow>.deferred_tools`` (after ``note``
    ran), the roles are stopped and started again while it waits, a wrong answer is refused with the reason and
    changes nothing, and the approval sent through the SDK lets the agent book once and finish."""
    from tests.integration.framework_flows import registry

    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry,
                frozenset({"projector", "api"}))
    await node.start()
    s = node.settings
    event = f"{workflow}.deferred_tools"
    proc = spawn_roles(s, "engine,worker", tmp_path / "roles1.log", app=APP)
    try:
        with Client(s.api_url) as c:
            await asyncio.to_thread(c.start, workflow, "Paris in May, please", run_id="trip-ok")

            async def waiting() -> bool:
                return (await asyncio.to_thread(c.status, "trip-ok")).waiting_for == event

            await wait_until(waiting, 90, "the run to wait for the booking's approval")
            assert len(llm.for_model("trip-agent")) == 2 and llm.effects["effect/note"] == 1
            assert llm.effects["effect/book"] == 0
            stop_roles(proc)  # SIGTERM while it waits: nothing runs, nothing is lost
            proc = spawn_roles(s, "engine,worker", tmp_path / "roles2.log", app=APP)
            with pytest.raises(ResumeRefused, match="does not match the wait's schema"):
                await asyncio.to_thread(c.resume, "trip-ok", event, {"approvals": {"call_book": "yes"}})
            await asyncio.to_thread(c.resume, "trip-ok", event, {"approvals": {"call_book": True}})
        out = await run_end(s, "trip-ok")
    finally:
        stop_roles(proc)
        await node.stop()

    assert out["status"] == "completed", out
    assert out["output"]["output"] == "All set: booked flight (book #1)", out  # type: ignore[index]
    requests = [json.dumps(r.body, sort_keys=True) for r in llm.for_model("trip-agent")]
    assert len(requests) == 3 and len(set(requests)) == 3
    assert llm.effects["effect/note"] == 1 and llm.effects["effect/book"] == 1
    log = await read_topic(s.bootstrap, s.topics.events, s.partitions)
    events = [e for _, _, e in log if e.key == "trip-ok"]
    assert [e.type for e in events].count("LlmCallAttempted") == 3
    assert [e.type for e in events].count("ResumeRejected") == 1
    (await check_log(s)).assert_clean()


#: Each framework's docs page, its example, the workflow its start command runs, and the (model, agent) of each
#: model call that run logs.
DOCS_EXAMPLES = {
    "pydantic-ai": ("pydantic_ai_agent", "evening", [("test", "planner")] * 2),
    "openai-agents": ("openai_agents_agent", "booking", [("OfflineModel", "triage")] * 3),
}


@pytest.mark.parametrize("page", sorted(DOCS_EXAMPLES))
def test_the_docs_page_shows_the_example_as_it_is(page: str) -> None:
    docs = REPO_ROOT / "docs" / "integrations" / f"{page}.md"
    example = REPO_ROOT / "examples" / DOCS_EXAMPLES[page][0] / "__init__.py"
    code = re.findall(r"^```python\n(.*?)^```", docs.read_text(), flags=re.S | re.M)[0]  # the page's example
    assert code.strip() in example.read_text(), f"{docs.name} no longer shows {example.parent.name}"


@pytest.mark.parametrize("page", sorted(DOCS_EXAMPLES))
async def test_the_docs_example_runs_with_its_commands(kafka_bootstrap: str, prefix: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch, page: str) -> None:
    """``tickflow up --app examples.…:registry`` and ``tickflow start … --wait 60``, as the docs page gives them
    (offline: no OPENAI_API_KEY), end with the agent's answer and its model calls in the ledger."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    text = (REPO_ROOT / "docs" / "integrations" / f"{page}.md").read_text()
    _, workflow, expected = DOCS_EXAMPLES[page]
    s = settings_for(prefix, kafka_bootstrap, tmp_path, free_port())
    command = shlex.split(re.search(r"tickflow (up --app \S+)", text).group(1))  # type: ignore[union-attr]
    up = spawn_roles(s, "", tmp_path / "up.log",
                     command=[sys.executable, "-m", "tickflow.cli", command[0], "--no-broker", *command[1:]])
    try:
        async def api_up() -> bool:
            try:
                async with httpx.AsyncClient() as http:
                    return (await http.get(f"{s.api_url}/healthz", timeout=2)).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_until(api_up, 90, "tickflow up to serve its API")
        start = re.search(rf"tickflow (start {workflow} .*--wait 60)", text).group(1)  # type: ignore[union-attr]
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "tickflow.cli", *shlex.split(start)],
                                       env=role_env(s), capture_output=True, text=True, timeout=120)
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "booked" in done.stdout and "completed" in done.stdout, done.stdout
    log = await read_topic(s.bootstrap, s.topics.events, s.partitions)
    paid = [e.payload for _, _, e in log if e.type == "LlmCallAttempted"]
    assert [(p.model, p.agent) for p in paid] == expected  # type: ignore[attr-defined]
    handoffs = [(e.payload.from_agent, e.payload.to_agent) for _, _, e in log  # type: ignore[attr-defined]
                if e.type == "AgentHandoff"]
    assert handoffs == ([("triage", "booker")] if page == "openai-agents" else [])
