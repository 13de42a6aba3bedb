"""``tickflow replay diff`` and ``replay check``: would the code in ``--app`` decide recorded runs differently?

Both run the diff here, in the CLI's process, with the code ``--app`` names (typically a CI job's new checkout);
the API only hands over each run's events and inputs. ``check`` exits 1 on any divergence, on any run in flight
that needs a function the code lacks, and on a run whose inputs are gone, so it can gate a deploy.
"""

from __future__ import annotations

import sys

import click

from tickflow.cli.common import client, fail, load_registry, print_json
from tickflow.cli.replay import replay
from tickflow.core.divergence import SpecChoice
from tickflow.events.errors import TickflowError

__all__ = ["replay_check", "replay_diff"]

_app = click.option("--app", "app", required=True, help="The code to check, as module:registry (e.g. myapp:registry).")
_spec = click.option(
    "--spec",
    "spec",
    type=click.Choice(["pinned", "registry"]),
    default="pinned",
    show_default=True,
    help="pinned: runs keep the spec they pinned, as after a deploy; registry: start them on the spec --app has.",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")


@replay.command("diff")
@click.argument("run_id")
@_app
@_spec
@_json
@click.pass_context
def replay_diff(ctx: click.Context, run_id: str, app: str, spec: SpecChoice, as_json: bool) -> None:
    """Re-drive RUN_ID's recorded inputs through --app's decider; print the first decision that differs (seq,
    event expected vs produced) or "identical". Exit 1 unless identical."""
    code = load_registry(app)
    try:
        with client(ctx) as c:
            report = c.diff(run_id, code, spec=spec)
    except TickflowError as exc:
        fail(exc)
        return
    if as_json:
        print_json({**report.model_dump(), "identical": report.identical})
    else:
        click.echo(report.verdict())
        if report.spec_change is not None:
            click.echo(f"(spec changed: pinned {report.spec_change[0]}, --app's {report.spec_change[1]})")
    sys.exit(0 if report.identical else 1)


@replay.command("check")
@_app
@click.option("--workflow", "workflow", required=True, help="Check runs of this workflow.")
@click.option("--last", "last", type=click.IntRange(min=1), default=None, help="The N runs started last.")
@click.option("--in-flight", "in_flight", is_flag=True, help="Every run still in flight (running, waiting or failing).")
@_spec
@_json
@click.pass_context
def replay_check(
    ctx: click.Context, app: str, workflow: str, last: int | None, in_flight: bool, spec: SpecChoice, as_json: bool
) -> None:
    """The deploy gate: diff many runs of --workflow against --app; list what runs in flight still need that
    --app lacks; exit 1 on any divergence or missing function."""
    if last is None and not in_flight:
        raise click.UsageError("say which runs to check: --last N, --in-flight, or both")
    code = load_registry(app)
    try:
        with client(ctx) as c:
            report = c.check(code, workflow, last=last, in_flight=in_flight, spec=spec)
    except TickflowError as exc:
        fail(exc)
        return
    if as_json:
        print_json({**report.model_dump(), "ok": report.ok})
    else:
        for r in report.runs:
            if not r.identical:
                click.echo(r.verdict())
        missing = report.missing()
        if missing:
            click.echo("needed by runs in flight, missing from --app:")
            for (kind, name), runs in sorted(missing.items()):
                click.echo(f"  {kind} {name!r}: {len(runs)} run(s), e.g. {', '.join(runs[:3])}")
        click.echo(report.summary())
    sys.exit(0 if report.ok else 1)
