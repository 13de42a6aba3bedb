"""``tickflow timeline``, ``tickflow stacks`` and ``tickflow analytics``: the query commands, read through the API."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import click

from tickflow.cli.common import client, doing, fail
from tickflow.events.errors import TickflowError
from tickflow.wire import RunStatus

__all__ = ["parse_since"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_since(text: str | None) -> int | None:
    """``30m``, ``6h``, ``7d`` (ago) or an epoch-ms number → epoch ms."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text!r}: write a duration like 30m, 6h or 7d, or an epoch-ms timestamp")
    return int(time.time() * 1000 - float(match[1]) * _UNIT_MS[match[2]])


def _cost(usd: float | None, unknown: int = 0, illustrative: int = 0, digits: int = 4) -> str:
    """A cost as every view prints it: an unknown price is never $0 (``unknown``, or ``≥ $x + n at unknown
    price``), an illustrative (sample) price says so."""
    if usd is None or (unknown and not usd):
        text = "cost unknown" if usd is None else f"cost unknown ({unknown} call{'s' if unknown != 1 else ''})"
    elif unknown:
        text = f"≥ ${usd:.{digits}f} + {unknown} call{'s' if unknown != 1 else ''} at unknown price"
    else:
        text = f"${usd:.{digits}f}"
    return text + (" (illustrative)" if illustrative else "")


def _ms(ms: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}" if ms else "-"


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole timeline as JSON.")
@click.pass_context
def timeline(ctx: click.Context, run_id: str, as_json: bool) -> None:
    """Every attempt of every step of a run, with timings and errors, then its LLM calls."""
    try:
        with client(ctx) as c:
            data = c.timeline(run_id)
    except TickflowError as exc:
        fail(exc)
        return
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    run = data["run"]
    click.echo(f"{run['run_id']}  {run['workflow']}  {run['status']}  {doing(RunStatus.model_validate(run))}".rstrip())
    for s in data["steps"]:
        error = f"{s['error_type']}: {s['error_message'][:60]}" if s["error_type"] else ""
        click.echo(
            f"  {_ms(s['scheduled_at_ms'])} → {_ms(s['finished_at_ms'])}  {s['path']:<28} #{s['attempt']:<2} "
            f"{s['status']:<10} {s['duration_ms']:>9.1f} ms  {error}"
        )
    for call in data["llm_calls"]:
        click.echo(
            f"  llm {call['path']:<24} call {call['call']} #{call['attempt']} {call['provider']}/{call['model']} "
            f"{call['outcome']} {'~' if call.get('usage_estimated') else ''}{call['tokens_in']}+"
            f"{call['tokens_out']} tok {_cost(call['cost_usd'], 0, call.get('price_illustrative', 0), 6)} "
            f"{call['latency_ms']:.0f} ms{' (fallback)' if call['fallback'] else ''}"
        )


@click.command()
@click.option("--status", "status_", type=click.Choice(["playing", "paused", "deleted"]), default=None)
@click.option("--limit", default=100, show_default=True)
@click.option("--offset", default=0)
@click.pass_context
def stacks(ctx: click.Context, status_: str | None, limit: int, offset: int) -> None:
    """The stack board: play state, ticks, budget use and the last tick's run of every stack."""
    try:
        with client(ctx) as c:
            rows = c.stacks(status=status_, limit=limit, offset=offset)
    except TickflowError as exc:
        fail(exc)
        return
    for s in rows:
        budget = f"/{s['budget_tokens']}" if s["budget_tokens"] is not None else ""
        reason = f" ({s['paused_by']}: {s['pause_reason'][:40]})" if s["status"] == "paused" else ""
        click.echo(
            f"{s['stack_id']:<24} {s['status']:<8}{reason} every {s['interval_s']:g}s  ticks {s['ticks_fired']} "
            f"(+{s['ticks_skipped']} skipped, {s['ticks_failed']} failed)  tokens {s['tokens_used']}{budget}  "
            f"{_cost(s['cost_used_usd'], s.get('calls_price_unknown', 0), s.get('calls_price_illustrative', 0))}  "
            f"last {s['last_run_status'] or '-'}"
        )


@click.command()
@click.argument("kind", type=click.Choice(["usage", "runs", "steps", "errors"]))
@click.option("--by", type=click.Choice(["model", "provider", "agent", "stack"]), default="model", show_default=True)
@click.option("--since", default="24h", show_default=True, help="Window start: 30m, 6h, 7d ago, or epoch ms.")
@click.option("--until", default=None, help="Window end (default: now): a duration ago or epoch ms.")
@click.option("--bucket", type=click.Choice(["minute", "hour", "day", "total"]), default="total", show_default=True)
@click.option("--workflow", default=None)
@click.option("--step", default=None)
@click.pass_context
def analytics(
    ctx: click.Context,
    kind: str,
    by: str,
    since: str,
    until: str | None,
    bucket: str,
    workflow: str | None,
    step: str | None,
) -> None:
    """Tokens and cost (usage), run rates (runs), step latency percentiles (steps) or error rates (errors)."""
    params: dict[str, Any] = {"since_ms": parse_since(since), "until_ms": parse_since(until)}
    if kind == "usage":
        params |= {"by": by, "bucket": bucket}
    elif kind == "runs":
        params |= {"bucket": bucket, "workflow": workflow}
    elif kind == "steps":
        params |= {"workflow": workflow, "step": step}
    try:
        with client(ctx) as c:
            data = c.analytics(kind, **params)
    except TickflowError as exc:
        fail(exc)
        return
    click.echo(json.dumps(data, indent=2, default=str))
