"""``tickflow export``: the log's records of a time window, as Kafka holds them, in a JSONL or Parquet file with a
manifest of counts and checksums; ``tickflow export verify`` checks one later (see ``tickflow.runtime.export``).

It talks to Kafka directly, not to the API: an audit reads the source of truth, not a projection of it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from tickflow.cli.common import print_json
from tickflow.runtime.export import (
    DEFAULT_SKEW_MS,
    TOPIC_KINDS,
    ExportError,
    Format,
    export_log,
    manifest_path_for,
    verify_against_log,
    verify_file,
)
from tickflow.runtime.export_formats import ExportFormatError, parse_time
from tickflow.settings import Settings

__all__ = ["export"]


@click.group(invoke_without_command=True)
@click.option("--since", default=None, help="Start of the window: ISO 8601 time (UTC without a zone), 2h / 7d ago, "
              "or epoch ms. Required unless a subcommand is given.")
@click.option("--until", default="now", show_default=True, help="End of the window (excluded), same forms.")
@click.option("--run", "run_id", default=None, help="Only the records of this run (keyed by its id).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "parquet"]), default="jsonl", show_default=True)
@click.option("--topic", "kinds", multiple=True, type=click.Choice(TOPIC_KINDS), help="Topic(s) to export "
              "(repeatable; default: events).")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The file to write (default: tickflow-export-<time>.<format> here); the manifest goes beside it "
              "as <file>.manifest.json.")
@click.option("--skew-ms", type=click.IntRange(min=0), default=DEFAULT_SKEW_MS, show_default=True,
              help="Clock-skew allowance: each partition is read up to the first record stamped this long after "
              "--until.")
@click.pass_context
def export(
    ctx: click.Context,
    since: str | None,
    until: str,
    run_id: str | None,
    fmt: Format,
    kinds: tuple[str, ...],
    out: Path | None,
    skew_ms: int,
) -> None:
    """Export the log's records stamped in [--since, --until) exactly as Kafka holds them (value bytes, topic,
    partition, offset, key, timestamp; committed records only), with a manifest of counts and checksums."""
    if ctx.invoked_subcommand is not None:
        return
    if since is None:
        raise click.UsageError("give --since (or a subcommand: tickflow export verify MANIFEST)")
    now_ms = int(time.time() * 1000)
    try:
        since_ms, until_ms = parse_time(since, now_ms), parse_time(until, now_ms)
    except ExportFormatError as exc:
        raise click.BadParameter(str(exc)) from None
    settings: Settings = ctx.obj
    if out is None:
        out = Path(f"tickflow-export-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now_ms / 1000))}.{fmt}")
    try:
        manifest = asyncio.run(
            export_log(
                settings.kafka, settings.topics, out, since_ms=since_ms, until_ms=until_ms, fmt=fmt, run_id=run_id,
                kinds=kinds or ("events",), skew_ms=skew_ms,
            )
        )
    except (ExportError, ExportFormatError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"exported {manifest['records']:,} records to {out} ({manifest['file']['bytes']:,} bytes)")
    click.echo(f"manifest: {manifest_path_for(out)}  content sha256 {manifest['content_sha256']}")


@export.command("verify")
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--against-log", is_flag=True, help="Also read the log again over the manifest's offset ranges and "
              "check it still holds exactly the exported records.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def verify(ctx: click.Context, manifest: Path, against_log: bool, as_json: bool) -> None:
    """Check an export against its MANIFEST (the file's checksum, every record's order, window and filters, the
    counts and content checksums); exit 1 on any difference."""
    result = verify_file(manifest)
    if against_log and result.manifest:
        settings: Settings = ctx.obj
        asyncio.run(verify_against_log(settings.kafka, result))
    if as_json:
        print_json({"ok": result.ok, "records": result.records, "problems": result.problems})
    else:
        for problem in result.problems:
            click.echo(f"FAILED: {problem}")
        if result.ok:
            checked = " and against the log" if against_log else ""
            digest = result.manifest["content_sha256"]
            click.echo(f"verified{checked}: {result.records:,} records, content sha256 {digest}")
    sys.exit(0 if result.ok else 1)
