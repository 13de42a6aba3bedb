"""Shared fixtures. Integration tests need the broker: CI starts it (infra/kafka.sh start); when it is
missing they fail with instructions instead of skipping, because a broker that is not there is a real failure."""

from __future__ import annotations

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
        f"no Kafka broker at {bootstrap} and no Docker engine: run `infra/kafka.sh start` "
        "(or `make test`, which starts it) before the integration tests"
    )


@pytest.fixture
def prefix() -> str:
    """A topic/group prefix of this test alone."""
    return f"t{uuid.uuid4().hex[:10]}"


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
