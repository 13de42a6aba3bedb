"""``tickflow broker``, ``tickflow up`` and ``tickflow demo``: the commands that host tickflow itself."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys

import click

from tickflow.broker import TOOLS, BrokerConfig, LocalBroker, LocalBrokerError, LocalCluster, install_tools, run_tool
from tickflow.cli.common import load_registry
from tickflow.node import ALL_ROLES, serve
from tickflow.settings import Settings

__all__ = ["broker", "demo", "kafka_tool", "up"]


def kafka(settings: Settings, action: str, brokers: int = 1, secure: bool | None = None) -> None:
    """Run ``action`` on the local broker (or, with ``brokers`` > 1, the local KRaft cluster) whose data lives
    under the settings' state directory."""
    # Where and on which port come from the settings (so ``Settings(kafka_port=...)`` is honoured too); the
    # launcher's own knobs (heap, controller port, jar cache) from its environment variables.
    config = dataclasses.replace(BrokerConfig.from_env(settings.state_dir), port=settings.kafka_port)
    if secure is not None:
        config = dataclasses.replace(config, secure=secure)
    local: LocalBroker | LocalCluster = LocalBroker(config) if brokers == 1 else LocalCluster(config, brokers)
    bootstrap = local.bootstrap if isinstance(local, LocalCluster) else local.config.bootstrap
    try:
        if action == "status":
            ready = local.is_ready() if isinstance(local, LocalCluster) else local.is_running() and local.is_ready()
            click.echo(f"running {bootstrap}" if ready else "stopped")
            if not ready:
                raise SystemExit(1)
            return
        if action == "bootstrap":
            click.echo(bootstrap)
            return
        if action == "install":  # the broker's jars, and the console tools' (else fetched on their first use)
            LocalBroker(config).install()
            install_tools(config.resolved_cache_dir)
            return
        getattr(local, action)()
    except LocalBrokerError as exc:
        raise click.ClickException(f"kafka {action}: {exc}") from None


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("action", type=click.Choice(["install", "start", "stop", "status", "reset", "bootstrap", *TOOLS]))
@click.argument("tool_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--brokers", type=click.IntRange(1, 9), default=1, show_default=True, envvar="TICKFLOW_KAFKA_BROKERS",
              help="Nodes of the local KRaft cluster (3: ports 9092, 9094, 9096; replication 3, min ISR 2).")
@click.option("--secure", is_flag=True, default=None, envvar="TICKFLOW_KAFKA_SECURE",
              help="One node with a SASL_SSL listener (TLS from keytool, SCRAM-SHA-512 users); clients' settings are "
                   "written to <state dir>/kafka/tls/client.env.")
@click.pass_obj
def broker(settings: Settings, action: str, tool_args: tuple[str, ...], brokers: int, secure: bool | None) -> None:
    """Manage the local Kafka (KRaft) of this checkout: one broker, or a cluster of --brokers nodes; bootstrap
    prints the servers to give TICKFLOW_KAFKA_BOOTSTRAP.

    console-producer, console-consumer and topics run Apache Kafka's own tools (kafka-console-producer.sh …) with
    the options that follow, against TICKFLOW_KAFKA_BOOTSTRAP unless --bootstrap-server is given; their jars are
    fetched the first time. E.g. `tickflow broker console-producer --topic tickflow.commands --property
    parse.key=true --property 'key.separator=|'` reads `<key>|<json>` lines from stdin."""
    if action in TOOLS:
        kafka_tool(settings, action, tool_args)
        return
    if tool_args:
        raise click.UsageError(f"tickflow broker {action} takes no arguments (got {' '.join(tool_args)})")
    kafka(settings, action, brokers, secure)


def kafka_tool(settings: Settings, tool: str, args: tuple[str, ...]) -> None:
    """Run one of Kafka's tools in the foreground and exit with its exit code."""
    cache = BrokerConfig.from_env(settings.state_dir).resolved_cache_dir
    try:
        code = run_tool(tool, args, bootstrap=settings.bootstrap, cache_dir=cache,
                        plaintext=settings.kafka.security_protocol == "PLAINTEXT")
    except LocalBrokerError as exc:
        raise click.ClickException(f"kafka {tool}: {exc}") from None
    raise SystemExit(code)


@click.command()
@click.option(
    "--app",
    "app_path",
    default="tickflow.demo:registry",
    show_default=True,
    help="module:attribute of the Registry holding your workflows.",
)
@click.option(
    "--roles",
    default=",".join(sorted(ALL_ROLES)),
    show_default=True,
    help="Comma-separated roles for this process: engine, worker, projector, api, trigger.",
)
@click.option("--no-broker", is_flag=True, help="Do not start the local Kafka; use TICKFLOW_KAFKA_BOOTSTRAP.")
@click.pass_obj
def up(settings: Settings, app_path: str, roles: str, no_broker: bool) -> None:
    """Bring tickflow up: the local broker (unless --no-broker) and the chosen roles, until Ctrl-C."""
    if not no_broker:
        kafka(settings, "start")
    registry = load_registry(app_path)
    chosen = frozenset(r.strip() for r in roles.split(",") if r.strip())
    if "TICKFLOW_POOLS" not in os.environ:  # serve every pool the app's workflows use (e.g. an agent's llm pool)
        settings = settings.with_(pools=tuple(sorted(set(settings.pools) | registry.pools())))
    logging.getLogger("tickflow").setLevel(logging.INFO)
    click.echo(f"tickflow up: {', '.join(sorted(chosen))}; API on {settings.api_url}", err=True)
    asyncio.run(serve(settings, registry, chosen))


@click.command()
@click.option("--scenario", type=click.Choice(["stacks", "orders"]), default="stacks", show_default=True,
              help="stacks: agent stacks x 4 agents ticking (the seed ADR's scenario); orders: order workflows.")
@click.option("--stacks", "stacks", default=100, show_default=True, help="stacks: how many agent stacks.")
@click.option("--seconds", default=60.0, show_default=True, help="stacks: how long they tick before the report.")
@click.option("--interval", default=10.0, show_default=True, help="stacks: seconds between a stack's ticks.")
@click.option("--runs", "count", default=1000, show_default=True, help="orders: how many runs to start.")
@click.option("--no-broker", is_flag=True, help="Do not start the local Kafka.")
@click.option("--serve/--no-serve", "keep_serving", default=None,
              help="Keep serving the dashboard after the report until Ctrl-C (default: when run in a terminal).")
@click.pass_obj
def demo(settings: Settings, scenario: str, stacks: int, seconds: float, interval: float, count: int,
         no_broker: bool, keep_serving: bool | None) -> None:
    """Run the demo, with live progress and a report read from ClickHouse.

    Default: STACKS agent stacks (planner, builder, communicator, reviewer on the offline scripted model — not a
    real LLM) ticking every INTERVAL seconds for SECONDS. --scenario orders: COUNT order workflows end to end.
    """
    if not no_broker:
        kafka(settings, "start")
    from tickflow.demo.runner import run_demo, run_stacks_demo

    if scenario == "orders":
        asyncio.run(run_demo(settings, count))
        return
    try:
        serve_after = sys.stdin.isatty() and sys.stdout.isatty() if keep_serving is None else keep_serving
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                run_stacks_demo(settings, stacks=stacks, seconds=seconds, interval=interval, keep_serving=serve_after)
            )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
