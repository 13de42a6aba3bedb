"""Chaos: the roles in their own processes under load, faults injected at random, then the shared checker's verdict.

    python -m tests.bench.chaos [--minutes 20] [--stacks 20] [--interval 5] [--orders-per-s 3]
                                [--approvals-per-s 1] [--fault-every 8] [--seed 1]

Everything runs on 127.0.0.1: a broker of its own (the packaged launcher, free ports, a temporary state dir) and the
roles as separate ``tickflow up`` processes (engine, worker, projector+api) serving the demo's workflows plus a
two-approval workflow. Load: ``--stacks`` demo stacks (four agents on the offline model) ticking every
``--interval`` s; ``order`` runs started through the API; ``chaos_approval`` runs, each started and then resumed
twice through the API (both resumes carry an idempotency key, and every call is retried until it is accepted, as a
careful client does while the API process comes and goes).

Every ``--fault-every`` seconds on average one fault, chosen at random: SIGTERM a role (a rolling deploy: it is
started again), SIGKILL a role (started again), SIGSTOP a role for 2-15 s (past its session timeout or not) then
SIGCONT, or SIGKILL the broker and start it again on the same data.

After ``--minutes``: the load stops, the stacks are paused, every role is left running until the checker reads a
log with every run finished (up to ``--drain-min`` minutes). The verdict counts, reading every topic from offset 0:
lost, duplicate (run, seq), gaps, results applied twice, LLM attempts logged twice, commands applied twice, resumes
without effect and unfinished runs — and each approval run must have completed both waits exactly once. Prints one
JSON document, then a human summary with the faults injected per kind. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from tests.bench.soak import spawn, wait_api
from tests.conftest import free_port
from tests.integration.checker import check_log
from tickflow.broker import BrokerConfig, LocalBroker
from tickflow.client import Client
from tickflow.demo import registry as demo_registry
from tickflow.events.errors import TickflowError
from tickflow.settings import Settings
from tickflow.workflow import Registry, Workflow

__all__ = ["registry"]

APP = "tests.bench.chaos:registry"
ROLES = {"engine": "engine", "worker": "worker", "api": "projector,api"}


async def ship(value: Any) -> Any:
    return {"shipped": value}


#: The demo's workflows and one that waits for two approvals of the same event (a resume applied twice would
#: complete both at once).
registry: Registry = demo_registry
if registry.spec("chaos_approval") is None:
    approval = Workflow("chaos_approval").wait_for_event("approve", name="first")
    registry.add(approval.wait_for_event("approve", name="second").step(ship))


class Cluster:
    """The broker and the role processes, each restartable, and the faults injected into them."""

    def __init__(self, work: Path, settings: Settings, broker: LocalBroker, rng: random.Random) -> None:
        self.work, self.settings, self.broker, self.rng = work, settings, broker, rng
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.faults: Counter[str] = Counter()
        self.timeline: list[tuple[float, str]] = []
        self.began = time.monotonic()

    def mark(self, what: str) -> None:
        t = round(time.monotonic() - self.began, 1)
        self.timeline.append((t, what))
        print(f"[{t:7.1f} s] {what}", file=sys.stderr, flush=True)

    def spawn(self, name: str) -> None:
        self.procs[name] = spawn(self.settings, ROLES[name], None, self.work / f"{name}.log", app=APP)

    async def fault(self) -> None:
        kind = self.rng.choice(["sigterm", "sigkill", "sigstop", "broker"])
        if kind == "broker":
            self.mark("fault: SIGKILL the broker")
            await asyncio.to_thread(self.broker.kill)
            await asyncio.sleep(self.rng.uniform(1, 5))
            await asyncio.to_thread(self.broker.start, 180)
            self.mark("broker back")
        else:
            name = self.rng.choice(sorted(self.procs))
            proc = self.procs[name]
            if kind == "sigstop":
                pause = self.rng.uniform(2, 15)
                self.mark(f"fault: SIGSTOP {name} for {pause:.1f} s")
                proc.send_signal(signal.SIGSTOP)
                await asyncio.sleep(pause)
                proc.send_signal(signal.SIGCONT)
            else:
                self.mark(f"fault: {kind.upper()} {name}")
                proc.send_signal(signal.SIGTERM if kind == "sigterm" else signal.SIGKILL)
                code = await asyncio.to_thread(_wait, proc, 60)
                self.mark(f"{name} exited with {code}; starting it again")
                self.spawn(name)
        self.faults[kind] += 1

    def revive(self) -> None:
        """A role that ended on its own (it never should) is counted and started again."""
        for name, proc in list(self.procs.items()):
            if proc.poll() is not None:
                self.faults["exited by itself"] += 1
                self.mark(f"{name} exited by itself with {proc.returncode}; starting it again")
                self.spawn(name)

    def stop(self) -> dict[str, int | None]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.terminate()
        return {name: _wait(proc, 40) for name, proc in self.procs.items()}


def _wait(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


def _retrying(what: str, call: Any, stop_at: float | None = None) -> Any:
    """Call until it is accepted: a lost answer, an API being restarted, a run not yet visible. The call carries
    its own idempotency key (or run id), so every retry is the same command."""
    while True:
        try:
            return call()
        except (TickflowError, httpx.HTTPError) as exc:
            if stop_at is not None and time.monotonic() > stop_at:
                raise TimeoutError(f"{what}: still refused ({exc})") from exc
            time.sleep(0.5)


def drive(api: str, args: argparse.Namespace, stop_at: float, sent: dict[str, Any]) -> None:
    """Orders and approvals at their rates until ``stop_at`` (a thread: the SDK is synchronous)."""
    rng = random.Random(args.seed)
    interval = 1 / (args.orders_per_s + args.approvals_per_s)
    share = args.approvals_per_s / (args.orders_per_s + args.approvals_per_s)
    with Client(api, timeout=10) as c:
        n = 0
        while time.monotonic() < stop_at:
            n += 1
            if rng.random() < share:
                run_id = f"approval-{n:06d}"
                _retrying("start", partial(c.start, "chaos_approval", {"n": n}, run_id=run_id))
                for i in (1, 2):
                    key = f"{run_id}/approve/{i}"
                    resume = partial(c.resume, run_id, "approve", {"by": key}, wait=False, idempotency_key=key)
                    _retrying("resume", resume)
                sent["approvals"].append(run_id)
            else:
                run_id = f"order-{n:06d}"
                order = {"id": run_id, "items": [{"sku": "tea", "qty": rng.randint(1, 5), "price": 3.5}]}
                _retrying("start", partial(c.start, "order", order, run_id=run_id))
                sent["orders"] += 1
            time.sleep(interval)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from tickflow.demo.workflows import write_demo_llm_config

    work = Path(tempfile.mkdtemp(prefix="tickflow-chaos-"))
    broker = LocalBroker(BrokerConfig(work / "state", port=free_port(), controller_port=free_port(), heap="512m"))
    broker.start()
    settings = Settings(
        bootstrap=broker.config.bootstrap,
        prefix=f"chaos{random.getrandbits(24):06x}",
        state_dir=work / "state",
        api_port=free_port(),
        llm_config=write_demo_llm_config(work / "llm.json"),
    )
    cluster = Cluster(work, settings, broker, random.Random(args.seed))
    sent: dict[str, Any] = {"orders": 0, "approvals": []}
    exits: dict[str, int | None] = {}
    finished_at: float | None = None
    try:
        for name in ROLES:
            cluster.spawn(name)
        await wait_api(settings.api_url, 120)
        with Client(settings.api_url, timeout=30) as c:
            for i in range(args.stacks):
                create = partial(
                    c.create_stack, f"chaos-{i:03d}", "stack_tick", interval_s=args.interval,
                    input={"goal": f"project {i}"}, idempotency_key=f"create/{i}",
                )
                _retrying("create", create)
        cluster.mark(f"{args.stacks} stacks created; load and faults for {args.minutes} min; logs in {work}")
        stop_at = time.monotonic() + args.minutes * 60
        load = asyncio.create_task(asyncio.to_thread(drive, settings.api_url, args, stop_at, sent))
        while time.monotonic() < stop_at:
            await asyncio.sleep(cluster.rng.expovariate(1 / args.fault_every))
            if time.monotonic() >= stop_at:
                break
            cluster.revive()
            await cluster.fault()
        await load
        cluster.revive()
        cluster.mark(f"load stopped: {sent['orders']} orders, {len(sent['approvals'])} approvals; pausing the stacks")
        with Client(settings.api_url, timeout=30) as c:
            for i in range(args.stacks):
                _retrying("pause", partial(c.pause_stack, f"chaos-{i:03d}", "chaos over", idempotency_key=f"end/{i}"))
        deadline = time.monotonic() + args.drain_min * 60
        while time.monotonic() < deadline:
            found = await check_log(settings)
            if not found.problems():
                finished_at = round(time.monotonic() - cluster.began, 1)
                break
            cluster.revive()
            await asyncio.sleep(5)
        cluster.mark(f"every run finished at {finished_at} s" if finished_at else "NOT every run finished in time")
    finally:
        exits = cluster.stop()
    found = await check_log(settings)
    broker.stop()
    completed_waits: Counter[str] = Counter(
        e.key for e in found.events if e.type == "NodeCompleted" and (e.causation_id or "").startswith("resume/")
    )
    approvals_wrong = sorted(r for r in sent["approvals"] if completed_waits[r] != 2)
    cluster.mark(f"checker: {found.summary()}; approvals without exactly 2 waits completed: {len(approvals_wrong)}")
    return {
        "benchmark": "chaos",
        "options": vars(args),
        "faults": dict(cluster.faults),
        "faults_total": sum(v for k, v in cluster.faults.items() if k != "exited by itself"),
        "sent": {"orders": sent["orders"], "approvals": len(sent["approvals"]), "stacks": args.stacks},
        "all_finished_at_s": finished_at,
        "checker": {
            "runs": len(found.started),
            "events": len(found.events),
            "lost": len(found.lost),
            "duplicates": len(found.duplicates),
            "gaps": len(found.gaps),
            "results_applied_twice": len(found.results_applied_twice),
            "llm_attempts_twice": len(found.llm_attempts_twice),
            "commands_applied_twice": len(found.commands_applied_twice),
            "resumes_without_effect": len(found.resumes_without_effect),
            "unfinished": len(found.unfinished),
            "approvals_wrong": approvals_wrong[:20],
            "problems": found.problems(),
        },
        "role_exit_codes": exits,
        "timeline": cluster.timeline,
        "logs": str(work),
    }


def summary(report: dict[str, Any]) -> str:
    o, c = report["options"], report["checker"]
    faults = ", ".join(f"{k} {v}" for k, v in sorted(report["faults"].items())) or "none"
    clean = not c["problems"] and not c["approvals_wrong"] and c["resumes_without_effect"] == 0
    return "\n".join([
        f"chaos: {o['minutes']} min, {o['stacks']} stacks every {o['interval']} s, {o['orders_per_s']} orders/s, "
        f"{o['approvals_per_s']} approvals/s, a fault every ~{o['fault_every']} s (seed {o['seed']})",
        f"  faults injected: {report['faults_total']} ({faults})",
        f"  sent: {report['sent']['orders']} orders, {report['sent']['approvals']} approvals (2 resumes each)",
        f"  checker: {c['runs']} runs, {c['events']} events: lost {c['lost']}, dup {c['duplicates']}, gap {c['gaps']},"
        f" results twice {c['results_applied_twice']}, LLM twice {c['llm_attempts_twice']}, commands twice "
        f"{c['commands_applied_twice']}, resumes without effect {c['resumes_without_effect']}, unfinished "
        f"{c['unfinished']}, approvals not exactly twice {len(c['approvals_wrong'])}",
        f"  every run finished at: {report['all_finished_at_s']} s; verdict: {'CLEAN' if clean else 'PROBLEMS'}",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--stacks", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--orders-per-s", type=float, default=3.0)
    parser.add_argument("--approvals-per-s", type=float, default=1.0)
    parser.add_argument("--fault-every", type=float, default=8.0, help="Mean seconds between two faults.")
    parser.add_argument("--drain-min", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=1)
    report = asyncio.run(run(parser.parse_args()))
    print(json.dumps(report))
    print(summary(report))


if __name__ == "__main__":
    main()
