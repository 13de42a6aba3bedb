"""Record ``v2_decisions.jsonl``: a scripted input stream and the decisions the v2 decider made for it.

    python -m tests.golden.record_v2      # only when a behaviour change is intended; review the diff

Each line is one input (with its ``now``) and the events it produced. ``tests/unit/core/test_golden.py`` replays
the inputs through the current decider and requires byte-identical events, so any change in what the
engine decides — a nondeterminism, a reordered event, a changed id — fails loudly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tickflow.core.decider import Recover, RunState, Signal, Start, WorkerResult, run
from tickflow.events import CancelRun, Envelope, ErrorInfo, ResumeRun, StartRun, StepErrored, StepSucceeded, encode
from tickflow.workflow import Flow, Registry, Workflow

HERE = Path(__file__).resolve().parent


def plan(order: Any) -> Any:
    return order


def pack(order: Any) -> Any:
    return order


def ship(order: Any) -> Any:
    return order


def refund(order: Any) -> Any:
    return order


def is_rush(scope: Any) -> bool:
    return bool(scope["value"].get("rush"))


def registry() -> Registry:
    reg = Registry()
    reg.add(
        Workflow("golden2", on_failure=refund)
        .step(plan, max_attempts=3, backoff_s=2)
        .parallel(a=Flow().step(pack), b=Flow().sleep(60))
        .branch((is_rush, Flow().step(ship, name="rush")), otherwise=Flow().wait_for_event("go", timeout_s=600))
        .foreach(Flow().step(ship), input="steps.plan.items", concurrency=2)
    )
    return reg


def script() -> list[tuple[int, str, Any]]:
    """(now, kind, payload) for run g2; results name their path and attempt."""

    def ok(p: str, out: Any, a: int = 1) -> StepSucceeded:
        return StepSucceeded(path=p, step=p.rsplit("/", 1)[-1], attempt=a, output=out, duration_ms=1)

    err = StepErrored(path="plan", step="plan", attempt=1, error=ErrorInfo(type="IOError", message="x"), duration_ms=1)
    return [
        (1_000, "start", StartRun(workflow="golden2", input={"items": [1, 2, 3]})),
        (1_010, "result", err),
        (2_000, "recover", None),
        (3_100, "recover", None),
        (3_200, "result", ok("plan", {"items": [1, 2, 3]}, 2)),
        (3_300, "result", ok("a", "packed")),
        (63_300, "recover", None),
        (63_400, "signal", ResumeRun(event="go", payload="nope")),
        (63_500, "signal", ResumeRun(event="go", payload={"go": True})),
        (63_600, "result", ok("foreach1[1]/ship", 2)),
        (63_700, "result", ok("foreach1[0]/ship", 1)),
        (63_800, "signal", CancelRun(reason="enough")),
        (63_900, "result", ok("foreach1[2]/ship", 3)),
    ]


def replay(reg: Registry) -> list[dict[str, Any]]:
    spec = reg.specs["golden2"]
    state = RunState("g2")
    lines: list[dict[str, Any]] = []
    for i, (now, kind, payload) in enumerate(script()):
        env = Envelope.wrap(payload, id=f"in-{i}", key="g2", occurred_at_ms=now) if payload is not None else None
        if kind == "start":
            assert env is not None
            inp: Any = Start(env, spec)
        elif kind == "result":
            assert env is not None
            inp = WorkerResult(env)
        elif kind == "signal":
            assert env is not None
            inp = Signal(env)
        else:
            inp = Recover(causation_id=f"timer/{now}")
        d = run(state, inp, now, reg)
        state = d.state
        lines.append(
            {
                "now": now,
                "input": kind,
                "events": [orjson.loads(encode(e)) for e in d.events],
            }
        )
    return lines


if __name__ == "__main__":
    from tests.golden import record_v2  # import under its module name, so function names match the test's

    with open(HERE / "v2_decisions.jsonl", "wb") as f:
        for line in record_v2.replay(record_v2.registry()):
            f.write(orjson.dumps(line, option=orjson.OPT_SORT_KEYS) + b"\n")
    print("recorded", HERE / "v2_decisions.jsonl")
