"""Benchmark: event → visible-through-the-API freshness, and status-query latency, under a steady run load.

    python -m tests.bench.projections [--rate 50] [--duration 30] [--clients 4] [--projector-batch-ms 100]

One Node (engine, worker, projector, api; embedded chDB) runs as its own process on fresh topics, so its
event loop, its GIL and its chDB are not shared with the load and the clients measuring it (and py-spy can be
pointed at it alone: ``--profile``). This process then, for ``--duration`` seconds:

* starts ``--rate`` runs/s of a 3-step no-op workflow (straight to the commands topic, or through
  ``POST /runs`` with ``--start-via api``);
* reads the events topic itself; each RunCompleted it sees is offered to ``--trackers`` pollers, which ask
  ``GET /runs/{id}`` every ``--poll-ms`` until the run shows ``completed``. Freshness is the poller's receive
  time minus the event's ``occurred_at_ms`` (the engine's clock when it decided; same host, same clock), so it
  is what a client polling that fast would see: it includes one poll interval of resolution at worst;
* runs ``--clients`` closed-loop clients issuing ``GET /runs/{id}`` (random started ids) and
  ``GET /runs?status=…&limit=50`` (a ``--list-share`` of them), pausing ``--think-ms`` between queries;
* samples ``GET /stats`` (the projector's own ``last_freshness_ms`` and lag) every 250 ms.

Afterwards it asks ClickHouse (``POST /sql``) when each row was inserted (``projected_at``), which splits the
freshness into occurred → inserted (the projector: gather window, fold, insert) and inserted → seen (the API
read and the poll resolution), and measures the projector's insert cadence and batch sizes. Prints one JSON
document, then a human summary. Not part of the test suite: performance is measured here, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from tests.bench.steps import dist
from tests.conftest import free_port
from tests.paths import REPO_ROOT
from tickflow.events import Envelope, StartRun, decode, encode
from tickflow.runtime.kafka import ensure_topics
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow

WORKFLOW = "fresh3"
RUN_PREFIX = "pb-"


async def reserve(value: Any) -> Any:
    return value


async def charge(value: Any) -> Any:
    return value


async def confirm(value: Any) -> Any:
    return value


#: The Node subprocess imports this module (``--app tests.bench.projections:registry``): keep it cheap to import.
registry = Registry()
registry.add(Workflow(WORKFLOW).step(reserve).step(charge).step(confirm))


def now_ms() -> float:
    return time.time() * 1000


@dataclass
class Shared:
    """What the concurrent tasks of one scenario write; read once, at the end."""

    stop: asyncio.Event = field(default_factory=asyncio.Event)
    started: list[str] = field(default_factory=list)
    completed: dict[str, int] = field(default_factory=dict)  # run id → RunCompleted.occurred_at_ms
    to_track: asyncio.Queue[tuple[str, int, float]] = field(default_factory=lambda: asyncio.Queue(maxsize=64))
    offered_dropped: int = 0
    log_delivery_ms: list[float] = field(default_factory=list)  # occurred → this process read it from Kafka
    produce_ms: list[float] = field(default_factory=list)  # occurred → Kafka record timestamp (engine send)
    # freshness trackers
    visible_ms: list[float] = field(default_factory=list)  # occurred → poll response showing "completed"
    resolution_ms: list[float] = field(default_factory=list)  # previous poll sent → visible poll received
    visible_at: dict[str, float] = field(default_factory=dict)
    first_poll_hits: int = 0
    never_visible: int = 0
    tracker_polls: int = 0
    # query clients
    latency_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    codes: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    # /stats samples
    projector_freshness_ms: list[float] = field(default_factory=list)
    projector_lag: list[int] = field(default_factory=list)
    stats_ms: list[float] = field(default_factory=list)


# -- the Node under test -----------------------------------------------------------------------------------


def spawn_node(settings: Settings, log_path: Path) -> subprocess.Popen[bytes]:
    """``tickflow up`` with the four roles, in its own process (tests.integration.harness.spawn_roles does not
    pass the projector's batch window, which is the knob this benchmark turns)."""
    env = {
        **os.environ,
        "TICKFLOW_KAFKA_BOOTSTRAP": settings.bootstrap,
        "TICKFLOW_PREFIX": settings.prefix,
        "TICKFLOW_PARTITIONS": str(settings.partitions),
        "TICKFLOW_STATE_DIR": str(settings.state_dir),
        "TICKFLOW_API_PORT": str(settings.api_port),
        "TICKFLOW_PROJECTOR_BATCH_MS": str(settings.projector_batch_ms),
        "TICKFLOW_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "TICKFLOW_COMMIT_INTERVAL_MS": str(settings.commit_interval_ms),
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    roles = "engine,worker,projector,api"
    app = "tests.bench.projections:registry"
    return subprocess.Popen(
        [sys.executable, "-m", "tickflow.cli", "up", "--no-broker", "--app", app, "--roles", roles],
        cwd=REPO_ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


async def wait_ready(http: httpx.AsyncClient, node: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.poll() is not None:
            raise RuntimeError(f"the Node exited with {node.returncode} before its API answered; see its log")
        with contextlib.suppress(httpx.TransportError):
            if (await http.get("/healthz")).status_code == 200:
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the Node's API did not answer within {timeout}s")


# -- load ----------------------------------------------------------------------------------------------------


async def load_via_kafka(sh: Shared, settings: Settings, rate: float, duration: float) -> float:
    """Produce StartRun commands at ``rate``/s, paced every 10 ms; returns the seconds it took."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True, linger_ms=2)
    await producer.start()
    try:
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < duration:
            for _ in range(int(elapsed * rate) - len(sh.started)):
                rid = f"{RUN_PREFIX}{len(sh.started):06d}"
                cmd = Envelope.wrap(
                    StartRun(workflow=WORKFLOW, input=len(sh.started)),
                    id=f"start/{rid}",
                    key=rid,
                    occurred_at_ms=int(now_ms()),
                )
                await producer.send(settings.topics.commands, encode(cmd), key=rid.encode())
                sh.started.append(rid)
            await asyncio.sleep(0.01)
        await producer.flush()
        return time.monotonic() - t0
    finally:
        await producer.stop()


async def load_via_api(sh: Shared, url: str, rate: float, duration: float) -> float:
    """``POST /runs`` at ``rate``/s with up to 32 requests in flight; the Node's API pays for the starts too."""
    gate = asyncio.Semaphore(32)
    pending: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:

        async def post(rid: str, n: int) -> None:
            async with gate:
                t = time.perf_counter()
                r = await http.post("/runs", json={"workflow": WORKFLOW, "input": n, "run_id": rid})
                sh.latency_ms["post_runs"].append((time.perf_counter() - t) * 1000)
                sh.codes["post_runs"][r.status_code] += 1

        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < duration:
            for _ in range(int(elapsed * rate) - len(sh.started)):
                rid = f"{RUN_PREFIX}{len(sh.started):06d}"
                task = asyncio.create_task(post(rid, len(sh.started)))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sh.started.append(rid)
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
        return time.monotonic() - t0


# -- observers -----------------------------------------------------------------------------------------------


async def watch_log(sh: Shared, settings: Settings) -> None:
    """Read the events topic like any fast consumer; offer every RunCompleted to the freshness trackers."""
    consumer = AIOKafkaConsumer(
        settings.topics.events,
        bootstrap_servers=settings.bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100, max_records=5_000)
            seen = now_ms()
            for records in batch.values():
                for r in records:
                    if b"RunCompleted" not in r.value:  # decoding every event would cost this process CPU
                        continue
                    e = decode(r.value)
                    if e.type != "RunCompleted" or not e.key.startswith(RUN_PREFIX):
                        continue
                    sh.completed[e.key] = e.occurred_at_ms
                    if sh.stop.is_set():
                        continue
                    sh.log_delivery_ms.append(seen - e.occurred_at_ms)
                    sh.produce_ms.append(r.timestamp - e.occurred_at_ms)
                    try:
                        sh.to_track.put_nowait((e.key, e.occurred_at_ms, seen))
                    except asyncio.QueueFull:
                        sh.offered_dropped += 1
    finally:
        await consumer.stop()


async def track(sh: Shared, url: str, poll_ms: float) -> None:
    """Poll one completed run at a time until the API shows it completed.

    Only offers the watcher made less than a poll interval ago are taken: an older one may already be visible,
    and its first poll would then measure the queueing here, not the projection."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while not sh.stop.is_set():
            try:
                rid, occurred, seen = await asyncio.wait_for(sh.to_track.get(), 0.5)
            except TimeoutError:
                continue
            if now_ms() - seen > max(poll_ms, 20.0):
                sh.offered_dropped += 1
                continue
            prev_sent: float | None = None
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                sent = now_ms()
                r = await http.get(f"/runs/{rid}")
                received = now_ms()
                sh.tracker_polls += 1
                if r.status_code == 200 and r.json()["status"] == "completed":
                    sh.visible_ms.append(received - occurred)
                    sh.visible_at[rid] = received
                    if prev_sent is None:
                        sh.first_poll_hits += 1
                    else:
                        sh.resolution_ms.append(received - prev_sent)
                    break
                prev_sent = sent
                await asyncio.sleep(poll_ms / 1000)
            else:
                sh.never_visible += 1


async def query_client(sh: Shared, url: str, think_ms: float, list_share: float, seed: int) -> None:
    """One closed-loop client: a query, a pause, the next query."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while not sh.stop.is_set():
            if rng.random() < list_share:
                name = "list_runs"
                status = rng.choice(("running", "completed"))
                path, params = "/runs", {"status": status, "limit": "50"}
            elif sh.started:
                name, path, params = "get_run", f"/runs/{rng.choice(sh.started)}", {}
            else:
                await asyncio.sleep(0.05)
                continue
            t = time.perf_counter()
            r = await http.get(path, params=params)
            elapsed = (time.perf_counter() - t) * 1000
            sh.codes[name][r.status_code] += 1
            if r.status_code == 200:
                sh.latency_ms[name].append(elapsed)
            if think_ms:
                await asyncio.sleep(think_ms / 1000)


async def sample_stats(sh: Shared, url: str) -> None:
    """The projector's own view: ``last_freshness_ms`` after each batch (kept when a new batch landed), lag."""
    last_projected = -1
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        while not sh.stop.is_set():
            t = time.perf_counter()
            body = (await http.get("/stats")).json()
            sh.stats_ms.append((time.perf_counter() - t) * 1000)
            p = body.get("projector") or {}
            if p.get("events_projected", last_projected) != last_projected:
                last_projected = p["events_projected"]
                sh.projector_freshness_ms.append(float(p["last_freshness_ms"]))
            sh.projector_lag.append(int(p.get("lag", 0)))
            await asyncio.sleep(0.25)


# -- ClickHouse's side of the story (through POST /sql) ------------------------------------------------------


async def sql(http: httpx.AsyncClient, query: str, params: dict[str, Any] | None = None) -> list[list[Any]]:
    r = await http.post("/sql", json={"query": query, "params": params or {}, "max_rows": 100_000, "timeout_s": 30})
    if r.status_code != 200:
        raise RuntimeError(f"POST /sql answered {r.status_code}: {r.text}")
    return list(r.json()["rows"])


async def clickhouse_side(http: httpx.AsyncClient, sh: Shared) -> dict[str, Any]:
    """When rows were inserted, from ClickHouse itself: occurred → inserted for every RunCompleted, inserted →
    seen for the tracked runs, and the projector's insert cadence and batch sizes (one ``projected_at`` value
    per events insert: the column defaults to ``now64(3)`` at insert time)."""
    like = f"{RUN_PREFIX}%"
    inserted = await sql(
        http,
        "SELECT run_id, toUnixTimestamp64Milli(projected_at) - toUnixTimestamp64Milli(occurred_at) "
        "FROM events WHERE type = 'RunCompleted' AND run_id LIKE {p:String}",
        {"p": like},
    )
    all_events = await sql(
        http,
        "SELECT toUnixTimestamp64Milli(projected_at) - toUnixTimestamp64Milli(occurred_at) AS d, "
        "toUnixTimestamp64Milli(projected_at) AS t FROM events WHERE run_id LIKE {p:String}",
        {"p": like},
    )
    tracked = list(sh.visible_at)
    rows_at = await sql(
        http,
        "SELECT run_id, toUnixTimestamp64Milli(projected_at) FROM runs "
        "WHERE status = 'completed' AND run_id IN {ids:Array(String)}",
        {"ids": tracked},
    )
    per_insert = Counter(int(t) for _, t in all_events)
    times = sorted(per_insert)
    gaps = [float(b - a) for a, b in itertools.pairwise(times)]
    row_inserted = {str(rid): int(t) for rid, t in rows_at}
    return {
        "run_completed_occurred_to_inserted_ms": dist([float(d) for _, d in inserted]),
        "any_event_occurred_to_inserted_ms": dist([float(d) for d, _ in all_events]),
        "tracked_runs_row_inserted_to_seen_ms": dist(
            [sh.visible_at[r] - row_inserted[r] for r in tracked if r in row_inserted]
        ),
        "inserts": len(times),
        "events_per_insert": dist([float(n) for n in per_insert.values()]),
        "ms_between_inserts": dist(gaps),
    }


# -- py-spy ------------------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_IDLE_LEAVES = (
    ("select", "selectors.py"),
    ("wait", "threading.py"),
    ("_worker", "thread.py"),
    ("_wait_for_tstate_lock", "threading.py"),
)


def _lock_lines() -> set[int]:
    """Lines of projections/store.py that take the store's single lock: a sample whose leaf frame sits on one
    of them is a thread waiting for that lock (py-spy shows a blocked C call at the Python line that made it)."""
    text = (REPO_ROOT / "projections" / "store.py").read_text().splitlines()
    return {i for i, ln in enumerate(text, 1) if "with self._lock" in ln}


def _where(parsed: list[dict[str, Any]]) -> str:
    """The component a busy sample (outside the store) belongs to, by the files on its stack."""
    files = [p["file"] for p in parsed]
    for label, marks in (
        ("projector (decode, fold, commit)", ("projections/projector.py", "projections/fold.py")),
        ("engine", ("runtime/engine.py",)),
        ("worker", ("runtime/worker.py",)),
        ("API (HTTP, routing, pydantic)", ("fastapi/", "starlette/", "uvicorn/", "tickflow/api/", "services/api/")),
        ("aiokafka", ("aiokafka/",)),
    ):
        if any(m in f for f in files for m in marks):
            return label
    return "other"


def summarize_profile(raw: Path) -> dict[str, Any]:
    """Turn py-spy's raw (collapsed, per-thread, idle included) stacks into shares of wall time.

    Only one thread can hold the store's lock, so ``store_lock_held`` sums to at most 1: near 1 means the lock
    is saturated and every insert and every query queues for it. ``threads_waiting_for_store_lock`` is the
    average number of threads blocked on it; the event loop's busy share is the process's own CPU ceiling.
    """
    lock_lines = _lock_lines()
    held: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    loop: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    per_thread: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        n = int(count_text)
        frames = stack.split(";")
        thread = frames[0].rsplit(": ", 1)[-1]
        per_thread[thread] += n
        parsed = [m.groupdict() for f in frames[1:] if (m := _FRAME.match(f))]
        if not parsed:
            continue
        leaf = parsed[-1]
        idle = any(leaf["fn"].endswith(fn) and leaf["file"].endswith(file) for fn, file in _IDLE_LEAVES)
        store = [p["fn"].rsplit(".", 1)[-1] for p in parsed if p["file"].endswith("projections/store.py")]
        # The projector calls store.write straight from a pool thread (no projector frame on that stack) and
        # store reads only from its fold (cache misses); the API calls every other store method.
        projector = store[:1] == ["write"] or any(p["file"].endswith("projections/projector.py") for p in parsed)
        if store:
            what = f"{'projector' if projector else 'api'}:{store[0]}"
            if leaf["file"].endswith("projections/store.py") and int(leaf["line"] or 0) in lock_lines:
                waiting[what] += n
            else:
                held[what] += n
        elif thread == "MainThread":
            loop["idle" if idle else _where(parsed)] += n
        if not idle and not store:
            leaves[f"{leaf['fn']} ({Path(leaf['file']).name}:{leaf['line']})"] += n
    wall = per_thread.get("MainThread", 0)
    if not wall:
        return {"samples": sum(per_thread.values()), "note": "no MainThread samples: py-spy saw nothing useful"}

    def share(c: Counter[str]) -> dict[str, float]:
        return {k: round(v / wall, 3) for k, v in c.most_common()}

    busy = sum(leaves.values())
    return {
        "wall_samples": wall,
        "threads": len(per_thread),
        "store_lock_held": {"total": round(sum(held.values()) / wall, 3), **share(held)},
        "threads_waiting_for_store_lock": {"total": round(sum(waiting.values()) / wall, 3), **share(waiting)},
        "event_loop_thread": share(loop),
        "top_busy_leaves_outside_the_store": [[k, round(v / busy, 3)] for k, v in leaves.most_common(10)],
    }


async def start_profiler(pid: int, load_s: float, out: Path) -> subprocess.Popen[bytes]:
    """py-spy the Node from 20 % to 80 % of the load, every thread, idle ones too: a thread blocked on the
    store's lock is idle to py-spy, and that wait is one of the things this benchmark looks for."""
    await asyncio.sleep(load_s * 0.2)
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)]
    command += ["--duration", str(max(1, int(load_s * 0.6))), "--rate", "50", "--format", "raw"]
    command += ["--idle", "--threads", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# -- one scenario ------------------------------------------------------------------------------------------


async def scenario(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    prefix = f"benchproj{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap=args.bootstrap,
        prefix=prefix,
        partitions=args.partitions,
        state_dir=workdir / prefix,
        api_port=free_port(),
        worker_concurrency=args.worker_concurrency,
        projector_batch_ms=args.projector_batch_ms,
    )
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    log_path = workdir / f"{prefix}-node.log"
    node = spawn_node(settings, log_path)
    url = settings.api_url
    sh = Shared()
    background: list[asyncio.Task[Any]] = []
    profiler: subprocess.Popen[bytes] | None = None
    raw_profile = workdir / f"{prefix}.pyspy.txt"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await wait_ready(http, node, 60)
            background.append(asyncio.create_task(watch_log(sh, settings)))
            # Warm-up: a few runs end to end, so group joins, migrations and first inserts are behind us.
            warm = [f"warm-{i}" for i in range(5)]
            for rid in warm:
                await http.post("/runs", json={"workflow": WORKFLOW, "input": 0, "run_id": rid})
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                states = [(await http.get(f"/runs/{rid}")) for rid in warm]
                if all(r.status_code == 200 and r.json()["status"] == "completed" for r in states):
                    break
                await asyncio.sleep(0.2)
            else:
                raise TimeoutError("warm-up runs did not become visible as completed within 90 s")

            background += [asyncio.create_task(track(sh, url, args.poll_ms)) for _ in range(args.trackers)]
            background += [
                asyncio.create_task(query_client(sh, url, args.think_ms, args.list_share, seed))
                for seed in range(args.clients)
            ]
            background.append(asyncio.create_task(sample_stats(sh, url)))
            profiling: asyncio.Task[subprocess.Popen[bytes]] | None = None
            if args.profile:  # the middle 60 % of the load: past the ramp-up, done before the drain
                profiling = asyncio.create_task(start_profiler(node.pid, args.duration, raw_profile))
            cpu_before = psutil.Process(node.pid).cpu_times()
            t0 = time.monotonic()
            if args.start_via == "api":
                load_s = await load_via_api(sh, url, args.rate, args.duration)
            else:
                load_s = await load_via_kafka(sh, settings, args.rate, args.duration)
            window_s = time.monotonic() - t0
            if profiling is not None:
                profiler = await profiling
            cpu_after = psutil.Process(node.pid).cpu_times()
            sh.stop.set()
            await asyncio.gather(*background[1:], return_exceptions=True)

            # Every started run must finish (and be projected) before ClickHouse is asked about it.
            drain_started = time.monotonic()
            while time.monotonic() - drain_started < 60 and len(sh.completed) < len(sh.started):
                await asyncio.sleep(0.2)
            drain_s = time.monotonic() - drain_started
            while time.monotonic() - drain_started < 90:
                body = (await http.get("/stats")).json()
                if body["runs"].get("completed", 0) >= len(sh.started) + len(warm):
                    break
                await asyncio.sleep(0.2)
            ch = await clickhouse_side(http, sh)
            final_stats = (await http.get("/stats")).json()
            rss = psutil.Process(node.pid).memory_info().rss / 2**20
        profile = None
        if profiler is not None:
            profiler.wait(120)
            if raw_profile.exists():
                profile = summarize_profile(raw_profile)
                if args.profile_out:
                    Path(args.profile_out).write_bytes(raw_profile.read_bytes())
        node_cpu_s = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
        queries = {
            name: {
                "latency_ms": dist(sh.latency_ms[name]),
                "per_s": round(sum(sh.codes[name].values()) / window_s, 1),
                "codes": {str(k): v for k, v in sorted(sh.codes[name].items())},
            }
            for name in ("get_run", "list_runs", "post_runs")
            if sh.codes[name]
        }
        return {
            "options": {k: v for k, v in vars(args).items() if k not in ("profile_out",)},
            "started": len(sh.started),
            "completed": len([r for r in sh.started if r in sh.completed]),
            "start_rate_achieved_per_s": round(len(sh.started) / load_s, 1),
            "drain_after_load_s": round(drain_s, 2),
            "freshness_via_api_ms": dist(sh.visible_ms),
            "freshness_poll_resolution_ms": dist(sh.resolution_ms),
            "freshness_tracked": {
                "runs": len(sh.visible_ms),
                "visible_at_first_poll": sh.first_poll_hits,
                "never_visible_30s": sh.never_visible,
                "offers_skipped_trackers_busy": sh.offered_dropped,
                "tracker_polls_per_s": round(sh.tracker_polls / window_s, 1),
            },
            "projector_last_freshness_ms": dist(sh.projector_freshness_ms),
            "projector_lag_events": dist([float(x) for x in sh.projector_lag]),
            "stats_endpoint_ms": dist(sh.stats_ms),
            "engine_to_log_ms": {
                "occurred_to_record_timestamp": dist(sh.produce_ms),
                "occurred_to_read_by_a_fast_consumer": dist(sh.log_delivery_ms),
            },
            "clickhouse": ch,
            "queries": queries,
            "node": {
                "cpu_percent_during_load": round(100 * node_cpu_s / window_s, 1),
                "rss_mib": round(rss, 1),
                "final_projector": final_stats.get("projector"),
            },
            "profile": profile,
        }
    except BaseException:
        # The work directory goes away with the exception: show why the Node failed while we still can.
        if log_path.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-30:]
            print(f"--- last lines of the Node's log ({log_path.name}) ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
            profiler.wait(10)
        node.terminate()
        try:
            node.wait(20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(10)


def summary(r: dict[str, Any]) -> str:
    o = r["options"]

    def q(d: dict[str, Any]) -> str:
        return f"p50 {d['p50']} / p90 {d['p90']} / p99 {d['p99']} / max {d['max']} ms (n={d['n']})"

    ch, log = r["clickhouse"], r["engine_to_log_ms"]

    lines = [
        f"Summary (one run on a shared, noisy 2-core box; figures move between runs): "
        f"{o['rate']} runs/s for {o['duration']} s via {o['start_via']}, projector batch {o['projector_batch_ms']} ms,"
        f" {o['clients']} query clients (think {o['think_ms']} ms), {o['trackers']} trackers polling every"
        f" {o['poll_ms']} ms",
        f"  runs: {r['completed']}/{r['started']} completed, start rate achieved {r['start_rate_achieved_per_s']}/s,"
        f" drained {r['drain_after_load_s']} s after the load stopped;"
        f" Node CPU {r['node']['cpu_percent_during_load']}%",
        f"  event → visible via GET /runs/{{id}}: {q(r['freshness_via_api_ms'])} (target p99 ≤ 1000 ms)",
        f"    occurred → inserted in ClickHouse (RunCompleted): {q(ch['run_completed_occurred_to_inserted_ms'])}",
        f"    row inserted → seen by a poller: {q(r['clickhouse']['tracked_runs_row_inserted_to_seen_ms'])}",
        f"    occurred → read from Kafka by a fast consumer: {q(log['occurred_to_read_by_a_fast_consumer'])}",
        f"    projector's own last_freshness_ms (/stats): {q(r['projector_last_freshness_ms'])}",
        f"    projector inserts: {r['clickhouse']['inserts']}, every {q(r['clickhouse']['ms_between_inserts'])};"
        f" events per insert p50 {r['clickhouse']['events_per_insert']['p50']}",
    ]
    for name, d in r["queries"].items():
        lines.append(f"  {name}: {d['per_s']}/s, {q(d['latency_ms'])}, codes {d['codes']}")
    if r["profile"] and "store_lock_held" in r["profile"]:
        pr = r["profile"]

        def top(d: dict[str, float]) -> str:
            return ", ".join(f"{k} {v:.0%}" for k, v in list(d.items())[:6])

        lines.append(f"  Node profile (py-spy, share of wall time): store lock held {top(pr['store_lock_held'])}")
        lines.append(f"    threads waiting for the store lock (average): {pr['threads_waiting_for_store_lock']}")
        lines.append(f"    event loop thread: {top(pr['event_loop_thread'])}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-proj-") as tmp:
        result = await scenario(args, Path(tmp))
    result["cpus"] = psutil.cpu_count()
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--rate", type=float, default=50.0, help="runs started per second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--start-via", choices=("kafka", "api"), default="kafka")
    parser.add_argument("--clients", type=int, default=4, help="closed-loop status-query clients")
    parser.add_argument("--think-ms", type=float, default=20.0, help="each client's pause between queries")
    parser.add_argument("--list-share", type=float, default=0.25, help="share of GET /runs?status= among queries")
    parser.add_argument("--trackers", type=int, default=2, help="freshness pollers, one run at a time each")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="a tracker's pause between polls")
    parser.add_argument("--projector-batch-ms", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--worker-concurrency", type=int, default=64)
    parser.add_argument("--profile", action="store_true", help="py-spy the Node during the middle of the load")
    parser.add_argument("--profile-out", default=None, help="keep py-spy's raw stacks in this file")
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    report = asyncio.run(main(parsed))
    print(json.dumps(report, indent=2))
    print()
    print(summary(report))
