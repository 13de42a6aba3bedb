"""Kafka plumbing shared by every role: safe producer settings, topic creation, dead letters, offsets.

Producers are idempotent with acks=all (aiokafka's defaults are acks=1 without idempotence, which can
duplicate or drop records on a retry). Consumers never auto-commit: each role commits an offset only after
the durable write it depends on, and they read ``read_committed``: the engine's writes are transactional, and a
write of a fenced or crashed engine is aborted, never seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    InvalidReplicationFactorError,
    NotControllerError,
    RequestTimedOutError,
    TopicAlreadyExistsError,
    for_code,
)

from tickflow.events.codec import encode
from tickflow.events.connection import KafkaTarget, kafka_connection
from tickflow.events.envelope import dead_letter
from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.events.redact import redact
from tickflow.events.topics import TopicNames

__all__ = [
    "STATE_TOPIC_CONFIGS",
    "TOKENS_RETENTION_MS",
    "DeadLetters",
    "PendingSends",
    "Rebalance",
    "SendFailed",
    "TopicLayoutError",
    "consumer_lag",
    "ensure_topics",
    "existing_topics",
    "new_admin",
    "new_consumer",
    "new_producer",
    "partition_batches",
    "read_partition",
    "replication_for",
]

log = logging.getLogger("tickflow.kafka")

#: How long the tokens topic keeps streamed LLM deltas by default: long enough to reopen a run page of the day.
TOKENS_RETENTION_MS = 6 * 3_600_000


def new_producer(kafka: KafkaTarget, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        **kafka_connection(kafka).client_options(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 0,  # measured: 1 ms of linger doubles the per-hop p50 on loopback
        "max_batch_size": 256 * 1024,
        "max_request_size": 4 * 1024 * 1024,
        "request_timeout_ms": 30_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def new_consumer(kafka: KafkaTarget, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        **kafka_connection(kafka).client_options(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "fetch_max_wait_ms": 100,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
        # The engine writes in transactions (see runtime/fencing.py): a reader must never see an aborted write.
        "isolation_level": "read_committed",
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def new_admin(kafka: KafkaTarget, **overrides: Any) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**{**kafka_connection(kafka).client_options(), **overrides})


#: The compacted state topic (engine snapshots). Compaction only cleans closed segments, and Kafka closes one at 1 GiB
#: or after 7 days by default: until then every snapshot round's copy of each changed state stays, and a partition
#: recovery reads them all. Small, time-bounded segments let the cleaner keep it near one copy per key.
STATE_TOPIC_CONFIGS = {
    "cleanup.policy": "compact",
    "segment.bytes": str(16 * 1024 * 1024),
    "segment.ms": str(15 * 60 * 1000),
}


class TopicLayoutError(TickflowError):
    """tickflow's topics exist with a layout it cannot run on (keyed topics with another partition count), or the
    layout asked for cannot be made on this cluster (a replication factor above its broker count)."""

    code = ErrorCode.MISCONFIGURED


def replication_for(brokers: int, replication: int | None = None, min_insync: int | None = None) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers``: the settings when given, else 3 and 2
    on three brokers or more (one broker may fail with no write refused and no acknowledged write lost), 1 and 1
    on one broker. A factor above the broker count is refused here, with the fix, rather than by Kafka."""
    rf = replication if replication is not None else (3 if brokers >= 3 else 1)
    if rf > brokers:
        raise TopicLayoutError(
            f"replication factor {rf} needs at least {rf} brokers, the cluster has {brokers}; set "
            "TICKFLOW_REPLICATION_FACTOR to at most the broker count"
        )
    isr = min_insync if min_insync is not None else max(rf - 1, 1)
    if not 1 <= isr <= rf:
        raise TopicLayoutError(f"min.insync.replicas must be between 1 and the replication factor {rf}, not {isr}")
    return rf, isr


async def ensure_topics(
    kafka: KafkaTarget,
    names: TopicNames,
    pools: Iterable[str],
    log_retention_ms: int = -1,
    *,
    tokens_retention_ms: int = TOKENS_RETENTION_MS,
    replication: int | None = None,
    min_insync: int | None = None,
    wait_s: float = 15.0,
) -> None:
    """Create tickflow's topics with the partition counts ``events`` defines; existing topics are kept, but keyed
    topics whose partition count differs are refused (``TopicLayoutError``): a run's records would land in
    partitions no single engine owns.

    The events topic keeps records for ``log_retention_ms`` (-1: forever, the default: the log is the state); the
    tokens topic (streamed LLM deltas, for watching only) for ``tokens_retention_ms``. Replication and
    ``min.insync.replicas`` follow ``replication_for`` (3 / 2 on a cluster of three brokers or more). The cluster's
    size is the larger of the bootstrap addresses listed and the brokers its metadata shows: metadata lists only the
    brokers serving at that instant, and one fenced for a missed heartbeat must not make every topic a single copy
    for good. ``wait_s`` bounds the wait for the listed brokers to show and for a refused creation to be retried.
    """
    connection = kafka_connection(kafka)
    admin = new_admin(connection)
    await admin.start()
    try:
        listed = len({a.strip() for a in connection.bootstrap.split(",") if a.strip()})
        brokers = max(await _brokers_serving(admin, listed, wait_s), listed)
        rf, isr = replication_for(brokers, replication, min_insync)

        def topic(name: str, partitions: int, **configs: str) -> NewTopic:
            return NewTopic(name, partitions, rf, topic_configs={"min.insync.replicas": str(isr), **configs})

        keyed = names.keyed_topics(tuple(pools))
        wanted = [
            topic(t, names.partitions, **({"retention.ms": str(log_retention_ms)} if t == names.events else {}))
            for t in keyed
        ]
        wanted.append(topic(names.state, names.partitions, **STATE_TOPIC_CONFIGS))
        wanted.append(topic(names.dead_letter, 1))
        wanted.append(topic(names.control, 1, **{"cleanup.policy": "compact"}))
        wanted.append(topic(names.tokens, names.partitions, **{"retention.ms": str(tokens_retention_ms)}))
        await _create_missing(admin, wanted, wait_s)
        for _ in range(100):  # metadata propagates asynchronously after creation
            if {t.name for t in wanted} <= set(await admin.list_topics()):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"topics were not visible after creation: {[t.name for t in wanted]}")
        co_partitioned = [*keyed, names.state]
        counts = await _partition_counts(admin, co_partitioned)
        wrong = {t: n for t, n in counts.items() if n != names.partitions}
        if wrong:
            raise TopicLayoutError(
                f"tickflow runs with {names.partitions} partitions per keyed topic (TICKFLOW_PARTITIONS), but "
                + ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
                + "; every record of a run must land in the partition of one engine: use the topics' count, or a new "
                "TICKFLOW_PREFIX (and replay into it)"
            )
    finally:
        await admin.close()


async def _brokers_serving(admin: AIOKafkaAdminClient, listed: int, wait_s: float) -> int:
    """The most brokers the cluster's metadata showed, asked until it shows the ``listed`` bootstrap addresses or
    ``wait_s`` ran out (a broker fenced for a missed heartbeat, or still starting, is left out of the metadata)."""
    deadline = time.monotonic() + wait_s
    seen = 0
    while True:
        seen = max(seen, len((await admin.describe_cluster()).get("brokers") or []))
        if seen >= listed or time.monotonic() >= deadline:
            if seen < listed:
                log.warning("the cluster shows %d brokers of the %d bootstrap addresses listed", seen, listed)
            return seen
        await asyncio.sleep(0.25)


# Refusals a moment later may not repeat: the controller moved, or too few brokers were unfenced to place replicas.
_RETRIED_CREATE_ERRORS = frozenset(
    e.errno for e in (InvalidReplicationFactorError, NotControllerError, RequestTimedOutError)
)


async def _create_missing(admin: AIOKafkaAdminClient, wanted: list[NewTopic], wait_s: float) -> None:
    """Create the topics of ``wanted`` that do not exist yet. aiokafka returns per-topic refusals instead of raising
    them: each is read, a passing one retried until ``wait_s``, any other (or the last) raised with Kafka's words."""
    deadline = time.monotonic() + wait_s
    while True:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t.name not in existing]
        if not missing:
            return
        response = await admin.create_topics(missing)
        refused = {
            str(name): (int(code), str(rest[0]) if rest and rest[0] else "")
            for name, code, *rest in response.topic_errors
            if code not in (0, TopicAlreadyExistsError.errno)  # another process may have won the race
        }
        if not refused:
            return
        if any(code not in _RETRIED_CREATE_ERRORS for code, _ in refused.values()) or time.monotonic() >= deadline:
            name, (code, message) = sorted(refused.items())[0]
            raise TopicLayoutError(
                f"Kafka refused to create {len(refused)} topic(s), {name} first: {for_code(code).__name__}"
                f"{': ' + message if message else ''}; check TICKFLOW_REPLICATION_FACTOR / "
                "TICKFLOW_MIN_INSYNC_REPLICAS against the brokers serving, and the client's rights to create topics"
            )
        await asyncio.sleep(0.5)


async def _partition_counts(admin: AIOKafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partitions per topic, once every broker asked knows them (a topic just created may still be described with
    an error and no partitions by a broker its metadata has not reached)."""
    counts: dict[str, int] = {}
    for _ in range(100):
        described = await admin.describe_topics(topics)
        counts = {str(t.get("topic") or t.get("name")): len(t.get("partitions") or []) for t in described}
        if all(t.get("error_code", 0) == 0 and t.get("partitions") for t in described):
            return counts
        await asyncio.sleep(0.1)
    return counts


async def existing_topics(kafka: KafkaTarget, prefix: str) -> dict[str, int]:
    """The topics named ``<prefix>.*`` on the cluster, with their partition counts (for readers of whole topics)."""
    admin = new_admin(kafka)
    await admin.start()
    try:
        names = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
        return await _partition_counts(admin, names) if names else {}
    finally:
        await admin.close()


async def read_partition(
    kafka: KafkaTarget,
    topic: str,
    partition: int,
    start: int | None = None,
    *,
    committed: bool = True,
    min_end: int = 0,
    wait_s: float = 10.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of one partition from ``start`` (default: its first retained offset) to the end as of now.

    ``committed=False`` reads aborted and open transactions' records too (for tests that prove a fence held).
    ``min_end``: first wait (up to ``wait_s``) until the readable end reaches this offset. A transaction's commit
    returns before its markers land on the partition, and until they do a ``read_committed`` reader's end (the last
    stable offset) stays before that transaction's records.
    """
    out: list[ConsumerRecord[bytes, bytes]] = []
    async with contextlib.aclosing(
        partition_batches(kafka, topic, partition, start, committed=committed, min_end=min_end, wait_s=wait_s)
    ) as batches:
        async for batch in batches:
            out.extend(batch)
    return out


async def partition_batches(
    kafka: KafkaTarget,
    topic: str,
    partition: int,
    start: int | None = None,
    *,
    committed: bool = True,
    min_end: int = 0,
    wait_s: float = 10.0,
    batch_size: int = 10_000,
) -> AsyncGenerator[list[ConsumerRecord[bytes, bytes]], None]:
    """``read_partition``'s records, a batch at a time: a reader that folds as it goes holds one batch, not the
    partition (a compacted topic can hold many versions of each key until the cleaner has run)."""
    isolation = "read_committed" if committed else "read_uncommitted"
    consumer = new_consumer(kafka, group_id=None, fetch_max_wait_ms=10, isolation_level=isolation)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + wait_s
        while end < min_end and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            end = (await consumer.end_offsets([tp]))[tp]
        first = (await consumer.beginning_offsets([tp]))[tp]
        if start is None or start < first:
            await consumer.seek_to_beginning(tp)
        else:
            consumer.seek(tp, start)
        while await consumer.position(tp) < end:
            fetched = await consumer.getmany(tp, timeout_ms=500, max_records=batch_size)
            batch = [record for record in fetched.get(tp, []) if record.offset < end]
            if batch:
                yield batch
    finally:
        await consumer.stop()


class SendFailed(TickflowError):
    """A record the broker never acknowledged: the offsets of the inputs that caused it must never be committed."""

    code = ErrorCode.UNAVAILABLE


class PendingSends:
    """Produce futures not yet acknowledged. ``drain`` before committing the offsets they depend on.

    A failure is sticky. Once one send has failed, its record is lost, and every later ``drain`` raises too: a
    role that committed offsets after that point would commit over the lost record, so it may commit nothing
    again. It must stop; its inputs are then redelivered from the last offsets committed before the loss.
    """

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[Any]] = []
        self.failure: BaseException | None = None

    def add(self, fut: asyncio.Future[Any]) -> None:
        self._futures.append(fut)

    def __len__(self) -> int:
        return len(self._futures)

    async def drain(self) -> None:
        if self.failure is None and self._futures:
            futures = list(self._futures)
            results = await asyncio.gather(*futures, return_exceptions=True)
            settled = set(map(id, futures))
            self._futures = [f for f in self._futures if id(f) not in settled]  # keep what was added meanwhile
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures and self.failure is None:
                self.failure = failures[0]
        if self.failure is not None:
            raise SendFailed(
                f"a record was not acknowledged by the broker ({type(self.failure).__name__}: {self.failure}); "
                "no offset may be committed past it"
            ) from self.failure


class DeadLetters:
    """Sends refused records to the dead-letter topic with their source coordinates and the reason.

    ``letter`` only builds the record, for a role that writes it through a producer of its own choosing (the engine
    writes a partition's dead letters in that partition's transaction).
    """

    def __init__(self, producer: AIOKafkaProducer | None, topic: str, consumer: str) -> None:
        self.producer, self.topic, self.consumer = producer, topic, consumer

    def letter(self, record: ConsumerRecord[bytes, bytes], reason: str, now_ms: int) -> tuple[bytes, bytes]:
        """The dead letter of ``record`` as (value, key), logged once here."""
        letter = dead_letter(
            consumer=self.consumer,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            reason=reason,
            now_ms=now_ms,
            scrub=redact,
        )
        reason = letter.payload.reason  # type: ignore[attr-defined]  # redacted, for the log line too
        log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason[:300])
        return encode(letter), letter.key.encode()

    async def send(self, record: ConsumerRecord[bytes, bytes], reason: str, now_ms: int) -> asyncio.Future[Any]:
        assert self.producer is not None, "DeadLetters.send needs a producer"
        value, key = self.letter(record, reason, now_ms)
        fut: asyncio.Future[Any] = await self.producer.send(self.topic, value, key=key)
        return fut


def consumer_lag(
    role: str, consumer: AIOKafkaConsumer, positions: Mapping[TopicPartition, int]
) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
    """``tickflow_consumer_lag`` samples (see ``tickflow.metrics``): records between a role's position in each
    partition it consumed and that partition's end as of the last fetch (no broker round trip at scrape time)."""
    for tp, position in list(positions.items()):  # a copy: a scrape may run in another thread
        end = consumer.highwater(tp)
        if end is not None:
            position = max(position, _fetched_to(consumer, tp) or 0)
            labels = {"role": role, "topic": tp.topic, "partition": str(tp.partition)}
            yield (
                "gauge",
                "tickflow_consumer_lag",
                "Records behind the end of a partition.",
                labels,
                float(max(0, end - position)),
            )


def _fetched_to(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """aiokafka's own fetch position in ``tp``, which moves past transaction markers: the offsets of the records a
    role handled never do, so a partition whose last entry is a commit marker would show a lag of 1 for ever.
    aiokafka keeps it private and has no synchronous accessor (``position`` is a coroutine), so it is read
    defensively: None when the internals differ."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return int(state.position) if state is not None and state.has_valid_position else None
    except (AttributeError, TypeError, AssertionError):
        return None


OnPartitions = Callable[[set[TopicPartition]], Awaitable[None]]


async def _nothing(_: set[TopicPartition]) -> None:
    return None


class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    """Forwards aiokafka's rebalance callbacks to a role's own coroutines."""

    def __init__(self, *, on_revoked: OnPartitions = _nothing, on_assigned: OnPartitions = _nothing) -> None:
        self._on_revoked, self._on_assigned = on_revoked, on_assigned

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._on_assigned(set(assigned))
