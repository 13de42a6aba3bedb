"""``tickflow replay``: time travel, forks, the engine's refold-vs-live check, projection rebuilds."""

from __future__ import annotations

import sys

import click

from tickflow.cli.common import client, fail, print_json
from tickflow.core.state import state_to_json
from tickflow.events.errors import TickflowError
from tickflow.projections.models import RebuildReport

__all__ = ["replay", "report_lines"]


@click.group()
def replay() -> None:
    """Time travel, forks, the check that the engine's live state equals a refold of the log, and the divergence
    diff of recorded runs against new code (diff, check)."""


@replay.command("state")
@click.argument("run_id")
@click.option("--at-seq", type=int, default=None, help="After this event (default: the last visible one).")
@click.option("--spec", "with_spec", is_flag=True, help="Also print the workflow spec the run pinned.")
@click.pass_context
def replay_state(ctx: click.Context, run_id: str, at_seq: int | None, with_spec: bool) -> None:
    """Print RUN_ID's state after event --at-seq: the fold of its events up to there."""
    try:
        with client(ctx) as c:
            data = state_to_json(c.state_at(run_id, at_seq))
    except TickflowError as exc:
        fail(exc)
        return
    if not with_spec:
        data.pop("spec", None)
    print_json(data)


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
                print_json(c.wait(rid, timeout=wait_s).model_dump())
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
        print_json(report.model_dump())
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
@click.option(
    "--table",
    default=None,
    help="Rebuild one projection (events, runs, steps, llm_calls, stacks, ticks, messages) and keep the others.",
)
@click.option("--wait", "wait_s", type=float, default=None, help="Wait up to this many seconds for the report.")
@click.option("--json", "as_json", is_flag=True, help="Print the job (and report) as JSON.")
@click.pass_context
def replay_rebuild(ctx: click.Context, no_swap: bool, table: str | None, wait_s: float | None, as_json: bool) -> None:
    """Rebuild every projection (or one, --table) from the log into a fresh database, check every table against an
    independent fold of the log and swap it in without stopping queries; exit 1 when a table or partition differs
    (nothing is swapped then)."""
    try:
        with client(ctx) as c:
            job = c.rebuild(swap=not no_swap, wait=wait_s, table=table)
    except (TickflowError, TimeoutError) as exc:
        fail(exc)
        return
    if as_json:
        print_json(job.model_dump())
    elif job.report is None:
        click.echo(f"rebuild {job.job_id} started into {job.database}; follow it with --wait or the API")
    else:
        for line in report_lines(job.report):
            click.echo(line)
        if job.error:
            click.echo(f"failed: {job.error}")
    sys.exit(1 if job.state == "failed" else 0)


@replay.command("rollback")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def replay_rollback(ctx: click.Context, as_json: bool) -> None:
    """Swap back to the projection database the last rebuild replaced (caught up to the log first); running it
    again swaps forward."""
    try:
        with client(ctx) as c:
            report = c.rollback()
    except TickflowError as exc:
        fail(exc)
        return
    if as_json:
        print_json(report.model_dump())
    else:
        click.echo(
            f"rolled back to {report.database} (from {report.previous_database}): caught up "
            f"{report.caught_up_events:,} events, projector held {report.paused_ms:.0f} ms"
        )


def report_lines(r: RebuildReport) -> list[str]:
    """A rebuild report as ``tickflow replay rebuild`` prints it."""
    what = f"projection {r.table}" if r.table else "every projection"
    lines = [
        f"rebuilt {what}: {r.events:,} events into {r.database} in {r.duration_s:.1f} s ({r.events_per_s:,.0f}/s)",
        "rows: " + ", ".join(f"{t}={n:,}" for t, n in r.tables.items()),
    ]
    if r.table_checks:
        good = [c.table for c in r.table_checks if c.ok]
        lines.append(f"checked against an independent {r.check_method} of the log: {len(good)} of "
                     f"{len(r.table_checks)} tables equal")
    lines += [f"  MISMATCH {m}" for m in r.mismatches]
    if r.swapped:
        lines.append(f"swapped in (previous: {r.previous_database}; `tickflow replay rollback` swaps back)")
    elif r.mismatches:
        lines.append(f"REFUSED: not swapped; {r.database} is kept for inspection until the next swap")
    else:
        lines.append("not swapped")
    return lines
