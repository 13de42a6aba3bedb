"""The divergence diff on the pure decider: recorded runs re-driven through other code.

A ``Recorder`` plays the engine: it decides each input with one registry (the code that was deployed), keeps the
events and every input record by id (as the commands and results topics would), and fires timers with the
engine's ``timer/<now>`` causation. ``diff_run`` then re-drives that record through another registry.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickflow.core.decider import Recover, RunState, Start, WorkerResult, effects, run
from tickflow.core.divergence import (
    CheckReport,
    decisions,
    diff_run,
    envelope_from_json,
    envelope_json,
    rebuilt_results,
    still_needed,
)
from tickflow.events import Envelope, ErrorInfo, RunStep, StartRun, StepErrored, StepSucceeded
from tickflow.events.schemas import LlmAttemptFields, MessageFields
from tickflow.workflow import Flow, Registry, Workflow, named

# --- the code as deployed -----------------------------------------------------------------------------------


@named("order.validate")
def validate(x: Any) -> Any:
    return x


@named("order.review")
def review(x: Any) -> Any:
    return x


@named("order.charge")
def charge(x: Any) -> Any:
    return x


@named("order.ship")
def ship(x: Any) -> Any:
    return x


@named("order.is_big")
def is_big(scope: Any) -> bool:
    return bool(scope["value"]["total"] > 100)


@named("order.is_big")
def is_big_from_10(scope: Any) -> bool:  # the same stable name, another body: a changed branch condition
    return bool(scope["value"]["total"] > 10)


@named("order.amount")
def amount(scope: Any) -> Any:
    return {"amount": scope["input"]["total"]}


def order(first: Any = validate, then: Any = charge, *, condition: Any = is_big, with_ship: bool = True) -> Workflow:
    flow = (
        Workflow("order", timeout_s=86_400)
        .step(first)
        .branch((condition, Flow().step(review)))
        .step(then, input=amount, max_attempts=3, backoff_s=5)
        .sleep(60, name="cool")
    )
    return flow.step(ship) if with_ship else flow


def registry_of(*workflows: Workflow) -> Registry:
    reg = Registry()
    for wf in workflows:
        reg.add(wf)
    return reg


DEPLOYED = registry_of(order())


class Recorder:
    """Decides one run's inputs with ``code`` as the engine would, recording its events and input records."""

    def __init__(self, code: Registry, run_id: str = "r1", now: int = 1_000_000) -> None:
        self.code, self.now = code, now
        self.state = RunState(run_id)
        self.log: list[Envelope] = []
        self.inputs: dict[str, Envelope] = {}
        self.tasks: list[Envelope] = []

    def _apply(self, inp: Any) -> None:
        d = run(self.state, inp, self.now, self.code)
        self.log += d.events
        self.state = d.state
        self.tasks += [o.envelope for o in effects(d) if isinstance(o.envelope.payload, RunStep)]

    def start(self, value: Any, workflow: str = "order") -> Recorder:
        cmd = Envelope.wrap(StartRun(workflow=workflow, input=value), id=f"start/{self.state.run_id}",
                            key=self.state.run_id, occurred_at_ms=self.now - 5)
        self.inputs[cmd.id] = cmd
        spec = self.code.spec(workflow)
        assert spec is not None
        self._apply(Start(cmd, spec, spec.content_hash()))
        return self

    def result(self, ok: bool = True, gap_ms: int = 10) -> None:
        task = self.tasks.pop(0)
        p = task.payload
        assert isinstance(p, RunStep)
        self.now += gap_ms
        res: StepSucceeded | StepErrored
        if ok:
            res = StepSucceeded(path=p.path, step=p.step, attempt=p.attempt, output=p.input, duration_ms=1)
        else:
            res = StepErrored(path=p.path, step=p.step, attempt=p.attempt, duration_ms=1,
                              error=ErrorInfo(type="Flaky", message="try again"))
        env = Envelope.wrap(res, id=f"{task.id}/result", key=self.state.run_id, occurred_at_ms=self.now,
                            causation_id=task.id)
        self.inputs[env.id] = env
        self._apply(WorkerResult(env))

    def timer(self) -> None:
        due = self.state.next_due_ms()
        assert due is not None
        self.now = max(self.now + 1, due)
        self._apply(Recover(f"timer/{self.now}"))

    def step(self, ok: bool = True) -> None:
        """The next input: a pending task's result, else the next timer."""
        if self.tasks:
            self.result(ok)
        else:
            self.timer()

    def finish(self) -> Recorder:
        for _ in range(50):
            if self.state.terminal:
                return self
            self.step()
        raise AssertionError("the run did not finish")

    def until(self, node: str) -> Recorder:
        """Feed inputs until ``node`` is in the state."""
        for _ in range(50):
            if node in self.state.nodes:
                return self
            self.step()
        raise AssertionError(f"the run never reached {node}")


def small() -> Recorder:
    return Recorder(DEPLOYED).start({"total": 50})


# --- the four changes ---------------------------------------------------------------------------------------


def test_the_same_code_is_identical_in_both_modes() -> None:
    done = small().finish()
    for mode in ("pinned", "registry"):
        report = diff_run("r1", done.log, done.inputs, DEPLOYED, spec=mode)  # type: ignore[arg-type]
        assert report.identical, report.verdict()
        assert report.decisions == len(decisions(done.log)) == 5  # start, 3 results, the sleep
        assert report.verdict() == f"r1: identical ({report.decisions} decisions)"


def test_a_changed_branch_condition_diverges_where_the_branch_is_chosen() -> None:
    done = small().finish()
    changed = registry_of(order(condition=is_big_from_10))
    report = diff_run("r1", done.log, done.inputs, changed)
    assert report.divergence is not None
    chosen = next(e for e in done.log if e.type == "BranchChosen")
    assert report.divergence.seq == chosen.seq
    assert report.divergence.expected == {"type": "BranchChosen",
                                          "payload": {"path": "branch1", "case": None, "condition": None}}
    assert report.divergence.produced is not None
    assert report.divergence.produced["payload"]["case"] == 0
    assert report.divergence.input.startswith("StepSucceeded ")  # validate's result led to the branch
    assert "diverges at seq" in report.verdict()


def test_a_removed_step_function_is_listed_for_runs_that_still_need_it() -> None:
    waiting = small().until("cool")  # charged, sleeping before ship
    assert waiting.state.status == "running"
    without_ship = registry_of(order(with_ship=False))
    report = diff_run("r1", waiting.log, waiting.inputs, without_ship)
    assert report.divergence is None  # nothing it decided so far differs ...
    assert [(m.kind, m.name, m.path) for m in report.missing] == [("step function", "order.ship", "ship")]
    assert not report.identical  # ... but once deployed, its ship step would fail: UnknownStepFunction
    # A finished run needs nothing more, and a run past the ship step neither.
    assert diff_run("r1", small().finish().log, small().finish().inputs, without_ship).identical


def test_a_reordered_sequence_diverges_for_new_starts_but_not_for_pinned_runs() -> None:
    done = small().finish()
    reordered = registry_of(order(first=charge, then=validate))
    pinned = diff_run("r1", done.log, done.inputs, reordered, spec="pinned")
    assert pinned.identical, pinned.verdict()  # a run keeps the spec it pinned: the new order never reaches it
    fresh = diff_run("r1", done.log, done.inputs, reordered, spec="registry")
    assert fresh.divergence is not None and fresh.divergence.seq == 2
    assert fresh.divergence.expected is not None and fresh.divergence.produced is not None
    assert fresh.divergence.expected["payload"]["path"] == "validate"
    assert fresh.divergence.produced["payload"]["path"] == "charge"
    assert fresh.spec_change is None  # reported once the start itself matched; here it was the first decision after


def test_a_changed_spec_that_decides_the_same_reports_the_new_hash_only() -> None:
    done = small().finish()
    slower = Registry()
    slower.add(order().step(ship, name="ship_again"))  # one more step at the end: the same decisions until then
    report = diff_run("r1", done.log, done.inputs, slower, spec="registry")
    assert report.spec_change is not None and report.spec_change[0] != report.spec_change[1]
    assert report.divergence is not None and report.divergence.expected is not None
    assert report.divergence.expected["type"] == "NodeCompleted"
    assert report.divergence.expected["payload"]["path"] == "__root__"  # the old spec ended its sequence here ...
    assert report.divergence.produced is not None and report.divergence.produced["type"] == "StepScheduled"
    assert report.divergence.produced["payload"]["path"] == "ship_again"  # ... where the new one goes on


def test_a_missing_mapper_and_condition_fail_the_node_on_replay() -> None:
    done = small().finish()
    bare = Registry()
    bare.functions.update(DEPLOYED.functions)  # step functions only: no conditions, no mappers
    report = diff_run("r1", done.log, done.inputs, bare)  # type: ignore[arg-type]
    assert report.divergence is not None and report.divergence.produced is not None
    assert report.divergence.produced["type"] == "NodeFailed"
    assert "UnknownCondition" in str(report.divergence.produced["payload"])


def test_an_input_past_retention_makes_the_run_uncheckable() -> None:
    done = small().finish()
    gone = {k: v for k, v in done.inputs.items() if not k.startswith("start/")}
    report = diff_run("r1", done.log, gone, DEPLOYED)
    assert report.unreplayable is not None and "start/r1" in report.unreplayable and not report.identical


def test_retries_and_timers_replay_at_their_recorded_times() -> None:
    rec = small().until("charge")
    rec.result(ok=False)  # charge fails once, retries after its backoff (a timer), then succeeds
    rec.finish()
    assert any(e.causation_id and e.causation_id.startswith("timer/") for e in rec.log)
    assert diff_run("r1", rec.log, rec.inputs, DEPLOYED).identical


def test_still_needed_walks_the_pinned_spec_from_the_state() -> None:
    fresh = small()  # validate scheduled: everything after it is still to come
    nothing = Registry()
    needed = {(m.kind, m.name) for m in still_needed(fresh.state, nothing)}  # type: ignore[arg-type]
    assert needed == {
        ("step function", "order.validate"), ("condition", "order.is_big"), ("step function", "order.review"),
        ("mapper", "order.amount"), ("step function", "order.charge"), ("step function", "order.ship"),
    }
    late = small().until("cool")
    assert {m.name for m in still_needed(late.state, nothing)} == {"order.ship"}  # type: ignore[arg-type]


def test_recorded_envelopes_survive_the_wire() -> None:
    done = small().finish()
    again = [envelope_from_json(envelope_json(e)) for e in [*done.log, *done.inputs.values()]]
    assert again == [*done.log, *done.inputs.values()]


def test_a_check_report_is_ok_only_when_every_run_is_identical() -> None:
    done, waiting = small().finish(), Recorder(DEPLOYED, "r2").start({"total": 500}).until("cool")
    without_ship = registry_of(order(with_ship=False))
    runs = [diff_run(r.state.run_id, r.log, r.inputs, without_ship) for r in (done, waiting)]
    report = CheckReport(workflow="order", runs=runs)
    assert not report.ok and report.missing() == {("step function", "order.ship"): ["r2"]}
    assert "2 runs of 'order'" in report.summary() and "1 need code that is missing" in report.summary()
    assert CheckReport(workflow="order", runs=runs[:1]).ok


# --- the property -------------------------------------------------------------------------------------------


def driven(total: int, outcomes: list[bool], gaps: list[int]) -> Recorder:
    """A run fed the given step outcomes (results, or the next timer when no task is pending) at the given gaps."""
    rec = Recorder(DEPLOYED).start({"total": total})
    for ok, gap in zip(outcomes, gaps, strict=False):
        if rec.state.terminal:
            break
        if rec.tasks:
            rec.result(ok, gap)
        else:
            rec.timer()
    return rec


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    total=st.integers(min_value=0, max_value=300),
    outcomes=st.lists(st.booleans(), min_size=0, max_size=12),
    gaps=st.lists(st.integers(min_value=0, max_value=20_000), min_size=12, max_size=12),
)
def test_a_run_diffed_against_its_own_code_is_always_identical(
    total: int, outcomes: list[bool], gaps: list[int]
) -> None:
    rec = driven(total, outcomes, gaps)
    for mode in ("pinned", "registry"):
        report = diff_run("r1", rec.log, rec.inputs, DEPLOYED, spec=mode)  # type: ignore[arg-type]
        assert report.identical, report.verdict()


def test_a_last_decision_not_yet_fully_visible_is_not_a_divergence() -> None:
    done = small().finish()
    # The projection a diff reads may end inside the last decision (a batch boundary): its prefix is no divergence.
    assert diff_run("r1", done.log[:-1], done.inputs, DEPLOYED).identical
    # A history with a hole cannot be re-driven at all: said so, never guessed at.
    middle = decisions(done.log)[1].events[-1]
    holed = diff_run("r1", [e for e in done.log if e is not middle], done.inputs, DEPLOYED)
    assert holed.unreplayable is not None and f"seq {middle.seq} is missing" in holed.unreplayable


def test_two_recoveries_in_a_row_are_two_decisions() -> None:
    reg = registry_of(Workflow("naps").sleep(10, name="one").sleep(10, name="two"))
    rec = Recorder(reg, "n1").start(None, workflow="naps")
    for _ in range(2):  # a restarted engine's recovery (``recover/<partition>``) finds each sleep due
        rec.now = rec.state.next_due_ms() or 0
        rec._apply(Recover("recover/0"))
    assert rec.state.status == "completed"
    assert [d.cause for d in decisions(rec.log)] == ["start/n1", "recover/0", "recover/0"]
    assert diff_run("n1", rec.log, rec.inputs, reg).identical


def test_a_claim_checked_resume_is_re_driven_with_the_value_the_engine_read() -> None:
    from tickflow.core.decider import ClaimedPayload, Signal
    from tickflow.events import ResumeRun

    schema = {"type": "object", "required": ["ok"]}
    reg = registry_of(Workflow("approve").wait_for_event("go", schema=schema).step(ship))
    rec = Recorder(reg, "a1").start(None, workflow="approve")
    ref = {"$blob": {"sha256": "0" * 64, "size": 10}}  # the log and the command keep only the reference
    cmd = Envelope.wrap(ResumeRun(event="go", payload=ref), id="go/1", key="a1", occurred_at_ms=rec.now)
    rec.inputs[cmd.id] = cmd
    rec.now += 5
    claimed = ClaimedPayload(value={"ok": True})
    rec._apply(Signal(cmd, claimed))
    assert rec.log[-1].type == "StepScheduled"  # the value passed the schema; the wait completed
    assert diff_run("a1", rec.log, rec.inputs, reg, claimed={"go/1": claimed}).identical
    # Without the value read, the reference itself is checked against the schema: refused, which the log does not say.
    unread = diff_run("a1", rec.log, rec.inputs, reg)
    assert unread.divergence is not None and unread.divergence.produced is not None
    assert unread.divergence.produced["type"] == "ResumeRejected"


def test_a_fork_is_re_driven_from_its_copied_history() -> None:
    from tickflow.core.decider import Fork
    from tickflow.runtime.replay import fork_command

    source = small().until("cool")
    cmd = fork_command("r1", source.log, source.log[-1].seq or 0, "f1", now_ms=source.now + 1_000)
    fork = Recorder(DEPLOYED, "f1", now=source.now + 5_000)
    fork.inputs[cmd.id] = cmd
    fork._apply(Fork(cmd))
    assert [d.cause for d in decisions(fork.log)] == [cmd.id]  # copies with shifted times: one decision
    without_ship = registry_of(order(with_ship=False))
    sleeping = diff_run("f1", fork.log, fork.inputs, without_ship)
    assert sleeping.divergence is None and [m.name for m in sleeping.missing] == ["order.ship"]
    fork.finish()
    assert diff_run("f1", fork.log, fork.inputs, DEPLOYED).identical
    assert diff_run("f1", fork.log, fork.inputs, without_ship).identical  # finished: it needs nothing more


# --- results run in memory (eager dispatch): rebuilt from the events they caused ------------------------------


@given(
    total=st.integers(min_value=0, max_value=300),
    outcomes=st.lists(st.booleans(), min_size=0, max_size=12),
    gaps=st.lists(st.integers(min_value=0, max_value=20_000), min_size=12, max_size=12),
)
def test_successes_rebuilt_from_the_events_re_drive_the_run_identically(
    total: int, outcomes: list[bool], gaps: list[int]
) -> None:
    rec = driven(total, outcomes, gaps)
    rebuilt = rebuilt_results(rec.log)
    applied = {e.causation_id for e in rec.log if e.type == "StepCompleted"}
    assert set(rebuilt) == applied  # every success the run applied, and nothing else
    for rid, env in rebuilt.items():  # each equals its record in every field the decider reads
        assert env.payload == rec.inputs[rid].payload and env.key == rec.inputs[rid].key
    # Only the commands and the failures are records now, as with eager dispatch.
    records = {k: v for k, v in rec.inputs.items() if not isinstance(v.payload, StepSucceeded)}
    report = diff_run("r1", rec.log, {**records, **rebuilt}, DEPLOYED)
    assert report.identical, report.verdict()


def test_a_rebuilt_success_keeps_its_reported_llm_calls_and_messages() -> None:
    rec = Recorder(DEPLOYED).start({"total": 50})
    task = rec.tasks.pop(0)
    p = task.payload
    assert isinstance(p, RunStep)
    call = LlmAttemptFields(call=0, attempt=1, provider="offline", model="echo", outcome="ok", tokens_in=3,
                            tokens_out=5, cost_usd=0.001, latency_ms=12.0, started_at_ms=1)
    note = MessageFields(thread_id="t1", message_id="m1", role="assistant", content="hello")
    res = StepSucceeded(path=p.path, step=p.step, attempt=p.attempt, output=p.input, duration_ms=1,
                        llm_attempts=[call], messages=[note])
    env = Envelope.wrap(res, id=f"{task.id}/result", key="r1", occurred_at_ms=rec.now, causation_id=task.id)
    rec.inputs[env.id] = env
    rec._apply(WorkerResult(env))
    assert rebuilt_results(rec.log)[env.id].payload == res
