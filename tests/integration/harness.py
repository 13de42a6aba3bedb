"""Helpers for integration tests: settings per test, subprocess roles, reading a topic from offset 0."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.paths import REPO_ROOT
from tickflow.client import Client
from tickflow.events.codec import decode
from tickflow.events.connection import KafkaTarget
from tickflow.events.envelope import Envelope
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics, read_partition
from tickflow.settings import Settings
from tickflow.workflow import Registry


def settings_for(prefix: str, bootstrap: str, tmp: Path, api_port: int, **extra: object) -> Settings:
    return Settings(
        bootstrap=bootstrap,
        prefix=prefix,
        partitions=4,
        state_dir=tmp / "state",
        api_port=api_port,
        commit_interval_ms=100,
        projector_batch_ms=50,
    ).with_(**extra)


@contextlib.asynccontextmanager
async def worker_node(settings: Settings, registry: Registry) -> AsyncIterator[Node]:
    """The topics of ``settings`` and a node running only the workers, in this process (the engine under test runs
    in its own process, to be killed or stopped)."""
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    node = Node(settings, registry, frozenset({"worker"}))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@contextlib.contextmanager
def http_service(answer: Callable[[bytes], tuple[str, bytes]]) -> Iterator[int]:
    """A loopback HTTP server in a thread, for tests that need one (a page, a fake external service): ``answer``
    turns a request's body (empty for a GET) into (content type, response body), answered 200. Yields its port."""

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            content_type, body = answer(self.rfile.read(int(self.headers.get("content-length") or 0)))
            self.send_response(200)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _answer

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def role_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a ``tickflow`` process (a role, the CLI) join the test's cluster as ``settings``."""
    return {
        **os.environ,
        "TICKFLOW_KAFKA_BOOTSTRAP": settings.bootstrap,
        "TICKFLOW_PREFIX": settings.prefix,
        "TICKFLOW_PARTITIONS": str(settings.partitions),
        "TICKFLOW_STATE_DIR": str(settings.state_dir),
        "TICKFLOW_API_PORT": str(settings.api_port),
        "TICKFLOW_COMMIT_INTERVAL_MS": str(settings.commit_interval_ms),
        "TICKFLOW_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "TICKFLOW_SNAPSHOT_INTERVAL_S": str(settings.snapshot_interval_s),
        "PYTHONPATH": str(REPO_ROOT),
        **({"TICKFLOW_METRICS_PORT": str(settings.metrics_port)} if settings.metrics_port is not None else {}),
    }


def spawn_roles(
    settings: Settings,
    roles: str,
    log_path: Path,
    app: str = "tests.integration.flows:registry",
    command: list[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``tickflow up --roles …`` (or ``command``) as its own process, so it can be killed with SIGKILL."""
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(
        command or [sys.executable, "-m", "tickflow.cli", "-v", "up", "--no-broker", "--app", app, "--roles", roles],
        cwd=REPO_ROOT,
        env=role_env(settings),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def kill_and_respawn(proc: subprocess.Popen[bytes], settings: Settings, roles: str, log_path: Path,
                     app: str = "tests.integration.flows:registry") -> subprocess.Popen[bytes]:
    """SIGKILL a role process and start its replacement (as a supervisor restarting a crashed node would)."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    return spawn_roles(settings, roles, log_path, app=app)


def stop_roles(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a role process still running and wait for it to drain and exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


async def run_end(settings: Settings, run_id: str, timeout: float = 120) -> dict[str, Any]:
    """Wait (through the API) for a run to end; its final status as a dict."""

    def wait() -> dict[str, Any]:
        with Client(settings.api_url) as c:
            return c.wait(run_id, timeout=timeout).model_dump()

    return await asyncio.to_thread(wait)


async def read_topic(kafka: KafkaTarget, topic: str, partitions: int) -> list[tuple[int, int, Envelope]]:
    """Every record of a topic from offset 0, as (partition, offset, envelope)."""
    return [
        (p, r.offset, decode(r.value)) for p in range(partitions) for r in await read_partition(kafka, topic, p)
    ]
