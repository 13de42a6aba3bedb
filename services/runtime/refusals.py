"""Why the engine refuses an input: the reasons its dead letters carry, each saying what to send instead.

Anyone may produce commands, so the engine checks what the API checks again, and more (what only the owner of the
run's partition knows: whether an id is taken, whether a run is quarantined). A refused input goes to the dead-letter
topic with one of these reasons, in the transaction of its partition's turn (``Engine._dead_letter``).
"""

from __future__ import annotations

from collections.abc import Mapping

from tickflow.core.lineage import lineage_problem
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import ForkRun, StartRun
from tickflow.events.topics import is_run_id
from tickflow.runtime.snapshots import Quarantine
from tickflow.workflow import Registry

__all__ = ["held_input", "key_mismatch", "unknown_workflow", "unusable_id"]


def key_mismatch(record_key: bytes | None, env: Envelope) -> str | None:
    """Why a record whose Kafka key is not its envelope's key is refused (the key decides the owning partition)."""
    if record_key == env.key.encode():
        return None
    got = "no key" if record_key is None else f"key {record_key[:300].decode(errors='replace')!r}"
    return (
        f"key: the Kafka record has {got}, but its envelope's key is {env.key!r}; send the record with the "
        "envelope's key as its Kafka key (it decides which engine partition owns the run; "
        "kafka-console-producer: --property parse.key=true)"
    )


def unusable_id(env: Envelope, gone: Mapping[str, int]) -> str | None:
    """Why a command or result for an id its partition holds no state of cannot be taken, if it cannot. ``gone``:
    the partition's ids whose run finished and whose state expired (``Partition.gone``)."""
    if env.key in gone:
        return (
            f"run {env.key!r} finished and its state has expired; a run id is never reused, so this "
            f"{env.type} is refused: start a new run with another id"
        )
    if isinstance(env.payload, StartRun | ForkRun) and not is_run_id(env.key):
        return (
            f"key: run id {env.key!r} is not allowed: use 1-256 letters, digits, '_', '.', ':' or '-' "
            "(ids appear in URLs and in derived ids and keys)"
        )
    if isinstance(env.payload, StartRun):
        return lineage_problem(env.key, env.payload.parent_run_id, env.payload.parent_path)
    if isinstance(env.payload, ForkRun):
        return lineage_problem(env.key, None, None)  # a fork is a top-level run of its own
    return None


def unknown_workflow(registry: Registry, start: StartRun) -> str:
    """Why a start of a workflow (or of a version of it) the engine's registry does not hold is refused."""
    if start.version is not None and start.workflow in registry.versions:
        have = ", ".join(map(str, sorted(registry.versions[start.workflow])))
        return f"payload.version: workflow {start.workflow!r} has no version {start.version}; it has {have}"
    known = ", ".join(sorted(registry.specs)) or "none"
    return f"payload.workflow: unknown workflow {start.workflow!r}; registered workflows: {known}"


def held_input(env: Envelope, held: Quarantine) -> str:
    """Why an input other than a ``ReleaseRun`` for a quarantined run is refused, and how to release the run."""
    return (
        f"run {env.key!r} is quarantined ({held.reason}); nothing is decided for it until an operator "
        f"releases it (`tickflow release {env.key}`), resuming from its state at seq {held.state.seq}"
    )
