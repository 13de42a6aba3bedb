"""Benchmark: the memory an engine partition's recovery holds when its state topic keeps many copies of each state.

    python -m tests.bench.recovery_memory [--runs 1000] [--rounds 20] [--input-bytes 1000]

Setup (not measured): a state partition as snapshot rounds leave it before compaction has cleaned it: ``--rounds``
rounds, each writing every one of ``--runs`` run states again (each holding ``--input-bytes`` of input), each round
followed by its checkpoint. It goes to a bench prefix's topic with Kafka's default segments, so nothing is
compacted while it runs. Measured, with tracemalloc (Python allocations; RSS cannot go back down within one
process): the peak while ``runtime.recovery.rebuild_partition`` rebuilds it, against the peak of reading the
partition whole and parsing it (``read_partition`` + ``parse_snapshots``, what recovery did before). Prints one JSON
document, then a human summary. Deletes only its own topics.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tickflow.core.state import RunState
from tickflow.events.topics import TopicNames
from tickflow.runtime.claimcheck import FileBlobStore
from tickflow.runtime.kafka import read_partition
from tickflow.runtime.recovery import parse_snapshots, rebuild_partition
from tickflow.runtime.snapshots import CHECKPOINT_KEY, encode_checkpoint, encode_snapshot
from tickflow.settings import Settings


async def _fill(bootstrap: str, names: TopicNames, runs: int, rounds: int, input_bytes: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(names.state, 1, 1, topic_configs={"cleanup.policy": "compact"}),
                                   NewTopic(names.events, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    sent = 0
    try:
        for round_ in range(rounds):
            for i in range(runs):
                state = RunState(f"run-{i}", seq=round_ + 1, status="running", input="x" * input_bytes)
                await producer.send(names.state, encode_snapshot(state), key=state.run_id.encode(), partition=0)
                sent += 1
            await producer.send(names.state, encode_checkpoint(0), key=CHECKPOINT_KEY, partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def _peak(work: Callable[[], Awaitable[Any]]) -> tuple[float, float, Any]:
    tracemalloc.start()
    began = time.monotonic()
    try:
        result = await work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / 2**20, time.monotonic() - began, result


async def main(runs: int, rounds: int, input_bytes: int) -> dict[str, Any]:
    settings = Settings()
    bootstrap = settings.bootstrap
    names = TopicNames(prefix=f"benchrec{uuid.uuid4().hex[:8]}", partitions=1)
    blobs = FileBlobStore(Path(tempfile.mkdtemp(prefix="tickflow-bench-blobs-")))
    records = await _fill(bootstrap, names, runs, rounds, input_bytes)
    try:

        async def whole() -> int:
            read = await read_partition(bootstrap, names.state, 0)
            return len(parse_snapshots(0, read, blobs)[0])

        async def batched() -> int:
            return len((await rebuild_partition(bootstrap, names, blobs, 0)).runs)

        whole_mib, whole_s, whole_runs = await _peak(whole)
        batched_mib, batched_s, batched_runs = await _peak(batched)
    finally:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([names.state, names.events])
        finally:
            await admin.close()
    assert whole_runs == batched_runs == runs, (whole_runs, batched_runs)
    return {
        "benchmark": "recovery_memory",
        "options": {"runs": runs, "rounds": rounds, "input_bytes": input_bytes},
        "state_records": records,
        "whole_read": {"peak_mib": round(whole_mib, 1), "seconds": round(whole_s, 2)},
        "batched_rebuild": {"peak_mib": round(batched_mib, 1), "seconds": round(batched_s, 2)},
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--input-bytes", type=int, default=1000)
    args = parser.parse_args()
    report = asyncio.run(main(args.runs, args.rounds, args.input_bytes))
    print(json.dumps(report))
    print(
        f"recovery of a state partition holding {report['state_records']:,} snapshots ({args.runs:,} runs x "
        f"{args.rounds} rounds): read whole {report['whole_read']['peak_mib']} MiB peak "
        f"({report['whole_read']['seconds']} s), batched rebuild {report['batched_rebuild']['peak_mib']} MiB peak "
        f"({report['batched_rebuild']['seconds']} s)"
    )
