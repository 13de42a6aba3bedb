"""Named upcasters: old payload shapes → the current schema, applied by the codec when it decodes.

Events are immutable, so a schema change never rewrites the log; instead every change of a payload's shape
bumps its class ``VERSION`` and registers one upcaster per step (v1 → v2, v2 → v3 …). Decoding a record
written at version N runs the chain N → current. Upcasters are plain functions over the JSON payload, named
after what they do, and tested against a history recorded by the old code (tests/golden/v1_history.jsonl).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["UPCASTERS", "Upcaster", "upcast"]

JSON = dict[str, Any]
Upcaster = Callable[[JSON], JSON]

#: (record type, from version) → the upcaster to the next version.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

V1_ROOT = "__root__"


def _register(type_: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    def add(fn: Upcaster) -> Upcaster:
        UPCASTERS[(type_, from_version)] = fn
        return fn

    return add


def upcast(type_: str, version: int, current: int, payload: JSON) -> JSON:
    """Bring ``payload`` from ``version`` to ``current``; KeyError names the missing upcaster."""
    while version < current:
        fn = UPCASTERS.get((type_, version))
        if fn is None:
            raise KeyError(f"no upcaster for {type_} v{version} → v{version + 1}")
        payload = fn(payload)
        version += 1
    return payload


def _v1_step_to_node(step: JSON) -> JSON:
    retry = dict(step.get("retry") or {})
    retry.setdefault("max_attempts", 1)
    retry.setdefault("backoff_s", 0.0)  # v1 retried at once; keep that for runs started on v1
    retry.setdefault("jitter", 0.0)
    return {
        "kind": "step",
        "name": step["name"],
        "fn": step["fn"],
        "pool": step.get("pool", "default"),
        "retry": retry,
        "timeout_s": step.get("timeout_s"),
    }


@_register("RunStarted", 1)
def sequential_spec_to_node_tree(p: JSON) -> JSON:
    """v1 specs were a flat list of steps; v2 specs are a node tree. A v1 run becomes one sequence."""
    spec = p["spec"]
    root = {"kind": "sequence", "name": V1_ROOT, "nodes": [_v1_step_to_node(s) for s in spec["steps"]]}
    return {**p, "spec": {"name": spec["name"], "root": root}}


def _index_to_path(p: JSON) -> JSON:
    """v1 addressed a step by its index in the flat list; v2 by its path, which for a v1 step is its name."""
    out = {k: v for k, v in p.items() if k != "index"}
    out["path"] = p["step"]
    return out


for _type in ("StepScheduled", "StepCompleted", "StepFailed", "RunStep", "StepSucceeded", "StepErrored"):
    _register(_type, 1)(_index_to_path)


@_register("RunFailed", 1)
def failed_step_name_to_path(p: JSON) -> JSON:
    out = {k: v for k, v in p.items() if k != "step"}
    out["path"] = p.get("step")
    return out
