"""Benchmark: N agent stacks ticking every 10 s, each tick one call to the offline model (issue 4, item 7).

    python -m tests.bench.stacks [--stacks 100,1000,10000] [--duration 60] [--interval 10]
                                 [--worker-concurrency auto] [--create-via kafka|api] [--profile]

Per N, on fresh topics (own prefix, deleted afterwards unless ``--keep-topics``):

* Roles run as subprocesses (``tickflow up --roles …``): the **engine alone** in one process, so its RSS and CPU
  are the engine's and nothing else's; the **worker** in another (its 50-500 ms offline LLM calls, their
  pydantic models and the result records cost CPU that must not be charged to the engine). With
  ``--create-via api`` a third process runs **projector + api** (chDB is one-process, so they go together): the
  stacks are then created with ``POST /stacks`` and the board is read back through ``Client``. By default
  (``kafka``) there is no projector: on a 2-core box it would fold every tick's ~9 events into ClickHouse and
  compete with the engine for CPU, and the figure asked for is the engine's.
* The tick workflow ``bench_stack_tick`` is one step that asks ``offline/echo`` through an ``LlmRouter`` built
  from ``LlmConfig.offline_default(latency_ms=(50, 500))`` (``--llm-latency-ms``) and reports the attempt, so
  each call is an ``LlmCallAttempted`` event in the log (that is how calls are counted, and how the calls in
  flight — the worker concurrency actually used — are measured: a sweep over [started, started+latency]).
* Setup (measured apart): a probe run proves engine and worker are up; then N ``CreateStack`` commands are
  produced straight to the commands topic (what ``POST /stacks`` does, minus HTTP) or posted to the API.
* Warm-up of one interval (every stack fires its first tick at a per-stack phase within it), then a window of
  ``--duration`` seconds, during which engine/worker RSS and CPU are sampled with psutil (and, with
  ``--profile``, py-spy records the engine). Then ``--drain`` seconds so ticks fired in the window can finish,
  the roles are stopped, and the events topic is read once from offset 0: every figure comes from the log.

Reported per N: sustained ticks/s (fired in the window / window), tick lag (``TickFired.occurred_at_ms -
due_at_ms``; also due → the record's Kafka timestamp), skipped ticks, LLM calls/s, tick → RunCompleted latency,
tick → the run's step scheduled → LLM call started (the worker's queueing), engine and worker RSS/CPU, LLM calls
in flight, and how busy the whole box was (and how much of that was not ours). Caveat: the engine stamps every
event of one input batch (up to 2,000 records) with the time the batch began, so "step scheduled → call start"
includes the rest of that batch's processing, not only Kafka and the worker's queue. ``--worker-concurrency auto``
is 1.2 x ticks/s x the longest call (600 for 10,000 stacks at 10 s). Prints one JSON document, then a human
summary. Not part of the test suite; figures from a shared, noisy 2-core box move between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from tests.bench.steps import dist
from tests.conftest import free_port
from tests.paths import REPO_ROOT
from tickflow.agents import attempt_fields
from tickflow.client import Client
from tickflow.events import Envelope, StartRun, encode
from tickflow.events.agents import CreateStack, stack_key
from tickflow.llm import AllModelsFailed, ChatMessage, ChatRequest, LlmConfig, LlmRouter
from tickflow.runtime.kafka import ensure_topics
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow, current_step

WORKFLOW = "bench_stack_tick"
MODEL = "offline/echo"
STACK_PREFIX = "bs-"
LATENCY_ENV = "TICKFLOW_BENCH_LLM_LATENCY_MS"
APP = "tests.bench.stacks:registry"  # not __name__: run with -m, this module is __main__

# -- the tick workflow (imported by the worker and engine subprocesses: keep it cheap) ------------------------

_router: LlmRouter | None = None


def _llm() -> LlmRouter:
    """One router per worker process (its offline provider and limiter are shared by every tick)."""
    global _router
    if _router is None:
        low, _, high = os.environ.get(LATENCY_ENV, "50,500").partition(",")
        _router = LlmRouter(LlmConfig.offline_default(latency_ms=(float(low), float(high or low))))
    return _router


async def think(value: Any) -> dict[str, Any]:
    """One tick: one chat call to the offline model; its attempts go to the log as ``LlmCallAttempted``."""
    ctx = current_step()
    data = value if isinstance(value, dict) else {}
    stack_id, tick = str(data.get("stack_id") or ""), data.get("tick")
    goal = (data.get("input") or {}).get("goal", "") if isinstance(data.get("input"), dict) else ""
    request = ChatRequest(messages=[ChatMessage(role="user", content=f"tick {tick} of {stack_id}: {goal}")])
    try:
        result = await _llm().chat(request, chain=[MODEL])
    except AllModelsFailed as exc:
        for attempt in exc.attempts:
            ctx.report.add_llm_attempt(attempt_fields(attempt, 1, "bench", stack_id))
        raise
    for attempt in result.attempts:
        ctx.report.add_llm_attempt(attempt_fields(attempt, 1, "bench", stack_id))
    return {"idle": False, "tokens": result.usage.tokens_in + result.usage.tokens_out}


registry = Registry()
registry.add(Workflow(WORKFLOW).step(think))

# -- helpers -------------------------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def spawn(settings: Settings, roles: str, log_path: Path, latency: str) -> subprocess.Popen[bytes]:
    """``tickflow up --roles <roles>`` in its own process, with this module's registry."""
    env = {
        **os.environ,
        "TICKFLOW_KAFKA_BOOTSTRAP": settings.bootstrap,
        "TICKFLOW_PREFIX": settings.prefix,
        "TICKFLOW_PARTITIONS": str(settings.partitions),
        "TICKFLOW_STATE_DIR": str(settings.state_dir),
        "TICKFLOW_API_PORT": str(settings.api_port),
        "TICKFLOW_WORKER_CONCURRENCY": str(settings.worker_concurrency),
        "TICKFLOW_COMMIT_INTERVAL_MS": str(settings.commit_interval_ms),
        "TICKFLOW_SNAPSHOT_INTERVAL_S": str(settings.snapshot_interval_s),
        "TICKFLOW_PROJECTOR_BATCH_MS": str(settings.projector_batch_ms),
        LATENCY_ENV: latency,
        "PYTHONPATH": str(REPO_ROOT),
    }
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    command = [sys.executable, "-m", "tickflow.cli", "-v", "up", "--no-broker", "--app", APP]
    return subprocess.Popen([*command, "--roles", roles], cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Usage:
    """psutil samples of one process during the window."""

    proc: psutil.Process
    cpu0: float = 0.0
    t0: float = 0.0
    rss_mib: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the window, MiB)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def begin(self) -> None:
        t = self.proc.cpu_times()
        self.cpu0, self.t0 = t.user + t.system, time.monotonic()
        self.sample()

    def sample(self) -> None:
        self.rss_mib.append((time.monotonic() - self.t0, self.proc.memory_info().rss / 2**20))

    def end(self) -> None:
        self.sample()
        t = self.proc.cpu_times()
        self.cpu_s, self.wall_s = t.user + t.system - self.cpu0, time.monotonic() - self.t0

    def report(self) -> dict[str, Any]:
        rss = [m for _, m in self.rss_mib]
        (ta, ra), (tb, rb) = self.rss_mib[0], self.rss_mib[-1]
        return {
            "cpu_percent": round(100 * self.cpu_s / self.wall_s, 1) if self.wall_s else None,
            "rss_mib_start": round(ra, 1),
            "rss_mib_end": round(rb, 1),
            "rss_mib_max": round(max(rss), 1),
            "rss_growth_mib_per_min": round((rb - ra) / (tb - ta) * 60, 1) if tb > ta else None,
        }


def box_busy(before: Any, after: Any, usage: dict[str, Usage]) -> dict[str, float]:
    """How busy the whole machine was during the window, and how much of it was not ours (other engineers'
    tests, the broker): in cores, so 2.0 is a saturated 2-core box."""
    idle = (after.idle + getattr(after, "iowait", 0.0)) - (before.idle + getattr(before, "iowait", 0.0))
    total = sum(after) - sum(before)
    cores = psutil.cpu_count() or 1
    wall = max(u.wall_s for u in usage.values())
    busy_cores = (total - idle) / total * cores if total else 0.0
    ours = sum(u.cpu_s for u in usage.values()) / wall if wall else 0.0
    return {
        "busy_cores": round(busy_cores, 2),
        "tickflow_roles_cores": round(ours, 2),
        "other_cores": round(busy_cores - ours, 2),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


async def wait_for_log(
    settings: Settings, done: bytes, timeout: float, procs: dict[str, subprocess.Popen[bytes]]
) -> None:
    """Read the events topic until a record contains ``done`` (failing early if a role exits)."""
    consumer = AIOKafkaConsumer(
        settings.topics.events,
        bootstrap_servers=settings.bootstrap,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for role, proc in procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"the {role} process exited with {proc.returncode} during start-up")
            batch = await consumer.getmany(timeout_ms=200)
            if any(done in r.value for records in batch.values() for r in records if r.value):
                return
        raise TimeoutError(f"nothing containing {done!r} in the log within {timeout}s: are the roles up?")
    finally:
        await consumer.stop()


# -- reading the log afterwards ------------------------------------------------------------------------------

_WANTED = tuple(
    f'"type":"{t}"'.encode()
    for t in (
        "StackCreated",
        "TickFired",
        "TickSkipped",
        "TickFinished",
        "RunStarted",
        "StepScheduled",
        "LlmCallAttempted",
        "RunCompleted",
        "RunFailed",
    )
)


@dataclass
class Log:
    types: Counter[str] = field(default_factory=Counter)
    records: int = 0
    created_at: list[int] = field(default_factory=list)  # StackCreated occurred_at_ms
    fired: list[tuple[int, int, int, str]] = field(default_factory=list)  # (occurred, due, record ts, run id)
    skipped: list[tuple[int, int]] = field(default_factory=list)  # (occurred, due)
    finished: dict[str, int] = field(default_factory=dict)  # run id → TickFinished occurred
    finished_status: Counter[str] = field(default_factory=Counter)
    run_started: dict[str, int] = field(default_factory=dict)
    step_scheduled: dict[str, int] = field(default_factory=dict)
    llm: list[tuple[str, int, float, str]] = field(default_factory=list)  # (run id, started, latency, outcome)
    run_done: dict[str, tuple[int, str]] = field(default_factory=dict)  # run id → (occurred, type)


async def read_log(settings: Settings) -> Log:
    """Every record of the events topic from offset 0 to its end now; only the types used are parsed."""
    topic = settings.topics.events
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 2**20,
        fetch_max_bytes=64 * 2**20,
        isolation_level="read_committed",
    )
    await consumer.start()
    out = Log()
    try:
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            batch = await consumer.getmany(*left, timeout_ms=1000, max_records=50_000)
            for tp, records in batch.items():
                for r in records:
                    out.records += 1
                    raw = r.value or b""
                    if any(w in raw for w in _WANTED):
                        _parse(out, orjson.loads(raw), r.timestamp)
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
    finally:
        await consumer.stop()
    return out


def _parse(out: Log, e: dict[str, Any], ts: int) -> None:
    kind, key, at, p = e["type"], e["key"], e["occurred_at_ms"], e["payload"]
    out.types[kind] += 1
    if kind == "StackCreated":
        out.created_at.append(at)
    elif kind == "TickFired":
        out.fired.append((at, p["due_at_ms"], ts, p["run_id"]))
    elif kind == "TickSkipped":
        out.skipped.append((at, p["due_at_ms"]))
    elif kind == "TickFinished":
        out.finished[p["run_id"]] = at
        out.finished_status[p["status"]] += 1
    elif kind == "RunStarted":
        out.run_started[key] = at
    elif kind == "StepScheduled":
        out.step_scheduled.setdefault(key, at)
    elif kind == "LlmCallAttempted":
        out.llm.append((key, p["started_at_ms"], p["latency_ms"], p["outcome"]))
    elif kind in ("RunCompleted", "RunFailed"):
        out.run_done[key] = (at, kind)


def in_flight(intervals: list[tuple[float, float]], lo: float, hi: float) -> dict[str, float]:
    """Peak and time-weighted mean of overlapping [start, end) intervals, clipped to [lo, hi)."""
    points: list[tuple[float, int]] = []
    for a, b in intervals:
        a, b = max(a, lo), min(b, hi)
        if b > a:
            points += [(a, 1), (b, -1)]
    points.sort()
    level = peak = 0
    area, last = 0.0, lo
    for t, d in points:
        area += level * (t - last)
        level, last = level + d, t
        peak = max(peak, level)
    return {"peak": peak, "mean": round(area / (hi - lo), 1) if hi > lo else 0.0}


def analyse(log: Log, lo: int, hi: int) -> dict[str, Any]:
    """Figures over ticks that fired (or were skipped, or calls that started) in [lo, hi) ms."""
    window_s = (hi - lo) / 1000
    fired = [f for f in log.fired if lo <= f[0] < hi]
    skipped = [s for s in log.skipped if lo <= s[0] < hi]
    calls = [c for c in log.llm if lo <= c[1] < hi]
    completed, failed, unfinished = [], 0, 0
    to_run_started, to_step_scheduled, to_llm_start, to_tick_finished = [], [], [], []
    llm_start = {c[0]: c[1] for c in log.llm}
    for at, _, _, run_id in fired:
        done = log.run_done.get(run_id)
        if done is None:
            unfinished += 1
        elif done[1] == "RunFailed":
            failed += 1
        else:
            completed.append(float(done[0] - at))
        if run_id in log.run_started:
            to_run_started.append(float(log.run_started[run_id] - at))
        if run_id in log.step_scheduled:
            to_step_scheduled.append(float(log.step_scheduled[run_id] - at))
            if run_id in llm_start:
                to_llm_start.append(float(llm_start[run_id] - log.step_scheduled[run_id]))
        if run_id in log.finished:
            to_tick_finished.append(float(log.finished[run_id] - at))
    per_second = Counter((at - lo) // 1000 for at, *_ in fired)
    return {
        "window_s": window_s,
        "ticks_fired": len(fired),
        "ticks_per_s": round(len(fired) / window_s, 1),
        "ticks_per_s_by_second": dist([float(per_second.get(i, 0)) for i in range(int(window_s))]),
        "tick_lag_ms": dist([float(at - due) for at, due, _, _ in fired]),
        "tick_due_to_record_ts_ms": dist([float(ts - due) for _, due, ts, _ in fired]),
        "ticks_skipped": len(skipped),
        "llm_calls": len(calls),
        "llm_calls_per_s": round(len(calls) / window_s, 1),
        "llm_outcomes": dict(Counter(c[3] for c in calls)),
        "llm_latency_ms": dist([c[2] for c in calls]),
        "llm_in_flight": in_flight([(c[1], c[1] + c[2]) for c in log.llm], lo, hi),
        "tick_to_run_completed_ms": dist(completed),
        "tick_to_run_started_ms": dist(to_run_started),
        "tick_to_step_scheduled_ms": dist(to_step_scheduled),
        "step_scheduled_to_llm_start_ms": dist(to_llm_start),
        "tick_to_tick_finished_ms": dist(to_tick_finished),
        "runs_failed": failed,
        "runs_unfinished_at_cutoff": unfinished,
    }


# -- py-spy --------------------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def summarize_profile(raw: Path) -> dict[str, Any]:
    """py-spy raw stacks of the engine's main thread → busy share, and where the busy time goes (inclusive,
    by function of ours / aiokafka / pydantic, and by leaf)."""
    total = busy = 0
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if "MainThread" not in frames[0]:
            continue
        n = int(count_text)
        total += n
        parsed = [m.groupdict() for f in frames[1:] if (m := _FRAME.match(f))]
        if not parsed or (parsed[-1]["fn"].endswith("select") and parsed[-1]["file"].endswith("selectors.py")):
            continue  # the event loop waiting for I/O or a timer: idle
        busy += n
        seen: set[str] = set()
        for p in parsed:
            f = p["file"]
            label = ""
            if "/cli/" in f:
                continue  # the entry point is on every stack
            if str(REPO_ROOT) in f or f.startswith(("services/", "events/", "projections/", "tickflow/")):
                label = f"{p['fn']} ({Path(f).name})"
            elif "pydantic" in f:
                label = "[pydantic]"
            elif "aiokafka" in f:
                label = f"[aiokafka] {p['fn']}"
            if label and label not in seen:
                seen.add(label)
                inclusive[label] += n
        leaf = parsed[-1]
        leaves[f"{leaf['fn']} ({Path(leaf['file']).name}:{leaf['line']})"] += n
    if not total:
        return {"note": "no MainThread samples"}
    return {
        "samples": total,
        "main_thread_busy": round(busy / total, 3),
        "inclusive_share_of_busy": [[k, round(v / busy, 3)] for k, v in inclusive.most_common(25)],
        "top_leaves_share_of_busy": [[k, round(v / busy, 3)] for k, v in leaves.most_common(12)],
    }


# -- one scenario --------------------------------------------------------------------------------------------


def auto_concurrency(stacks: int, interval_s: float, high_ms: float) -> int:
    """Enough slots for every tick's call at the peak: ticks/s x the longest call, +20 %, at least 32."""
    return max(32, math.ceil(1.2 * stacks / interval_s * high_ms / 1000))


async def create_via_kafka(settings: Settings, ids: list[str], interval_s: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
    await producer.start()
    try:
        at = now_ms()
        for sid in ids:
            key = stack_key(sid)
            cmd = CreateStack(workflow=WORKFLOW, interval_s=interval_s, input={"goal": f"watch {sid}"})
            env = Envelope.wrap(cmd, id=f"create/{key}", key=key, occurred_at_ms=at, correlation_id=key)
            await producer.send(settings.topics.commands, encode(env), key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def create_via_api(settings: Settings, ids: list[str], interval_s: float, parallel: int) -> dict[str, int]:
    """``Client.create_stack`` from ``parallel`` threads (the SDK is synchronous: one client per thread)."""
    codes: Counter[str] = Counter()
    chunks = [ids[i::parallel] for i in range(parallel)]

    def post(chunk: list[str]) -> None:
        with Client(settings.api_url, timeout=60) as c:
            for sid in chunk:
                try:
                    c.create_stack(sid, WORKFLOW, interval_s=interval_s, input={"goal": f"watch {sid}"})
                    codes["202"] += 1
                except Exception as exc:  # counted and reported; the rest go on
                    codes[type(exc).__name__] += 1

    await asyncio.gather(*(asyncio.to_thread(post, chunk) for chunk in chunks if chunk))
    return dict(codes)


async def wait_api(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("the projector+api process exited before its API answered; see its log")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise TimeoutError(f"the API did not answer within {timeout}s")


async def delete_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(f"{settings.prefix}.")]
        if mine:
            await admin.delete_topics(mine)
    finally:
        await admin.close()


async def scenario(args: argparse.Namespace, stacks: int, workdir: Path) -> dict[str, Any]:
    low, high = (float(x) for x in args.llm_latency_ms.split(","))
    wc = args.worker_concurrency
    concurrency = auto_concurrency(stacks, args.interval, high) if wc == "auto" else int(wc)
    prefix = f"benchstk{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap=args.bootstrap,
        prefix=prefix,
        partitions=args.partitions,
        state_dir=workdir / prefix,
        api_port=free_port(),
        worker_concurrency=concurrency,
        snapshot_interval_s=args.snapshot_interval_s,
    )
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    latency = f"{low:g},{high:g}"
    logs = {role: workdir / f"{prefix}-{role}.log" for role in ("engine", "worker", "api")}
    procs = {
        "engine": spawn(settings, "engine", logs["engine"], latency),
        "worker": spawn(settings, "worker", logs["worker"], latency),
    }
    if args.create_via == "api":
        procs["api"] = spawn(settings, "projector,api", logs["api"], latency)
    profiler: subprocess.Popen[bytes] | None = None
    raw_profile = workdir / f"{prefix}-engine.pyspy.txt"
    try:
        # Setup 1: both roles answer (a probe run of the tick workflow completes).
        t_boot = time.monotonic()
        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        probe = Envelope.wrap(
            StartRun(workflow=WORKFLOW, input={"stack_id": "probe", "tick": 0, "input": None}),
            id="start/probe",
            key="probe",
            occurred_at_ms=now_ms(),
        )
        await producer.send_and_wait(settings.topics.commands, encode(probe), key=b"probe")
        await producer.stop()
        await wait_for_log(settings, b'"type":"RunCompleted"', 90, procs)
        if "api" in procs:
            await wait_api(settings.api_url, procs["api"], 60)
        boot_s = time.monotonic() - t_boot

        # Setup 2: N stacks.
        ids = [f"{STACK_PREFIX}{i:05d}" for i in range(stacks)]
        api_codes: dict[str, int] | None = None
        t_create, t_create_ms = time.monotonic(), now_ms()
        if args.create_via == "api":
            api_codes = await create_via_api(settings, ids, args.interval, args.api_parallel)
        else:
            await create_via_kafka(settings, ids, args.interval)
        create_s = time.monotonic() - t_create
        created_ms = now_ms()

        # Warm-up: one interval after the last create every stack has had its first (phased) tick.
        await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - t_create)) + args.warmup_extra)
        usage = {role: Usage(psutil.Process(p.pid)) for role, p in procs.items()}
        for u in usage.values():
            u.begin()
        box0 = psutil.cpu_times()
        window_lo = now_ms()
        if args.profile:
            command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(procs["engine"].pid)]
            command += ["--duration", str(max(1, int(args.duration * 0.6))), "--rate", "50", "--format", "raw"]
            command += ["--idle", "--threads", "--nonblocking", "--output", str(raw_profile)]
        end = time.monotonic() + args.duration
        started_profile = False
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(2.0, left))
            for role, u in usage.items():
                if procs[role].poll() is not None:
                    raise RuntimeError(f"the {role} process exited during the window; see {logs[role]}")
                u.sample()
            if args.profile and not started_profile and time.monotonic() > end - args.duration * 0.8:
                profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                started_profile = True
        window_hi = now_ms()
        for u in usage.values():
            u.end()
        box = box_busy(box0, psutil.cpu_times(), usage)
        board: dict[str, Any] | None = None
        if "api" in procs:
            board = await asyncio.to_thread(read_board, settings.api_url, ids[0], stacks)
        await asyncio.sleep(args.drain)  # ticks fired at the end of the window finish their runs
        for role in ("engine", "worker", "api"):
            if role in procs:
                stop(procs[role])
        if profiler is not None:
            profiler.wait(60)

        t_read = time.monotonic()
        log = await read_log(settings)
        read_s = time.monotonic() - t_read
        figures = analyse(log, window_lo, window_hi)
        return {
            "stacks": stacks,
            "interval_s": args.interval,
            "expected_ticks_per_s": round(stacks / args.interval, 1),
            "worker_concurrency": concurrency,
            "llm_latency_ms": [low, high],
            "create_via": args.create_via,
            "setup": {
                "roles_up_s": round(boot_s, 2),
                "create_commands_acked_s": round(create_s, 2),
                "create_commands_per_s": round(stacks / create_s, 1) if create_s else None,
                "last_stack_created_in_log_after_s": round((max(log.created_at) - t_create_ms) / 1000, 2)
                if log.created_at
                else None,
                "stacks_created_in_log": len(log.created_at),
                "api_answers": api_codes,
                "created_at_ms": created_ms,
            },
            "window": figures,
            "engine": usage["engine"].report(),
            "worker": usage["worker"].report(),
            "projector_api": usage["api"].report() if "api" in usage else None,
            "box": box,
            "stack_board": board,
            "log": {
                "records": log.records,
                "read_s": round(read_s, 1),
                "types": dict(log.types),
                "tick_runs_status": dict(log.finished_status),
            },
            "profile": summarize_profile(raw_profile) if raw_profile.exists() else None,
            "profile_raw": str(raw_profile) if raw_profile.exists() and args.keep_profile else None,
        }
    except BaseException:
        for role, path in logs.items():
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-20:]
                print(f"--- last lines of the {role} log ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.terminate()
        for proc in procs.values():
            stop(proc)
        if not args.keep_topics:
            with contextlib.suppress(Exception):
                await delete_topics(settings)


def read_board(url: str, one: str, stacks: int) -> dict[str, Any]:
    """The stack board through the SDK, right after the window: how many stacks and ticks it shows."""
    with Client(url, timeout=60) as c:
        t = time.perf_counter()
        rows = c.stacks(limit=min(stacks, 1000))
        list_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        one_stack = c.stack(one, ticks=5)
        one_ms = (time.perf_counter() - t) * 1000
    return {
        "stacks_listed": len(rows),
        "list_ms": round(list_ms, 1),
        "stack_ms": round(one_ms, 1),
        "one_stack_ticks_fired": one_stack["stack"].get("ticks_fired"),
        "one_stack_recent_ticks": len(one_stack["ticks"]),
    }


def summary(results: list[dict[str, Any]]) -> str:
    def q(d: dict[str, Any]) -> str:
        return f"p50 {d['p50']} / p90 {d['p90']} / p99 {d['p99']} / max {d['max']}"

    lines = ["Summary (one run each on a shared, noisy 2-core box; figures move between runs):"]
    for r in results:
        w, s, e, k = r["window"], r["setup"], r["engine"], r["worker"]
        lines += [
            f"  N={r['stacks']:,} every {r['interval_s']:g}s (expect {r['expected_ticks_per_s']} ticks/s), worker "
            f"concurrency {r['worker_concurrency']}, created via {r['create_via']}:",
            f"    setup: {s['create_commands_acked_s']} s to produce {r['stacks']:,} creates "
            f"({s['create_commands_per_s']}/s); all in the log after {s['last_stack_created_in_log_after_s']} s",
            f"    ticks: {w['ticks_per_s']}/s over {w['window_s']:.0f} s ({w['ticks_fired']:,} fired, "
            f"{w['ticks_skipped']:,} skipped; per-second {q(w['ticks_per_s_by_second'])})",
            f"    tick lag ms (fired - due): {q(w['tick_lag_ms'])}   (target p99 ≤ 1000)",
            f"    LLM: {w['llm_calls_per_s']} calls/s, in flight peak {w['llm_in_flight']['peak']} mean "
            f"{w['llm_in_flight']['mean']}; step scheduled → call start ms {q(w['step_scheduled_to_llm_start_ms'])}",
            f"    tick → RunCompleted ms: {q(w['tick_to_run_completed_ms'])}; failed {w['runs_failed']}, "
            f"unfinished at cutoff {w['runs_unfinished_at_cutoff']}",
            f"    engine: CPU {e['cpu_percent']}%, RSS {e['rss_mib_start']} → {e['rss_mib_end']} MiB "
            f"({e['rss_growth_mib_per_min']} MiB/min); worker: CPU {k['cpu_percent']}%, RSS {k['rss_mib_end']} MiB",
        ]
        b = r["box"]
        lines.append(
            f"    box: {b['busy_cores']} of {psutil.cpu_count()} cores busy ({b['tickflow_roles_cores']} ours, "
            f"{b['other_cores']} other: broker, bench reader, other engineers' runs); load avg {b['load_avg_1m']}"
        )
        if r["projector_api"]:
            p = r["projector_api"]
            lines.append(
                f"    projector+api: CPU {p['cpu_percent']}%, RSS {p['rss_mib_end']} MiB; board {r['stack_board']}"
            )
        if r["profile"] and "inclusive_share_of_busy" in r["profile"]:
            pr = r["profile"]
            top = ", ".join(f"{k} {v:.0%}" for k, v in pr["inclusive_share_of_busy"][:8])
            lines.append(f"    engine main thread busy {pr['main_thread_busy']:.0%}; busy time in: {top}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-stacks-") as tmp:
        for n in (int(x) for x in args.stacks.split(",")):
            results.append(await scenario(args, n, Path(tmp)))
            if args.keep_profile and results[-1]["profile_raw"]:
                kept = Path(args.keep_profile) / Path(results[-1]["profile_raw"]).name
                kept.write_bytes(Path(results[-1]["profile_raw"]).read_bytes())
                results[-1]["profile_raw"] = str(kept)
    return {"benchmark": "agent stacks", "cpus": psutil.cpu_count(), "options": vars(args), "results": results}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--stacks", default="100,1000,10000", help="comma-separated N, one scenario each")
    parser.add_argument("--interval", type=float, default=10.0, help="each stack's interval_s")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured, after the warm-up")
    parser.add_argument("--warmup-extra", type=float, default=0.0, help="seconds of warm-up beyond one interval")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds after the window before stopping")
    parser.add_argument("--llm-latency-ms", default="50,500", help="offline model latency, uniform min,max")
    parser.add_argument("--worker-concurrency", default="auto", help="'auto': 1.2 x ticks/s x max latency")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--snapshot-interval-s", type=float, default=60.0, help="engine snapshots (0: off)")
    parser.add_argument("--create-via", choices=("kafka", "api"), default="kafka")
    parser.add_argument("--api-parallel", type=int, default=16, help="SDK threads creating stacks (api)")
    parser.add_argument("--profile", action="store_true", help="py-spy the engine during the window")
    parser.add_argument("--keep-profile", default=None, help="directory to keep py-spy's raw stacks in")
    parser.add_argument("--keep-topics", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    report = asyncio.run(main(parse_args()))
    print(json.dumps(report, indent=2))
    print()
    print(summary(report["results"]))
