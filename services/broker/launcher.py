"""Apache Kafka (KRaft) on 127.0.0.1 — one node, or a cluster of N: fetch its jars once, configure, format, start,
wait, stop.

A cluster (``TICKFLOW_KAFKA_BROKERS=3`` or ``LocalCluster``) is N combined broker+controller nodes on consecutive
loopback ports — node i listens on ``port + 2(i-1)`` and its controller on the next port — formatted with one
cluster id, so any one node can die and the other two keep a controller quorum and every partition's leadership.
Internal topics get replication 3 and min ISR 2 on three nodes or more.

Why a launcher in the package: ``tickflow broker start`` and ``tickflow up`` must work from an installed wheel, with
nothing of the checkout around. Ready means "Kafka Server started" in logs/server.log *and* a TCP connect: the broker
accepts connections before it has joined its quorum. Jars are cached per user, data lives under the state dir.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from subprocess import DEVNULL, STDOUT

from tickflow.broker.secure import BrokerSecrets, write_private
from tickflow.events.connection import KafkaConnection
from tickflow.events.errors import ErrorCode, TickflowError

_PACKAGE = __package__ or __name__.rpartition(".")[0]
HOST = "127.0.0.1"
READY_LINE = b"Kafka Server started"
COMMANDS = ("install", "start", "stop", "status", "reset", "bootstrap")
#: Replication of internal topics (and tickflow's, by default) on a cluster this size or larger; min ISR one less.
FULL_REPLICATION = 3
USAGE = f"usage: python -m tickflow.broker {'|'.join(COMMANDS)}"


def _resource(name: str) -> str:
    """A data file shipped inside this package (works from a wheel, a zip or a source tree)."""
    return files(_PACKAGE).joinpath(name).read_text(encoding="utf-8")


def _kafka_version() -> str:
    match = re.search(r"<kafka\.version>(.*?)</kafka\.version>", _resource("pom.xml"))
    if match is None:
        raise RuntimeError("tickflow.broker: pom.xml has no <kafka.version>")
    return match.group(1).strip()


KAFKA_VERSION = _kafka_version()


class LocalBrokerError(TickflowError, RuntimeError):
    """The local broker could not be installed, started or configured; the message says why and where to look.

    Named for the broker this package runs, not for an error a Kafka broker answers (aiokafka's own errors).
    Still a ``RuntimeError``, as it was before it joined tickflow's error tree."""

    code = ErrorCode.MISCONFIGURED


def _log(message: str) -> None:
    print(f"kafka: {message}", file=sys.stderr, flush=True)


def _env(name: str) -> str | None:
    """Like the shell's ``${NAME:-default}``: an empty variable counts as unset."""
    return os.environ.get(name) or None


def _env_int(name: str) -> int | None:
    raw = _env(name)
    try:
        return None if raw is None else int(raw)
    except ValueError:
        raise LocalBrokerError(f"{name} must be an integer, got {raw!r}") from None


def default_cache_dir() -> Path:
    """$TICKFLOW_CACHE_DIR or $XDG_CACHE_HOME/tickflow or ~/.cache/tickflow, then kafka-<version>."""
    xdg_root = Path(_env("XDG_CACHE_HOME") or Path.home() / ".cache") / "tickflow"
    return Path(_env("TICKFLOW_CACHE_DIR") or xdg_root) / f"kafka-{KAFKA_VERSION}"


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the broker runs; ``None`` fields take their defaults when used (see the properties)."""

    state_dir: Path  # broker data goes to state_dir / "kafka"
    port: int = 9092
    controller_port: int | None = None  # default port + 1
    cache_dir: Path | None = None  # the kafka-<version> directory itself; default: default_cache_dir()
    heap: str = "768m"
    node_id: int = 1
    #: (node id, controller port) of every controller of the cluster; empty: this node alone.
    voters: tuple[tuple[int, int], ...] = ()
    #: Where under state_dir this node keeps its files ("kafka" alone, "kafka/node-<id>" in a cluster).
    subdir: str = "kafka"
    #: A SASL_SSL listener (TLS + SCRAM-SHA-512/PLAIN users, see ``tickflow.broker.secure``) instead of PLAINTEXT.
    secure: bool = False

    @classmethod
    def from_env(cls, state_dir: Path | None = None) -> BrokerConfig:
        if state_dir is None:
            raw = _env("TICKFLOW_STATE_DIR")
            state_dir = Path(raw) if raw is not None else Path.cwd() / ".tickflow"
        port = _env_int("TICKFLOW_KAFKA_PORT")
        return cls(
            state_dir=Path(state_dir),
            port=9092 if port is None else port,
            controller_port=_env_int("TICKFLOW_KAFKA_CONTROLLER_PORT"),
            cache_dir=default_cache_dir(),
            heap=_env("TICKFLOW_KAFKA_HEAP") or "768m",
            secure=(_env("TICKFLOW_KAFKA_SECURE") or "0").lower() in ("1", "true", "yes"),
        )

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def resolved_controller_port(self) -> int:
        return self.port + 1 if self.controller_port is None else self.controller_port

    @property
    def resolved_cache_dir(self) -> Path:
        return default_cache_dir() if self.cache_dir is None else Path(self.cache_dir)

    @property
    def kafka_dir(self) -> Path:
        return Path(self.state_dir).absolute() / self.subdir

    @property
    def cluster_size(self) -> int:
        return max(len(self.voters), 1)


def server_properties(config: BrokerConfig, secrets: BrokerSecrets | None = None) -> str:
    """The server.properties of one KRaft node (broker and controller) on loopback, alone or in a cluster; with
    ``secrets``, its client and inter-broker listener is SASL_SSL."""
    port, controller = config.port, config.resolved_controller_port
    voters = config.voters or ((config.node_id, controller),)
    quorum = ",".join(f"{node}@{HOST}:{cport}" for node, cport in voters)
    replication = min(config.cluster_size, FULL_REPLICATION)
    min_isr = max(replication - 1, 1)
    listeners = secrets.listener_properties(HOST, port, controller) if secrets is not None else f"""\
listeners=PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller}
advertised.listeners=PLAINTEXT://{HOST}:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
"""
    return f"""\
process.roles=broker,controller
node.id={config.node_id}
controller.quorum.voters={quorum}
{listeners}log.dirs={config.kafka_dir / "data"}
num.partitions=1
offsets.topic.replication.factor={replication}
offsets.topic.num.partitions=8
transaction.state.log.replication.factor={replication}
transaction.state.log.min.isr={min_isr}
default.replication.factor={replication}
min.insync.replicas={min_isr}
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
log.retention.hours=-1
log.segment.bytes=104857600
num.network.threads=2
num.io.threads=4
message.max.bytes=8388608
""" + (_CLUSTER_TIMING if config.cluster_size > 1 else "")


#: A dead node is fenced (and dropped from every ISR, so acks=all writes go on without it) ~3 s after its last
#: heartbeat, not Kafka's default 9 s; a live but lagging follower leaves the ISR after 5 s, not 30 s. On loopback
#: heartbeats do not get lost, so the short timeouts only shorten the stall a crash causes.
_CLUSTER_TIMING = """\
broker.heartbeat.interval.ms=500
broker.session.timeout.ms=3000
replica.lag.time.max.ms=5000
"""


def _require(tool: str, hint: str) -> None:
    if shutil.which(tool) is None:
        raise LocalBrokerError(f"{tool} not found: {hint}")


def _tail(output: bytes, lines: int) -> str:
    return "\n".join(output.decode("utf-8", errors="replace").splitlines()[-lines:])


def _server_errors(server_log: Path) -> str:
    """ERROR/FATAL lines and their causes: a broker that dies at start logs why there, not on stdout."""
    try:
        lines = server_log.read_bytes().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    picked = [line for line in lines if "] ERROR " in line or "] FATAL " in line or line.startswith("Caused by:")]
    return f"\nerrors in {server_log}:\n" + "\n".join(picked[-10:]) if picked else ""


def _run(cmd: list[str], what: str) -> bytes:
    """Run to completion with output captured; on failure raise with the output's last lines."""
    done = subprocess.run(cmd, stdin=DEVNULL, capture_output=True, check=False)
    if done.returncode != 0:
        raise LocalBrokerError(f"{what} failed (exit {done.returncode}):\n{_tail(done.stdout + done.stderr, 30)}")
    return done.stdout


def _looks_like_kafka(pid: int) -> bool:
    """Guard against a recycled pid: on Linux the process must be a kafka.Kafka (a zombie has no cmdline)."""
    if not Path("/proc/self/cmdline").exists():
        return True  # no procfs (macOS): trust kill -0 like the shell script
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    except OSError:
        return True
    return b"kafka.Kafka" in argv


class LocalBroker:
    """Install, start, stop and inspect the broker that ``config`` describes."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.cache_dir = config.resolved_cache_dir
        self.libs_dir = self.cache_dir / "libs"
        self.kafka_dir = config.kafka_dir
        self.data_dir = self.kafka_dir / "data"
        self.logs_dir = self.kafka_dir / "logs"
        self.properties_path = self.kafka_dir / "server.properties"
        self.log4j_path = self.kafka_dir / "log4j.properties"
        self.pidfile = self.kafka_dir / "broker.pid"
        self._proc: subprocess.Popen[bytes] | None = None
        self._secrets: BrokerSecrets | None = None

    @property
    def secrets(self) -> BrokerSecrets | None:
        """The TLS material and SASL users of a ``secure`` broker (generated on first use), else None."""
        if self.config.secure and self._secrets is None:
            self._secrets = BrokerSecrets.ensure(self.kafka_dir / "tls")
        return self._secrets

    def connection(self) -> KafkaConnection:
        """How a client reaches this broker: plaintext, or SASL_SSL as the ``tickflow`` user when secure."""
        secrets = self.secrets
        if secrets is None:
            return KafkaConnection(self.config.bootstrap)
        return secrets.client_connection(self.config.bootstrap)

    def install(self) -> None:
        """Fetch Kafka's jars from Maven Central into the cache (once; ``.complete`` marks a finished fetch)."""
        if (self.cache_dir / ".complete").is_file():
            return
        _require("java", "install OpenJDK 17")
        _require("mvn", "install Maven")
        _log(f"fetching Apache Kafka {KAFKA_VERSION} jars from Maven Central into {self.cache_dir}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        partial = self.cache_dir / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        pom = self.cache_dir / "pom.xml"  # Maven needs a real file; the package may live in a zip
        pom.write_text(_resource("pom.xml"), encoding="utf-8")
        _run(["mvn", "-q", "-B", "-f", str(pom), "dependency:copy-dependencies", f"-DoutputDirectory={partial}"], "mvn")
        shutil.rmtree(self.libs_dir, ignore_errors=True)
        partial.rename(self.libs_dir)
        (self.cache_dir / ".complete").touch()

    def _java_cmd(self, *args: str) -> list[str]:
        jvm = ["-Xms256m", f"-Xmx{self.config.heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true"]
        logs = [f"-Dlog4j.configuration=file:{self.log4j_path}", f"-Dkafka.logs.dir={self.logs_dir}"]
        return ["java", *jvm, *logs, "-cp", f"{self.libs_dir}/*", *args]  # the JVM expands the *, as in the script

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        # Private: with --secure it holds the keystore's and the SASL users' passwords.
        write_private(self.properties_path, server_properties(self.config, self.secrets))
        self.log4j_path.write_text(_resource("log4j.properties"), encoding="utf-8")

    def _read_pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None
        return pid if pid > 0 else None  # never signal a process group (kill 0 / kill -N)

    def _alive(self, pid: int) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None  # our own child (its cmdline can read empty while it execs)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap an exited child of ours: a zombie still answers kill -0
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return _looks_like_kafka(pid)

    def is_running(self) -> bool:
        pid = self._read_pid()
        return pid is not None and self._alive(pid)

    def is_ready(self) -> bool:
        # A TCP connect is not enough: the broker accepts connections before it has joined the quorum,
        # so also wait for the server's own "started" line (logged at INFO, see log4j.properties).
        try:
            if READY_LINE not in (self.logs_dir / "server.log").read_bytes():
                return False
            with socket.create_connection((HOST, self.config.port), timeout=1.0):
                return True
        except OSError:
            return False

    def start(self, timeout_s: float = 90.0) -> None:
        """Install if needed, format storage if needed, start detached and wait until ready."""
        if self.launch():
            self.wait_ready(timeout_s)

    def launch(self, cluster_id: str | None = None) -> bool:
        """Install and format if needed, and start the JVM detached, without waiting; False if already running.

        ``cluster_id``: the id every node of a cluster is formatted with (a new one for a node alone)."""
        self.install()
        pid = self._read_pid()
        if pid is not None and self._alive(pid):
            _log(f"node {self.config.node_id} already running (pid {pid}) on {self.config.bootstrap}")
            return False
        _require("java", "install OpenJDK 17")
        self._write_config()
        if not (self.data_dir / "meta.properties").is_file():
            tool, props = "kafka.tools.StorageTool", str(self.properties_path)
            if cluster_id is None:
                cluster_id = _run(self._java_cmd(tool, "random-uuid"), "StorageTool random-uuid").decode().split()[-1]
            users = self.secrets.scram_format_args() if self.secrets is not None else []
            _run(self._java_cmd(tool, "format", "-t", cluster_id, "-c", props, *users), "StorageTool format")
        _log(f"starting Kafka {KAFKA_VERSION} on {self.config.bootstrap} (data in {self.kafka_dir})")
        if self.secrets is not None:
            env = self.secrets.write_client_env(self.config.bootstrap)
            _log(f"listener SASL_SSL (SCRAM-SHA-512, PLAIN); a client's settings are in {env} (set -a; . {env})")
        (self.logs_dir / "server.log").write_bytes(b"")
        stdout_log = self.logs_dir / "stdout.log"
        cmd = self._java_cmd("kafka.Kafka", str(self.properties_path))
        with stdout_log.open("wb") as out:  # start_new_session: detached from our terminal and signals, like nohup
            proc = subprocess.Popen(cmd, stdin=DEVNULL, stdout=out, stderr=STDOUT, start_new_session=True)
        self._proc = proc
        self.pidfile.write_text(f"{proc.pid}\n", encoding="utf-8")
        return True

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until the node started by ``launch`` serves; raise with its log's last lines if it died."""
        pid = self._read_pid()
        stdout_log = self.logs_dir / "stdout.log"
        deadline = time.monotonic() + timeout_s
        while True:
            if pid is None or not self._alive(pid):
                self.pidfile.unlink(missing_ok=True)
                tail = _tail(stdout_log.read_bytes(), 20) if stdout_log.exists() else "(empty)"
                code = self._proc.poll() if self._proc is not None else None
                exited = f"broker exited during start (exit {code})"
                errors = _server_errors(self.logs_dir / "server.log")
                raise LocalBrokerError(f"{exited}; last lines of {stdout_log}:\n{tail or '(empty)'}{errors}")
            if self.is_ready():
                _log(f"ready on {self.config.bootstrap}")
                return
            if time.monotonic() >= deadline:
                raise LocalBrokerError(f"broker did not become ready within {timeout_s:g} s; see {self.logs_dir}")
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of broker failures); the pidfile stays for ``stop``'s bookkeeping."""
        pid = self._read_pid()
        if pid is not None and self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._alive(pid):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)
        return True

    def stop(self) -> None:
        """SIGTERM, up to 30 s for a clean shutdown, then SIGKILL; the pidfile goes either way."""
        pid = self._read_pid()
        if pid is not None and self._alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, 30.0):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, 5.0)
            _log("stopped")
        self.pidfile.unlink(missing_ok=True)

    def reset(self) -> None:
        """Stop, then delete this state directory's broker data."""
        self.stop()
        shutil.rmtree(self.kafka_dir, ignore_errors=True)


def _brokers_seen(bootstrap: str) -> int:
    """How many brokers the node at ``bootstrap`` lists in its metadata (0 if it cannot answer)."""
    import asyncio

    from aiokafka.admin import AIOKafkaAdminClient

    async def ask() -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
        await admin.start()
        try:
            return len((await admin.describe_cluster()).get("brokers") or [])
        finally:
            await admin.close()

    try:
        return asyncio.run(ask())
    except Exception:
        return 0


class LocalCluster:
    """``size`` KRaft nodes on consecutive loopback ports, each broker and controller, one cluster id."""

    def __init__(self, base: BrokerConfig, size: int = FULL_REPLICATION) -> None:
        if size < 1:
            raise LocalBrokerError(f"a cluster needs at least one node, not {size}")
        if base.secure:
            raise LocalBrokerError("the secure (SASL_SSL) local broker runs as one node; start the cluster without it")
        self.base = base
        voters = tuple((i + 1, base.port + 2 * i + 1) for i in range(size))
        self.nodes = [
            LocalBroker(dataclasses.replace(
                base, node_id=i + 1, port=base.port + 2 * i, controller_port=base.port + 2 * i + 1, voters=voters,
                subdir=f"kafka/node-{i + 1}",
            ))
            for i in range(size)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.config.bootstrap for node in self.nodes)

    def node(self, node_id: int) -> LocalBroker:
        return self.nodes[node_id - 1]

    def start(self, timeout_s: float = 120.0) -> None:
        """Start every node (they wait for each other's quorum), then wait until all serve."""
        id_file = Path(self.base.state_dir).absolute() / "kafka" / "cluster.id"
        id_file.parent.mkdir(parents=True, exist_ok=True)
        if not id_file.is_file():
            self.nodes[0].install()
            uuid = _run(self.nodes[0]._java_cmd("kafka.tools.StorageTool", "random-uuid"), "StorageTool random-uuid")
            id_file.write_text(uuid.decode().split()[-1], encoding="utf-8")
        cluster_id = id_file.read_text(encoding="utf-8").strip()
        for node in self.nodes:
            node.launch(cluster_id)
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            node.wait_ready(max(deadline - time.monotonic(), 1.0))
        # Each node says it started before the others' registrations reached it: until every node reports the
        # whole cluster, a client sizing replication from the metadata would see fewer brokers than there are.
        for node in self.nodes:
            while (seen := _brokers_seen(node.config.bootstrap)) < len(self.nodes):
                if time.monotonic() >= deadline:
                    raise LocalBrokerError(f"{node.config.bootstrap} sees {seen} of {len(self.nodes)} brokers")
                time.sleep(0.2)
        _log(f"cluster of {len(self.nodes)} ready on {self.bootstrap}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def is_ready(self) -> bool:
        return all(node.is_running() and node.is_ready() for node in self.nodes)

    def reset(self) -> None:
        self.stop()
        shutil.rmtree(Path(self.base.state_dir).absolute() / "kafka", ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """``python -m tickflow.broker COMMAND``; status exits 0 only when the broker is ready."""
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else ""
    if command in ("-h", "--help"):
        print(USAGE)
        return 0
    if command not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        config = BrokerConfig.from_env()
        size = _env_int("TICKFLOW_KAFKA_BROKERS") or 1
        broker: LocalBroker | LocalCluster = LocalBroker(config) if size == 1 else LocalCluster(config, size)
        bootstrap = broker.bootstrap if isinstance(broker, LocalCluster) else config.bootstrap
        if command == "status":
            ready = broker.is_ready() if isinstance(broker, LocalCluster) else broker.is_running() and broker.is_ready()
            print(f"running {bootstrap}" if ready else "stopped")
            return 0 if ready else 1
        actions: dict[str, Callable[[], object]] = {
            "install": LocalBroker(config).install,
            "start": broker.start,
            "stop": broker.stop,
            "reset": broker.reset,
            "bootstrap": lambda: print(bootstrap),
        }
        actions[command]()
    except LocalBrokerError as exc:
        _log(str(exc))
        return 1
    return 0
