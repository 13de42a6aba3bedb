"""What every command shares: the API client from the settings, error exit, JSON output, the registry loader."""

from __future__ import annotations

import importlib
import json
from typing import Any

import click

from tickflow.settings import Settings
from tickflow.workflow import Registry

__all__ = ["client", "fail", "load_registry", "print_json"]


def load_registry(spec: str) -> Registry:
    """Import ``module:attribute`` (like uvicorn's app path) and return the Registry it names."""
    module_name, _, attr = spec.partition(":")
    registry = getattr(importlib.import_module(module_name), attr or "registry")
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
