"""tickflow.broker without a JVM or the network: config text, env defaults, pidfiles, readiness, and a fake
`java`/`mvn` on PATH that play Maven and a broker so install/start/stop run end to end in milliseconds."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tickflow.broker import (
    KAFKA_VERSION,
    BrokerConfig,
    LocalBroker,
    LocalBrokerError,
    LocalCluster,
    main,
    server_properties,
)
from tickflow.runtime.kafka import TopicLayoutError, replication_for

ENV = ("TICKFLOW_STATE_DIR", "TICKFLOW_KAFKA_PORT", "TICKFLOW_KAFKA_CONTROLLER_PORT", "TICKFLOW_KAFKA_HEAP")

FAKE_JAVA = """\
import os, pathlib, signal, socket, sys, time
args = sys.argv[1:]
logs = next(a.split("=", 1)[1] for a in args if a.startswith("-Dkafka.logs.dir="))
if "kafka.tools.StorageTool" in args:
    if "random-uuid" in args:
        print("fake-cluster-id")
    else:
        props = dict(line.split("=", 1) for line in pathlib.Path(args[-1]).read_text().splitlines())
        pathlib.Path(props["log.dirs"], "meta.properties").write_text("cluster.id=" + args[args.index("-t") + 1])
        with open(os.path.join(logs, "formats"), "a") as f:
            f.write("x")
    sys.exit(0)
if os.environ.get("FAKE_KAFKA_CRASH"):
    print("Exception in thread main: port already in use")
    sys.exit(1)
props = dict(line.split("=", 1) for line in pathlib.Path(args[-1]).read_text().splitlines())
server = socket.create_server(("127.0.0.1", int(props["listeners"].split(",")[0].rsplit(":", 1)[1])))
with open(os.path.join(logs, "server.log"), "a") as f:
    f.write("[t] INFO [KafkaRaftServer nodeId=1] Kafka Server started (kafka.server.KafkaRaftServer)\\n")
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    time.sleep(1)
"""

FAKE_MVN = """\
import pathlib, sys
out = pathlib.Path(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("-DoutputDirectory=")))
assert pathlib.Path(sys.argv[sys.argv.index("-f") + 1]).read_text().count("<kafka.version>") == 1
if "FAIL" in out.parent.name:
    print("[ERROR] Could not resolve dependencies")
    sys.exit(1)
out.mkdir(parents=True)
(out / "kafka_2.13.jar").write_text("jar")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (*ENV, "TICKFLOW_CACHE_DIR", "XDG_CACHE_HOME", "FAKE_KAFKA_CRASH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script(bin_dir / "java", FAKE_JAVA)
    script(bin_dir / "mvn", FAKE_MVN)
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


@pytest.fixture
def broker(tmp_path: Path, fake_tools: Path) -> Iterator[LocalBroker]:
    b = LocalBroker(BrokerConfig(tmp_path / "state", port=free_port(), cache_dir=tmp_path / "cache" / "kafka-x"))
    yield b
    b.stop()


def test_server_properties_match_the_script() -> None:
    config = BrokerConfig(Path("/srv/st"), port=19500)
    props = dict(line.split("=", 1) for line in server_properties(config).splitlines())
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19501"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19500,CONTROLLER://127.0.0.1:19501"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19500"
    assert props["log.dirs"] == "/srv/st/kafka/data"
    assert props["message.max.bytes"] == "8388608" and props["auto.create.topics.enable"] == "false"
    assert props["process.roles"] == "broker,controller" and props["log.retention.hours"] == "-1"
    assert len(props) == 23 and server_properties(config).endswith("message.max.bytes=8388608\n")
    replication = ("default.replication.factor", "min.insync.replicas", "offsets.topic.replication.factor")
    assert [props[k] for k in replication] == ["1", "1", "1"]
    explicit = BrokerConfig(Path("/s"), port=19500, controller_port=7000)
    assert "CONTROLLER://127.0.0.1:7000" in server_properties(explicit)


def test_a_cluster_is_nodes_on_consecutive_ports_with_one_quorum_and_full_replication(tmp_path: Path) -> None:
    cluster = LocalCluster(BrokerConfig(tmp_path, port=19600), 3)
    assert cluster.bootstrap == "127.0.0.1:19600,127.0.0.1:19602,127.0.0.1:19604"
    for i, node in enumerate(cluster.nodes, start=1):
        props = dict(line.split("=", 1) for line in server_properties(node.config).splitlines())
        assert props["node.id"] == str(i)
        assert props["controller.quorum.voters"] == "1@127.0.0.1:19601,2@127.0.0.1:19603,3@127.0.0.1:19605"
        assert props["listeners"] == f"PLAINTEXT://127.0.0.1:{19598 + 2 * i},CONTROLLER://127.0.0.1:{19599 + 2 * i}"
        assert props["log.dirs"] == str(tmp_path / "kafka" / f"node-{i}" / "data")
        assert (props["default.replication.factor"], props["min.insync.replicas"]) == ("3", "2")
        assert (props["transaction.state.log.replication.factor"], props["transaction.state.log.min.isr"]) == ("3", "2")
    assert cluster.node(2) is cluster.nodes[1]
    with pytest.raises(LocalBrokerError):
        LocalCluster(BrokerConfig(tmp_path), 0)


def test_replication_follows_the_cluster_size_unless_set() -> None:
    assert replication_for(1) == (1, 1) and replication_for(2) == (1, 1)
    assert replication_for(3) == (3, 2) and replication_for(5) == (3, 2)
    assert replication_for(3, 2) == (2, 1) and replication_for(5, 5, 3) == (5, 3)
    with pytest.raises(TopicLayoutError, match="needs at least 3 brokers"):
        replication_for(1, 3)
    with pytest.raises(TopicLayoutError, match=r"min\.insync\.replicas"):
        replication_for(3, 3, 4)


def test_defaults_and_bootstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = BrokerConfig.from_env()
    assert config.state_dir == tmp_path / ".tickflow" and config.kafka_dir == tmp_path / ".tickflow" / "kafka"
    assert (config.port, config.resolved_controller_port, config.heap) == (9092, 9093, "768m")
    assert config.bootstrap == "127.0.0.1:9092"
    assert config.resolved_cache_dir == tmp_path / "home" / ".cache" / "tickflow" / f"kafka-{KAFKA_VERSION}"
    assert BrokerConfig(tmp_path, port=19392).resolved_controller_port == 19393


def test_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TICKFLOW_STATE_DIR", str(tmp_path / "st"))
    monkeypatch.setenv("TICKFLOW_KAFKA_PORT", "19600")
    monkeypatch.setenv("TICKFLOW_KAFKA_HEAP", "1g")
    config = BrokerConfig.from_env()
    assert (config.state_dir, config.port, config.resolved_controller_port, config.heap) == (
        tmp_path / "st",
        19600,
        19601,
        "1g",
    )
    monkeypatch.setenv("TICKFLOW_KAFKA_CONTROLLER_PORT", "19700")
    assert BrokerConfig.from_env(tmp_path / "explicit").resolved_controller_port == 19700
    assert BrokerConfig.from_env(tmp_path / "explicit").state_dir == tmp_path / "explicit"
    monkeypatch.setenv("TICKFLOW_KAFKA_PORT", "")  # empty counts as unset, like ${VAR:-default}
    assert BrokerConfig.from_env().port == 9092
    monkeypatch.setenv("TICKFLOW_KAFKA_PORT", "nine")
    with pytest.raises(LocalBrokerError, match="TICKFLOW_KAFKA_PORT"):
        BrokerConfig.from_env()


def test_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert KAFKA_VERSION.count(".") == 2
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert BrokerConfig(tmp_path).resolved_cache_dir == tmp_path / "xdg" / "tickflow" / f"kafka-{KAFKA_VERSION}"
    monkeypatch.setenv("TICKFLOW_CACHE_DIR", str(tmp_path / "tc"))
    assert BrokerConfig.from_env(tmp_path).cache_dir == tmp_path / "tc" / f"kafka-{KAFKA_VERSION}"
    assert BrokerConfig(tmp_path, cache_dir=tmp_path / "mine").resolved_cache_dir == tmp_path / "mine"


def test_stale_garbage_and_foreign_pidfiles_are_not_running(tmp_path: Path) -> None:
    b = LocalBroker(BrokerConfig(tmp_path, port=free_port()))
    assert not b.is_running()
    b.pidfile.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for content in (f"{dead.pid}\n", "", "garbage", "0", "-1"):
        b.pidfile.write_text(content)
        assert not b.is_running(), content
    if Path("/proc/self/cmdline").exists():  # a recycled pid that is not a broker (this very test) is left alone
        b.pidfile.write_text(str(os.getpid()))
        assert not b.is_running()
    b.stop()
    assert not b.pidfile.exists()


def test_ready_needs_the_started_line_and_a_listener(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        b = LocalBroker(BrokerConfig(tmp_path, port=server.getsockname()[1]))
        assert not b.is_ready()
        b.logs_dir.mkdir(parents=True)
        (b.logs_dir / "server.log").write_text("[t] INFO [KafkaRaftServer nodeId=1] Kafka Server starting\n")
        assert not b.is_ready()
        (b.logs_dir / "server.log").write_text("[t] INFO [KafkaRaftServer nodeId=1] Kafka Server started (x)\n")
        assert b.is_ready()
    assert not b.is_ready()  # nothing listens any more


def test_cli_status_bootstrap_and_usage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TICKFLOW_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("TICKFLOW_KAFKA_PORT", str(free_port()))
    assert main(["status"]) == 1 and capsys.readouterr().out == "stopped\n"
    assert main(["bootstrap"]) == 0 and capsys.readouterr().out == f"127.0.0.1:{os.environ['TICKFLOW_KAFKA_PORT']}\n"
    assert main([]) == 2 and main(["launch"]) == 2 and "usage:" in capsys.readouterr().err
    assert main(["stop"]) == 0 and main(["reset"]) == 0


def test_missing_tools_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    b = LocalBroker(BrokerConfig(tmp_path, cache_dir=tmp_path / "cache"))
    with pytest.raises(LocalBrokerError, match="java not found"):
        b.install()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / ".complete").touch()
    b.install()  # cached: nothing to run


def test_install_is_atomic(tmp_path: Path, fake_tools: Path) -> None:
    failing = LocalBroker(BrokerConfig(tmp_path, cache_dir=tmp_path / "FAIL"))
    with pytest.raises(LocalBrokerError, match="Could not resolve"):
        failing.install()
    assert not (tmp_path / "FAIL" / ".complete").exists() and not (tmp_path / "FAIL" / "libs").exists()
    b = LocalBroker(BrokerConfig(tmp_path, cache_dir=tmp_path / "cache"))
    (b.cache_dir / "libs.partial").mkdir(parents=True)  # left over from an interrupted fetch
    b.install()
    assert (b.libs_dir / "kafka_2.13.jar").exists() and (b.cache_dir / ".complete").exists()
    assert not (b.cache_dir / "libs.partial").exists()
    assert f"<kafka.version>{KAFKA_VERSION}</kafka.version>" in (b.cache_dir / "pom.xml").read_text()


def test_start_stop_with_a_fake_broker(broker: LocalBroker, capsys: pytest.CaptureFixture[str]) -> None:
    broker.start(timeout_s=20)
    assert broker.is_running() and broker.is_ready()
    assert (broker.data_dir / "meta.properties").read_text() == "cluster.id=fake-cluster-id"
    assert "KafkaRaftServer=INFO" in broker.log4j_path.read_text()
    pid = int(broker.pidfile.read_text())
    broker.start()
    assert f"already running (pid {pid})" in capsys.readouterr().err
    broker.stop()
    assert not broker.is_running() and not broker.pidfile.exists()
    broker.start(timeout_s=20)  # formatted storage is kept
    assert (broker.logs_dir / "formats").read_text() == "x"
    broker.reset()
    assert not broker.kafka_dir.exists() and "kafka: stopped" in capsys.readouterr().err


def test_start_reports_a_broker_that_exits(broker: LocalBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KAFKA_CRASH", "1")
    with pytest.raises(LocalBrokerError, match=r"(?s)exited during start.*port already in use"):
        broker.start(timeout_s=20)
    assert not broker.pidfile.exists() and not broker.is_running()
