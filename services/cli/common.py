"""What every command shares: the API client from the settings, error exit, JSON output, the registry loader, and
the few words that say what a run does."""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

import click

from tickflow.settings import Settings
from tickflow.wire import RunStatus
from tickflow.workflow import Registry

__all__ = ["client", "doing", "fail", "idempotency_option", "load_registry", "print_json"]

#: ``--idempotency-key`` of every command: the same command sent again with the same key is applied once.
idempotency_option = click.option(
    "--idempotency-key",
    default=None,
    help="Any string of yours; running the command again with the same key applies it once (safe retries).",
)


def load_registry(spec: str) -> Registry:
    """Import ``module:attribute`` (like uvicorn's app path) and return the Registry it names.

    The current directory is searched first, as ``python -m`` and uvicorn do: an installed ``tickflow`` command
    does not put it on ``sys.path`` itself, and ``tickflow up --app mymodule:registry`` should find ``mymodule.py``.
    """
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # the app itself failed to import one of its own dependencies: show that as it is
        raise click.BadParameter(
            f"cannot import {module_name!r} (from {os.getcwd()}): check --app, or run from the folder holding it"
        ) from None
    registry = getattr(module, attr or "registry", None)
    if registry is None:
        raise click.BadParameter(f"{module_name} has no attribute {attr or 'registry'!r}: check --app")
    if not isinstance(registry, Registry):
        raise click.BadParameter(f"{spec} is a {type(registry).__name__}, not a tickflow Registry")
    return registry


def client(ctx: click.Context) -> Any:
    from tickflow.client import Client  # the SDK; imported late so commands that host roles do not need it

    s: Settings = ctx.obj
    return Client(s.api_url, token=s.api_token)


def fail(exc: Exception) -> None:
    raise click.ClickException(str(exc))


def print_json(data: dict[str, Any]) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def doing(run: RunStatus) -> str:
    """What a run does now, in a few words: the wait node it is suspended in and the event it waits for, the step
    in flight, or why it failed."""
    if run.waiting_for:
        at = f" at {run.waiting_path}" if run.waiting_path else ""  # no path: a row projected before paths
        more = f" (+{len(run.waits) - 1} more)" if len(run.waits) > 1 else ""
        return f"waits for {run.waiting_for}{at}{more}"
    if run.current_step:
        attempt = f" (attempt {run.attempt})" if run.attempt > 1 else ""
        return f"runs {run.current_path}{attempt}"
    return run.error_message[:60]
