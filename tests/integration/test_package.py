"""The built wheel, installed in a fresh virtualenv outside the checkout, runs a workflow end to end.

Everything else in the suite imports ``tickflow`` from the editable install of this checkout, where a package left out
of pyproject's explicit ``packages`` list, a data file missing from ``package-data`` or an import that only works from
the source tree (``import events``) goes unnoticed. Here the wheel is built from a copy of the checkout (the checkout's
own ``build/`` holds the editable link tree and must not be touched; a stale ``build/lib`` would also hide a package
that the list no longer names), its contents are checked, it is installed into a new venv without the ``test`` extra,
and that venv's ``tickflow`` command starts its own broker, hosts a user module from a folder of its own, and runs a
workflow to completion. Modelled on the package test of DBOS (its test_package.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.paths import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

#: Source folders mapped to the import package they become (pyproject's ``package-dir``).
PACKAGE_DIRS: dict[str, str] = {
    "services": "tickflow",
    "events": "tickflow/events",
    "projections": "tickflow/projections",
}
#: What must never be importable from an installed wheel: the source folders' own names.
SOURCE_NAMES: tuple[str, ...] = ("events", "services", "projections")
#: Package data a running install reads (the broker's Maven pom and log4j configs, the published JSON Schemas,
#: the projector's migrations).
REQUIRED_FILES: tuple[str, ...] = (
    "tickflow/py.typed",
    "tickflow/broker/pom.xml",
    "tickflow/broker/log4j.properties",
    "tickflow/broker/tools-log4j.properties",
    "tickflow/events/published/index.json",
    "tickflow/events/published/StartRun.json",
    "tickflow/projections/migrations/001_events_and_runs.sql",
)
#: Not copied for the build: local state, caches, virtualenvs and earlier build output.
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    ".tickflow",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
)

FLOWS_MODULE = '''\
from tickflow import Registry, Workflow


def double(x: int) -> int:
    return x * 2


def describe(x: int) -> dict:
    return {"value": x}


registry = Registry()
registry.add(Workflow("hello").step(double).step(describe))
'''

IMPORT_PROBE = """\
import importlib, importlib.resources, json, sys, sysconfig
out = {"purelib": sysconfig.get_paths()["purelib"], "sys_path": sys.path, "files": {}, "sources": {}}
for name in ("tickflow", "tickflow.events", "tickflow.projections", "tickflow.cli", "tickflow.broker"):
    out["files"][name] = importlib.import_module(name).__file__
for name in ("events", "services", "projections"):
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError:
        out["sources"][name] = "ModuleNotFoundError"
    except Exception as exc:
        out["sources"][name] = f"{type(exc).__name__}: {exc}"
    else:
        out["sources"][name] = f"imported from {getattr(module, '__file__', None) or list(module.__path__)}"
out["py_typed"] = importlib.resources.files("tickflow").joinpath("py.typed").is_file()
print(json.dumps(out))
"""


# --- helpers -----------------------------------------------------------------------------------------------------


def _tail(text: str | bytes | None, lines: int = 40) -> str:
    if text is None:
        return "(none)"
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    picked = text.rstrip().splitlines()[-lines:]
    return "\n".join(picked) if picked else "(empty)"


def _explain(done: subprocess.CompletedProcess[str]) -> str:
    cmd = " ".join(str(a) for a in done.args)
    return f"$ {cmd}\nexit {done.returncode}\n--- stdout\n{_tail(done.stdout)}\n--- stderr\n{_tail(done.stderr)}"


def _run(
    cmd: Sequence[str | Path], *, env: dict[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    """Run to completion, output captured; a timeout becomes a failure that shows what the command printed."""
    try:
        return subprocess.run(
            [str(a) for a in cmd],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"$ {' '.join(str(a) for a in cmd)}\ndid not finish within {timeout:g} s\n"
            f"--- stdout\n{_tail(exc.stdout)}\n--- stderr\n{_tail(exc.stderr)}"
        )


def _clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without anything that would make the checkout importable or point tickflow at
    another broker, API or state directory (the per-user jar cache location is kept)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH", "VIRTUAL_ENV"}
        and not (k.startswith("TICKFLOW_") and k != "TICKFLOW_CACHE_DIR")
    }
    env.update(overrides)
    return env


def _bindable(*ports: int) -> bool:
    with contextlib.ExitStack() as stack:
        try:
            for port in ports:
                s = stack.enter_context(socket.socket())
                s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port_pair(taken: frozenset[int] = frozenset()) -> int:
    """A port p >= 20000 with p and p + 1 both free: the broker listens on p, its controller on p + 1."""
    start = random.randrange(20_000, 60_000)
    for port in range(start, start + 2_000):
        if port not in taken and port + 1 not in taken and _bindable(port, port + 1):
            return port
    raise RuntimeError(f"no two consecutive free ports in {start}..{start + 2_000}")


def _free_port(taken: frozenset[int]) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise RuntimeError("no free port")


def _healthy(api_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/healthz", timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:
        return False


def _wait_healthy(up: subprocess.Popen[bytes], api_port: int, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _healthy(api_port):
        if up.poll() is not None:
            log_tail = _tail(log.read_bytes())
            pytest.fail(f"`tickflow up` exited ({up.returncode}) before /healthz answered; {log}:\n{log_tail}")
        if time.monotonic() >= deadline:
            pytest.fail(f"`tickflow up`: no /healthz answer in {timeout_s:g} s; {log}:\n{_tail(log.read_bytes())}")
        time.sleep(0.5)


def _stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGINT (what Ctrl-C sends), then SIGTERM, then SIGKILL, for the process we started and its group."""
    if proc is None or proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # its own session (start_new_session): the group is ours alone
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


def _broker_stop(tickflow: Path, env: dict[str, str], cwd: Path) -> str | None:
    """``tickflow broker stop``; what went wrong, if anything (never raises: it runs in a ``finally``)."""
    cmd = [str(tickflow), "broker", "stop"]
    try:
        done = subprocess.run(
            cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, check=False, capture_output=True, text=True, timeout=90
        )
    except subprocess.TimeoutExpired as exc:
        return f"$ {' '.join(cmd)}\ndid not finish within 90 s\n--- stderr\n{_tail(exc.stderr)}"
    return None if done.returncode == 0 else f"`tickflow broker stop` failed\n{_explain(done)}"


def _our_jvms(state_dir: Path) -> list[int]:
    """Pids of Kafka JVMs whose command line names this test's own state directory (unique per test run)."""
    marker = str(state_dir).encode()
    found: list[int] = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"kafka.Kafka" in argv and marker in argv:
            found.append(int(entry.name))
    return found


def _kill_leftover_broker(state_dir: Path) -> list[int]:
    """SIGKILL the broker this test started if ``tickflow broker stop`` left it running; returns what it killed."""
    pids = set(_our_jvms(state_dir))
    with contextlib.suppress(OSError, ValueError):
        pid = int((state_dir / "kafka" / "broker.pid").read_text().strip())
        if pid > 0 and pid in _our_jvms(state_dir):
            pids.add(pid)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return sorted(pids)


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def timings() -> Iterator[dict[str, float]]:
    """Seconds per phase, printed as one line when the module's tests are done."""
    spent: dict[str, float] = {}
    yield spent
    if spent:
        print("\npackage test timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in spent.items()))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout to build from (without its state, caches and build output)."""
    src = tmp_path_factory.mktemp("package-src") / "tickflow"
    shutil.copytree(REPO_ROOT, src, ignore=IGNORED, symlinks=True)
    return src


@pytest.fixture(scope="module")
def wheel(source: Path, tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]) -> Path:
    dist = tmp_path_factory.mktemp("package-dist")
    started = time.monotonic()
    done = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, source],
        env=_clean_env(),
        cwd=dist,
        timeout=600,
    )
    timings["build"] = time.monotonic() - started
    assert done.returncode == 0, f"building the wheel failed\n{_explain(done)}"
    built = sorted(dist.glob("tickflow-*.whl"))
    everything = sorted(p.name for p in dist.iterdir())
    assert len(built) == 1, f"expected exactly one tickflow-*.whl in {dist}, found {everything}"
    return built[0]


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory, timings: dict[str, float]) -> Path:
    """A new virtualenv, outside the checkout, with the wheel (and its dependencies, no extras) installed."""
    root = tmp_path_factory.mktemp("package-venv") / "venv"
    assert not root.resolve().is_relative_to(REPO_ROOT), f"{root} must be outside the checkout {REPO_ROOT}"
    env = _clean_env()
    started = time.monotonic()
    done = _run([sys.executable, "-m", "venv", root], env=env, cwd=root.parent, timeout=300)
    assert done.returncode == 0, f"creating the venv failed\n{_explain(done)}"
    done = _run([root / "bin" / "pip", "install", "-q", wheel], env=env, cwd=root.parent, timeout=600)
    timings["install"] = time.monotonic() - started
    assert done.returncode == 0, f"installing {wheel.name} into a fresh venv failed\n{_explain(done)}"
    assert (root / "bin" / "tickflow").is_file(), f"the wheel installed no `tickflow` command in {root / 'bin'}"
    return root


# --- tests -------------------------------------------------------------------------------------------------------


def test_wheel_holds_one_tickflow_package_with_its_data(wheel: Path, source: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(
            (zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")), "(no entry_points.txt)"
        )

    tops = sorted({n.split("/", 1)[0] for n in names})
    strays = [t for t in tops if t != "tickflow" and not (t.startswith("tickflow-") and t.endswith(".dist-info"))]
    assert not strays, f"top-level entries of {wheel.name} other than tickflow/ and its dist-info: {strays}"
    assert not set(SOURCE_NAMES) & set(tops), f"{wheel.name} ships a source folder as a top-level package: {tops}"

    missing_data = [f for f in REQUIRED_FILES if f not in names]
    assert not missing_data, f"{wheel.name} lacks package data: {missing_data}"
    migrations = sorted(p.name for p in (source / "projections" / "migrations").glob("*.sql"))
    missing_sql = [m for m in migrations if f"tickflow/projections/migrations/{m}" not in names]
    assert not missing_sql, f"{wheel.name} lacks migrations: {missing_sql}"

    # Every package folder of the tree, and every module in it, is in the wheel: catches a package that pyproject's
    # explicit `packages` list does not name (setuptools then silently leaves it out).
    missing_packages: list[str] = []
    missing_modules: list[str] = []
    for folder, target in PACKAGE_DIRS.items():
        for init in sorted((source / folder).rglob("__init__.py")):
            if "__pycache__" in init.parts:
                continue
            rel = init.parent.relative_to(source / folder).as_posix()
            where = target if rel == "." else f"{target}/{rel}"
            if f"{where}/__init__.py" not in names:
                missing_packages.append(f"{init.parent.relative_to(source)}/ -> {where}/")
                continue
            missing_modules += [
                f"{where}/{py.name}" for py in sorted(init.parent.glob("*.py")) if f"{where}/{py.name}" not in names
            ]
    assert not missing_packages, f"package folders missing from {wheel.name} (pyproject's list?): {missing_packages}"
    assert not missing_modules, f"modules missing from {wheel.name}: {missing_modules}"

    assert "tickflow = tickflow.cli:main" in entry_points, f"no `tickflow` console script:\n{entry_points}"


def test_installed_package_imports_from_the_venv_only(venv: Path, tmp_path: Path) -> None:
    done = _run([venv / "bin" / "python", "-c", IMPORT_PROBE], env=_clean_env(), cwd=tmp_path, timeout=120)
    assert done.returncode == 0, f"importing the installed package failed\n{_explain(done)}"
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    purelib = Path(probe["purelib"]).resolve()
    assert purelib.is_relative_to(venv.resolve()), f"the venv's site-packages {purelib} is not inside {venv}"
    for name, file in probe["files"].items():
        where = Path(file).resolve()
        assert where.is_relative_to(purelib), f"{name} imported from {where}, not the venv's {purelib}"
        assert not where.is_relative_to(REPO_ROOT), f"{name} imported from the checkout: {where}"
    leaks = [p for p in probe["sys_path"] if p and Path(p).resolve().is_relative_to(REPO_ROOT)]
    assert not leaks, f"the venv's sys.path reaches into the checkout: {leaks}"
    wrong = {k: v for k, v in probe["sources"].items() if v != "ModuleNotFoundError"}
    assert not wrong, f"source folder names must not be importable from an installed wheel: {wrong}"
    assert probe["py_typed"], "tickflow/py.typed is not installed"


def test_installed_cli_runs_a_workflow(venv: Path, tmp_path: Path, timings: dict[str, float]) -> None:
    """broker start → up --app flows:registry → start hello --wait → completed, all with the venv's `tickflow`."""
    work = tmp_path / "work"  # the user's project folder: just their module
    work.mkdir()
    (work / "flows.py").write_text(FLOWS_MODULE, encoding="utf-8")
    state = tmp_path / "state"
    up_log = tmp_path / "up.log"
    kafka_port = _free_port_pair()
    api_port = _free_port(frozenset({kafka_port, kafka_port + 1}))
    env = _clean_env(
        TICKFLOW_KAFKA_PORT=str(kafka_port),
        TICKFLOW_STATE_DIR=str(state),
        TICKFLOW_PREFIX=f"pkg-{uuid.uuid4().hex[:8]}",
        TICKFLOW_API_PORT=str(api_port),
        TICKFLOW_PARTITIONS="2",
    )
    tickflow = venv / "bin" / "tickflow"
    up: subprocess.Popen[bytes] | None = None
    try:
        started = time.monotonic()
        done = _run([tickflow, "broker", "start"], env=env, cwd=work, timeout=240)
        assert done.returncode == 0, f"`tickflow broker start` failed\n{_explain(done)}"
        timings["broker start"] = time.monotonic() - started

        started = time.monotonic()
        with up_log.open("wb") as log:
            up = subprocess.Popen(
                [str(tickflow), "up", "--app", "flows:registry", "--no-broker"],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_healthy(up, api_port, up_log, timeout_s=90)

        done = _run([tickflow, "start", "hello", "--input", "21", "--wait", "90"], env=env, cwd=work, timeout=150)
        context = f"{_explain(done)}\n--- {up_log}\n{_tail(up_log.read_bytes())}"
        assert done.returncode == 0, f"`tickflow start --wait` failed\n{context}"
        run_id, _, final_json = done.stdout.strip().partition("\n")
        assert run_id.strip(), f"`tickflow start` printed no run id\n{context}"
        try:
            final = json.loads(final_json)
        except json.JSONDecodeError:
            pytest.fail(f"`tickflow start --wait` printed no JSON status after the run id\n{context}")
        assert final.get("run_id") == run_id.strip(), f"the status is of another run\n{context}"
        assert final.get("status") == "completed", f"run {run_id} did not complete\n{context}"
        assert final.get("output") == {"value": 42}, f"run {run_id} has the wrong output\n{context}"
        timings["up→completed"] = time.monotonic() - started

        # Ctrl-C stops `tickflow up` cleanly.
        os.killpg(up.pid, signal.SIGINT)
        try:
            code = up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`tickflow up` did not stop within 60 s of SIGINT; {up_log}:\n{_tail(up_log.read_bytes())}")
        assert code == 0, f"`tickflow up` exited {code} on SIGINT; {up_log}:\n{_tail(up_log.read_bytes())}"
    finally:
        _stop_process(up)
        stop_problem = _broker_stop(tickflow, env, work)
        killed = _kill_leftover_broker(state)
        if stop_problem or killed:
            print(f"\nbroker stop: {stop_problem or 'ok'}; JVMs of this test killed afterwards: {killed}")
    assert stop_problem is None, stop_problem
    assert not killed, f"`tickflow broker stop` left the test's broker running (killed pids {killed})"
