"""Closed-loop benchmark (issue 25): the peers' workload, measured the peers' way.

    python -m tests.bench.closed_loop [--workflows 1000] [--concurrency 1,16,128] [--deadline-s 70]

Workload: a workflow of 10 sequential no-op durable steps (each returns its input + 1), started by N concurrent
clients in a closed loop (a client starts a workflow, waits for its end, then starts the next) until W workflows
complete, for each N. The same workload and the same measurement as ``../shared/bench-peers`` (Restate, DBOS):
warm-up of max(10, N) workflows first, throughput = completed / wall time of the timed phase, latency per workflow
from start to result received (client side), CPU = user+system of each measured process (psutil ``cpu_times``
deltas over the timed phase, sampled every 0.2 s), peak RSS = highest RSS the sampler saw in the timed phase.

Processes: the broker (the local Kafka, ``tickflow broker start``; its PID is the one listening on the bootstrap
port, or ``--broker-pid``) and tickflow's roles, with fresh topics under a unique prefix per level. ``--layout
combined`` (the default, as ``tickflow up`` runs them) is one ``tickflow up --roles engine,worker`` process, labelled
``node``; ``--layout split`` runs the engine and the worker as two processes (remote workers: every task and result
goes through Kafka). ``--profile DIR`` runs each role process under ``py-spy record`` (sampling, raw collapsed
stacks written to DIR) and adds each process's top frames by own time to the record (CPU figures then include the
profiler's own overhead on the process: compare profiles, not CPU, in that mode).

The clients live in this process and are not measured (as the peers'
load clients are not): each produces ``StartRun`` to the commands topic with aiokafka (acks=all, idempotent) and
awaits a future that one read_committed consumer of the events topic resolves on the run's ``RunCompleted`` — no
API process in the loop. The peers' clients make one blocking call per workflow (Restate's ingress call, DBOS's
``handle.get_result``); this is the cheapest equivalent tickflow offers.

Prints one JSON line per level (the peers' record fields, plus ``cpu_ms_per_workflow_by_process``), then one human
summary line per level. Not part of the test suite: performance is measured here, never asserted in unit tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.conftest import free_port
from tests.integration.harness import spawn_roles
from tickflow.events import Envelope, StartRun, decode, encode
from tickflow.runtime.kafka import ensure_topics
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow

STEPS = 10
APP = "tests.bench.closed_loop:registry"

registry = Registry()


async def plus_one(value: int) -> int:
    return value + 1


_wf = Workflow("plus10")
for _i in range(STEPS):
    _wf.step(plus_one, name=f"s{_i}")
registry.add(_wf)


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile, as the peers' ``bench_common.percentile``."""
    if not sorted_values:
        return None
    k = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[min(k, len(sorted_values)) - 1]


def latency_ms(latencies_s: list[float]) -> dict[str, float | None]:
    vals = sorted(x * 1000.0 for x in latencies_s)
    if not vals:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "min": None, "max": None}
    out: dict[str, float | None] = {f"p{p}": round(percentile(vals, p) or 0.0, 3) for p in (50, 90, 99)}
    out.update(mean=round(sum(vals) / len(vals), 3), min=round(vals[0], 3), max=round(vals[-1], 3))
    return out


class Sampler(threading.Thread):
    """CPU (user+system, delta from a baseline) and peak RSS of labelled processes, every ``interval_s``."""

    def __init__(self, pids: dict[str, int], interval_s: float = 0.2) -> None:
        super().__init__(daemon=True, name="sampler")
        self.procs = {label: psutil.Process(pid) for label, pid in pids.items()}
        self.interval_s = interval_s
        self.stop_evt = threading.Event()
        self.base = {label: self._cpu(p) for label, p in self.procs.items()}
        self.last = dict(self.base)
        self.peak_rss = {label: 0 for label in self.procs}
        self.samples = 0
        self._sample()

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        ct = p.cpu_times()
        return float(ct.user + ct.system)

    def _sample(self) -> None:
        for label, p in self.procs.items():
            try:
                with p.oneshot():
                    self.last[label] = self._cpu(p)
                    self.peak_rss[label] = max(self.peak_rss[label], p.memory_info().rss)
            except psutil.Error:
                continue
        self.samples += 1

    def run(self) -> None:
        while not self.stop_evt.wait(self.interval_s):
            self._sample()

    def finish(self) -> tuple[dict[str, float], dict[str, float]]:
        self.stop_evt.set()
        self.join(5)
        self._sample()
        cpu_s = {label: max(0.0, self.last[label] - self.base[label]) for label in self.procs}
        rss_mib = {label: round(v / 2**20, 1) for label, v in self.peak_rss.items()}
        return cpu_s, rss_mib


def broker_pid(bootstrap: str) -> int:
    port = int(bootstrap.rsplit(":", 1)[1])
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    raise SystemExit(f"no process listens on {bootstrap}; start it (tickflow broker start) or give --broker-pid")


async def flush_every_message(bootstrap: str, prefix: str) -> None:
    """The peers' fsync durability: the broker flushes every message of the level's topics to disk.

    AlterConfigs replaces a topic's whole set of dynamic configs, so each topic's own ones (source 1,
    DYNAMIC_TOPIC_CONFIG, e.g. the events topic's retention.ms) are sent again with ``flush.messages``.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
        described = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
        own: dict[str, dict[str, str]] = {t: {} for t in topics}
        for response in described:
            for _err, _msg, _type, name, entries in response.resources:
                own[name] = {e[0]: e[1] for e in entries if e[3] == 1 and e[1] is not None}
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, configs={**own[t], "flush.messages": "1"}) for t in topics]
        )
    finally:
        await admin.close()


async def delete_topics(bootstrap: str, prefix: str) -> None:
    """Delete a level's topics once it is measured."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
        if topics:
            await admin.delete_topics(topics)
    finally:
        await admin.close()


async def level(args: argparse.Namespace, concurrency: int, workdir: Path, bpid: int) -> dict[str, Any]:
    prefix = f"cl{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap=args.bootstrap,
        prefix=prefix,
        state_dir=workdir / prefix,
        api_port=free_port(),
        worker_concurrency=max(16, concurrency),
    )
    await ensure_topics(args.bootstrap, settings.topics, settings.pools)
    topics = [settings.topics.commands, settings.topics.events]
    if args.flush_every_message:
        await flush_every_message(args.bootstrap, prefix)
    nodes = {"node": "engine,worker"}
    if args.nodes > 1:  # a node per core: the processes share the partitions (consumer group), each with its worker
        nodes = {f"node{i}": "engine,worker" for i in range(1, args.nodes + 1)}
    layout = {"combined": nodes, "split": {"engine": "engine", "worker": "worker"}}[args.layout]
    metrics_port = free_port()
    if args.projector:  # its own process: chDB is one process's, and its CPU is reported apart
        layout = {**layout, "projector": "projector"}
    roles = {
        label: _spawn(
            settings.with_(metrics_port=metrics_port) if label == "projector" else settings,
            label,
            which,
            workdir / f"{prefix}-{label}.log",
            args.profile,
            f"{prefix}-{label}",
        )
        for label, which in layout.items()
    }
    role_pids = {label: _python_pid(proc, bool(args.profile)) for label, proc in roles.items()}
    waiting: dict[str, tuple[int, asyncio.Future[Any]]] = {}
    watcher = AIOKafkaConsumer(
        settings.topics.events,
        bootstrap_servers=args.bootstrap,
        group_id=None,
        auto_offset_reset="latest",
        fetch_max_wait_ms=100,  # a fetch returns as soon as data arrives; this only bounds idle polling
        isolation_level="read_committed",
    )
    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
    await watcher.start()
    await producer.start()
    errors = 0

    async def follow() -> None:
        while True:
            batch = await watcher.getmany(timeout_ms=1000, max_records=10_000)
            for records in batch.values():
                for r in records:
                    e = decode(r.value)
                    if e.type in ("RunCompleted", "RunFailed") and e.key in waiting:
                        x, fut = waiting.pop(e.key)
                        if not fut.done():
                            ok = e.type == "RunCompleted" and getattr(e.payload, "output", None) == x + STEPS
                            fut.set_result(ok)

    async def run_one(rid: str, x: int) -> bool:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting[rid] = (x, fut)
        cmd = Envelope.wrap(
            StartRun(workflow="plus10", input=x), id=f"s/{rid}", key=rid, occurred_at_ms=int(time.time() * 1000)
        )
        await producer.send_and_wait(settings.topics.commands, encode(cmd), key=rid.encode())
        return bool(await asyncio.wait_for(fut, args.run_timeout_s))

    async def closed_loop(target: int, deadline_s: float, tag: str) -> tuple[int, list[float], float, bool]:
        nonlocal errors
        state = {"issued": 0, "done": 0}
        lat: list[float] = []
        t_end = time.perf_counter() + deadline_s

        async def client() -> None:
            nonlocal errors
            while state["issued"] < target and time.perf_counter() < t_end:
                i = state["issued"]
                state["issued"] += 1
                t0 = time.perf_counter()
                try:
                    ok = await run_one(f"{tag}-{i:06d}", i * 100)
                except TimeoutError:
                    ok = False
                if ok:
                    state["done"] += 1
                    lat.append(time.perf_counter() - t0)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return state["done"], lat, time.perf_counter() - t0, state["issued"] < target

    follower = asyncio.create_task(follow())
    try:
        # The processes join their groups (nodes: and share the partitions out), the watcher gets its assignment.
        await asyncio.sleep(args.settle_s * (2 if args.nodes > 1 else 1))
        warmup = max(10, concurrency) if args.warmup < 0 else args.warmup
        if warmup:
            await closed_loop(warmup, args.deadline_s, "warm")
        errors = 0
        visible0 = await visible_buckets(metrics_port) if args.projector else {}
        sampler = Sampler({**role_pids, "broker": bpid})
        sampler.start()
        ct0 = psutil.Process().cpu_times()
        done, lat, wall, capped = await closed_loop(args.workflows, args.deadline_s, "load")
        cpu_s, rss = sampler.finish()
        ct1 = psutil.Process().cpu_times()
        visible = {}
        if args.projector:
            await asyncio.sleep(2.0)  # the last batches' inserts
            visible = visible_quantiles(visible0, await visible_buckets(metrics_port))
    finally:
        follower.cancel()
        await producer.stop()
        await watcher.stop()
        for pid in role_pids.values():  # the role itself (under py-spy, the profiler then writes its file)
            os.kill(pid, signal.SIGTERM)
        for proc in roles.values():
            proc.wait(60)
        await delete_topics(args.bootstrap, prefix)  # a long session must not pile partitions up on the broker
    total = sum(cpu_s.values())
    return {
        "peer": "tickflow",
        "peer_version": _git_head(),
        "workload": "workflow of 10 sequential no-op durable steps (step returns input+1); "
        "closed loop, N concurrent clients, fixed workflow count",
        "concurrency": concurrency,
        "target_workflows": args.workflows,
        "completed_workflows": done,
        "errors": errors,
        "capped_by_deadline": capped,
        "steps_per_workflow": STEPS,
        "completed_steps": done * STEPS,
        "wall_s": round(wall, 3),
        "workflows_per_s": round(done / wall, 2) if wall else None,
        "steps_per_s": round(done * STEPS / wall, 2) if wall else None,
        "latency_ms": latency_ms(lat),
        "peer_cpu_s": round(total, 3),
        "peer_cpu_s_by_process": {k: round(v, 3) for k, v in cpu_s.items()},
        "peer_cpu_util_cores": round(total / wall, 3) if wall else None,
        "peer_cpu_ms_per_workflow": round(1000 * total / done, 3) if done else None,
        "cpu_ms_per_workflow_by_process": {k: round(1000 * v / done, 3) for k, v in cpu_s.items()} if done else None,
        "peer_peak_rss_mib_by_process": rss,
        "client_cpu_s": round(ct1.user + ct1.system - ct0.user - ct0.system, 3),
        "durability": {
            "broker": "one local Kafka broker, replication 1, acks=all, transactions (exactly-once engine turns)",
            "flush_every_message": bool(args.flush_every_message),
            "client": "StartRun produced to the commands topic (aiokafka, acks=all, idempotent); end seen as "
            "RunCompleted on the events topic by one read_committed consumer in the bench process (unmeasured)",
        },
        "settings": {
            "partitions": settings.partitions,
            "worker_concurrency": settings.worker_concurrency,
            "commit_interval_ms": settings.commit_interval_ms,
            "topics": topics,
        },
        "host": {"cpu_count": psutil.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)},
        "sampler": {"interval_s": sampler.interval_s, "samples": sampler.samples},
        "warmup_workflows": warmup,
        "layout": args.layout,
        "nodes": args.nodes if args.layout == "combined" else 1,
        "event_to_clickhouse_s": visible or None,
        "profile_top_own_pct": {
            label: top_frames(Path(args.profile) / f"{prefix}-{label}.txt") for label in roles
        } if args.profile else None,
        "timestamp_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


async def visible_buckets(port: int) -> dict[float, float]:
    """The projector's ``tickflow_projection_visible_seconds`` histogram: cumulative count by bucket bound."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)).text
    out: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith("tickflow_projection_visible_seconds_bucket{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            out[math.inf if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return out


def visible_quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, Any]:
    """p50/p90/p99 of event → visible over the timed phase, as the bucket bound each falls under (an upper bound)."""
    counts = sorted((bound, n - before.get(bound, 0.0)) for bound, n in after.items())
    total = counts[-1][1] if counts else 0.0
    out: dict[str, Any] = {"events": int(total)}
    for q in (50, 90, 99):
        out[f"p{q}_at_most"] = next((b for b, n in counts if total and n >= total * q / 100), None)
    return out


def _spawn(
    settings: Settings, label: str, roles: str, log_path: Path, profile: str | None, name: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tickflow.cli", "-v", "up", "--no-broker", "--app", APP, "--roles", roles]
    if profile:
        spy = str(Path(sys.executable).with_name("py-spy"))
        out = str(Path(profile) / f"{name}.txt")
        command = [spy, "record", "--format", "raw", "--rate", "200", "--nonblocking", "-o", out, "--", *command]
    return spawn_roles(settings, roles, log_path, app=APP, command=command)


def _python_pid(proc: subprocess.Popen[bytes], profiled: bool) -> int:
    """The role's own PID: under py-spy, its child (waited for, as py-spy starts it)."""
    if not profiled:
        return proc.pid
    for _ in range(100):
        children = psutil.Process(proc.pid).children()
        if children:
            return int(children[0].pid)
        time.sleep(0.05)
    raise SystemExit("py-spy did not start the role process")


def top_frames(path: Path, n: int = 15) -> list[tuple[str, float]]:
    """The functions with the most own (leaf) samples in a py-spy raw profile, as % of its samples (py-spy leaves
    idle threads out, so the shares are of busy time). Samples taken while modules import (the process starting) are
    left out; a sample with no Python frame (native code holding the thread) counts as ``(native)``."""
    own: Counter[str] = Counter()
    total = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if "importlib._bootstrap" in stack:
            continue
        leaf = stack.rsplit(";", 1)[-1] or "(native)"
        own[_short(leaf)] += int(count)
        total += int(count)
    return [(name, round(100 * c / total, 1)) for name, c in own.most_common(n)] if total else []


def _short(frame: str) -> str:
    """``fn (path/to/module.py:123)`` → ``fn (module.py)``: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.rsplit(':', 1)[0]).name})" if where else name


def _git_head() -> str:
    try:
        head = (Path(__file__).resolve().parents[2] / ".git" / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            ref = Path(__file__).resolve().parents[2] / ".git" / head[5:]
            return "main@" + ref.read_text().strip()[:10]
        return head[:10]
    except OSError:
        return "unknown"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workflows", type=int, default=int(os.environ.get("WORKFLOWS", 1000)))
    parser.add_argument("--concurrency", default="1,16,128")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--broker-pid", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=-1, help="-1: max(10, N), as the peers")
    parser.add_argument("--deadline-s", type=float, default=70.0, help="stop starting workflows then (peers: 70)")
    parser.add_argument("--run-timeout-s", type=float, default=120.0)
    parser.add_argument("--settle-s", type=float, default=4.0)
    parser.add_argument("--flush-every-message", action="store_true", help="broker flush.messages=1 on every topic")
    parser.add_argument("--layout", choices=("combined", "split"), default="combined")
    parser.add_argument("--nodes", type=int, default=1,
                        help="combined layout: this many engine,worker processes sharing the partitions (one per core)")
    parser.add_argument("--profile", default=None, help="run each role under py-spy, raw profiles into this folder")
    parser.add_argument(
        "--projector", action="store_true", help="also run a projector process; report event → visible in ClickHouse"
    )
    args = parser.parse_args()
    bpid = args.broker_pid or broker_pid(args.bootstrap)
    results = []
    with tempfile.TemporaryDirectory(prefix="tickflow-closed-loop-") as tmp:
        for c in (int(x) for x in args.concurrency.replace(" ", ",").split(",") if x):
            rec = await level(args, c, Path(tmp), bpid)
            print(json.dumps(rec), flush=True)
            results.append(rec)
    for r in results:
        lat, by = r["latency_ms"], r["cpu_ms_per_workflow_by_process"] or {}
        print(
            f"tickflow N={r['concurrency']:>3}: {r['workflows_per_s']} wf/s, {r['steps_per_s']} steps/s, "
            f"p50 {lat['p50']} ms p90 {lat['p90']} ms p99 {lat['p99']} ms, CPU {r['peer_cpu_ms_per_workflow']} ms/wf "
            f"({', '.join(f'{k} {v}' for k, v in by.items())}), "
            f"RSS MiB {r['peer_peak_rss_mib_by_process']}, {r['completed_workflows']} wf in {r['wall_s']} s"
            f"{' CAPPED BY DEADLINE' if r['capped_by_deadline'] else ''}, errors {r['errors']}"
            + (f", event → ClickHouse {r['event_to_clickhouse_s']}" if r["event_to_clickhouse_s"] else ""),
            flush=True,
        )
        for label, frames in (r["profile_top_own_pct"] or {}).items():
            print(f"  {label} top frames (own %): " + "; ".join(f"{f} {p}" for f, p in frames[:10]), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
