"""``tickflow stack create|update|pause|play|delete|show``: agent stacks from the command line, through the API."""

from __future__ import annotations

import json
from typing import Any

import click

from tickflow.cli.common import client, fail, idempotency_option
from tickflow.events.errors import TickflowError

__all__ = ["stack"]


@click.group()
def stack() -> None:
    """Create agent stacks and play, pause, change or delete them (the board: ``tickflow stacks``)."""


def _call(ctx: click.Context, what: str, fn: str, *args: Any, **kwargs: Any) -> None:
    try:
        with client(ctx) as c:
            command_id = getattr(c, fn)(*args, **kwargs)
    except TickflowError as exc:
        fail(exc)
        return
    click.echo(f"{what} (command {command_id})")


_SETTINGS = [
    click.option("--input", "input_json", default=None, help="The input each tick's run gets, as JSON."),
    click.option("--interval", "interval_s", type=click.FloatRange(1, 86_400), default=None, help="Seconds."),
    click.option("--priority", type=click.IntRange(-1000, 1000), default=None),
    click.option("--overlap", type=click.Choice(["skip", "queue"]), default=None, help="A tick due while one runs."),
    click.option("--idle-backoff-max", "idle_backoff_max_s", type=float, default=None, help="Cap of idle backoff (s)."),
    click.option("--budget-tokens", type=click.IntRange(min=0), default=None),
    click.option("--budget-cost", "budget_cost_usd", type=click.FloatRange(min=0), default=None, help="USD."),
]


def _with_settings(fn: Any) -> Any:
    for option in reversed(_SETTINGS):
        fn = option(fn)
    return fn


def _settings(input_json: str | None, **given: Any) -> dict[str, Any]:
    out = {k: v for k, v in given.items() if v is not None}
    if input_json is not None:
        try:
            out["input"] = json.loads(input_json)
        except ValueError as exc:
            raise click.BadParameter(f"--input is not JSON: {exc}") from None
    return out


@stack.command("create")
@click.argument("stack_id")
@click.argument("workflow")
@_with_settings
@click.option("--paused", is_flag=True, help="Create it paused.")
@idempotency_option
@click.pass_context
def create(
    ctx: click.Context,
    /,
    stack_id: str,
    workflow: str,
    input_json: str | None,
    paused: bool,
    idempotency_key: str | None,
    **given: Any,
) -> None:
    """Create STACK_ID, running WORKFLOW every --interval seconds (default 10)."""
    settings = _settings(input_json, **given) | ({"playing": False} if paused else {})
    _call(
        ctx, f"stack {stack_id} created", "create_stack", stack_id, workflow, idempotency_key=idempotency_key,
        **settings,
    )


@stack.command("update")
@click.argument("stack_id")
@_with_settings
@click.option("--workflow", default=None)
@idempotency_option
@click.pass_context
def update(
    ctx: click.Context, /, stack_id: str, input_json: str | None, idempotency_key: str | None, **given: Any
) -> None:
    """Change STACK_ID's settings; options left out keep their value."""
    changes = _settings(input_json, **given)
    if not changes:
        raise click.UsageError("nothing to change: give at least one option")
    _call(ctx, f"stack {stack_id} updated", "update_stack", stack_id, idempotency_key=idempotency_key, **changes)


@stack.command("pause")
@click.argument("stack_id")
@click.option("--reason", default="paused from the CLI", show_default=True)
@idempotency_option
@click.pass_context
def pause(ctx: click.Context, stack_id: str, reason: str, idempotency_key: str | None) -> None:
    _call(ctx, f"stack {stack_id} paused", "pause_stack", stack_id, reason, idempotency_key=idempotency_key)


@stack.command("play")
@click.argument("stack_id")
@idempotency_option
@click.pass_context
def play(ctx: click.Context, stack_id: str, idempotency_key: str | None) -> None:
    """Resume STACK_ID; its next tick fires at once."""
    _call(ctx, f"stack {stack_id} playing", "play_stack", stack_id, idempotency_key=idempotency_key)


@stack.command("delete")
@click.argument("stack_id")
@idempotency_option
@click.pass_context
def delete(ctx: click.Context, stack_id: str, idempotency_key: str | None) -> None:
    _call(ctx, f"stack {stack_id} deleted", "delete_stack", stack_id, idempotency_key=idempotency_key)


@stack.command("show")
@click.argument("stack_id")
@click.option("--ticks", default=10, show_default=True)
@click.pass_context
def show(ctx: click.Context, stack_id: str, ticks: int) -> None:
    """STACK_ID's state and its most recent ticks, as JSON."""
    try:
        with client(ctx) as c:
            click.echo(json.dumps(c.stack(stack_id, ticks=ticks), indent=2, default=str))
    except TickflowError as exc:
        fail(exc)
