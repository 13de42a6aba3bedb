"""Shared fixtures. Integration tests need the broker: CI starts it (`tickflow broker start`); when it is
missing they fail with instructions instead of skipping, because a broker that is not there is a real failure."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator

import pytest


def _reachable(bootstrap: str) -> bool:
    host, _, port = bootstrap.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except OSError:
        return False


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The local broker if it answers; else a testcontainers Kafka when a Docker engine exists; else fail."""
    bootstrap = os.environ.get("TICKFLOW_KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('TICKFLOW_KAFKA_PORT', '9092')}")
    if _reachable(bootstrap):
        yield bootstrap
        return
    if _docker_available():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    pytest.fail(
        f"no Kafka broker at {bootstrap} and no Docker engine: run `tickflow broker start` "
        "(or `make test`, which starts it) before the integration tests"
    )


#: Every prefix handed out this session: their topics are deleted when the session ends.
_PREFIXES: set[str] = set()


@pytest.fixture
def prefix() -> str:
    """A topic/group prefix of this test alone."""
    name = f"t{uuid.uuid4().hex[:10]}"
    _PREFIXES.add(name)
    return name


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Delete the topics the tests made. Left behind, they pile up in the dev broker's data (a thousand topics
    after a few dozen runs), and the broker's start then outlasts the launcher's wait."""
    bootstrap = os.environ.get("TICKFLOW_KAFKA_BOOTSTRAP", f"127.0.0.1:{os.environ.get('TICKFLOW_KAFKA_PORT', '9092')}")
    if _PREFIXES and _reachable(bootstrap):
        asyncio.run(_delete_topics(bootstrap, tuple(f"{p}." for p in _PREFIXES)))


async def _delete_topics(bootstrap: str, prefixes: tuple[str, ...]) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        mine = sorted(t for t in await admin.list_topics() if t.startswith(prefixes))
        for at in range(0, len(mine), 100):
            await admin.delete_topics(mine[at : at + 100])
    except Exception as exc:  # cleanup only: never fail a finished session over it
        print(f"\nleft test topics in place: {exc!r}")
    finally:
        await admin.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def clickhouse_server_url() -> Iterator[str]:
    """A ClickHouse server for the store contract's server backend: ``TICKFLOW_TEST_CLICKHOUSE_URL`` if set, else a
    testcontainers ClickHouse where a Docker engine exists. Without either the server cases are skipped (saying
    why): this machine has neither, and the embedded engine (chDB) runs the same contract."""
    url = os.environ.get("TICKFLOW_TEST_CLICKHOUSE_URL")
    if url:
        yield url
        return
    if not _docker_available():
        pytest.skip("no ClickHouse server: set TICKFLOW_TEST_CLICKHOUSE_URL or run where a Docker engine exists")
    from testcontainers.clickhouse import ClickHouseContainer

    with ClickHouseContainer() as server:
        host, port = server.get_container_host_ip(), server.get_exposed_port(8123)
        yield f"http://{server.username}:{server.password}@{host}:{port}"
