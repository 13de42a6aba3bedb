"""The ``tickflow`` command: bring everything up, start runs, read their status, run the demo.

Each module of this package defines one family of commands; this one is the group that gathers them (and reads
the settings every command gets as its context object).
"""

from __future__ import annotations

import logging

import click
from aiokafka.errors import KafkaError

from tickflow.cli import divergence as _divergence  # noqa: F401 - adds `replay diff` and `replay check`
from tickflow.cli import queries, replay, runs, serve, stacks
from tickflow.cli.export import export as export_command
from tickflow.settings import Settings

__all__ = ["RetriedKafkaErrors", "main"]


class RetriedKafkaErrors(logging.Filter):
    """Log aiokafka's ERROR lines about a retriable Kafka error (one it retries by itself) as WARNING.

    A fresh broker answers ``GroupCoordinatorNotAvailableError`` and the like for its first seconds, and aiokafka
    logs each retry as an ERROR: a first ``tickflow up`` looked broken when it was only waiting. The line is kept (a
    broker that never settles still shows), at the level it deserves, and is dropped where aiokafka's own level is
    above WARNING (``tickflow`` without ``-v``). Errors that are not retriable stay ERRORs.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or not record.name.startswith("aiokafka"):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        if not any(isinstance(a, KafkaError) and a.retriable for a in args):
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        return logging.getLogger(record.name).isEnabledFor(logging.WARNING)


@click.group()
@click.option("--verbose", "-v", is_flag=True, help="Log at INFO level.")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """tickflow: durable workflows on a Kafka log, status and analytics in ClickHouse."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:  # aiokafka warns about transient coordinator moves while a fresh broker settles
        logging.getLogger("aiokafka").setLevel(logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RetriedKafkaErrors())
    ctx.obj = Settings()


for _command in (
    serve.broker,
    serve.up,
    serve.demo,
    runs.start,
    runs.status,
    runs.wait,
    runs.result,
    runs.follow,
    runs.resume,
    runs.cancel,
    runs.release,
    runs.runs,
    runs.pool_limit,
    runs.vacuum,
    runs.sql,
    runs.create_sql_reader,
    runs.thread,
    replay.replay,
    queries.timeline,
    queries.stacks,
    queries.analytics,
    stacks.stack,
):
    main.add_command(_command)
main.add_command(export_command)
