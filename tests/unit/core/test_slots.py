"""Per-key concurrency: the slot entity and the run's side of it, with explicit time and no I/O."""

from __future__ import annotations

from typing import Any

from tickflow.core.decider import RunState, Signal, Start, WorkerResult, effects, fold, recovery_effects, run
from tickflow.core.slots import SlotState, admissions, decide_slot, evolve_slot
from tickflow.events import AcquireSlot, AdmitRun, CancelRun, Envelope, ReleaseSlot, StartRun, StepSucceeded
from tickflow.workflow import Registry, Workflow


def work(x: Any) -> Any:
    return x


def cmd(payload: Any, key: str, id: str) -> Envelope:
    return Envelope.wrap(payload, id=id, key=key, occurred_at_ms=0)


def test_slot_grants_up_to_the_limit_then_queues_by_priority() -> None:
    s = SlotState("slot:w:k")
    log: list[Envelope] = []
    for i, (run_id, prio) in enumerate([("a", 0), ("b", 0), ("c", 5), ("d", 5)]):
        events, s = decide_slot(s, cmd(AcquireSlot(run_id=run_id, priority=prio, limit=1), s.slot, f"acq{i}"), i)
        log += events
    assert s.holders == ("a",) and [q[2] for q in s.queue] == ["b", "c", "d"]
    events, s = decide_slot(s, cmd(ReleaseSlot(run_id="a"), s.slot, "rel-a"), 9)
    log += events
    assert [e.type for e in events] == ["SlotReleased", "SlotGranted"] and s.holders == ("c",)  # priority first
    assert [a.key for a in admissions(s, events, 9)] == ["c"]
    again, s2 = decide_slot(s, cmd(AcquireSlot(run_id="c", priority=5, limit=1), s.slot, "dup"), 10)
    assert again == [] and s2 == s  # idempotent
    events, s = decide_slot(s, cmd(ReleaseSlot(run_id="b"), s.slot, "rel-b"), 11)  # leaves the queue
    log += events
    assert [q[2] for q in s.queue] == ["d"]
    rebuilt = SlotState(s.slot)
    for e in log:
        rebuilt = evolve_slot(rebuilt, e)
    assert rebuilt == s


def test_runs_with_one_key_wait_for_admission() -> None:
    registry = Registry()
    spec = registry.add(Workflow("w", concurrency_key="input.customer", max_per_key=1).step(work))
    start = StartRun(workflow="w", input={"customer": "acme"}, priority=3)
    d = run(RunState("r1"), Start(cmd(start, "r1", "c1"), spec), 1, registry)
    assert [e.type for e in d.events] == ["RunStarted"]  # queued: nothing scheduled yet
    [acquire] = effects(d)
    assert acquire.envelope.key == "slot:w:acme" and acquire.envelope.payload.priority == 3
    assert recovery_effects(d.state, 2)[0].envelope.id == acquire.envelope.id  # re-asked after a restart
    d = run(d.state, Signal(cmd(AdmitRun(slot="slot:w:acme"), "r1", "adm")), 3, registry)
    assert [e.type for e in d.events] == ["RunAdmitted", "StepScheduled"]
    assert run(d.state, Signal(cmd(AdmitRun(slot="slot:w:acme"), "r1", "adm2")), 4, registry).events == []
    ok = StepSucceeded(path="work", step="work", attempt=1, output=1, duration_ms=1)
    done = run(d.state, WorkerResult(cmd(ok, "r1", "ok")), 5, registry)
    assert [o.envelope.type for o in effects(done)] == ["ReleaseSlot"]
    assert fold("r1", [*run(RunState("r1"), Start(cmd(start, "r1", "c1"), spec), 1, registry).events]).slot == (
        "slot:w:acme"
    )


def test_a_queued_run_can_be_cancelled_and_leaves_the_queue() -> None:
    registry = Registry()
    spec = registry.add(Workflow("w", concurrency_key="input.customer").step(work))
    d = run(RunState("r1"), Start(cmd(StartRun(workflow="w", input={"customer": "x"}), "r1", "c"), spec), 1)
    d = run(d.state, Signal(cmd(CancelRun(), "r1", "cancel")), 2)
    assert d.state.status == "cancelled" and [o.envelope.type for o in effects(d)] == ["ReleaseSlot"]


def test_a_missing_concurrency_key_rejects_the_run_with_the_reason() -> None:
    registry = Registry()
    spec = registry.add(Workflow("w", concurrency_key="input.customer").step(work))
    d = run(RunState("r1"), Start(cmd(StartRun(workflow="w", input={}), "r1", "c"), spec), 1, registry)
    assert d.state.status == "rejected" and d.state.error is not None
    assert "concurrency key 'input.customer'" in d.state.error.message
