"""The ``tickflow`` command: bring everything up, start runs, read their status, run the demo."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import os
import subprocess
import sys
from typing import Any

import click

from services.config import REPO_ROOT, Settings
from services.errors import TickflowError
from services.runtime import ALL_ROLES, serve
from services.workflow import Registry

__all__ = ["main"]

KAFKA_SCRIPT = REPO_ROOT / "infra" / "kafka.sh"


def load_registry(spec: str) -> Registry:
    """Import ``module:attribute`` (like uvicorn's app path) and return the Registry it names."""
    module_name, _, attr = spec.partition(":")
    registry = getattr(importlib.import_module(module_name), attr or "registry")
    if not isinstance(registry, Registry):
        raise click.BadParameter(f"{spec} is a {type(registry).__name__}, not a tickflow Registry")
    return registry


def kafka(action: str) -> None:
    result = subprocess.run([str(KAFKA_SCRIPT), action], check=False)
    if result.returncode != 0 and action != "status":
        raise click.ClickException(f"infra/kafka.sh {action} failed (exit {result.returncode})")


def client(ctx: click.Context) -> Any:
    from services.client import Client

    s: Settings = ctx.obj
    return Client(s.api_url, token=s.api_token)


def fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


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
    ctx.obj = Settings.from_env()


@main.command()
@click.argument("action", type=click.Choice(["install", "start", "stop", "status", "reset"]))
def broker(action: str) -> None:
    """Manage the local one-node Kafka (KRaft) broker of this checkout."""
    kafka(action)


@main.command()
@click.option(
    "--app",
    "app_path",
    default="services.demo:registry",
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
        kafka("start")
    registry = load_registry(app_path)
    chosen = frozenset(r.strip() for r in roles.split(",") if r.strip())
    if "TICKFLOW_POOLS" not in os.environ:  # serve every pool the app's workflows use (e.g. an agent's llm pool)
        settings = settings.with_(pools=tuple(sorted(set(settings.pools) | registry.pools())))
    logging.getLogger("tickflow").setLevel(logging.INFO)
    click.echo(f"tickflow up: {', '.join(sorted(chosen))}; API on {settings.api_url}", err=True)
    asyncio.run(serve(settings, registry, chosen))


@main.command()
@click.argument("workflow")
@click.option("--input", "input_json", default="null", help="The run's input, as JSON.")
@click.option("--run-id", default=None, help="Your own run id; starting the same id twice starts one run.")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the end.")
@click.option("--priority", type=int, default=0, help="Order among runs queued for the same concurrency key.")
@click.pass_context
def start(
    ctx: click.Context, workflow: str, input_json: str, run_id: str | None, wait_s: float | None, priority: int
) -> None:
    """Start a run of WORKFLOW and print its id."""
    try:
        value = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--input is not valid JSON: {exc}") from None
    try:
        with client(ctx) as c:
            rid = c.start(workflow, value, run_id=run_id, priority=priority)
            click.echo(rid)
            if wait_s is not None:
                _print_status(c.wait(rid, timeout=wait_s).model_dump())
    except (TickflowError, TimeoutError) as exc:
        fail(exc)


def _print_status(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@main.command()
@click.argument("run_id")
@click.option("--events", is_flag=True, help="Also print the run's events from the log projection.")
@click.pass_context
def status(ctx: click.Context, run_id: str, events: bool) -> None:
    """Print a run's status."""
    try:
        with client(ctx) as c:
            _print_status(c.status(run_id).model_dump())
            if events:
                for e in c.events(run_id):
                    click.echo(f"{e['seq']:>4} {e['type']:<16} {json.dumps(e['payload'])[:160]}")
    except TickflowError as exc:
        fail(exc)


@main.command()
@click.argument("thread_id")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.pass_context
def thread(ctx: click.Context, thread_id: str, limit: int) -> None:
    """Print the last messages of an agent memory thread, oldest first."""
    try:
        with client(ctx) as c:
            for m in c.thread_messages(thread_id, limit=limit):
                click.echo(f"{m['created_at_ms']:>14} {m['role']:<9} {m['agent']:<12} {m['content'][:160]}")
    except TickflowError as exc:
        fail(exc)


@main.command()
@click.argument("run_id")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.pass_context
def wait(ctx: click.Context, run_id: str, timeout: float) -> None:
    """Wait until a run is completed, failed or rejected; exit 1 unless it completed."""
    try:
        with client(ctx) as c:
            final = c.wait(run_id, timeout=timeout)
    except (TickflowError, TimeoutError) as exc:
        fail(exc)
        return
    _print_status(final.model_dump())
    sys.exit(0 if final.status == "completed" else 1)


@main.command()
@click.argument("run_id")
@click.option("--after", type=click.IntRange(min=0), default=None, help="Continue after this event offset.")
@click.pass_context
def follow(ctx: click.Context, run_id: str, after: int | None) -> None:
    """Print RUN_ID's events as they happen (offset, seq, type, payload), until its terminal event.

    Read from the log, so a run started a moment ago is waited for; rerun with --after <last offset> to
    continue without repeats."""
    try:
        with client(ctx) as c:
            for e in c.live(run_id, after=after):
                click.echo(f"{e['offset']:>8} {e['seq']:>4} {e['type']:<16} {json.dumps(e['payload'])[:160]}")
    except TickflowError as exc:
        fail(exc)


@main.command()
@click.argument("run_id")
@click.argument("event")
@click.option("--payload", "payload_json", default="null", help="The event's payload, as JSON.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="How long to wait for the answer.")
@click.pass_context
def resume(ctx: click.Context, run_id: str, event: str, payload_json: str, timeout: float) -> None:
    """Resume RUN_ID, suspended waiting for EVENT; exit 1 with the engine's reason if it refuses."""
    try:
        value = json.loads(payload_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--payload is not valid JSON: {exc}") from None
    try:
        with client(ctx) as c:
            click.echo(c.resume(run_id, event, value, timeout=timeout))
    except (TickflowError, TimeoutError) as exc:
        fail(exc)


@main.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled from the CLI", show_default=True)
@click.pass_context
def cancel(ctx: click.Context, run_id: str, reason: str) -> None:
    """Cancel RUN_ID and its children (in-flight steps get a best-effort stop signal)."""
    try:
        with client(ctx) as c:
            click.echo(c.cancel(run_id, reason))
    except TickflowError as exc:
        fail(exc)


@main.command("pool-limit")
@click.argument("pool")
@click.argument("limit", type=int)
@click.pass_context
def pool_limit(ctx: click.Context, pool: str, limit: int) -> None:
    """Set how many steps each worker of POOL runs at once, at runtime."""
    try:
        with client(ctx) as c:
            c.set_pool_concurrency(pool, limit)
    except TickflowError as exc:
        fail(exc)


@main.command()
@click.option("--older-than-days", type=float, required=True, help="Remove runs that finished before this.")
@click.pass_context
def vacuum(ctx: click.Context, older_than_days: float) -> None:
    """Delete finished runs and their events from ClickHouse (the log keeps them; a rebuild restores them)."""
    try:
        with client(ctx) as c:
            click.echo(f"{c.vacuum(older_than_days * 86_400)} finished runs removed")
    except TickflowError as exc:
        fail(exc)


@main.command("runs")
@click.option("--status", "status_", default=None)
@click.option("--workflow", default=None)
@click.option("--limit", default=20, show_default=True)
@click.option("--offset", default=0)
@click.pass_context
def runs(ctx: click.Context, status_: str | None, workflow: str | None, limit: int, offset: int) -> None:
    """List runs, newest first."""
    try:
        with client(ctx) as c:
            for r in c.list_runs(status=status_, workflow=workflow, limit=limit, offset=offset):
                click.echo(
                    f"{r.run_id:<34} {r.workflow:<12} {r.status:<10} "
                    f"{r.steps_completed}/{r.steps_total} {r.error_message[:60]}"
                )
    except TickflowError as exc:
        fail(exc)


def _param(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    """NAME=VALUE pairs. VALUE is text (ClickHouse parses it as the placeholder's type), except a JSON array,
    which is sent as an array: text like ['a'] would arrive with its quotes escaped and not parse."""
    out: dict[str, Any] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: write NAME=VALUE, matching a {{NAME:Type}} placeholder in the query")
        if value.lstrip().startswith("["):
            try:
                out[name] = json.loads(value)
            except ValueError as exc:
                raise click.BadParameter(
                    f"{item!r}: an array value must be JSON, e.g. {name}='[\"a\"]' ({exc})"
                ) from None
            continue
        out[name] = value
    return out


@main.command("sql")
@click.argument("query")
@click.option(
    "--param",
    "params",
    multiple=True,
    callback=_param,
    help="NAME=VALUE for a {NAME:Type} placeholder; repeatable. Arrays as JSON, e.g. ids='[1, 2]'.",
)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--max-rows", type=click.IntRange(1, 100_000), default=1_000, show_default=True)
@click.option("--timeout", "timeout_s", type=click.FloatRange(0, 60, min_open=True), default=10.0, show_default=True)
@click.pass_context
def sql(ctx: click.Context, query: str, params: dict[str, Any], fmt: str, max_rows: int, timeout_s: float) -> None:
    """Run a read-only SQL QUERY over the projections (tables: runs, events, steps, …; add FINAL for the
    current version of each row). Values go in --param, e.g.
    tickflow sql "SELECT status, count() FROM runs FINAL WHERE workflow = {wf:String} GROUP BY status" --param wf=order
    """
    try:
        with client(ctx) as c:
            result = c.sql(query, params, max_rows=max_rows, timeout_s=timeout_s)
    except TickflowError as exc:
        fail(exc)
        return
    if fmt == "json":
        click.echo(json.dumps(dataclasses.asdict(result), ensure_ascii=False))
        return
    cells = [[_cell(v) for v in row] for row in result.rows]
    widths = [max([len(col), *(len(r[i]) for r in cells)]) for i, col in enumerate(result.columns)]
    click.echo("  ".join(col.ljust(w) for col, w in zip(result.columns, widths, strict=True)).rstrip())
    click.echo("  ".join("-" * w for w in widths))
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    more = f" (truncated at {max_rows}; raise --max-rows)" if result.truncated else ""
    click.echo(f"{len(result.rows)} rows in {result.elapsed_ms:.0f} ms{more}", err=True)


def _cell(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"


@main.command()
@click.option("--scenario", type=click.Choice(["stacks", "orders"]), default="stacks", show_default=True,
              help="stacks: agent stacks x 4 agents ticking (the seed ADR's scenario); orders: order workflows.")
@click.option("--stacks", "stacks", default=100, show_default=True, help="stacks: how many agent stacks.")
@click.option("--seconds", default=60.0, show_default=True, help="stacks: how long they tick before the report.")
@click.option("--interval", default=10.0, show_default=True, help="stacks: seconds between a stack's ticks.")
@click.option("--runs", "count", default=1000, show_default=True, help="orders: how many runs to start.")
@click.option("--no-broker", is_flag=True, help="Do not start the local Kafka.")
@click.pass_obj
def demo(settings: Settings, scenario: str, stacks: int, seconds: float, interval: float, count: int,
         no_broker: bool) -> None:
    """Run the demo, with live progress and a report read from ClickHouse.

    Default: STACKS agent stacks (planner, builder, communicator, reviewer on the offline scripted model — not a
    real LLM) ticking every INTERVAL seconds for SECONDS. --scenario orders: COUNT order workflows end to end.
    """
    if not no_broker:
        kafka("start")
    from services.demo_runner import run_demo, run_stacks_demo

    if scenario == "orders":
        asyncio.run(run_demo(settings, count))
        return
    try:
        asyncio.run(run_stacks_demo(settings, stacks=stacks, seconds=seconds, interval=interval))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.group()
def replay() -> None:
    """Time travel, forks, and the check that the engine's live state equals a refold of the log."""


@replay.command("state")
@click.argument("run_id")
@click.option("--at-seq", type=int, default=None, help="After this event (default: the last visible one).")
@click.option("--spec", "with_spec", is_flag=True, help="Also print the workflow spec the run pinned.")
@click.pass_context
def replay_state(ctx: click.Context, run_id: str, at_seq: int | None, with_spec: bool) -> None:
    """Print RUN_ID's state after event --at-seq: the fold of its events up to there."""
    from services.replay import state_to_json

    try:
        with client(ctx) as c:
            data = state_to_json(c.state_at(run_id, at_seq))
    except TickflowError as exc:
        fail(exc)
        return
    if not with_spec:
        data.pop("spec", None)
    _print_status(data)


@replay.command("fork")
@click.argument("run_id")
@click.option("--at-seq", type=int, required=True, help="Fork from RUN_ID's state after this event.")
@click.option("--run-id", "new_run_id", default=None, help="The new run's id; forking twice with it forks once.")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the fork's end.")
@click.pass_context
def replay_fork(ctx: click.Context, run_id: str, at_seq: int, new_run_id: str | None, wait_s: float | None) -> None:
    """Start a new run from RUN_ID's state at --at-seq and print its id (completed steps do not run again)."""
    try:
        with client(ctx) as c:
            rid = c.fork(run_id, at_seq, new_run_id=new_run_id)
            click.echo(rid)
            if wait_s is not None:
                _print_status(c.wait(rid, timeout=wait_s).model_dump())
    except (TickflowError, TimeoutError) as exc:
        fail(exc)


@replay.command("verify-engine")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
@click.pass_context
def replay_verify_engine(ctx: click.Context, as_json: bool) -> None:
    """Refold the log of the partitions the API's engine owns and compare with its live state; exit 1 on any
    difference."""
    try:
        with client(ctx) as c:
            report = c.verify_engine()
    except TickflowError as exc:
        fail(exc)
        return
    if as_json:
        _print_status(report.model_dump())
    else:
        for p in report.partitions:
            click.echo(
                f"partition {p.partition}: {p.runs_compared} compared, {p.equal} equal, {p.differing_count} differ, "
                f"{len(p.missing_live)} missing live, {len(p.missing_in_log)} missing in the log, "
                f"{p.expired} expired, {p.started_after_capture} started after the capture"
            )
            for d in p.differing:
                click.echo(f"  {d.run_id}: first difference at {d.first_path} (live seq {d.live_seq})")
        verdict = "live state equals the refold" if report.ok else "DIFFERENCES FOUND"
        click.echo(f"{report.runs_compared} runs compared in {report.duration_ms:.0f} ms: {verdict}")
    sys.exit(0 if report.ok else 1)


@replay.command("rebuild")
@click.option("--no-swap", is_flag=True, help="Build and verify only; keep serving the current database.")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the report.")
@click.option("--json", "as_json", is_flag=True, help="Print the job (and report) as JSON.")
@click.pass_context
def replay_rebuild(ctx: click.Context, no_swap: bool, wait_s: float | None, as_json: bool) -> None:
    """Rebuild every projection from the log into a fresh database, verify it against the log and swap it in
    without stopping queries; exit 1 when verification finds a mismatch (nothing is swapped then)."""
    try:
        with client(ctx) as c:
            job = c.rebuild(swap=not no_swap, wait=wait_s)
    except (TickflowError, TimeoutError) as exc:
        fail(exc)
        return
    if as_json:
        _print_status(job.model_dump())
    elif job.report is None:
        click.echo(f"rebuild {job.job_id} started into {job.database}; follow it with --wait or the API")
    else:
        r = job.report
        click.echo(f"rebuilt {r.events:,} events into {r.database} in {r.duration_s:.1f} s ({r.events_per_s:,.0f}/s)")
        click.echo("rows: " + ", ".join(f"{t}={n:,}" for t, n in r.tables.items()))
        for m in r.mismatches:
            click.echo(f"  MISMATCH {m}")
        if job.error:
            click.echo(f"failed: {job.error}")
        click.echo("swapped in (previous: " + r.previous_database + ")" if r.swapped else "not swapped")
    sys.exit(1 if job.state == "failed" else 0)


from services import cli_queries, cli_stacks  # noqa: E402,F401 - register their commands on ``main``

if __name__ == "__main__":
    # Run as ``python -m services.cli``, this file is ``__main__``; the commands of other modules were registered
    # on ``services.cli.main``, so run that one.
    from services.cli import main as registered_main

    registered_main()
