"""Run ids derived from another entity are reserved for the start that entity sends.

A child run's id is ``<parent id>:<node path>`` (``core.interpreter.child_run_id``) and a stack's tick run is
``<stack id>.t<n>`` (``core.stacks.tick_run_id``): a re-sent start is then idempotent. The same idempotency would let
anyone who starts such an id first take the child or the tick over for good (the parent's own start is then a
no-op, and the run it waits for never reports to it). So a start that names no parent may not take a derived id,
and a start that names a parent must carry the id derived from it. Pure: the engine checks it before a run exists.
"""

from __future__ import annotations

import re

from tickflow.core.interpreter import child_run_id
from tickflow.core.stacks import is_stack, tick_run_id
from tickflow.events.agents import STACK_PREFIX

__all__ = ["lineage_problem"]

_TICK = re.compile(r"\.t[0-9]+$")
_TICK_PATH = re.compile(r"^tick/([0-9]+)$")


def lineage_problem(run_id: str, parent_run_id: str | None, parent_path: str | None) -> str | None:
    """Why a run ``run_id`` cannot be started with this lineage (None: it can)."""
    if parent_run_id is None:
        if ":" in run_id:
            return (
                f"run id {run_id!r} is reserved: ids with ':' belong to child runs (<parent id>:<node path>); "
                "choose an id without ':'"
            )
        if _TICK.search(run_id):
            return (
                f"run id {run_id!r} is reserved: ids ending in '.t<number>' belong to stack ticks; choose another id"
            )
        return None
    if parent_path is None:
        return f"a start naming parent {parent_run_id!r} must name the parent's node path too"
    if is_stack(parent_run_id):
        tick = _TICK_PATH.match(parent_path)
        expected = tick_run_id(parent_run_id[len(STACK_PREFIX) :], int(tick.group(1))) if tick else None
    else:
        expected = child_run_id(parent_run_id, parent_path)
    if run_id != expected:
        return f"a run started by {parent_run_id!r} at {parent_path!r} is {expected!r}, not {run_id!r}"
    return None
