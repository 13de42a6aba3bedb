"""tickflow.faust without a broker: the consumers it builds read committed data only (Faust's own do not), its codec
is tickflow's, its topic names and connection come from settings, and its command helpers build what the engine
accepts. The broker-side proof (aborted transactions never reach an agent or a table) is in
tests/integration/integrations/test_faust.py."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import faust
import pytest
from faust.serializers import codecs

from tickflow.events.codec import InvalidRecord, decode, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import CancelRun, RunCompleted, StartRun
from tickflow.faust import CODEC, App, app_options, command, commands_topic, events_topic, send_command, start_run
from tickflow.settings import Settings


def settings(tmp_path: Path, **changes: Any) -> Settings:
    return Settings(bootstrap="127.0.0.1:1,127.0.0.1:2", prefix="acme", partitions=6, state_dir=tmp_path, **changes)


async def isolation_level(app: faust.App, *, client_only: bool = False) -> str:
    """The isolation level of the aiokafka consumer the app's worker (or client-only) consumer thread builds (built,
    not started: aiokafka only wants a running loop)."""
    app.finalize()
    app.client_only = client_only
    consumer = app.consumer._thread._create_consumer(asyncio.get_running_loop())
    try:
        return str(consumer._isolation_level)
    finally:
        await consumer.stop()


@pytest.mark.parametrize("client_only", [False, True], ids=["worker", "client-only"])
async def test_the_app_builds_read_committed_consumers_where_faust_builds_read_uncommitted(
    tmp_path: Path, client_only: bool
) -> None:
    ours = App(f"acme.{uuid.uuid4().hex}", settings=settings(tmp_path))
    assert await isolation_level(ours, client_only=client_only) == "read_committed"
    plain = faust.App(f"acme.{uuid.uuid4().hex}", **app_options(settings(tmp_path)))
    assert await isolation_level(plain, client_only=client_only) == "read_uncommitted"


def test_options_come_from_settings_with_safe_defaults(tmp_path: Path) -> None:
    app = App("acme.mine", settings=settings(tmp_path), topic_partitions=6)
    conf = app.conf
    assert [str(u) for u in conf.broker] == ["kafka://127.0.0.1:1", "kafka://127.0.0.1:2"]
    assert conf.topic_partitions == 6
    assert str(conf.processing_guarantee.value) == "at_least_once"
    assert conf.web_enabled is False
    assert conf.consumer_auto_offset_reset == "earliest"
    assert str(conf.store) == "memory:"
    assert str(conf.datadir).startswith(str(tmp_path))
    assert App("acme.x", settings=settings(tmp_path), web_enabled=True).conf.web_enabled is True  # options override


def test_security_settings_become_faust_credentials(tmp_path: Path) -> None:
    sasl = app_options(settings(tmp_path, kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                                kafka_sasl_username="svc", kafka_sasl_password="pw"))
    creds = sasl["broker_credentials"]
    assert isinstance(creds, faust.SASLCredentials) and creds.username == "svc" and creds.password == "pw"
    assert "broker_credentials" not in app_options(settings(tmp_path))


def test_topics_are_the_prefix_topics_and_carry_envelopes(tmp_path: Path) -> None:
    app = App("acme.mine", settings=settings(tmp_path))
    assert events_topic(app).get_topic_name() == "acme.events" == app.topic_names.events
    assert commands_topic(app).get_topic_name() == "acme.commands"
    other = settings(tmp_path).with_(prefix="other")
    assert events_topic(app, other).get_topic_name() == "other.events"
    env = Envelope.wrap(RunCompleted(output={"ok": 1}), id="r1/3", key="r1", seq=3, occurred_at_ms=1)
    assert codecs.loads("tickflow", encode(env)) == env == CODEC.loads(CODEC.dumps(env))
    with pytest.raises(InvalidRecord):
        CODEC.loads(b'{"kind": "event", "type": "NoSuchEvent"}')
    with pytest.raises(TypeError):
        CODEC.dumps({"not": "an envelope"})


def test_start_run_is_the_command_the_api_sends() -> None:
    env = start_run("refund", "order-7.refund", {"order": "order-7"}, now_ms=5, causation_id="order-7/4")
    assert (env.kind, env.type, env.id, env.key, env.correlation_id) == (
        "command", "StartRun", "start/order-7.refund", "order-7.refund", "order-7.refund")
    assert decode(encode(env), expect="command").payload == StartRun(workflow="refund", input={"order": "order-7"})
    assert env.causation_id == "order-7/4"
    with pytest.raises(ValueError, match="run id"):
        start_run("refund", "a/b")
    cancel = command(CancelRun(reason="compensated"), key="order-7", id="cancel/order-7", now_ms=5)
    assert cancel.type == "CancelRun" and cancel.occurred_at_ms == 5


async def test_send_command_refuses_anything_but_a_command(tmp_path: Path) -> None:
    app = App("acme.mine", settings=settings(tmp_path))
    event = Envelope.wrap(RunCompleted(output=None), id="r1/2", key="r1", seq=2, occurred_at_ms=1)
    with pytest.raises(ValueError, match="not a command"):
        await send_command(app, event)
