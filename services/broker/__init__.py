"""A local one-node Apache Kafka broker for development, tests and the demo.

Why a Python package and not a shell script: it ships inside the installed wheel, so ``python -m tickflow.broker
start`` works from any install, not only from a source checkout (the script was resolved from the source tree).

What it runs: Apache Kafka's own jars, fetched once by Maven from Maven Central (``pom.xml`` here pins
``<kafka.version>``, the one place the version is set) into a per-user cache outside any checkout
($TICKFLOW_CACHE_DIR, else $XDG_CACHE_HOME/tickflow, else ~/.cache/tickflow). Nothing is built, no Docker.

Where: a KRaft broker+controller bound to 127.0.0.1 only, with its data, logs and pidfile under the state
directory (``<state_dir>/kafka``; $TICKFLOW_STATE_DIR, default ./.tickflow), so two projects never share a log.

Kafka's own console producer and consumer (``tickflow.broker.tools``) run from a second set of jars beside the
broker's, fetched the first time one is used.
"""

from .launcher import (
    KAFKA_VERSION,
    BrokerConfig,
    LocalBroker,
    LocalBrokerError,
    LocalCluster,
    default_cache_dir,
    main,
    server_properties,
)
from .tools import TOOLS, install_tools, run_tool, tool_command

__all__ = [
    "KAFKA_VERSION",
    "TOOLS",
    "BrokerConfig",
    "LocalBroker",
    "LocalBrokerError",
    "LocalCluster",
    "default_cache_dir",
    "install_tools",
    "main",
    "run_tool",
    "server_properties",
    "tool_command",
]
