"""Soak: demo agent stacks plus a stream of order workflows for a long while, one broker restart in the middle.

    python -m tests.bench.soak [--minutes 20] [--stacks 50] [--interval 5] [--orders-per-s 5]
                               [--sample-s 10] [--warmup-min 2] [--restart-at 0.5]

Everything runs on 127.0.0.1: a broker of its own (the packaged launcher, a free port, a temporary state dir) and
the roles as separate ``tickflow up`` processes — engine, worker, projector+api — so each one's RSS and CPU are
its own. Load: ``--stacks`` demo stacks (four agents on the offline model) ticking every ``--interval`` s, and
``order`` runs started through the API at ``--orders-per-s``. At ``--restart-at`` of the way the broker is
SIGKILLed and started again (same data).

Every ``--sample-s`` seconds: RSS and CPU of each role process (``/proc``), and the consumer lag of every role
(each process's ``/metrics``, ``tickflow_consumer_lag`` summed per role). After the load stops: up to 3 minutes for
every lag to return to 0, then the shared integrity checker reads every topic from offset 0.

Prints one JSON document, then a human summary: per role, the median RSS of the first 5 minutes after the warm-up
against the last 5 minutes (flat when the growth is under 10 % or 20 MiB), peak CPU, whether the lag returned to 0,
and the checker's counts. Not part of the test suite: it takes ``--minutes`` plus a few.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import free_port
from tests.integration.checker import check_log
from tests.paths import REPO_ROOT
from tickflow.broker import BrokerConfig, LocalBroker
from tickflow.client import Client
from tickflow.events.errors import TickflowError
from tickflow.settings import Settings

APP = "tickflow.demo:registry"
ROLES = {"engine": "engine", "worker": "worker", "api": "projector,api"}
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
FLAT_RATIO, FLAT_MIB = 0.10, 20.0


@dataclass
class Role:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_url: str
    cpu_s: float = 0.0
    at: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list)


def spawn(
    settings: Settings, roles: str, metrics_port: int | None, log: Path, app: str = APP
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TICKFLOW_KAFKA_BOOTSTRAP": settings.bootstrap,
        "TICKFLOW_PREFIX": settings.prefix,
        "TICKFLOW_STATE_DIR": str(settings.state_dir),
        "TICKFLOW_API_PORT": str(settings.api_port),
        "TICKFLOW_LLM_CONFIG": str(settings.llm_config),
        "PYTHONPATH": str(REPO_ROOT),
    }
    if metrics_port is not None:
        env["TICKFLOW_METRICS_PORT"] = str(metrics_port)
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    command = [sys.executable, "-m", "tickflow.cli", "up", "--no-broker", "--app", app, "--roles", roles]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def proc_usage(pid: int) -> tuple[float, float]:
    """(RSS in MiB, CPU seconds so far) of a process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / TICKS_PER_S  # utime + stime
    rss = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20
    return rss, cpu


def lag_of(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("tickflow_consumer_lag{"))


async def sample(roles: list[Role], http: httpx.AsyncClient, token: str | None, t: float) -> dict[str, Any]:
    row: dict[str, Any] = {"t": round(t, 1)}
    headers = {"authorization": f"Bearer {token}"} if token else {}
    for role in roles:
        if role.proc.poll() is not None:
            row[role.name] = {"exited": role.proc.returncode}
            continue
        rss, cpu = proc_usage(role.proc.pid)
        now = time.monotonic()
        cpu_pct = 100 * (cpu - role.cpu_s) / (now - role.at) if role.at else 0.0
        role.cpu_s, role.at = cpu, now
        lag: float | None = None
        with contextlib.suppress(httpx.HTTPError, ValueError, IndexError):
            lag = lag_of((await http.get(role.metrics_url, headers=headers)).text)
        point = {"t": t, "rss_mib": round(rss, 1), "cpu_pct": round(cpu_pct, 1), "lag": lag}
        role.samples.append(point)
        row[role.name] = {k: v for k, v in point.items() if k != "t"}
    return row


def start_orders(api: str, rate: float, stop_at: float, counter: dict[str, int]) -> None:
    """Order runs at ``rate`` per second until ``stop_at`` (monotonic); refusals are counted and retried."""
    rng = random.Random(7)
    with Client(api, timeout=30) as c:
        n = 0
        while time.monotonic() < stop_at:
            run_id = f"order-{n:06d}"
            try:
                items = [{"sku": "tea", "qty": rng.randint(1, 5), "price": 3.5}, {"sku": "cup", "qty": 1, "price": 9.0}]
                c.start("order", {"id": run_id, "items": items}, run_id=run_id)
                counter["started"] += 1
                n += 1
            except (TickflowError, httpx.HTTPError):
                counter["refused"] += 1
                time.sleep(1.0)
                continue
            time.sleep(1 / rate)


def create_stacks(api: str, n: int, interval: float) -> None:
    with Client(api, timeout=30) as c:
        for i in range(n):
            c.create_stack(f"soak-{i:04d}", "stack_tick", interval_s=interval, overlap="skip",
                           input={"goal": f"ship project {i}"})


async def wait_api(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/healthz")).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the API did not answer within {timeout} s")


def flatness(samples: list[dict[str, float]], warm_s: float, end_s: float) -> dict[str, Any]:
    window = 300.0
    first = [s["rss_mib"] for s in samples if warm_s <= s["t"] < warm_s + window]
    last = [s["rss_mib"] for s in samples if s["t"] >= end_s - window]
    if not first or not last:
        return {"flat": None, "why": "run too short for two 5-minute windows after the warm-up"}
    a, b = statistics.median(first), statistics.median(last)
    return {"first_5min_mib": round(a, 1), "last_5min_mib": round(b, 1), "growth_mib": round(b - a, 1),
            "flat": b - a < max(FLAT_MIB, FLAT_RATIO * a)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tickflow.demo.workflows import write_demo_llm_config

    work = Path(tempfile.mkdtemp(prefix="tickflow-soak-"))
    port = free_port()
    broker = LocalBroker(BrokerConfig(work / "state", port=port, controller_port=free_port(), heap="512m"))
    broker.start()
    settings = Settings(bootstrap=broker.config.bootstrap, prefix=f"soak{random.getrandbits(24):06x}",
                        state_dir=work / "state", api_port=free_port(),
                        llm_config=write_demo_llm_config(work / "llm.json"))
    roles: list[Role] = []
    timeline: list[tuple[float, str]] = []
    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    duration = args.minutes * 60

    def mark(what: str) -> None:
        timeline.append((round(time.monotonic() - began, 1), what))
        print(f"[{time.monotonic() - began:7.1f} s] {what}", file=sys.stderr, flush=True)

    try:
        for name, which in ROLES.items():
            mport = None if name == "api" else free_port()
            url = f"{settings.api_url}/metrics" if name == "api" else f"http://127.0.0.1:{mport}/metrics"
            roles.append(Role(name, spawn(settings, which, mport, work / f"{name}.log"), url))
        await wait_api(settings.api_url, 120)
        await asyncio.to_thread(create_stacks, settings.api_url, args.stacks, args.interval)
        mark(f"{args.stacks} stacks created; orders at {args.orders_per_s}/s; roles' logs in {work}")
        counter = {"started": 0, "refused": 0}
        orders = asyncio.create_task(asyncio.to_thread(
            start_orders, settings.api_url, args.orders_per_s, time.monotonic() + duration, counter))
        restart_at, restarted = duration * args.restart_at, False
        async with httpx.AsyncClient(timeout=5) as http:
            while (t := time.monotonic() - began) < duration:
                rows.append(await sample(roles, http, settings.api_token, t))
                if not restarted and t >= restart_at:
                    mark("SIGKILL the broker")
                    await asyncio.to_thread(broker.kill)
                    await asyncio.sleep(3)
                    await asyncio.to_thread(broker.start, 120)
                    mark("broker restarted and ready")
                    restarted = True
                await asyncio.sleep(args.sample_s)
            await orders
            mark(f"load stopped: {counter['started']} orders started ({counter['refused']} refusals retried)")
            with contextlib.suppress(Exception), Client(settings.api_url) as c:
                for i in range(args.stacks):
                    c.pause_stack(f"soak-{i:04d}", "soak over")
            drained_at = None
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                row = await sample(roles, http, settings.api_token, time.monotonic() - began)
                rows.append(row)
                lags = [row[r.name].get("lag") for r in roles]
                if all(lag == 0 for lag in lags):
                    drained_at = time.monotonic() - began
                    break
                await asyncio.sleep(2)
            mark(f"lag back to 0 at {drained_at} s" if drained_at else "lag did NOT return to 0 within 3 minutes")
    finally:
        for role in roles:
            if role.proc.poll() is None:
                role.proc.terminate()
        for role in roles:
            with contextlib.suppress(subprocess.TimeoutExpired):
                role.proc.wait(30)
    integrity = await check_log(settings)
    mark(f"checker: {integrity.summary()}")
    broker.stop()
    warm, end = args.warmup_min * 60, duration
    report = {
        "benchmark": "soak",
        "options": vars(args),
        "timeline": timeline,
        "roles": {r.name: {**flatness(r.samples, warm, end),
                           "peak_rss_mib": max((s["rss_mib"] for s in r.samples), default=None),
                           "median_cpu_pct": statistics.median([s["cpu_pct"] for s in r.samples[1:]] or [0]),
                           "exit_code": r.proc.returncode} for r in roles},
        "lag_returned_to_zero": drained_at is not None,
        "checker": {"runs": len(integrity.started), "events": len(integrity.events), "lost": len(integrity.lost),
                    "duplicates": len(integrity.duplicates), "gaps": len(integrity.gaps),
                    "unfinished": len(integrity.unfinished), "problems": integrity.problems(finished=False)},
        "samples": rows,
    }
    return report


def summary(report: dict[str, Any]) -> str:
    lines = [f"soak: {report['options']['minutes']} min, {report['options']['stacks']} stacks every "
             f"{report['options']['interval']} s, {report['options']['orders_per_s']} orders/s, broker restart at "
             f"{report['options']['restart_at']:.0%}"]
    for name, r in report["roles"].items():
        flat = {True: "flat", False: "GROWING", None: "n/a"}[r["flat"]]
        lines.append(f"  {name:7} RSS {r.get('first_5min_mib')} → {r.get('last_5min_mib')} MiB ({flat}); peak "
                     f"{r['peak_rss_mib']} MiB; median CPU {r['median_cpu_pct']:.0f} %")
    last = report["samples"][-1] if report["samples"] else {}
    lags = {name: v.get("lag") for name, v in last.items() if isinstance(v, dict)}
    lines.append(f"  lag returned to 0: {report['lag_returned_to_zero']} (last sample: {lags})")
    c = report["checker"]
    lines.append(f"  checker: {c['runs']} runs, {c['events']} events, lost {c['lost']}, dup {c['duplicates']}, gap "
                 f"{c['gaps']}, unfinished {c['unfinished']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--stacks", type=int, default=50)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--orders-per-s", type=float, default=5.0)
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-min", type=float, default=2.0)
    parser.add_argument("--restart-at", type=float, default=0.5)
    report = asyncio.run(run(parser.parse_args()))
    print(json.dumps(report))
    print(summary(report))


if __name__ == "__main__":
    main()
