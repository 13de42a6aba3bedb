"""Benchmark: how fast ``tickflow export`` copies the log out, and ``tickflow export verify`` checks it.

    python -m tests.bench.export [--records 100000] [--bytes 1000] [--bootstrap 127.0.0.1:9092]

Fills the events topic of a fresh prefix (4 partitions) with ``--records`` envelope-shaped JSON values of about
``--bytes`` each (random hex: no better compressed than real payloads), keyed by 1,000 run ids, then times the
commands as a user runs them (each in its own process, so the CLI's start is counted): a JSONL export, a Parquet
export, and ``verify --against-log`` of each. Prints one JSON document; the topics are deleted afterwards.
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

import orjson

from tests.conftest import _delete_topics
from tests.paths import REPO_ROOT
from tickflow.events.topics import TopicNames
from tickflow.runtime.kafka import ensure_topics, new_producer

__all__ = ["main"]


async def _fill(bootstrap: str, names: TopicNames, records: int, size: int) -> None:
    await ensure_topics(bootstrap, names, ("default",))
    producer = new_producer(bootstrap, linger_ms=5)
    await producer.start()
    try:
        pending = []
        for i in range(records):
            run = f"run-{i % 1000}"
            payload = {"pad": os.urandom(size // 2).hex()}
            envelope = {"id": f"{run}/{i}", "type": "StepCompleted", "key": run, "seq": i, "payload": payload}
            value = orjson.dumps(envelope)
            pending.append(await producer.send(names.events, value, key=run.encode()))
            if len(pending) >= 5_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _timed(env: dict[str, str], cwd: Path, *args: str) -> float:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tickflow.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"tickflow {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return round(time.monotonic() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--bytes", type=int, default=1_000)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()
    names = TopicNames(prefix=f"bench{uuid.uuid4().hex[:8]}", partitions=4)
    since = int(time.time() * 1000) - 1_000
    asyncio.run(_fill(args.bootstrap, names, args.records, args.bytes))
    until = int(time.time() * 1000) + 1_000
    env = {**os.environ, "TICKFLOW_KAFKA_BOOTSTRAP": args.bootstrap, "TICKFLOW_PREFIX": names.prefix,
           "TICKFLOW_PARTITIONS": "4", "PYTHONPATH": str(REPO_ROOT)}
    window = ["--since", str(since), "--until", str(until)]
    out: dict[str, Any] = {"records": args.records, "value_bytes": args.bytes}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp)
            for fmt in ("jsonl", "parquet"):
                seconds = _timed(env, cwd, "export", *window, "--format", fmt, "-o", f"bench.{fmt}")
                manifest = json.loads((cwd / f"bench.{fmt}.manifest.json").read_text())
                assert manifest["records"] == args.records, manifest["records"]
                out[fmt] = {
                    "export_s": seconds,
                    "records_per_s": round(args.records / seconds),  # the CLI's start included
                    "file_bytes": manifest["file"]["bytes"],
                    "verify_against_log_s": _timed(env, cwd, "export", "verify", f"bench.{fmt}.manifest.json",
                                                   "--against-log"),
                }
            out["cli_start_s"] = _timed(env, cwd, "export", "--help")
    finally:
        asyncio.run(_delete_topics(args.bootstrap, (f"{names.prefix}.",)))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
