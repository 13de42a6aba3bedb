"""Mark-and-sweep of the claim-check blob store: delete the blobs nothing that can still be read refers to.

Blobs are content addressed and written before the record that refers to them is committed, by many writers (the
API offloads a big run input, a worker a big step output, the engine a big run state every snapshot round — for a
>1 MB state, a new blob each round), and nothing deletes them as they go: a blob may be shared by many references.

Mark: every reference in what replay and the roles can still read — every record retained on the commands, events,
results, dead-letter and every ``tasks.<pool>`` topic, and each key's latest record on the compacted state topic
(recovery reads no other: ``runtime.recovery.SnapshotReader``), then, transitively, the references inside the blobs
so kept (a claim-checked run state holds the references of its step outputs). References are found by their
``"sha256":"<64 hex>"`` text, so anything that looks like one keeps its blob: the mark can only keep too much.

Sweep: a blob not marked is deleted only if its bytes were last put more than ``grace_s`` before the sweep began:
a blob written just before its reference commits (an open transaction, a worker retrying its result, a snapshot
round between its write and its transaction) must survive. The listing is taken before the topics are read, so a
reference committed after the mark read its topic names a blob put after the listing (too young to be a candidate)
or put again (a put refreshes a blob's time, and the delete is guarded by that time).

With the default retention of the log (forever), every blob an event refers to stays: what the sweep reclaims is
the superseded snapshots of big run states, blobs whose records left the log (``TICKFLOW_LOG_RETENTION_MS``) and
blobs whose records never committed. It reads every retained record and every live blob once: run it daily.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from tickflow.events.connection import KafkaTarget, kafka_connection
from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.events.topics import TopicNames
from tickflow.runtime.claimcheck import BlobInfo, BlobStore, FileBlobStore
from tickflow.runtime.kafka import existing_topics, new_consumer

__all__ = ["NothingToMarkFrom", "SweepReport", "mark_from_log", "references_in", "sweep_blobs", "sweep_marked"]

#: A blob reference as orjson writes it, or inside JSON that was itself written into a JSON string (escaped quotes).
_REFERENCE = re.compile(rb'\\{0,8}"sha256\\{0,8}"\s*:\s*\\{0,8}"([0-9a-f]{64})')


def references_in(data: bytes) -> set[str]:
    """The digests ``data`` refers to (anything shaped like a reference counts)."""
    if b"sha256" not in data:
        return set()
    return {m.group(1).decode() for m in _REFERENCE.finditer(data)}


@dataclass
class SweepReport:
    """What one sweep found and did; sizes in bytes."""

    blobs_before: int = 0
    bytes_before: int = 0
    referenced: int = 0  # blobs kept because something still refers to them
    young: int = 0  # blobs kept only by the grace period
    deleted: int = 0
    deleted_bytes: int = 0
    kept_on_recheck: int = 0  # judged unreferenced, but put again while the sweep ran
    #: Referenced by a retained record but not in the store (a dangling reference: reported, never "fixed").
    missing: list[str] = field(default_factory=list)
    records_read: int = 0
    dry_run: bool = False

    @property
    def bytes_after(self) -> int:
        return self.bytes_before - self.deleted_bytes


class NothingToMarkFrom(TickflowError):
    """The topics the mark reads are not there: a sweep now would delete every blob, so it does not run."""

    code = ErrorCode.MISCONFIGURED


async def mark_from_log(kafka: KafkaTarget, topics: TopicNames) -> tuple[set[str], int]:
    """The digests referred to by every committed record retained on the run topics and by each key's latest
    record on the state topic; and how many records were read. NothingToMarkFrom if the events or state topic
    is missing (a wrong prefix or cluster must not look like a log that refers to nothing)."""
    existing = await existing_topics(kafka, topics.prefix)
    absent = [t for t in (topics.events, topics.state) if t not in existing]
    if absent:
        raise NothingToMarkFrom(
            f"no topic {' or '.join(absent)} on {kafka_connection(kafka).bootstrap}: "
            "check TICKFLOW_PREFIX and the Kafka settings; nothing was deleted"
        )
    tasks = sorted(t for t in existing if t.startswith(f"{topics.prefix}.tasks."))
    consumer = new_consumer(kafka, group_id=None, isolation_level="read_committed", fetch_max_wait_ms=10)
    await consumer.start()
    marked: set[str] = set()
    read = 0
    try:
        for topic in [topics.commands, topics.events, topics.results, topics.dead_letter, *tasks]:
            if topic in existing:
                read += await _scan(
                    consumer, topic, existing[topic], lambda _key, value: marked.update(references_in(value or b""))
                )
        latest: dict[tuple[int, bytes], set[str]] = {}

        def keep_latest(key: tuple[int, bytes] | None, value: bytes | None) -> None:
            assert key is not None
            latest[key] = references_in(value) if value is not None else set()

        read += await _scan(consumer, topics.state, existing[topics.state], keep_latest, keyed=True)
        for refs in latest.values():
            marked |= refs
    finally:
        await consumer.stop()
    return marked, read


#: What ``_scan`` hands each record to: its (partition, key) when keyed, else None; and its value.
Seen = Callable[[tuple[int, bytes] | None, bytes | None], None]


async def _scan(consumer: AIOKafkaConsumer, topic: str, partitions: int, seen: Seen, *, keyed: bool = False) -> int:
    """Feed every committed record of ``topic`` (all ``partitions``, up to their ends now) to ``seen``:
    ``(key, value)`` with ``key`` = (partition, record key) when ``keyed`` (values may be None: tombstones)."""
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    if not tps:
        return 0
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    await consumer.seek_to_beginning(*tps)
    left = {tp for tp in tps if ends[tp] > 0}
    read = 0
    while left:
        for tp in list(left):
            if await consumer.position(tp) >= ends[tp]:
                left.discard(tp)
        if not left:
            break
        fetched = await consumer.getmany(*left, timeout_ms=500, max_records=10_000)
        for tp, records in fetched.items():
            for record in records:
                if record.offset >= ends[tp]:
                    continue
                read += 1
                if keyed:
                    seen((tp.partition, record.key or b""), record.value)
                elif record.value is not None:
                    seen(None, record.value)
    return read


def sweep_marked(
    store: BlobStore,
    listed: Iterable[BlobInfo],
    marked: set[str],
    *,
    began_s: float,
    grace_s: float,
    dry_run: bool = False,
) -> SweepReport:
    """Delete the blobs of ``listed`` (taken at ``began_s``, before ``marked`` was read) that neither ``marked``,
    nor a blob kept, refers to, and that were put more than ``grace_s`` before ``began_s``."""
    report = SweepReport(dry_run=dry_run)
    blobs = {b.digest: b for b in listed}
    report.blobs_before, report.bytes_before = len(blobs), sum(b.size for b in blobs.values())
    cutoff = began_s - grace_s
    young = {d for d, b in blobs.items() if b.modified_s > cutoff}
    # The closure: a kept blob (referenced, or young and so perhaps about to be) keeps what it refers to.
    live: set[str] = set()
    todo = list(marked | young)
    while todo:
        digest = todo.pop()
        if digest in live:
            continue
        live.add(digest)
        if digest not in blobs:
            continue
        try:
            data = store.get(digest)
        except (OSError, ValueError):
            continue  # deleted meanwhile, or corrupt: what it referred to is kept only if referred to elsewhere
        todo.extend(references_in(data) - live)
    report.missing = sorted(d for d in marked if d not in blobs)
    report.referenced = len([d for d in blobs if d in live and d not in young])
    report.young = len(young)
    for digest, info in blobs.items():
        if digest in live:
            continue
        if dry_run or store.delete(digest, unless_put_after=cutoff):
            report.deleted += 1
            report.deleted_bytes += info.size
        else:
            report.kept_on_recheck += 1
    if isinstance(store, FileBlobStore) and not dry_run:  # what crashed writers and sweeps left half-done
        files, size = store.remove_leftovers(cutoff)
        report.deleted += files
        report.deleted_bytes += size
        report.bytes_before += size
    return report


async def sweep_blobs(
    kafka: KafkaTarget,
    topics: TopicNames,
    store: BlobStore,
    *,
    grace_s: float,
    dry_run: bool = False,
    now_s: float | None = None,
) -> SweepReport:
    """List the store, mark from the log, sweep (see the module docstring). ``now_s`` stands in for the clock."""
    began = time.time() if now_s is None else now_s
    listed = await asyncio.to_thread(lambda: list(store.list()))  # before the mark: see the module docstring
    marked, read = await mark_from_log(kafka, topics)
    report = await asyncio.to_thread(
        sweep_marked, store, listed, marked, began_s=began, grace_s=grace_s, dry_run=dry_run
    )
    report.records_read = read
    return report
