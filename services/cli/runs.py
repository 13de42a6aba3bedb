"""Run commands: start, status, wait, follow, resume, cancel, list runs; pool limits, vacuum, SQL, memory threads."""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from typing import IO, Any

import click
from pydantic import ValidationError

from tickflow.cli.common import client, doing, fail, idempotency_option, print_json
from tickflow.cli.queries import parse_since
from tickflow.events.errors import TickflowError
from tickflow.projections.queries import RunQuery
from tickflow.projections.rows import RUN_STATUSES
from tickflow.settings import Settings

__all__ = [
    "cancel",
    "create_sql_reader",
    "follow",
    "pool_limit",
    "release",
    "result",
    "resume",
    "runs",
    "sql",
    "start",
    "status",
    "thread",
    "vacuum",
    "wait",
]


@click.command()
@click.argument("workflow")
@click.option("--input", "input_json", default="null", help="The run's input, as JSON.")
@click.option("--run-id", default=None, help="Your own run id; starting the same id twice starts one run.")
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the end.")
@click.option("--priority", type=int, default=0, help="Order among runs queued for the same concurrency key.")
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="The workflow version to run (default: the newest registered).")
@click.pass_context
def start(
    ctx: click.Context, workflow: str, input_json: str, run_id: str | None, wait_s: float | None, priority: int,
    version: int | None,
) -> None:
    """Start a run of WORKFLOW and print its id; with --wait, its final status (exit 1 unless it completed)."""
    try:
        value = json.loads(input_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"--input is not valid JSON: {exc}") from None
    try:
        with client(ctx) as c:
            rid = c.start(workflow, value, run_id=run_id, priority=priority, version=version)
            click.echo(rid)
            final = c.wait(rid, timeout=wait_s) if wait_s is not None else None
    except (TickflowError, TimeoutError) as exc:
        fail(exc)
        return
    if final is not None:
        print_json(final.model_dump())
        sys.exit(0 if final.status == "completed" else 1)


#: ``--raw`` of the commands that print a run's input or output: claim-checked values stay references.
raw_option = click.option(
    "--raw", is_flag=True,
    help="Print claim-checked values as their {\"$blob\": {sha256, size}} reference instead of fetching them.",
)


@click.command()
@click.argument("run_id")
@click.option("--events", is_flag=True, help="Also print the run's events from the log projection.")
@raw_option
@click.pass_context
def status(ctx: click.Context, run_id: str, events: bool, raw: bool) -> None:
    """Print a run's status (a claim-checked input or output whole, fetched from the blob store)."""
    try:
        with client(ctx) as c:
            print_json(c.status(run_id, resolve=not raw).model_dump())
            if events:
                for e in c.events(run_id):
                    click.echo(f"{e['seq']:>4} {e['type']:<16} {json.dumps(e['payload'])[:160]}")
    except TickflowError as exc:
        fail(exc)


@click.command()
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


@click.command()
@click.argument("run_id")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@raw_option
@click.pass_context
def wait(ctx: click.Context, run_id: str, timeout: float, raw: bool) -> None:
    """Wait until a run is completed, failed or rejected and print its final status; exit 1 unless it completed."""
    try:
        with client(ctx) as c:
            final = c.wait(run_id, timeout=timeout, resolve=not raw)
    except (TickflowError, TimeoutError) as exc:
        fail(exc)
        return
    print_json(final.model_dump())
    sys.exit(0 if final.status == "completed" else 1)


@click.command()
@click.argument("run_id")
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.option("--out", "out", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the output (JSON) to this file instead of printing it.")
@raw_option
@click.pass_context
def result(ctx: click.Context, run_id: str, timeout: float, out: str | None, raw: bool) -> None:
    """Wait for RUN_ID to end and print its output alone, as JSON — whole, however big (claim-checked outputs are
    fetched from the blob store); exit 1 with the run's error unless it completed."""
    try:
        with client(ctx) as c:
            final = c.wait(run_id, timeout=timeout, resolve=not raw)
    except (TickflowError, TimeoutError) as exc:
        fail(exc)
        return
    if final.status != "completed":
        fail(TickflowError(f"run {run_id} ended {final.status}: {final.error_type}: {final.error_message}"))
    text = json.dumps(final.output, ensure_ascii=False)
    if out is None:
        click.echo(text)
        return
    with open(out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    click.echo(f"wrote the output of {run_id} ({len(text):,} characters) to {out}", err=True)


@click.command()
@click.argument("run_id")
@click.option("--after", type=click.IntRange(min=0), default=None,
              help="Continue after this offset (of the events topic; of the tokens topic with --tokens).")
@click.option("--tokens", is_flag=True, help="Print what the run's LLM calls stream, as they stream, instead.")
@click.pass_context
def follow(ctx: click.Context, run_id: str, after: int | None, tokens: bool) -> None:
    """Print RUN_ID's events as they happen (offset, seq, type, payload), until its terminal event.

    Read from the log, so a run started a moment ago is waited for; rerun with --after <last offset> to
    continue without repeats. With --tokens, print the text its LLM calls stream instead, each stream under a
    header naming its step and model, until the run has ended."""
    try:
        with client(ctx) as c:
            if tokens:
                _print_tokens(c.tokens(run_id, after=after))
                return
            for e in c.live(run_id, after=after):
                click.echo(f"{e['offset']:>8} {e['seq']:>4} {e['type']:<16} {json.dumps(e['payload'])[:160]}")
    except TickflowError as exc:
        fail(exc)


def _print_tokens(chunks: Iterator[dict[str, Any]]) -> None:
    current: tuple[Any, ...] | None = None
    for chunk in chunks:
        stream = (chunk["path"], chunk["step_attempt"], chunk["execution"], chunk["stream"], chunk["tool"])
        if stream != current and (chunk["text"] or chunk["tool"]):  # a done chunk carries no text of its own
            what = f"tool call {chunk['tool']}" if chunk["tool"] else "reply"
            click.echo(f"\n── {chunk['path']} · {chunk['model']} · {what} (attempt {chunk['step_attempt']}, "
                       f"request {chunk['stream']}) ──")
            current = stream
        click.echo(chunk["text"], nl=False)
        if chunk["done"]:
            click.echo(f"\n── {chunk['outcome']}{f' ({r})' if (r := chunk['finish_reason']) else ''} ──")
            current = None
@click.command()
@click.argument("run_id")
@click.argument("event")
@click.option("--payload", "payload_json", default="null", help="The event's payload, as JSON.")
@click.option("--payload-file", type=click.File("rb"), default=None,
              help="Read the payload (JSON) from this file ('-': stdin) instead: for one too long for a command line.")
@click.option("--timeout", type=float, default=30.0, show_default=True, help="How long to wait for the answer.")
@idempotency_option
@click.pass_context
def resume(
    ctx: click.Context, run_id: str, event: str, payload_json: str, payload_file: IO[bytes] | None, timeout: float,
    idempotency_key: str | None,
) -> None:
    """Resume RUN_ID, suspended waiting for EVENT; exit 1 with the engine's reason if it refuses. A big payload
    travels through the claim-check (up to the API's TICKFLOW_API_MAX_BODY_BYTES)."""
    source = "--payload-file" if payload_file is not None else "--payload"
    try:
        value = json.loads(payload_file.read() if payload_file is not None else payload_json)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"{source} is not valid JSON: {exc}") from None
    try:
        with client(ctx) as c:
            click.echo(c.resume(run_id, event, value, timeout=timeout, idempotency_key=idempotency_key))
    except (TickflowError, TimeoutError) as exc:
        fail(exc)


@click.command()
@click.argument("run_id")
@click.option("--reason", default="released from the CLI", show_default=True)
@idempotency_option
@click.pass_context
def release(ctx: click.Context, run_id: str, reason: str, idempotency_key: str | None) -> None:
    """Release RUN_ID from quarantine (status 'quarantined': its log could not be folded); it resumes from its last
    good state, the unreadable stretch of its log skipped."""
    try:
        with client(ctx) as c:
            click.echo(c.release(run_id, reason, idempotency_key=idempotency_key))
    except TickflowError as exc:
        fail(exc)


@click.command()
@click.argument("run_id")
@click.option("--reason", default="cancelled from the CLI", show_default=True)
@idempotency_option
@click.pass_context
def cancel(ctx: click.Context, run_id: str, reason: str, idempotency_key: str | None) -> None:
    """Cancel RUN_ID and its children (in-flight steps get a best-effort stop signal)."""
    try:
        with client(ctx) as c:
            click.echo(c.cancel(run_id, reason, idempotency_key=idempotency_key))
    except TickflowError as exc:
        fail(exc)


@click.command("pool-limit")
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


@click.command()
@click.option("--older-than-days", type=float, default=None, help="Remove runs that finished before this.")
@click.option("--blobs", is_flag=True, help="Then delete the claim-check blobs nothing retained refers to.")
@click.option(
    "--grace-minutes", type=float, default=None, help="Never delete a blob put this recently [TICKFLOW_BLOB_GRACE_S]."
)
@click.option("--dry-run", is_flag=True, help="With --blobs: report what would be deleted, delete nothing.")
@click.pass_context
def vacuum(
    ctx: click.Context, older_than_days: float | None, blobs: bool, grace_minutes: float | None, dry_run: bool
) -> None:
    """Delete finished runs from every ClickHouse table: runs, events, steps, LLM calls, ticks (the log keeps them;
    a rebuild restores them), and stacks deleted before the cutoff with their events, ticks and own memory
    threads. Runs in flight are never touched.

    With --blobs, sweep the blob store from here: this process reads the topics (Kafka settings) and the store
    (TICKFLOW_BLOB_URL / TICKFLOW_BLOB_DIR) itself, and deletes the blobs that no retained record, no latest state
    snapshot and no kept blob refers to, if older than the grace period."""
    if older_than_days is None and not blobs:
        raise click.UsageError("give --older-than-days, --blobs, or both")
    if older_than_days is not None:
        try:
            with client(ctx) as c:
                click.echo(f"{c.vacuum(older_than_days * 86_400)} finished runs removed")
        except TickflowError as exc:
            fail(exc)
    if blobs:
        _sweep(ctx.obj, grace_minutes, dry_run)


def _sweep(settings: Settings, grace_minutes: float | None, dry_run: bool) -> None:
    import asyncio

    from tickflow.runtime.blobstores import describe_blob_store, open_blob_store
    from tickflow.runtime.blobsweep import NothingToMarkFrom, sweep_blobs

    store = open_blob_store(settings)
    grace_s = settings.blob_grace_s if grace_minutes is None else grace_minutes * 60
    try:
        report = asyncio.run(sweep_blobs(settings.kafka, settings.topics, store, grace_s=grace_s, dry_run=dry_run))
    except NothingToMarkFrom as exc:
        fail(exc)
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"blobs in {describe_blob_store(store)}: {report.blobs_before} ({report.bytes_before:,} bytes) before; "
        f"{verb} {report.deleted} ({report.deleted_bytes:,} bytes); kept {report.referenced} referenced, "
        f"{report.young} younger than {grace_s:.0f} s; {report.bytes_after:,} bytes after "
        f"({report.records_read:,} records read)"
    )
    if report.missing:
        click.echo(f"warning: {len(report.missing)} referenced blobs are missing, e.g. {report.missing[0]}", err=True)


def _option(loc: tuple[int | str, ...]) -> str:
    """The option of ``tickflow runs`` that sets the ``RunQuery`` field at ``loc`` (its name, but for --since)."""
    field = str(loc[0]) if loc else "?"
    return "--since" if field == "started_since_ms" else f"--{field}"


@click.command("runs")
@click.option("--status", "status_", type=click.Choice(RUN_STATUSES), default=None,
              help="Only runs in this status (waiting: suspended in a wait node until resumed).")
@click.option("--workflow", default=None, help="Only runs of this workflow.")
@click.option("--since", default=None, help="Only runs started since: 30m, 6h, 7d ago, or epoch ms.")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--offset", type=int, default=0)
@click.pass_context
def runs(
    ctx: click.Context, status_: str | None, workflow: str | None, since: str | None, limit: int, offset: int
) -> None:
    """List runs, newest first: id, workflow, status, steps done, and what each does now (the step it runs, the
    event and wait node it waits for, or its error)."""
    try:
        query = RunQuery(
            status=status_, workflow=workflow, started_since_ms=parse_since(since), limit=limit, offset=offset
        )
    except ValidationError as exc:
        raise click.UsageError("; ".join(f"{_option(e['loc'])}: {e['msg']}" for e in exc.errors())) from None
    try:
        with client(ctx) as c:
            for r in c.list_runs(query):
                click.echo(f"{r.run_id:<34} {r.workflow:<12} {r.status:<10} {r.steps_completed}/{r.steps_total} "
                           f"{doing(r)}".rstrip())
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


@click.command("sql")
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


@click.command("create-sql-reader")
@click.option("--user", default="tickflow_reader", show_default=True, help="The ClickHouse user to create.")
@click.option("--password", envvar="TICKFLOW_SQL_READER_PASSWORD", prompt=True, hide_input=True,
              confirmation_prompt=True, help="Its password (or TICKFLOW_SQL_READER_PASSWORD; asked when unset).")
@click.option("--print-only", is_flag=True, help="Print the statements (password masked) instead of running them.")
@click.pass_context
def create_sql_reader(ctx: click.Context, user: str, password: str, print_only: bool) -> None:
    """Create the read-only ClickHouse user /sql connects as on a ClickHouse server (run as an admin, with
    TICKFLOW_CLICKHOUSE_URL naming one). It may SELECT and SHOW tickflow's own tables and nothing else; then set
    TICKFLOW_CLICKHOUSE_SQL_URL=clickhouse://USER:PASSWORD@HOST:PORT on the API's processes."""
    from tickflow.projections.sql import reader_statements

    settings = ctx.obj
    statements = reader_statements(user, password, settings.clickhouse_database)
    if print_only:
        for statement in reader_statements(user, "********", settings.clickhouse_database):
            click.echo(statement + ";")
        return
    if not settings.clickhouse_url:
        raise click.UsageError("set TICKFLOW_CLICKHOUSE_URL to the server (as an admin user): embedded chDB has no "
                               "users, and /sql there needs none")
    import clickhouse_connect

    admin = clickhouse_connect.get_client(dsn=settings.clickhouse_url)
    try:
        for statement in statements:
            admin.command(statement)
    finally:
        admin.close()
    click.echo(f"created {user}: set TICKFLOW_CLICKHOUSE_SQL_URL=clickhouse://{user}:<password>@<host>:<port> "
               "on the API's processes", err=True)


def _cell(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 1] + "…"
