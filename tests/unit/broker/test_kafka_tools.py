"""Kafka's console tools through `tickflow broker`, without a JVM or the network: a fake `mvn` that writes jars
holding the tools' main classes, a fake `java` that records its command line.

What is checked: the tools come from their own jar directory (fetched once, with pom.xml's `tools` profile, never
into the broker's own libs/), the main class is found in the jars (Kafka 3.9's `kafka.tools.ConsoleProducer`, or
Kafka 4's `org.apache.kafka.tools.ConsoleProducer`), `--bootstrap-server` comes from the settings unless given,
and the CLI passes the tool's own options through untouched."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from tickflow.broker import LocalBrokerError, install_tools, tool_command
from tickflow.broker.tools import main_class
from tickflow.cli.main import main as cli

FAKE_MVN = """\
import json, os, pathlib, sys, zipfile
out = pathlib.Path(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("-DoutputDirectory=")))
calls = pathlib.Path(os.environ["FAKE_MVN_CALLS"])
with calls.open("a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
out.mkdir(parents=True)
with zipfile.ZipFile(out / "kafka_2.13-3.9.1.jar", "w") as jar:
    jar.writestr("kafka/tools/ConsoleProducer.class", b"")
if "tools" in sys.argv:
    with zipfile.ZipFile(out / "kafka-tools-3.9.1.jar", "w") as jar:
        jar.writestr("org/apache/kafka/tools/consumer/ConsoleConsumer.class", b"")
        jar.writestr("org/apache/kafka/tools/TopicCommand.class", b"")
"""

FAKE_JAVA = """\
import json, os, sys
print(json.dumps(sys.argv[1:]))
print(sys.stdin.read(), end="")
sys.exit(int(os.environ.get("FAKE_JAVA_EXIT", "0")))
"""


def _script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _script(bin_dir / "mvn", FAKE_MVN)
    _script(bin_dir / "java", FAKE_JAVA)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("FAKE_MVN_CALLS", str(tmp_path / "mvn-calls"))
    monkeypatch.setenv("TICKFLOW_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("TICKFLOW_KAFKA_BOOTSTRAP", "TICKFLOW_KAFKA_SECURITY_PROTOCOL", "TICKFLOW_KAFKA_PORT"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _mvn_calls(tmp: Path) -> list[list[str]]:
    path = tmp / "mvn-calls"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_the_tools_are_fetched_once_with_the_tools_profile_beside_the_brokers_jars(fakes: Path) -> None:
    cache = fakes / "cache" / "kafka-3.9.1"
    (cache / "libs").mkdir(parents=True)
    (cache / "libs" / "kafka_2.13-3.9.1.jar").write_text("the broker's")
    tools = install_tools(cache)
    assert tools == cache / "tools" and (tools / "kafka-tools-3.9.1.jar").is_file()
    assert "log4j.rootLogger=WARN, stderr" in (tools / "log4j.properties").read_text()
    [call] = _mvn_calls(fakes)
    assert call[call.index("-P") + 1] == "tools" and "dependency:copy-dependencies" in call
    assert (cache / "libs" / "kafka_2.13-3.9.1.jar").read_text() == "the broker's"  # a running broker keeps its jars
    install_tools(cache)
    assert len(_mvn_calls(fakes)) == 1  # cached


def test_the_main_class_is_found_in_the_jars_whichever_kafka_moved_it_to(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "kafka_2.13-3.9.1.jar", "w") as jar:
        jar.writestr("kafka/tools/ConsoleProducer.class", b"")
    assert main_class(tmp_path, "console-producer") == "kafka.tools.ConsoleProducer"  # Kafka 3.9
    with zipfile.ZipFile(tmp_path / "kafka-tools-4.1.0.jar", "w") as jar:
        jar.writestr("org/apache/kafka/tools/ConsoleProducer.class", b"")
    assert main_class(tmp_path, "console-producer") == "org.apache.kafka.tools.ConsoleProducer"  # Kafka 4
    with pytest.raises(LocalBrokerError, match="delete that directory"):
        main_class(tmp_path, "console-consumer")
    with pytest.raises(LocalBrokerError, match="unknown Kafka tool 'shell'"):
        main_class(tmp_path, "shell")


def test_the_bootstrap_comes_from_the_settings_unless_given(fakes: Path) -> None:
    cache = fakes / "cache" / "kafka-3.9.1"
    cmd = tool_command("console-consumer", ["--topic", "t"], bootstrap="127.0.0.1:9", cache_dir=cache)
    assert cmd[cmd.index("-cp") + 1] == f"{cache / 'tools'}/*"
    assert cmd[cmd.index("-cp") + 2:] == [
        "org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", "127.0.0.1:9", "--topic", "t",
    ]
    given = tool_command("topics", ["--bootstrap-server=h:1", "--list"], bootstrap="127.0.0.1:9", cache_dir=cache)
    assert given[-2:] == ["--bootstrap-server=h:1", "--list"] and "127.0.0.1:9" not in given
    with pytest.raises(LocalBrokerError, match=r"--producer\.config FILE"):
        tool_command("console-producer", [], bootstrap="b:1", cache_dir=cache, plaintext=False)
    secured = tool_command("console-producer", ["--producer.config", "c.properties"], bootstrap="b:1",
                           cache_dir=cache, plaintext=False)
    assert secured[-2:] == ["--producer.config", "c.properties"]


def test_the_cli_passes_the_tools_options_and_stdin_through_and_exits_with_its_code(
    fakes: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TICKFLOW_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    line = 'refund-1|{"kind": "command"}\n'
    args = ["broker", "console-producer", "--topic", "x.commands", "--property", "parse.key=true",
            "--property", "key.separator=|"]
    # As its own process: the tool is a child that inherits real file descriptors, which CliRunner does not give.
    done = subprocess.run([sys.executable, "-m", "tickflow.cli", *args], input=line, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    argv_line, echoed = done.stdout.split("\n", 1)
    argv = json.loads(argv_line)
    assert argv[argv.index("kafka.tools.ConsoleProducer"):] == [
        "kafka.tools.ConsoleProducer", "--bootstrap-server", "127.0.0.1:19092", "--topic", "x.commands",
        "--property", "parse.key=true", "--property", "key.separator=|",
    ]
    assert echoed == line
    monkeypatch.setenv("FAKE_JAVA_EXIT", "3")
    failed = subprocess.run([sys.executable, "-m", "tickflow.cli", *args], input="", capture_output=True, check=False)
    assert failed.returncode == 3
    refused = CliRunner().invoke(cli, ["broker", "status", "extra"])
    assert refused.exit_code == 2 and "takes no arguments" in refused.output
