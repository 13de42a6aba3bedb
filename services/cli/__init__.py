"""The ``tickflow`` command (click): ``main`` is the group; each module adds one family of commands."""

from tickflow.cli.main import main

__all__ = ["main"]
