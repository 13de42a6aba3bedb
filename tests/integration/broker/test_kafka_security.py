"""tickflow against a SASL_SSL broker (the launcher's secure mode: a keystore from the JDK's keytool, SCRAM-SHA-512 and
PLAIN users): every role runs on it from the settings a user would set, a wrong password or a client without TLS is
refused with a clear error, and neither the password nor the keystore's ends up in a log line or a record."""

from __future__ import annotations

import asyncio
import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.errors import KafkaError

from tests.conftest import free_port
from tests.integration.broker.test_cluster import _free_block
from tests.integration.checker import check_log
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.broker import BrokerConfig, LocalBroker
from tickflow.broker.secure import BrokerSecrets
from tickflow.client import Client
from tickflow.events.connection import KafkaConnection
from tickflow.node import Node
from tickflow.runtime.kafka import ensure_topics, new_producer, read_partition
from tickflow.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    broker = LocalBroker(BrokerConfig(tmp_path_factory.mktemp("secure"), port=_free_block(2), heap="384m", secure=True))
    broker.start(timeout_s=120)
    try:
        yield broker
    finally:
        broker.kill()
        broker.stop()


def _secrets(broker: LocalBroker) -> BrokerSecrets:
    assert broker.secrets is not None
    return broker.secrets


def _client_settings(broker: LocalBroker, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The broker's client.env, as a user sources it: every line becomes an environment variable."""
    lines = (_secrets(broker).directory / "client.env").read_text().splitlines()
    env = dict(line.split("=", 1) for line in lines if line)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_secret_files_are_private_and_the_broker_refuses_plaintext(secure_broker: LocalBroker) -> None:
    secrets = _secrets(secure_broker)
    for path in (secrets.directory / "secrets.json", secrets.directory / "client.env", secure_broker.properties_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert "BEGIN CERTIFICATE" in secrets.cafile.read_text()
    assert secrets.client_password not in repr(secrets) and secrets.client_password not in repr(
        secure_broker.connection()
    )


async def _refused(connection: KafkaConnection | str, caplog: pytest.LogCaptureFixture) -> str:
    """What a producer that cannot connect says: its error and aiokafka's log lines (where the broker's reason is)."""
    caplog.clear()
    producer = new_producer(connection, request_timeout_ms=5_000)
    try:
        with pytest.raises((KafkaError, asyncio.TimeoutError)) as refused:
            await asyncio.wait_for(producer.start(), 30)
    finally:
        await producer.stop()
    return f"{refused.value} {caplog.text}"


async def test_wrong_password_and_missing_tls_are_refused_with_the_reason(
    secure_broker: LocalBroker, caplog: pytest.LogCaptureFixture
) -> None:
    good = secure_broker.connection()
    wrong = KafkaConnection(good.bootstrap, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                            sasl_username=good.sasl_username, sasl_password="not-the-password",
                            ssl_cafile=good.ssl_cafile)
    assert "invalid credentials" in await _refused(wrong, caplog)
    untrusted = KafkaConnection(good.bootstrap, security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                                sasl_username=good.sasl_username, sasl_password=good.sasl_password)  # system CAs
    assert "CERTIFICATE_VERIFY_FAILED" in await _refused(untrusted, caplog)
    await _refused(good.bootstrap, caplog)  # plaintext to a TLS listener


async def test_plain_mechanism_round_trip(secure_broker: LocalBroker, prefix: str) -> None:
    secrets = _secrets(secure_broker)
    plain = secrets.client_connection(secure_broker.config.bootstrap, mechanism="PLAIN")
    settings = Settings(prefix=prefix, partitions=1, bootstrap=plain.bootstrap)
    await ensure_topics(plain, settings.topics, settings.pools)
    producer = new_producer(plain)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topics.dead_letter, b"over PLAIN", key=b"k", partition=0)
    finally:
        await producer.stop()
    assert [r.value for r in await read_partition(plain, settings.topics.dead_letter, 0)] == [b"over PLAIN"]


async def test_every_role_runs_over_sasl_ssl_and_no_secret_is_logged_or_recorded(
    secure_broker: LocalBroker, prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = _client_settings(secure_broker, monkeypatch)
    secrets = _secrets(secure_broker)
    hidden = {secrets.client_password, secrets.admin_password, secrets.store_password}
    caplog.set_level(logging.DEBUG)  # aiokafka's and tickflow's DEBUG lines too, whatever an earlier test set
    for name in ("aiokafka", "tickflow"):  # (the CLI quiets aiokafka's logger, and the level stays for the session)
        caplog.set_level(logging.DEBUG, logger=name)
    settings = settings_for(prefix, env["TICKFLOW_KAFKA_BOOTSTRAP"], tmp_path, free_port())
    assert settings.kafka.security_protocol == "SASL_SSL" and settings.kafka.sasl_mechanism == "SCRAM-SHA-512"
    node = Node(settings, registry)
    await node.start()
    try:
        runs = await asyncio.to_thread(_run_all, settings)
    finally:
        await node.stop()
    assert set(runs.values()) == {"completed"}, runs
    integrity = await check_log(settings)
    integrity.assert_clean()
    assert len(integrity.started) >= len(runs)

    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    assert any(r.name.startswith("aiokafka") and r.levelno == logging.DEBUG for r in caplog.records)  # all captured
    assert not [s for s in hidden if s in logged]
    for topic in settings.topics.all_topics(settings.pools):
        single = topic in (settings.topics.dead_letter, settings.topics.control)
        records = [r for p in range(1 if single else settings.partitions)
                   for r in await read_partition(settings.kafka, topic, p)]
        assert not [r for r in records if any(s.encode() in (r.value or b"") for s in hidden)], topic


def _run_all(settings: Settings) -> dict[str, str]:
    """Runs of three shapes (steps with a retried failure and a sync step, child runs, ten steps), to the end."""
    with Client(settings.api_url, timeout=30) as c:
        ids = [c.start("math", 1, run_id="sec-math"), c.start("fanout", [1, 2, 3], run_id="sec-fanout"),
               c.start("slow10", {"n": 0}, run_id="sec-slow")]
        return {rid: c.wait(rid, timeout=90).status for rid in ids}
