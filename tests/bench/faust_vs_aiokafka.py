"""Benchmark: records/s a Faust agent consumes against aiokafka's ``getmany``, same topic, same broker.

    python -m tests.bench.faust_vs_aiokafka [--records 1000000] [--faust-records 100000] [--partitions 4]

Why: it is the figure behind "the engine is not a Faust app" (README, "Your own processors with Faust"): the
engine's loop reads the commands, results and events topics at tens of thousands of records/s.

Setup (not measured): ``--records`` event envelopes (``RunCompleted`` with a small output, the codec's bytes, about
260 bytes each) produced to a topic of a bench prefix. Measured, each reading that topic from offset 0:

* ``aiokafka``: one ``AIOKafkaConsumer`` (``read_committed``, as tickflow's roles read) calling
  ``getmany(max_records=10000)`` until it has every record; time from the first batch to the last, in this process.
* ``faust``: a Faust worker process (``tickflow.faust.App``, default settings, one agent over the topic, values
  left raw: Faust's own cost) counting ``--faust-records`` records; time from its first record to the last.
* ``faust_codec``: the same agent decoding each value with tickflow's codec (``value_serializer="tickflow"``).

Prints one JSON document, then a summary line. Deletes its topic.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests.paths import REPO_ROOT
from tickflow.events.codec import encode
from tickflow.events.envelope import Envelope, event_id
from tickflow.events.schemas import RunCompleted


def _record(i: int) -> tuple[bytes, bytes]:
    run_id = f"bench-{i % 5000:05d}"
    env = Envelope.wrap(
        RunCompleted(output={"order": f"o-{i}", "status": "confirmed", "charged": 12.5, "items": 3}),
        id=event_id(run_id, 1 + i // 5000), key=run_id, seq=1 + i // 5000, occurred_at_ms=1_700_000_000_000 + i,
    )
    return run_id.encode(), encode(env)


async def produce(bootstrap: str, topic: str, records: int, partitions: int) -> float:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        pending = []
        for i in range(records):
            key, value = _record(i)
            pending.append(await producer.send(topic, value, key=key))
            if len(pending) >= 20_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def read_aiokafka(bootstrap: str, topic: str, records: int, partitions: int) -> dict[str, Any]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed",
        auto_offset_reset="earliest", max_partition_fetch_bytes=4 * 1024 * 1024, fetch_max_bytes=64 * 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        seen, first, last, n_first = 0, 0.0, 0.0, 0
        while seen < records:
            batch = await consumer.getmany(timeout_ms=1_000, max_records=10_000)
            n = sum(len(rs) for rs in batch.values())
            if n and not seen:
                first = time.perf_counter()
                n_first = n
            seen += n
            last = time.perf_counter()
    finally:
        await consumer.stop()
    timed = seen - n_first  # the records after the first batch, read between the first batch and the last
    return {"records": seen, "seconds": round(last - first, 3), "records_per_s": round(timed / (last - first))}


def read_faust(bootstrap: str, topic: str, records: int, partitions: int, codec: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {
            **os.environ, "PYTHONPATH": str(REPO_ROOT), "TICKFLOW_KAFKA_BOOTSTRAP": bootstrap,
            "TICKFLOW_PREFIX": topic.split(".")[0], "TICKFLOW_PARTITIONS": str(partitions),
            "TICKFLOW_STATE_DIR": tmp, "BENCH_TOPIC": topic, "BENCH_RECORDS": str(records), "BENCH_OUT": str(out),
            "BENCH_CODEC": "1" if codec else "0",
        }
        log = open(Path(tmp) / "faust.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "faust", "-A", "tests.bench.faust_agent:app", "worker", "--loglevel", "warn"],
            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 600
            while not out.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.close()
                    raise RuntimeError("the Faust worker stopped or timed out:\n"
                                       + (Path(tmp) / "faust.log").read_text(errors="replace")[-3_000:])
                time.sleep(0.5)
            time.sleep(0.2)  # the file is written in one call; let it land
            result = json.loads(out.read_text())
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return {**result, "seconds": round(result["seconds"], 3),
            "records_per_s": round(result["records"] / result["seconds"])}


async def delete_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics([t for t in await admin.list_topics() if t.startswith(topic)])
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--faust-records", type=int, default=100_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--bootstrap", default=os.environ.get("TICKFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:9092"))
    args = parser.parse_args()
    topic = f"bench{uuid.uuid4().hex[:8]}.events"
    try:
        produce_s = asyncio.run(produce(args.bootstrap, topic, args.records, args.partitions))
        aiokafka = asyncio.run(read_aiokafka(args.bootstrap, topic, args.records, args.partitions))
        faust = read_faust(args.bootstrap, topic, args.faust_records, args.partitions, codec=False)
        faust_codec = read_faust(args.bootstrap, topic, args.faust_records, args.partitions, codec=True)
    finally:
        asyncio.run(delete_topic(args.bootstrap, topic.split(".")[0]))
    report = {
        "records": args.records, "partitions": args.partitions, "record_bytes": len(_record(0)[1]),
        "produce_s": round(produce_s, 2), "cpus": os.cpu_count(),
        "aiokafka_getmany": aiokafka, "faust_agent": faust, "faust_agent_codec": faust_codec,
    }
    print(json.dumps(report, indent=2))
    print(
        f"aiokafka getmany {aiokafka['records_per_s']:,} records/s; Faust agent {faust['records_per_s']:,} records/s "
        f"(raw values), {faust_codec['records_per_s']:,} records/s (tickflow codec): aiokafka reads "
        f"{aiokafka['records_per_s'] / faust['records_per_s']:.0f}x faster"
    )


if __name__ == "__main__":
    main()
