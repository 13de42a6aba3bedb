"""Benchmark: N agent stacks ticking every 10 s, each tick one call to the offline model (issues 4 and 25).

    python -m tests.bench.stacks [--stacks 100,1000,10000] [--duration 60] [--interval 10]
                                 [--layout combined|split] [--engines K] [--partitions P]
                                 [--worker-concurrency auto] [--create-via kafka|api] [--profile DIR]

Per N, on fresh topics (own prefix, deleted afterwards unless ``--keep-topics``):

* Roles run as subprocesses (``tickflow up --roles …``). ``--layout combined`` (the default, as ``tickflow up``
  runs them) is one ``engine,worker`` process, labelled ``node``: the engine hands each step to its own worker in
  memory (eager local dispatch, ``tickflow.runtime.eager``; ``--no-eager`` turns it off). ``--layout split`` runs the
  engine alone and the worker alone (remote workers: every task and result goes through Kafka), so the engine's RSS
  and CPU are its own. ``--engines K`` runs K such processes (``node1..K``, or ``engine1..K`` + ``worker1..K``) in
  the same consumer groups, so they share the partitions (``--partitions``, default 8, 16 with K > 1): ticks/s,
  CPU and RSS are then reported per process too (a partition's ticks go to the process whose log last said
  ``engine owns partitions [...]``), the scale-out figure the issue asks for. With ``--create-via api`` one more
  process runs **projector + api** (chDB is one-process): stacks are created with ``POST /stacks`` and the board is
  read back through ``Client``. By default (``kafka``) there is no projector: on a 2-core box it would compete with
  the engine for CPU, and the figure asked for is the engine's.
* The tick workflow ``bench_stack_tick`` is one step that asks ``offline/echo`` through an ``LlmRouter`` built from
  ``LlmConfig.offline_default(latency_ms=(50, 500))`` (``--llm-latency-ms``) and reports the attempt, so each call
  is an ``LlmCallAttempted`` event in the log (that is how calls, and the calls in flight, are counted).
* Setup (measured apart): a probe run proves the roles are up, the engines' partition split settles; the RSS of
  each process is taken (the "before stacks" baseline); then N ``CreateStack`` commands are produced straight to
  the commands topic (what ``POST /stacks`` does, minus HTTP) or posted to the API.
* Warm-up of one interval (every stack fires its first tick at a per-stack phase within it), then a window of
  ``--duration`` seconds, during which each process's RSS is sampled every ``--sample-s`` seconds and its CPU
  measured. Then ``--drain`` seconds so ticks fired in the window can finish, the roles are stopped (SIGTERM), and
  the topics are read once from offset 0 to their end (compared by consumer position, so the transactions' commit
  markers at the end do not stall the read): every figure but CPU and RSS comes from the log.

Reported per N: sustained ticks/s (total and per process), tick lag (``TickFired.occurred_at_ms - due_at_ms``),
skipped ticks, tick → RunCompleted, tick → the step's LLM call start, records per tick on every topic (events by
type, and by whose key: the stack's or the tick run's; commands, tasks, results, state), CPU per process (and
CPU-ms per tick), RSS per process over time (per minute), its growth per minute over the last third of the window and
after the retention windows are full, and bytes per stack (RSS at the end minus RSS before the stacks, over N). The
engine keeps a finished tick run's full state ``finished_state_s`` (60 s), shrunk until ``tick_run_retention_s``
(600 s) after its end, then drops it: memory should grow for about ``tick_run_retention_s`` + one interval after
the stacks are created, then stay flat, so a memory verdict needs a window of 15 minutes (the JSON says when the
flat part begins; ``--tick-run-retention-s`` shortens it for a quick check). ``--profile DIR`` runs each role
process under ``py-spy record`` (raw stacks into DIR) and reports its top frames by own time (CPU figures then
include the profiler's overhead). Prints one JSON document, then a human summary. Not part of the test suite;
figures from a shared, noisy 2-core box move between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
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
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from tests.bench.closed_loop import top_frames
from tests.bench.stacks_log import (
    TopicCount,
    analyse,
    count_topic,
    memory_figures,
    owned,
    partition_owners,
    per_tick,
    read_log,
)
from tests.conftest import free_port
from tests.integration.harness import role_env
from tests.paths import REPO_ROOT
from tickflow.agents import attempt_fields
from tickflow.client import Client
from tickflow.events import Envelope, StartRun, encode
from tickflow.events.agents import CreateStack, stack_key
from tickflow.llm import AllModelsFailed, ChatMessage, ChatRequest, LlmConfig, LlmRouter
from tickflow.runtime.kafka import ensure_topics
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow, current_step

__all__ = ["APP", "WORKFLOW", "main", "parse_args", "registry", "summary"]

WORKFLOW = "bench_stack_tick"
MODEL = "offline/echo"
STACK_PREFIX = "bs-"
LATENCY_ENV = "TICKFLOW_BENCH_LLM_LATENCY_MS"
APP = "tests.bench.stacks:registry"  # not __name__: run with -m, this module is __main__
#: Where the bench-only sitecustomize of --memory-dumps lives.
MEMDUMP = REPO_ROOT / "tests" / "bench" / "memdump"

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

# -- processes -----------------------------------------------------------------------------------------------------


def now_ms() -> int:
    return int(time.time() * 1000)


def layout(args: argparse.Namespace) -> dict[str, str]:
    """Process label → its roles: ``node`` (engine,worker) per engine, or ``engine`` and ``worker`` apart."""
    k = args.engines
    suffix = [""] if k == 1 else [str(i) for i in range(1, k + 1)]
    if args.layout == "combined":
        return {f"node{s}": "engine,worker" for s in suffix}
    return {**{f"engine{s}": "engine" for s in suffix}, **{f"worker{s}": "worker" for s in suffix}}


def py_spy() -> str:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy") or "py-spy"


def spawn(
    settings: Settings, roles: str, log_path: Path, env: dict[str, str], profile: Path | None
) -> subprocess.Popen[bytes]:
    """``tickflow up --roles <roles>`` in its own process, with this module's registry (under ``py-spy record``
    with ``profile``: py-spy cannot attach to a running process here, but can start one)."""
    command = [sys.executable, "-m", "tickflow.cli", "-v", "up", "--no-broker", "--app", APP, "--roles", roles]
    if profile is not None:
        command = [py_spy(), "record", "--format", "raw", "--rate", "100", "--nonblocking", "-o", str(profile),
                   "--", *command]  # fmt: skip
    out = open(log_path, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen(command, cwd=REPO_ROOT, env={**role_env(settings), **env}, stdout=out, stderr=out)


def python_pid(proc: subprocess.Popen[bytes], profiled: bool) -> int:
    """The role's own PID: under py-spy, its child (waited for, as py-spy starts it)."""
    if not profiled:
        return proc.pid
    for _ in range(200):
        if children := psutil.Process(proc.pid).children():
            return int(children[0].pid)
        time.sleep(0.05)
    raise RuntimeError("py-spy did not start the role process")


def stop(proc: subprocess.Popen[bytes], pid: int) -> None:
    """SIGTERM the role (under py-spy, the profiler then writes its file and exits), SIGKILL what hangs."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@dataclass
class Usage:
    """psutil samples of one process: RSS from before the stacks exist to the window's end, CPU over the window."""

    proc: psutil.Process
    before_mib: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, MiB)
    cpu_samples: list[tuple[float, float]] = field(default_factory=list)  # (monotonic s, CPU s so far)
    t0: float = 0.0  # the window's start (monotonic)
    cpu0: float = 0.0
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def baseline(self) -> None:
        """The RSS before any stack exists (roles up, probe run done): what bytes per stack are counted from."""
        self.sample()
        self.before_mib = self.samples[-1][1]

    def sample(self) -> None:
        now = time.monotonic()
        self.samples.append((now, float(self.proc.memory_info().rss) / 2**20))
        t = self.proc.cpu_times()
        self.cpu_samples.append((now, t.user + t.system))

    def begin(self) -> None:
        t = self.proc.cpu_times()
        self.cpu0, self.t0 = t.user + t.system, time.monotonic()
        self.sample()

    def end(self) -> None:
        self.sample()
        t = self.proc.cpu_times()
        self.cpu_s, self.wall_s = t.user + t.system - self.cpu0, time.monotonic() - self.t0

    def _cpu_by_minute(self) -> list[list[float]]:
        """CPU % over each minute of the window (from the samples nearest each minute's bounds): whether the cost
        of a tick grows as the retention windows fill."""
        window = [(t - self.t0, c) for t, c in self.cpu_samples if t >= self.t0 - 0.5]
        out: list[list[float]] = []
        minute = 0
        while window and 60 * minute < window[-1][0] - 1:
            lo = min(window, key=lambda s: abs(s[0] - 60 * minute))
            hi = min(window, key=lambda s: abs(s[0] - 60 * (minute + 1)))
            if hi[0] > lo[0]:
                out.append([minute, round(100 * (hi[1] - lo[1]) / (hi[0] - lo[0]), 1)])
            minute += 1
        return out

    def report(self, stacks: int, ticks: int, flat_after_s: float | None) -> dict[str, Any]:
        series = [(round(t - self.t0, 1), m) for t, m in self.samples]
        return {
            "cpu_percent": round(100 * self.cpu_s / self.wall_s, 1) if self.wall_s else None,
            "cpu_ms_per_tick": round(1000 * self.cpu_s / ticks, 3) if ticks else None,
            "cpu_percent_by_minute": self._cpu_by_minute(),
            **memory_figures([s for s in series if s[0] >= 0], self.before_mib, stacks, flat_after_s),
            "rss_mib_series": [[t, round(m, 1)] for t, m in series],  # seconds into the window (< 0: warm-up)
        }


async def sample_every(usage: dict[str, Usage], every_s: float) -> None:
    """RSS of every process every ``every_s`` seconds until cancelled (a dead process is noticed elsewhere)."""
    while True:
        await asyncio.sleep(every_s)
        for u in usage.values():
            with contextlib.suppress(psutil.Error):
                u.sample()


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


def check_alive(procs: dict[str, subprocess.Popen[bytes]], when: str) -> None:
    for label, proc in procs.items():
        if proc.poll() is not None:
            raise RuntimeError(f"the {label} process exited with {proc.returncode} {when}; see its log")


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
            check_alive(procs, "during start-up")
            batch = await consumer.getmany(timeout_ms=200)
            if any(done in r.value for records in batch.values() for r in records if r.value):
                return
        raise TimeoutError(f"nothing containing {done!r} in the log within {timeout}s: are the roles up?")
    finally:
        await consumer.stop()


def read_lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


async def settled_owners(
    logs: dict[str, Path], partitions: int, procs: dict[str, subprocess.Popen[bytes]], timeout: float
) -> dict[int, str]:
    """Wait until the engines' last logged assignments split every partition among them, each engine with some."""
    deadline = time.monotonic() + timeout
    while True:
        check_alive(procs, "while the engines split the partitions")
        owners, problems = partition_owners({label: read_lines(path) for label, path in logs.items()})
        busy = set(owners.values())
        if not problems and len(owners) == partitions and len(busy) == min(len(logs), partitions):
            return owners
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engines did not split the partitions within {timeout}s: {owners} {problems}")
        await asyncio.sleep(0.5)


# -- setup ---------------------------------------------------------------------------------------------------------


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


# -- one scenario --------------------------------------------------------------------------------------------------


def role_settings(args: argparse.Namespace, stacks: int, workdir: Path) -> tuple[Settings, dict[str, str], int]:
    """The cluster's settings (a fresh prefix), the environment every role gets, and the concurrency in all."""
    low, high = (float(x) for x in args.llm_latency_ms.split(","))
    wc = args.worker_concurrency
    total = auto_concurrency(stacks, args.interval, high) if wc == "auto" else int(wc)
    prefix = f"benchstk{uuid.uuid4().hex[:8]}"
    settings = Settings(
        bootstrap=args.bootstrap,
        prefix=prefix,
        partitions=args.partitions or (8 if args.engines == 1 else 16),
        state_dir=workdir / prefix,
        api_port=free_port(),
        worker_concurrency=max(16, math.ceil(total / args.engines)),  # per worker process
        snapshot_interval_s=args.snapshot_interval_s,
    )
    env = {LATENCY_ENV: f"{low:g},{high:g}", "TICKFLOW_PROJECTOR_BATCH_MS": str(settings.projector_batch_ms)}
    if args.no_eager:
        env["TICKFLOW_EAGER_DISPATCH"] = "false"
    if args.memory_dumps:  # tests/bench/memdump/sitecustomize.py: a dump on SIGUSR1
        env["TICKFLOW_BENCH_MEMDUMP_DIR"] = str(Path(args.memory_dumps).absolute())
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(MEMDUMP), os.environ.get("PYTHONPATH", "")]))
        if args.tracemalloc:
            env["PYTHONTRACEMALLOC"] = "1"
        if args.memory_dump_kind != "full":
            env["TICKFLOW_BENCH_MEMDUMP_KIND"] = args.memory_dump_kind
    for pair in args.role_env:
        name, _, value = pair.partition("=")
        env[name] = value
    for name in ("finished_state_s", "tick_run_retention_s"):
        if getattr(args, name) is not None:
            env[f"TICKFLOW_{name.upper()}"] = str(getattr(args, name))
    return settings, env, total


RETENTION = ("finished_state_s", "tick_run_retention_s", "state_retention_s", "run_id_retention_s")


def retention(env: dict[str, str]) -> dict[str, float]:
    """The engine's retention windows as the roles read them (their environment; the settings' defaults if unset)."""
    seen = {**os.environ, **env}
    out: dict[str, float] = {}
    for name in RETENTION:
        raw = seen.get(f"TICKFLOW_{name.upper()}")
        out[name] = float(raw) if raw is not None else float(Settings.model_fields[name].default)
    return out


async def scenario(args: argparse.Namespace, stacks: int, workdir: Path) -> dict[str, Any]:
    settings, env, concurrency = role_settings(args, stacks, workdir)
    await ensure_topics(settings.bootstrap, settings.topics, settings.pools)
    prefix = settings.prefix
    labels = layout(args)
    if args.create_via == "api":
        labels["api"] = "projector,api"
    logs = {label: workdir / f"{prefix}-{label}.log" for label in labels}
    profile_dir = Path(args.profile).absolute() if args.profile else None
    profiles = {label: profile_dir / f"{prefix}-{label}.txt" for label in labels} if profile_dir else {}
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    procs = {label: spawn(settings, roles, logs[label], env, profiles.get(label)) for label, roles in labels.items()}
    pids = {label: python_pid(proc, bool(profiles)) for label, proc in procs.items()}
    engines = [label for label, roles in labels.items() if "engine" in roles.split(",")]
    kept = retention(env)
    sampler: asyncio.Task[None] | None = None
    try:
        # Setup 1: the roles answer (a probe run of the tick workflow completes), the partitions are split.
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
        owners = await settled_owners({e: logs[e] for e in engines}, settings.partitions, procs, 90)
        if "api" in procs:
            await wait_api(settings.api_url, procs["api"], 60)
        boot_s = time.monotonic() - t_boot
        await asyncio.sleep(args.settle_s)  # recoveries of the last assignment finish; RSS settles
        usage = {label: Usage(psutil.Process(pid)) for label, pid in pids.items()}
        for u in usage.values():
            u.baseline()
        sampler = asyncio.create_task(sample_every(usage, args.sample_s))

        # Setup 2: N stacks.
        ids = [f"{STACK_PREFIX}{i:05d}" for i in range(stacks)]
        api_codes: dict[str, int] | None = None
        t_create, t_create_ms = time.monotonic(), now_ms()
        if args.create_via == "api":
            api_codes = await create_via_api(settings, ids, args.interval, args.api_parallel)
        else:
            await create_via_kafka(settings, ids, args.interval)
        create_s = time.monotonic() - t_create

        # Warm-up: one interval after the last create every stack has had its first (phased) tick.
        await asyncio.sleep(max(0.0, args.interval - (time.monotonic() - t_create)) + args.warmup_extra)
        for u in usage.values():
            u.begin()
        box0 = psutil.cpu_times()
        window_lo = now_ms()
        # Tick runs are retained tick_run_retention_s after they end; the last stack's first tick ends about an
        # interval after its create: from then on as many expire as finish, and the RSS should stay flat.
        flat_after_s = t_create + create_s + args.interval + kept["tick_run_retention_s"] - usage[engines[0]].t0
        start_window = time.monotonic()
        end = start_window + args.duration
        dumps = sorted(float(x) for x in args.dump_at_s.split(",")) if args.memory_dumps else []
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            check_alive(procs, "during the window")
            while dumps and time.monotonic() - start_window >= dumps[0]:
                dumps.pop(0)
                for label in engines:
                    os.kill(pids[label], signal.SIGUSR1)
        window_hi = now_ms()
        sampler.cancel()
        for u in usage.values():
            u.end()
        box = box_busy(box0, psutil.cpu_times(), usage)
        owners_after, problems = partition_owners({e: read_lines(logs[e]) for e in engines})
        board: dict[str, Any] | None = None
        if "api" in procs:
            board = await asyncio.to_thread(read_board, settings.api_url, ids[0], stacks)
        await asyncio.sleep(args.drain)  # ticks fired at the end of the window finish their runs
        for label, proc in procs.items():
            stop(proc, pids[label])

        t_read = time.monotonic()
        tick_run = re.compile(rb"%s\d+\.t\d+" % STACK_PREFIX.encode())
        counts = {"events": TopicCount(window_lo, window_hi, tick_run)}
        log = await read_log(settings.bootstrap, settings.topics.events, settings.partitions, counts["events"])
        others = {
            "commands": settings.topics.commands,
            "tasks": settings.topics.tasks(),
            "results": settings.topics.results,
            "state": settings.topics.state,
        }
        for name, topic in others.items():
            counts[name] = await count_topic(
                settings.bootstrap, topic, settings.partitions, TopicCount(window_lo, window_hi, tick_run)
            )
        read_s = time.monotonic() - t_read
        figures = analyse(log, window_lo, window_hi, owners if len(engines) > 1 else None)
        ticks = figures["ticks_fired"]
        # Per engine-bearing process: its own stacks and ticks (its partitions'); the others see them all.
        stacks_of = owned(log.created_by_partition, owners)
        ticks_of = figures["ticks_by_process"] or {}
        reports = {
            label: u.report(stacks_of.get(label, stacks), ticks_of.get(label, ticks), flat_after_s)
            for label, u in usage.items()
        }
        held = [usage[e] for e in engines]
        grown_mib = sum(u.samples[-1][1] - u.before_mib for u in held)
        return {
            "stacks": stacks,
            "interval_s": args.interval,
            "expected_ticks_per_s": round(stacks / args.interval, 1),
            "layout": args.layout,
            "engines": len(engines),
            "processes": labels,
            "partitions": settings.partitions,
            "eager_dispatch": not args.no_eager and args.layout == "combined",  # split: no worker beside the engine
            "worker_concurrency_total": concurrency,
            "worker_concurrency_per_process": settings.worker_concurrency,
            "llm_latency_ms": [float(x) for x in args.llm_latency_ms.split(",")],
            "create_via": args.create_via,
            "retention_s": kept,
            "rss_flat_expected_after_window_s": round(flat_after_s, 1),
            "partition_owners": {str(p): label for p, label in sorted(owners.items())},
            "partition_owners_changed_in_window": owners_after != owners or bool(problems),
            "setup": {
                "roles_up_s": round(boot_s, 2),
                "create_commands_acked_s": round(create_s, 2),
                "create_commands_per_s": round(stacks / create_s, 1) if create_s else None,
                "last_stack_created_in_log_after_s": round((max(log.created_at) - t_create_ms) / 1000, 2)
                if log.created_at
                else None,
                "stacks_created_in_log": len(log.created_at),
                "api_answers": api_codes,
            },
            "window": figures,
            "per_tick": per_tick(counts, ticks, len(log.fired)),
            "processes_usage": reports,
            "engines_memory": {
                "what": "sum over the engine processes (in the combined layout, engine and worker together)",
                "rss_mib_before_stacks": round(sum(u.before_mib for u in held), 1),
                "rss_mib_end": round(sum(u.samples[-1][1] for u in held), 1),
                "bytes_per_stack": round(grown_mib * 2**20 / stacks) if stacks else None,
            },
            "box": box,
            "stack_board": board,
            "log": {
                "records": log.records,
                "read_s": round(read_s, 1),
                "types": dict(log.types),
                "tick_runs_status": dict(log.finished_status),
            },
            "profile_top_own_pct": {label: top_frames(path) for label, path in profiles.items()} or None,
            "profiles": {label: str(path) for label, path in profiles.items()} or None,
        }
    except BaseException:
        for label, path in logs.items():
            tail = read_lines(path)[-20:]
            print(f"--- last lines of the {label} log ---", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        if sampler is not None:
            sampler.cancel()
        for label, proc in procs.items():
            stop(proc, pids[label])
        if not args.keep_topics:
            with contextlib.suppress(Exception):
                await delete_topics(settings)


def summary(results: list[dict[str, Any]]) -> str:
    def q(d: dict[str, Any]) -> str:
        return f"p50 {d['p50']} / p99 {d['p99']} / max {d['max']}"

    lines = ["Summary (one run each on a shared, noisy 2-core box; figures move between runs):"]
    for r in results:
        w, s, t = r["window"], r["setup"], r["per_tick"]
        lines += [
            f"  N={r['stacks']:,} every {r['interval_s']:g}s (expect {r['expected_ticks_per_s']} ticks/s), layout "
            f"{r['layout']}, {r['engines']} engine process(es), {r['partitions']} partitions, eager "
            f"{'on' if r['eager_dispatch'] else 'off'}, worker concurrency {r['worker_concurrency_per_process']}/"
            f"process, created via {r['create_via']}:",
            f"    setup: {s['create_commands_acked_s']} s to produce {r['stacks']:,} creates "
            f"({s['create_commands_per_s']}/s); all in the log after {s['last_stack_created_in_log_after_s']} s",
            f"    ticks: {w['ticks_per_s']}/s over {w['window_s']:.0f} s ({w['ticks_fired']:,} fired, "
            f"{w['ticks_skipped']:,} skipped; per-second {q(w['ticks_per_s_by_second'])})"
            + (f"; per process {w['ticks_per_s_by_process']}" if w["ticks_per_s_by_process"] else "")
            + (f"; by minute {w['ticks_per_s_by_minute']}" if len(w["ticks_per_s_by_minute"]) > 1 else ""),
            f"    tick lag ms (fired - due): {q(w['tick_lag_ms'])}   (target p99 ≤ 1000, none skipped)",
            f"    tick → RunCompleted ms: {q(w['tick_to_run_completed_ms'])}   (target p99 ≤ 2000); failed "
            f"{w['runs_failed']}, unfinished at cutoff {w['runs_unfinished_at_cutoff']}",
            f"    LLM: {w['llm_calls_per_s']} calls/s, in flight peak {w['llm_in_flight']['peak']} mean "
            f"{w['llm_in_flight']['mean']}; step scheduled → call start ms {q(w['step_scheduled_to_llm_start_ms'])}",
        ]
        if t.get("ticks"):
            topics = ", ".join(f"{n} {t[n]['records_per_tick']}" for n in t if isinstance(t[n], dict))
            ev = ", ".join(f"{k} {v:g}" for k, v in t["events"]["by_type_per_tick"].items())
            lines += [
                f"    records per tick: {t['records_per_tick_all_topics']} ({topics}); events per tick: {ev}",
                f"    events per tick by key: {t['events']['by_key_per_tick']}; bytes per tick by type: "
                f"{t['events']['bytes_by_type_per_tick']}; transaction markers per tick (whole run, all topics): "
                f"{t['not_records_per_tick_whole_run']}",
            ]
        for label, u in r["processes_usage"].items():
            lines.append(
                f"    {label}: CPU {u['cpu_percent']}% ({u['cpu_ms_per_tick']} ms/tick); "
                f"RSS {u['rss_mib_before_stacks']} before stacks → {u['rss_mib_end']} MiB "
                f"({u['bytes_per_stack']} B/stack), growth "
                f"{u['growth_mib_per_min_last_third']} MiB/min over the last third, "
                f"{u['growth_mib_per_min_after_retention_full']} after the retention windows filled "
                f"(from {r['rss_flat_expected_after_window_s']} s); by minute {u['rss_mib_by_minute']}"
                + (f"; CPU % by minute {u['cpu_percent_by_minute']}" if len(u["cpu_percent_by_minute"]) > 1 else "")
            )
        m = r["engines_memory"]
        lines.append(
            f"    engine processes in all: RSS {m['rss_mib_before_stacks']} before stacks → {m['rss_mib_end']} MiB, "
            f"{m['bytes_per_stack']} B/stack (retention: tick runs kept {r['retention_s']['tick_run_retention_s']:g} s,"
            f" full state {r['retention_s']['finished_state_s']:g} s)"
        )
        b = r["box"]
        lines.append(
            f"    box: {b['busy_cores']} of {psutil.cpu_count()} cores busy ({b['tickflow_roles_cores']} ours, "
            f"{b['other_cores']} other: broker, other engineers' runs); load avg {b['load_avg_1m']}"
        )
        if r["stack_board"]:
            lines.append(f"    board: {r['stack_board']}")
        for label, frames in (r["profile_top_own_pct"] or {}).items():
            lines.append(f"    {label} top frames (own %): " + "; ".join(f"{f} {p}" for f, p in frames[:10]))
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> dict[str, Any]:
    results = []
    with tempfile.TemporaryDirectory(prefix="tickflow-bench-stacks-") as tmp:
        for n in (int(x) for x in args.stacks.split(",")):
            results.append(await scenario(args, n, Path(tmp)))
    return {"benchmark": "agent stacks", "cpus": psutil.cpu_count(), "options": vars(args), "results": results}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--stacks", default="100,1000,10000", help="comma-separated N, one scenario each")
    parser.add_argument("--interval", type=float, default=10.0, help="each stack's interval_s")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured, after the warm-up")
    parser.add_argument("--warmup-extra", type=float, default=0.0, help="seconds of warm-up beyond one interval")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds after the window before stopping")
    parser.add_argument("--settle-s", type=float, default=2.0, help="seconds between roles up and the baseline")
    parser.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--llm-latency-ms", default="50,500", help="offline model latency, uniform min,max")
    parser.add_argument("--worker-concurrency", default="auto", help="in all; 'auto': 1.2 x ticks/s x max latency")
    parser.add_argument("--layout", choices=("combined", "split"), default="combined")
    parser.add_argument("--engines", type=int, default=1, help="engine processes (each with its worker if combined)")
    parser.add_argument("--partitions", type=int, default=0, help="0: 8 with one engine, 16 with more")
    parser.add_argument("--no-eager", action="store_true", help="TICKFLOW_EAGER_DISPATCH=false (combined layout)")
    parser.add_argument("--finished-state-s", type=float, default=None, help="the engine's (default: its own)")
    parser.add_argument("--tick-run-retention-s", type=float, default=None, help="the engine's (default: its own)")
    parser.add_argument("--snapshot-interval-s", type=float, default=60.0, help="engine snapshots (0: off)")
    parser.add_argument("--create-via", choices=("kafka", "api"), default="kafka")
    parser.add_argument("--api-parallel", type=int, default=16, help="SDK threads creating stacks (api)")
    parser.add_argument("--profile", default=None, help="run each role under py-spy record, raw profiles into DIR")
    parser.add_argument("--keep-topics", action="store_true")
    parser.add_argument("--memory-dumps", default=None,
                        help="DIR: each engine process writes what holds its memory there (tests/bench/memdump)")
    parser.add_argument("--dump-at-s", default="660,900", help="seconds into the window of each memory dump")
    parser.add_argument("--tracemalloc", action="store_true", help="with --memory-dumps: trace allocations too")
    parser.add_argument("--memory-dump-kind", choices=("full", "allocator"), default="full",
                        help="allocator: only the allocators' figures (no object census, no pause)")
    parser.add_argument("--role-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every role process (e.g. MALLOC_ARENA_MAX=2)")
    args = parser.parse_args(argv)
    if args.engines < 1:
        parser.error("--engines must be at least 1")
    return args


if __name__ == "__main__":
    report = asyncio.run(main(parse_args()))
    print(json.dumps(report, indent=2))
    print()
    print(summary(report["results"]))
