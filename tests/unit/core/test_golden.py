"""Golden histories: logs recorded by older code must still decode, fold and lead to the same decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from tickflow.core.decider import Recover, RunState, WorkerResult, decide, fold, recovery_effects, run
from tickflow.events import Envelope, StepSucceeded, decode

GOLDEN = Path(__file__).resolve().parents[2] / "golden"


def load(name: str) -> dict[str, list[Envelope]]:
    runs: dict[str, list[Envelope]] = {}
    for line in (GOLDEN / name).read_bytes().splitlines():
        event = decode(line, expect="event")
        runs.setdefault(event.key, []).append(event)
    return runs


def test_v1_history_upcasts_and_folds_to_the_recorded_outcomes() -> None:
    runs = load("v1_history.jsonl")
    states = {run_id: fold(run_id, events) for run_id, events in runs.items()}
    assert {k: s.status for k, s in states.items()} == {"g-ok": "completed", "g-fail": "failed", "g-running": "running"}
    assert states["g-ok"].output == {"n": 4}
    assert states["g-fail"].error is not None and states["g-fail"].error.message == "bad"
    assert states["g-fail"].error_path == "b"
    assert all(e.schema_version == e.payload.VERSION for events in runs.values() for e in events)


def test_v1_runs_in_flight_continue_on_the_v1_spec_after_an_upgrade() -> None:
    """A run started before the upgrade resumes where it stood: nothing re-runs, nothing is skipped."""
    state = fold("g-running", load("v1_history.jsonl")["g-running"])
    assert decide(state, Recover(), 1_700_000_100_000) == []  # nothing was cut short
    [task] = recovery_effects(state, 1_700_000_100_000)
    assert task.envelope.payload.path == "b" and task.envelope.payload.attempt == 1
    outputs: list[Any] = []
    for step in ("b", "c"):
        result = StepSucceeded(path=step, step=step, attempt=1, output={"n": step}, duration_ms=1)
        d = run(state, WorkerResult(Envelope.wrap(result, id=step, key="g-running", occurred_at_ms=0)), 1)
        outputs.extend(e.type for e in d.events)
        state = d.state
    assert outputs == ["StepCompleted", "StepScheduled", "StepCompleted", "NodeCompleted", "RunCompleted"]
    assert state.status == "completed" and state.output == {"n": "c"}
    assert fold("g-running", load("v1_history.jsonl")["g-running"]) != RunState("g-running")


def test_v2_decisions_replay_identically() -> None:
    """Inputs recorded with their times must yield byte-identical events (tests/golden/record_v2.py)."""
    from tests.golden.record_v2 import registry, replay

    recorded = [orjson.loads(line) for line in (GOLDEN / "v2_decisions.jsonl").read_bytes().splitlines()]
    assert replay(registry()) == recorded
    types = [e["type"] for line in recorded for e in line["events"]]
    assert "TimerStarted" in types and "ResumeRejected" in types and types[-1] == "RunCancelled"
