"""Apache Kafka's own command-line tools — the console producer and consumer, kafka-topics — against a broker.

Why: tickflow takes commands from any Kafka client, and the proof a team in Java or Go wants is a command written
by a client that knows nothing of tickflow. Apache's console producer is the smallest such client; the console
consumer reads what came of it (the events, the dead letters). ``tickflow broker console-producer …`` runs the
same program as Kafka's ``bin/kafka-console-producer.sh``, with the same options, and ``--bootstrap-server`` filled
in from tickflow's settings when it is not given.

Jars: the broker runs from ``<cache>/libs``, which holds what the broker needs and never changes under a running
broker. The tools run from ``<cache>/tools``, fetched once by ``mvn -P tools``: ``pom.xml``'s ``tools`` profile
adds ``org.apache.kafka:kafka-tools`` to the broker's jars and Maven resolves them together, as Apache's
distribution ships them side by side. Main classes are found in the jars, newest home first (Kafka 4 moved the
console producer from ``kafka.tools`` into kafka-tools' ``org.apache.kafka.tools``).
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tickflow.broker.launcher import KAFKA_VERSION, LocalBrokerError, _log, _require, _resource, _run

__all__ = ["CONFIG_OPTIONS", "TOOLS", "install_tools", "main_class", "run_tool", "tool_command"]

#: Each tool by the name of Apache's script (``kafka-<name>.sh``), with its main class, newest home first.
TOOLS: dict[str, tuple[str, ...]] = {
    "console-producer": ("org.apache.kafka.tools.ConsoleProducer", "kafka.tools.ConsoleProducer"),
    "console-consumer": ("org.apache.kafka.tools.consumer.ConsoleConsumer", "kafka.tools.ConsoleConsumer"),
    "topics": ("org.apache.kafka.tools.TopicCommand", "kafka.admin.TopicCommand"),
}
#: The option through which each tool reads a client properties file (security settings, for one).
CONFIG_OPTIONS = {
    "console-producer": "--producer.config",
    "console-consumer": "--consumer.config",
    "topics": "--command-config",
}
_DONE = ".complete"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One fetch at a time per cache: two tools started together would otherwise fill one directory at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install_tools(cache_dir: Path) -> Path:
    """Fetch the broker's jars and kafka-tools into ``cache_dir/tools`` (once), with the tools' log4j settings;
    returns that directory."""
    tools_dir = cache_dir / "tools"
    if (tools_dir / _DONE).is_file():
        return tools_dir
    with _locked(cache_dir / ".tools.lock"):
        if (tools_dir / _DONE).is_file():  # another process fetched them while this one waited
            return tools_dir
        _require("java", "install OpenJDK 17")
        _require("mvn", "install Maven")
        _log(f"fetching Apache Kafka {KAFKA_VERSION}'s command-line tools from Maven Central into {tools_dir}")
        partial = cache_dir / "tools.partial"
        shutil.rmtree(partial, ignore_errors=True)
        pom = cache_dir / "tools-pom.xml"  # Maven needs a real file; the package may live in a zip
        pom.write_text(_resource("pom.xml"), encoding="utf-8")
        _run(["mvn", "-q", "-B", "-f", str(pom), "-P", "tools", "dependency:copy-dependencies",
              f"-DoutputDirectory={partial}"], "mvn -P tools")
        (partial / "log4j.properties").write_text(_resource("tools-log4j.properties"), encoding="utf-8")
        shutil.rmtree(tools_dir, ignore_errors=True)
        partial.rename(tools_dir)
        (tools_dir / _DONE).touch()
    return tools_dir


def main_class(tools_dir: Path, tool: str) -> str:
    """The main class of ``tool`` in these jars: the first of its known homes that one of Kafka's jars holds."""
    if tool not in TOOLS:
        raise LocalBrokerError(f"unknown Kafka tool {tool!r}; one of {', '.join(TOOLS)}")
    entries: set[str] = set()
    for jar in sorted(tools_dir.glob("kafka*.jar")):
        with zipfile.ZipFile(jar) as archive:
            entries.update(archive.namelist())
    for candidate in TOOLS[tool]:
        if candidate.replace(".", "/") + ".class" in entries:
            return candidate
    raise LocalBrokerError(f"none of {', '.join(TOOLS[tool])} is in the jars of {tools_dir}; delete that directory "
                      "to fetch them again")


def _given(args: Sequence[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in args)


def tool_command(tool: str, args: Sequence[str], *, bootstrap: str, cache_dir: Path, plaintext: bool = True,
                 heap: str = "256m") -> list[str]:
    """The ``java`` command line that runs ``tool`` with ``args``, fetching the jars first if needed.

    ``--bootstrap-server`` is added when ``args`` has none. ``plaintext``: whether the settings reach Kafka without
    TLS or SASL; if not, the caller must pass the tool a client properties file (``CONFIG_OPTIONS``), since the
    settings' credentials are not written to a file for it."""
    if tool not in TOOLS:
        raise LocalBrokerError(f"unknown Kafka tool {tool!r}; one of {', '.join(TOOLS)}")
    option = CONFIG_OPTIONS[tool]
    if not plaintext and not _given(args, option):
        raise LocalBrokerError(
            f"tickflow's settings reach Kafka with TLS or SASL: give {tool} a client properties file with "
            f"{option} FILE (security.protocol, sasl.mechanism, sasl.jaas.config, ssl.truststore.*)"
        )
    tools_dir = install_tools(cache_dir)
    extra = [] if _given(args, "--bootstrap-server") else ["--bootstrap-server", bootstrap]
    jvm = [f"-Xmx{heap}", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
           f"-Dlog4j.configuration=file:{tools_dir / 'log4j.properties'}"]
    return ["java", *jvm, "-cp", f"{tools_dir}/*", main_class(tools_dir, tool), *extra, *args]


def run_tool(tool: str, args: Sequence[str], *, bootstrap: str, cache_dir: Path, plaintext: bool = True) -> int:
    """Run ``tool`` in the foreground with this process's stdin, stdout and stderr; its exit code."""
    command = tool_command(tool, args, bootstrap=bootstrap, cache_dir=cache_dir, plaintext=plaintext)
    return subprocess.run(command, check=False).returncode
