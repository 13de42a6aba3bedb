"""The inputs a run was decided on, read back from the commands and results topics (for ``core.divergence``).

A run's events name their inputs (``causation_id``); the records themselves are on the commands and results
topics, in the run's partition (keyed topics share their partition count, so it is the partition its events are
in). Those topics keep records for the broker's retention, not forever: an input older than that is gone, and a
diff of its run says so instead of guessing.

Reading starts at the record whose broker timestamp is ``slack_ms`` before the run's first event (a command is
produced before the engine decides it; the slack covers clocks that disagree), not at the partition's start, and
stops as soon as every input named is found, so a diff costs about the run's lifetime of its partition.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection
from typing import Any

from aiokafka import TopicPartition

from tickflow.core.decider import ClaimedPayload
from tickflow.core.divergence import TIMER_PREFIXES
from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.connection import KafkaTarget
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import ForkRun, Kind, ResumeRun
from tickflow.runtime.claimcheck import is_ref, resolve
from tickflow.runtime.claimed_inputs import claimed_fork
from tickflow.runtime.kafka import new_consumer

__all__ = ["DEFAULT_SLACK_MS", "claimed_payloads", "read_inputs", "wanted_inputs"]

#: How long before a run's first event its first input may carry as the producer's timestamp.
DEFAULT_SLACK_MS = 3_600_000


def wanted_inputs(events: Collection[Envelope]) -> set[str]:
    """The ids of the records a run's events name as their cause (timer firings and recoveries have none)."""
    return {
        e.causation_id for e in events if e.causation_id is not None and not e.causation_id.startswith(TIMER_PREFIXES)
    }


async def read_inputs(
    kafka: KafkaTarget,
    topics: tuple[str, str],
    partition: int,
    run_id: str,
    wanted: set[str],
    since_ms: int,
) -> dict[str, Envelope]:
    """The records of ``run_id`` among ``topics`` (commands, results) whose ids are ``wanted``, by id.

    Reads each topic's ``partition`` from the first record at or after ``since_ms`` up to its end at the time of
    the call, and stops early once every wanted id is found. Records that do not decode are skipped (the engine
    dead-lettered them; they caused nothing).
    """
    found: dict[str, Envelope] = {}
    key = run_id.encode()
    consumer = new_consumer(kafka, group_id=None, fetch_max_wait_ms=10)
    await consumer.start()
    try:
        sources: list[tuple[str, Kind]] = [(topics[0], "command"), (topics[1], "result")]
        for topic, kind in sources:
            if not wanted - found.keys():
                break
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            at = (await consumer.offsets_for_times({tp: max(0, since_ms)}))[tp]
            if at is None:
                continue  # nothing at or after that time
            consumer.seek(tp, at.offset)
            while await consumer.position(tp) < end and wanted - found.keys():
                fetched = await consumer.getmany(tp, timeout_ms=500, max_records=5_000)
                for record in fetched.get(tp, []):
                    if record.offset >= end or record.key != key:
                        continue
                    with contextlib.suppress(InvalidRecord):
                        env = decode(record.value, expect=kind)
                        if env.id in wanted:
                            found.setdefault(env.id, env)
    finally:
        await consumer.stop()
    return found


async def claimed_payloads(inputs: dict[str, Envelope], blobs: Any) -> dict[str, ClaimedPayload]:
    """What the engine read from the blob store for these inputs: the history of a claim-checked fork is put back
    inline into ``inputs`` (in place), and each claim-checked resume payload's value (or why it is unreadable) is
    returned by input id, for the wait's schema check."""
    claimed: dict[str, ClaimedPayload] = {}
    for input_id, env in list(inputs.items()):
        p = env.payload
        if isinstance(p, ForkRun) and p.history_blob is not None and blobs is not None:
            inputs[input_id] = (await claimed_fork(env, blobs)).command
        elif isinstance(p, ResumeRun) and is_ref(p.payload):
            if blobs is None:
                claimed[input_id] = ClaimedPayload(problem="no blob store is configured here")
                continue
            try:
                claimed[input_id] = ClaimedPayload(value=await asyncio.to_thread(resolve, p.payload, blobs))
            except Exception as exc:
                claimed[input_id] = ClaimedPayload(problem=f"{type(exc).__name__}: {exc}"[:1_000])
    return claimed
