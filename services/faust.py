"""Faust processors over tickflow's topics: typed envelopes, topic names from settings, commands, committed reads.

tickflow's log is open: anyone may subscribe to the events topic and produce to the commands topic. Faust
(faust-streaming, the ``tickflow[faust]`` extra) is what a user reaches for to write their own processors there —
custom projections, reactive rules, alerts. This module is the small layer that makes such an app correct on
tickflow's topics:

* **Committed data only.** The engine writes the events topic in transactions, and some of them are aborted: a
  fenced zombie's turn, a turn whose send failed, a turn cut short by a stop. A ``read_uncommitted`` consumer sees
  those events although they never happened. faust-streaming 0.15.3 builds its worker consumer
  ``read_uncommitted`` unless ``processing_guarantee="exactly_once"`` (``faust/transport/drivers/aiokafka.py``,
  ``_create_worker_consumer``), and that mode is the one with known duplicates after a restart. :class:`App` keeps
  at-least-once processing and makes every consumer it builds (worker and client-only) ``read_committed``.
* **Typed envelopes through tickflow's own codec** (:data:`CODEC`, registered with Faust as ``"tickflow"``): a
  stream of :func:`events_topic` yields :class:`~tickflow.events.Envelope` values validated and upcast exactly as the
  engine and the projector read them. A record the codec refuses is logged with its coordinates and skipped.
* **Names and connection from** :class:`~tickflow.settings.Settings` (``TICKFLOW_*``): the broker and its security,
  the topic names of the prefix, and the partition count, so a table updated from the events topic is partitioned
  like it.
* **Commands:** :func:`start_run` and :func:`command` build command envelopes; :func:`send_command` produces one
  to the commands topic, keyed by run id as the engine expects.

Defaults follow the hazards ARCHITECTURE.md lists for faust-streaming 0.15.3: at-least-once, agent concurrency 1
(Faust's default), the web server off (it binds 0.0.0.0 and shows tables), tables in memory, offsets from the
start of the log for a new app. Agents must therefore tolerate a redelivered record: derive the id of anything
they produce from the record (a compensation run's id from the failed run's id), as :func:`start_run` does.
"""

from __future__ import annotations

import logging
import time
from typing import Any

try:
    import faust
    from faust.serializers import codecs
    from faust.transport.drivers import aiokafka as faust_kafka
    from faust.types import AppT, CodecT, TopicT
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("tickflow.faust needs faust-streaming: pip install 'tickflow[faust]'") from exc

from tickflow.events.codec import decode, encode
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import Command, StartRun
from tickflow.events.topics import TopicNames, is_run_id
from tickflow.settings import Settings

__all__ = [
    "CODEC",
    "App",
    "EnvelopeCodec",
    "EnvelopeTopic",
    "Transport",
    "app_options",
    "command",
    "commands_topic",
    "events_topic",
    "send_command",
    "start_run",
]

log = logging.getLogger(__name__)


# --- committed reads --------------------------------------------------------------------------------------------


def _read_committed(consumer: Any) -> Any:
    """Make a freshly built (not yet started) aiokafka consumer read committed data only.

    aiokafka 0.14 (pinned by tickflow) keeps the level it was built with in ``_isolation_level`` and hands it to its
    fetcher in ``start()``; Faust builds the consumer and starts it right after, so setting it here, between the
    two, is the whole change. Any other shape fails loudly: reading aborted events silently is the one outcome this
    module exists to prevent.
    """
    if getattr(consumer, "_isolation_level", None) not in ("read_uncommitted", "read_committed") or (
        getattr(consumer, "_fetcher", None) is not None
    ):
        raise RuntimeError(
            "tickflow.faust cannot make this aiokafka consumer read committed data only (an aiokafka other than "
            "the 0.14 tickflow pins, or a consumer already started); install tickflow's pinned aiokafka"
        )
    consumer._isolation_level = "read_committed"
    return consumer


class _CommittedConsumerThread(faust_kafka.AIOKafkaConsumerThread):
    """Faust's consumer thread, building its aiokafka consumer ``read_committed`` in every mode."""

    def _create_consumer(self, loop: Any) -> Any:
        return _read_committed(super()._create_consumer(loop))


class _CommittedConsumer(faust_kafka.Consumer):
    def _new_consumer_thread(self) -> Any:
        return _CommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_kafka.Transport):
    """Faust's aiokafka transport whose consumers read committed data only (what :class:`App` uses)."""

    Consumer = _CommittedConsumer


class App(faust.App):
    """A ``faust.App`` for tickflow's topics: configured from ``settings`` and reading committed data only.

    ``options`` are Faust settings and override the defaults of :func:`app_options`. The app's id is its consumer
    group and the prefix of its internal topics (``<id>-<table>-changelog``): start it with the tickflow prefix
    (``f"{settings.prefix}.my-app"``) to keep every topic of a deployment under one name.
    """

    def __init__(self, id: str, *, settings: Settings | None = None, **options: Any) -> None:
        self.tickflow_settings = settings if settings is not None else Settings()
        super().__init__(id, **{**app_options(self.tickflow_settings), **options})

    @property
    def topic_names(self) -> TopicNames:
        """tickflow's topic names for this app's settings."""
        return self.tickflow_settings.topics

    def _create_directories(self) -> None:
        # Faust makes its data directory without parents; under the state directory they may not exist yet.
        self.conf.datadir.mkdir(parents=True, exist_ok=True)
        super()._create_directories()

    def _new_transport(self) -> Any:
        # Faust picks a transport by the broker URL's scheme; this app always takes the aiokafka one whose consumers
        # read committed data (tickflow's topics are Kafka's), and every consumer of the app comes from it.
        return Transport(self.conf.broker_consumer, self)


def app_options(settings: Settings) -> dict[str, Any]:
    """The Faust settings :class:`App` starts from: broker and security from ``settings``, and safe defaults."""
    kafka = settings.kafka
    options: dict[str, Any] = {
        "broker": [f"kafka://{host.strip()}" for host in kafka.bootstrap.split(",") if host.strip()],
        # Tables are partitioned like their source; a table fed by the events topic needs its partition count.
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor or 1,
        "processing_guarantee": "at_least_once",
        "consumer_auto_offset_reset": "earliest",
        "store": "memory://",
        "web_enabled": False,
        # Faust's own files (table stores on disk, if chosen) under tickflow's state directory, not the working one.
        "datadir": settings.state_dir / "faust",
    }
    if kafka.uses_sasl:
        options["broker_credentials"] = faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password,
            mechanism=kafka.sasl_mechanism,
            ssl_context=kafka.ssl_context() if kafka.uses_tls else None,
        )
    elif kafka.uses_tls:
        options["broker_credentials"] = faust.SSLCredentials(kafka.ssl_context())
    return options


# --- envelopes --------------------------------------------------------------------------------------------------


class EnvelopeCodec(codecs.Codec):
    """tickflow's codec as a Faust codec: bytes ⇄ :class:`~tickflow.events.Envelope`, validated and upcast."""

    def _loads(self, s: bytes) -> Envelope:
        return decode(s)

    def _dumps(self, s: Any) -> bytes:
        if not isinstance(s, Envelope):
            raise TypeError(f"the tickflow codec writes Envelopes, not {type(s).__name__}")
        return encode(s)


#: The codec of tickflow's records, registered with Faust as ``"tickflow"`` (``value_serializer="tickflow"``).
CODEC: CodecT = EnvelopeCodec()
codecs.register("tickflow", CODEC)


class EnvelopeTopic(faust.Topic):
    """A topic of tickflow envelopes whose undecodable records are logged and skipped, not raised into the agent.

    Faust has acknowledged such a record already (its offset must move on); raising would crash the agent on a
    record it can never read. The log line carries the record's coordinates and the codec's reason.
    """

    async def on_value_decode_error(self, exc: Exception, message: Any) -> None:
        log.error(
            "skipped %s[%s]@%s: not a tickflow envelope this version reads: %s",
            message.topic, message.partition, message.offset, exc,
        )


def _envelope_topic(app: AppT, name: str) -> TopicT:
    return EnvelopeTopic(app, topics=[name], key_type=str, key_serializer="raw", value_serializer=CODEC)


def events_topic(app: AppT, settings: Settings | None = None) -> TopicT:
    """The events topic (the log) of ``settings`` (default: the app's): keys are run ids, values Envelopes."""
    return _envelope_topic(app, _settings(app, settings).topics.events)


def commands_topic(app: AppT, settings: Settings | None = None) -> TopicT:
    """The commands topic the engine consumes: keys are run ids, values command Envelopes."""
    return _envelope_topic(app, _settings(app, settings).topics.commands)


def _settings(app: AppT, settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    if isinstance(app, App):
        return app.tickflow_settings
    return Settings()


# --- commands ---------------------------------------------------------------------------------------------------


def command(payload: Command, *, key: str, id: str, now_ms: int | None = None,
            correlation_id: str | None = None, causation_id: str | None = None) -> Envelope:
    """A command envelope for the run (or stack, or slot) ``key``.

    ``id`` is the command's identity: a command sent again with the same id (an agent's record redelivered) is the
    same command. ``causation_id`` names what caused it (an event's id), for readers of the log.
    """
    return Envelope.wrap(
        payload,
        id=id,
        key=key,
        occurred_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
        correlation_id=correlation_id or key,
        causation_id=causation_id,
    )


def start_run(workflow: str, run_id: str, input: Any = None, *, now_ms: int | None = None,
              causation_id: str | None = None, priority: int = 0) -> Envelope:
    """The StartRun command of run ``run_id`` of ``workflow``, with the id the API gives it (``start/<run id>``).

    The run id is the start's idempotency: starting an existing run id does nothing, so an agent that derives the
    id from the record it reacts to starts one run however often the record is delivered.
    """
    if not is_run_id(run_id):
        raise ValueError(f"{run_id!r} cannot be a run id: 1-256 of A-Z a-z 0-9 _ . : -")
    return command(
        StartRun(workflow=workflow, input=input, priority=priority),
        key=run_id, id=f"start/{run_id}", now_ms=now_ms, causation_id=causation_id,
    )


async def send_command(app: AppT, envelope: Envelope, settings: Settings | None = None) -> None:
    """Produce ``envelope`` to the commands topic, keyed by its key, and wait until the broker has it."""
    if envelope.kind != "command":
        raise ValueError(f"{envelope.type} is a {envelope.kind}, not a command")
    fut = await commands_topic(app, settings).send(key=envelope.key, value=envelope)
    await fut
