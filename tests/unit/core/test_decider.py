"""The decider, tested with explicit time and no I/O: every construct, plus replay properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickflow.core.decider import (
    Decision,
    Recover,
    RunState,
    Signal,
    Start,
    WorkerResult,
    decide,
    effects,
    fold,
    recovery_effects,
    refuse,
    run,
)
from tickflow.core.state import RESUME_WINDOW, shrink
from tickflow.events import (
    AdmitRun,
    CancelRun,
    ChildFinished,
    Envelope,
    ErrorInfo,
    ResumeRun,
    RunStep,
    StartRun,
    StepErrored,
    StepSucceeded,
)
from tickflow.events.agents import LlmCallCheckpoint
from tickflow.events.schemas import LlmAttemptFields
from tickflow.workflow import Flow, Registry, Workflow


def a(x: Any) -> Any:
    return x


def b(x: Any) -> Any:
    return x


def c(x: Any) -> Any:
    return x


def refund(x: Any) -> Any:
    return x


def is_big(scope: Any) -> bool:
    return bool(scope["value"]["n"] > 5)


def reached_three(scope: Any) -> bool:
    return bool(scope["value"]["n"] >= 3)


class Sim:
    """One run driven by hand: ``now`` is explicit, results are delivered by path."""

    def __init__(self, wf: Workflow, value: Any = None, run_id: str = "r1") -> None:
        self.registry = Registry()
        self.spec = self.registry.add(wf)
        self.state = RunState(run_id)
        self.log: list[Envelope] = []
        self.sent: list[Envelope] = []
        self.now = 999  # the start decision happens at 1000
        cmd = Envelope.wrap(StartRun(workflow=wf.name, input=value), id="c1", key=run_id, occurred_at_ms=0)
        self.apply(Start(cmd, self.spec))

    def apply(self, inp: Any, now: int | None = None) -> Decision:
        self.now = now if now is not None else self.now + 1
        d = run(self.state, inp, self.now, self.registry)
        self.log.extend(d.events)
        self.sent.extend(o.envelope for o in effects(d))
        self.state = d.state
        return d

    def ok(self, path: str, output: Any, attempt: int = 1) -> Decision:
        res = StepSucceeded(path=path, step=path.rsplit("/", 1)[-1], attempt=attempt, output=output, duration_ms=1)
        return self.apply(WorkerResult(Envelope.wrap(res, id=f"ok-{path}-{attempt}", key="r1", occurred_at_ms=0)))

    def err(
        self,
        path: str,
        attempt: int = 1,
        retryable: bool = True,
        type_: str = "ValueError",
        retry_after_ms: int | None = None,
    ) -> Decision:
        res = StepErrored(
            path=path,
            step=path.rsplit("/", 1)[-1],
            attempt=attempt,
            error=ErrorInfo(type=type_, message="boom", traceback="Traceback…"),
            retryable=retryable,
            retry_after_ms=retry_after_ms,
            duration_ms=1,
        )
        return self.apply(WorkerResult(Envelope.wrap(res, id=f"err-{path}-{attempt}", key="r1", occurred_at_ms=0)))

    def signal(self, payload: Any, id: str | None = None) -> Decision:
        """Send a command to the run; each gets an id of its own unless ``id`` repeats one on purpose."""
        self.signals = getattr(self, "signals", 0) + 1
        command_id = id or f"s{self.signals}"
        return self.apply(Signal(Envelope.wrap(payload, id=command_id, key=self.state.run_id, occurred_at_ms=0)))

    def tasks(self) -> list[str]:
        return [t.payload.path for t in self.sent if isinstance(t.payload, RunStep)]

    def types(self, d: Decision) -> list[str]:
        return [e.type for e in d.events]

    def check_refold(self) -> None:
        assert fold(self.state.run_id, self.log) == self.state
        assert [e.seq for e in self.log] == list(range(1, len(self.log) + 1))


def test_sequence_pipes_outputs_and_completes() -> None:
    sim = Sim(Workflow("w").step(a).step(b), {"n": 1})
    assert sim.tasks() == ["a"]
    sim.ok("a", {"n": 2})
    assert sim.tasks() == ["a", "b"] and sim.sent[-1].payload.input == {"n": 2}
    d = sim.ok("b", {"n": 3})
    assert sim.state.status == "completed" and sim.state.output == {"n": 3}
    assert sim.types(d)[-1] == "RunCompleted"
    sim.check_refold()


def test_start_is_idempotent_and_tasks_carry_idempotency_keys() -> None:
    sim = Sim(Workflow("w").step(a), 1)
    cmd = Envelope.wrap(StartRun(workflow="w", input=2), id="c2", key="r1", occurred_at_ms=0)
    assert sim.apply(Start(cmd, sim.spec)).events == []
    task = sim.sent[0]
    assert task.id == "r1/a/1" == task.payload.idempotency_key
    assert task.payload.fn.endswith(".a")


def test_duplicate_and_stale_results_are_ignored() -> None:
    sim = Sim(Workflow("w").step(a).step(b))
    sim.ok("a", 1)
    assert sim.ok("a", 1).events == []  # duplicate
    assert sim.ok("b", 1, attempt=7).events == []  # not the awaited attempt
    assert sim.ok("nope", 1).events == []


def test_parallel_joins_branch_outputs_by_name() -> None:
    sim = Sim(Workflow("w").parallel(left=Flow().step(a), right=Flow().step(b).step(c)), 0)
    assert sorted(sim.tasks()) == ["b", "left"]  # a one-node branch is named after the branch
    sim.ok("b", "B")
    sim.ok("c", "C")
    assert sim.state.status == "running"
    sim.ok("left", "A")
    assert sim.state.status == "completed"
    assert sim.state.output == {"left": "A", "right": "C"}
    sim.check_refold()


def test_parallel_fails_fast_and_cancels_the_rest() -> None:
    sim = Sim(Workflow("w").parallel(left=Flow().step(a), right=Flow().step(b)), 0)
    d = sim.err("left", retryable=False)
    assert sim.state.status == "failed" and sim.state.error_path == "left"
    cancels = [o.envelope for o in effects(d) if o.envelope.type == "CancelStep"]
    assert [e.payload.idempotency_key for e in cancels] == ["r1/right/1"]
    assert sim.ok("right", 1).events == []  # the late result is ignored


def test_branch_picks_first_true_condition_or_otherwise() -> None:
    wf = Workflow("w").branch((is_big, Flow().step(a)), otherwise=Flow().step(b))
    big = Sim(wf, {"n": 9})
    assert big.tasks() == ["a"]
    small = Sim(Workflow("w").branch((is_big, Flow().step(a)), otherwise=Flow().step(b)), {"n": 1})
    assert small.tasks() == ["b"]
    small.ok("b", "done")
    assert small.state.output == "done"
    passthrough = Sim(Workflow("w").branch((is_big, Flow().step(a))), {"n": 1})
    assert passthrough.state.status == "completed" and passthrough.state.output == {"n": 1}


def test_condition_errors_fail_the_node_with_a_clear_message() -> None:
    sim = Sim(Workflow("w").branch((is_big, Flow().step(a))), {"m": 1})
    assert sim.state.status == "failed"
    assert sim.state.error is not None and sim.state.error.type == "ConditionError"
    assert "KeyError" in sim.state.error.message


def test_loop_until_condition_with_iteration_scopes() -> None:
    sim = Sim(Workflow("w").loop(Flow().step(a), until=reached_three), {"n": 0})
    sim.ok("loop1#1/a", {"n": 1})
    sim.ok("loop1#2/a", {"n": 2})
    assert sim.sent[-1].payload.input == {"n": 2}
    sim.ok("loop1#3/a", {"n": 3})
    assert sim.state.status == "completed" and sim.state.output == {"n": 3}
    sim.check_refold()


def test_loop_limit_fails_the_run() -> None:
    sim = Sim(Workflow("w").loop(Flow().step(a), while_=lambda s: True, max_iterations=2), {"n": 0})
    sim.ok("loop1#1/a", {"n": 1})
    sim.ok("loop1#2/a", {"n": 1})
    assert sim.state.status == "failed" and sim.state.error is not None
    assert sim.state.error.type == "LoopLimit"


def test_foreach_respects_concurrency_and_keeps_order() -> None:
    sim = Sim(Workflow("w").foreach(Flow().step(a), concurrency=2), [10, 20, 30, 40])
    assert sim.tasks() == ["foreach1[0]/a", "foreach1[1]/a"]
    sim.ok("foreach1[1]/a", 21)
    assert sim.tasks()[-1] == "foreach1[2]/a"
    sim.ok("foreach1[2]/a", 31)
    sim.ok("foreach1[0]/a", 11)
    sim.ok("foreach1[3]/a", 41)
    assert sim.state.output == [11, 21, 31, 41]
    sim.check_refold()


def test_foreach_of_an_empty_list_and_of_a_non_list() -> None:
    assert Sim(Workflow("w").foreach(Flow().step(a)), []).state.output == []
    bad = Sim(Workflow("w").foreach(Flow().step(a)), {"x": 1})
    assert bad.state.status == "failed" and bad.state.error is not None
    assert "needs a list" in bad.state.error.message


def test_input_mappings_read_steps_and_run_input() -> None:
    wf = Workflow("w").step(a).step(b, input="input.user").step(c, input="steps.a.total")
    sim = Sim(wf, {"user": "ann"})
    sim.ok("a", {"total": 5})
    assert sim.sent[-1].payload.input == "ann"
    sim.ok("b", "x")
    assert sim.sent[-1].payload.input == 5
    bad = Sim(Workflow("w").step(a, input="steps.nothing"), 1)
    assert bad.state.status == "failed" and bad.state.error is not None and bad.state.error.type == "MappingError"


def test_sleep_fires_at_due_time_never_early_and_once() -> None:
    sim = Sim(Workflow("w").sleep(30).step(a), "v")
    due = sim.state.next_due_ms()
    assert due == 1_000 + 30_000
    assert sim.apply(Recover(), now=due - 1).events == []
    d = sim.apply(Recover(), now=due + 5_000_000)  # an engine restart long after the due time
    assert sim.types(d) == ["NodeCompleted", "StepScheduled"]
    assert sim.apply(Recover(), now=due + 5_000_001).events == []  # fired once
    sim.check_refold()


def test_sleep_of_months() -> None:
    sim = Sim(Workflow("w").sleep(90 * 86_400).step(a), 1)
    assert sim.state.next_due_ms() == 1_000 + 90 * 86_400_000


def test_retry_with_exponential_backoff_and_deterministic_jitter() -> None:
    wf = Workflow("w").step(a, max_attempts=3, backoff_s=10, jitter=0.5)
    sim = Sim(wf, 1)
    sim.err("a")
    first = sim.state.nodes["a"].due_at_ms
    assert first is not None and sim.now + 5_000 <= first <= sim.now + 10_000
    assert sim.apply(Recover(), now=first - 1).events == []
    sim.apply(Recover(), now=first)
    assert sim.tasks() == ["a", "a"] and sim.sent[-1].payload.attempt == 2
    sim.err("a", attempt=2)
    second = sim.state.nodes["a"].due_at_ms
    assert second is not None and second - sim.now >= 10_000  # 20 s ± 50 %
    again = Sim(wf, 1)
    again.err("a")
    assert again.state.nodes["a"].due_at_ms == first  # the jitter is a hash, not a random draw


def test_retry_after_delays_the_next_attempt_but_never_hastens_it() -> None:
    wf = Workflow("w").step(a, max_attempts=3, backoff_s=10, jitter=0)
    sim = Sim(wf, 1)
    sim.err("a", retry_after_ms=3_600_000)  # the step asked for an hour: longer than the 10 s backoff
    assert sim.state.nodes["a"].due_at_ms == sim.now + 3_600_000
    sim.check_refold()
    short = Sim(wf, 1)
    short.err("a", retry_after_ms=1)  # shorter than the backoff: the policy's delay stands
    assert short.state.nodes["a"].due_at_ms == short.now + 10_000
    last = Sim(Workflow("w").step(a, max_attempts=1), 1)
    last.err("a", retry_after_ms=5)  # attempts are still bounded by the policy
    assert last.state.status == "failed"


def test_non_retryable_types_fail_at_once() -> None:
    sim = Sim(Workflow("w").step(a, max_attempts=5, non_retryable=(KeyError,)), 1)
    sim.err("a", type_="KeyError")
    assert sim.state.status == "failed" and sim.state.error is not None
    assert sim.state.error.traceback == "Traceback…"


def test_step_timeout_is_enforced_by_the_engine() -> None:
    sim = Sim(Workflow("w").step(a, timeout_s=2, max_attempts=2, backoff_s=0), 1)
    due = sim.state.next_due_ms()
    assert due is not None
    [first] = [e.payload for e in sim.sent if e.type == "RunStep"]
    assert first.deadline_ms == due  # the worker does not start it after this
    d = sim.apply(Recover(), now=due)
    assert sim.types(d) == ["StepFailed", "StepScheduled"]
    assert d.events[0].payload.error.type == "StepTimeout"
    sent = [(o.envelope.type, o.envelope.payload.idempotency_key) for o in effects(d)]
    assert sent == [("CancelStep", "r1/a/1"), ("RunStep", "r1/a/2")]  # the timed-out attempt is stopped where it runs
    assert sim.ok("a", "late", attempt=1).events == []
    sim.ok("a", "fine", attempt=2)
    assert sim.state.status == "completed"


def test_run_timeout_and_compensation() -> None:
    wf = Workflow("w", timeout_s=60, on_failure=refund).step(a)
    sim = Sim(wf, {"order": 1})
    d = sim.apply(Recover(), now=1_000 + 60_000)
    assert sim.types(d) == ["RunFailing", "StepScheduled"]
    assert d.events[1].payload.input["error"]["type"] == "RunTimeout"
    assert sim.ok("a", "late").events == []  # the failed run ignores the main path
    sim.ok("refund", "refunded")
    assert sim.state.status == "failed" and sim.state.error is not None and sim.state.error.type == "RunTimeout"
    sim.check_refold()


def test_wait_for_event_validates_payload_and_resumes() -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    sim = Sim(Workflow("w").wait_for_event("approval", schema=schema).step(a), 1)
    assert sim.state.status == "running" and sim.tasks() == []
    bad = sim.signal(ResumeRun(event="approval", payload={"ok": "yes"}))
    assert sim.types(bad) == ["ResumeRejected"]
    assert "ok: 'yes' is not of type 'boolean'" in bad.events[0].payload.reason
    wrong = sim.signal(ResumeRun(event="payment", payload={}))
    assert "waits for: approval" in wrong.events[0].payload.reason
    good = sim.signal(ResumeRun(event="approval", payload={"ok": True}))
    assert sim.types(good) == ["NodeCompleted", "StepScheduled"]
    assert sim.sent[-1].payload.input == {"ok": True}
    again = sim.signal(ResumeRun(event="approval", payload={"ok": True}))
    assert sim.types(again) == ["ResumeRejected"]  # resumed once; finished work is never re-run


def test_a_resume_sent_again_with_the_same_id_is_taken_once() -> None:
    """A client retrying a resume under one idempotency key (or a command read twice) completes one wait, not
    two; the ids a run remembers are folded from its events, so a refold recognises them too."""
    sim = Sim(Workflow("w").wait_for_event("first").wait_for_event("second").step(a), 1)
    first = sim.signal(ResumeRun(event="first", payload=1), id="resume-1")
    assert sim.types(first) == ["NodeCompleted", "WaitStarted"]
    assert sim.signal(ResumeRun(event="first", payload=1), id="resume-1").events == []
    assert sim.signal(ResumeRun(event="second", payload=2), id="resume-1").events == []
    second = sim.signal(ResumeRun(event="second", payload=2), id="resume-2")
    assert sim.types(second) == ["NodeCompleted", "StepScheduled"]
    refused = sim.signal(ResumeRun(event="nope"), id="resume-3")
    assert sim.types(refused) == ["ResumeRejected"]
    assert sim.signal(ResumeRun(event="nope"), id="resume-3").events == []
    assert sim.state.resumed_by == ("resume-1", "resume-2", "resume-3")
    sim.check_refold()


def test_a_run_remembers_only_the_last_resumes() -> None:
    sim = Sim(Workflow("w").wait_for_event("never").step(a), 1)
    for i in range(RESUME_WINDOW + 4):
        sim.signal(ResumeRun(event="other"), id=f"r{i}")
    assert sim.state.resumed_by == tuple(f"r{i}" for i in range(4, RESUME_WINDOW + 4))
    assert sim.types(sim.signal(ResumeRun(event="other"), id="r0")) == ["ResumeRejected"]  # forgotten: taken again
    sim.check_refold()


def test_wait_timeout_takes_the_declared_path_or_fails() -> None:
    sim = Sim(Workflow("w").wait_for_event("approval", timeout_s=10, on_timeout=Flow().step(b)), 1)
    d = sim.apply(Recover(), now=1_000 + 10_000)
    assert sim.types(d) == ["WaitTimedOut", "StepScheduled"]
    sim.ok("approval.on_timeout", "escalated")
    assert sim.state.output == "escalated"
    strict = Sim(Workflow("w").wait_for_event("approval", timeout_s=10), 1)
    strict.apply(Recover(), now=1_000 + 10_000)
    assert strict.state.status == "failed" and strict.state.error is not None
    assert strict.state.error.type == "WaitTimeout"


def test_child_runs_start_report_and_fan_out() -> None:
    sim = Sim(Workflow("w").foreach(Flow().child("kid"), concurrency=10), [1, 2])
    starts = [e for e in sim.sent if e.type == "StartRun"]
    assert [e.key for e in starts] == ["r1:foreach1.0:child1", "r1:foreach1.1:child1"]
    assert starts[0].payload.parent_run_id == "r1" and starts[0].payload.input == 1
    sim.signal(ChildFinished(path="foreach1[0]/child1", child_run_id=starts[0].key, status="completed", output="A"))
    wrong = ChildFinished(path="foreach1[1]/child1", child_run_id="someone-else", status="completed")
    assert sim.signal(wrong, id="s2").events == []
    sim.signal(
        ChildFinished(path="foreach1[1]/child1", child_run_id=starts[1].key, status="completed", output="B"), id="s3"
    )
    assert sim.state.output == ["A", "B"]


def test_children_s_llm_usage_rolls_up_to_the_parent_once_and_on_to_its_report() -> None:
    """A stack counts its tick run's tokens against its budget: those must include the tick's children's."""
    sim = Sim(Workflow("w").foreach(Flow().child("kid"), concurrency=10), [1, 2])
    starts = [e for e in sim.sent if e.type == "StartRun"]
    first = ChildFinished(path="foreach1[0]/child1", child_run_id=starts[0].key, status="completed", output="A",
                          tokens=120, cost_usd=0.25)
    assert sim.types(sim.signal(first)) == ["ChildUsage", "NodeCompleted"]
    assert sim.signal(first, id="again").events == []  # a repeated report counts nothing twice
    failed = ChildFinished(path="foreach1[1]/child1", child_run_id=starts[1].key, status="failed", tokens=30,
                           error=ErrorInfo(type="BudgetExceeded", message="no"), cost_usd=0.5)
    sim.signal(failed, id="s3")
    assert (sim.state.tokens, sim.state.cost_usd, sim.state.status) == (150, 0.75, "failed")
    assert fold("r1", sim.log) == sim.state


def test_a_finished_child_reports_to_its_parent() -> None:
    registry = Registry()
    spec = registry.add(Workflow("kid").step(a))
    cmd = StartRun(workflow="kid", input=1, parent_run_id="p", parent_path="child1")
    d = run(RunState("p:child1"), Start(Envelope.wrap(cmd, id="x", key="p:child1", occurred_at_ms=0), spec), 5)
    ok = StepSucceeded(path="a", step="a", attempt=1, output=7, duration_ms=1)
    d = run(d.state, WorkerResult(Envelope.wrap(ok, id="y", key="p:child1", occurred_at_ms=0)), 6)
    reports = [o.envelope for o in effects(d) if o.envelope.type == "ChildFinished"]
    assert len(reports) == 1 and reports[0].key == "p" and reports[0].payload.output == 7
    assert [o.envelope.id for o in recovery_effects(d.state, 7)] == [reports[0].id]


def test_cancel_is_final_and_cancels_children_and_steps() -> None:
    sim = Sim(Workflow("w").parallel(x=Flow().step(a), y=Flow().child("kid")), 1)
    d = sim.signal(CancelRun(reason="user asked"))
    assert sim.types(d) == ["RunCancelled"] and sim.state.status == "cancelled"
    sent = sorted(o.envelope.type for o in effects(d))
    assert sent == ["CancelRun", "CancelStep"]
    assert sim.signal(CancelRun(), id="s2").events == []
    assert sim.ok("x", 1).events == []
    assert sim.apply(Recover(), now=10**13).events == []


def test_recover_completes_a_decision_cut_short_by_a_crash() -> None:
    sim = Sim(Workflow("w").step(a).parallel(x=Flow().step(b), y=Flow().step(c)), 1)
    before = list(sim.log)
    full = sim.ok("a", 2)
    for cut in range(1, len(full.events)):
        state = fold("r1", before + full.events[:cut])
        healed = decide(state, Recover(), sim.now, sim.registry)
        assert [(e.seq, e.payload) for e in healed] == [(e.seq, e.payload) for e in full.events[cut:]]


def test_recovery_resends_in_flight_tasks_with_the_same_ids() -> None:
    sim = Sim(Workflow("w").parallel(x=Flow().step(b), y=Flow().step(c)), 1)
    assert sorted(o.envelope.id for o in recovery_effects(sim.state, 99)) == ["r1/x/1", "r1/y/1"]


# --- properties -----------------------------------------------------------------------------------------


def items(scope: Any) -> list[int]:
    return [1, 2, 3]


RICH = (
    Workflow("rich", on_failure=refund)
    .step(a, max_attempts=3, backoff_s=1)
    .parallel(left=Flow().step(b, max_attempts=2, backoff_s=0), right=Flow().sleep(5).step(c))
    .foreach(Flow().step(b, name="each", max_attempts=2, backoff_s=2), input=items, concurrency=2)
)

Action = st.tuples(
    st.sampled_from(["ok", "err", "fatal", "dup", "stale", "tick", "restart", "cancel"]),
    st.integers(0, 99),
)


def play(actions: list[tuple[str, int]]) -> tuple[RunState, list[Envelope]]:
    sim = Sim(RICH, 0, run_id="r1")
    last: Any = None
    for action, value in actions:
        if sim.state.terminal:
            break
        scheduled = sorted(p for p, n in sim.state.nodes.items() if n.kind == "step" and n.phase == "scheduled")
        path = scheduled[value % len(scheduled)] if scheduled else None
        attempt = sim.state.nodes[path].attempt if path else 1
        if action == "ok" and path:
            last = sim.ok(path, value, attempt)
        elif action == "err" and path:
            sim.err(path, attempt)
        elif action == "fatal" and path:
            sim.err(path, attempt, retryable=False)
        elif action == "dup" and path:
            sim.ok(path, value, max(1, attempt - 1))
        elif action == "stale" and path:
            sim.ok(path, value, attempt + 5)
        elif action == "restart":
            cmd = Envelope.wrap(StartRun(workflow="rich", input=1), id="again", key="r1", occurred_at_ms=0)
            sim.apply(Start(cmd, sim.spec))
        elif action == "cancel" and value < 5:
            sim.signal(CancelRun(), id=f"cancel-{value}")
        else:
            sim.apply(Recover(), now=sim.now + value * 100)
    del last
    return sim.state, sim.log


@settings(max_examples=200, deadline=None)
@given(st.lists(Action, max_size=40))
def test_refolding_emitted_events_reproduces_the_state(actions: list[tuple[str, int]]) -> None:
    state, log = play(actions)
    assert fold("r1", log) == state
    assert [e.seq for e in log] == list(range(1, len(log) + 1))  # no gaps, no duplicates
    assert len({e.id for e in log}) == len(log)


@settings(max_examples=100, deadline=None)
@given(st.lists(Action, max_size=40))
def test_replay_is_deterministic(actions: list[tuple[str, int]]) -> None:
    s1, log1 = play(actions)
    s2, log2 = play(actions)
    assert s1 == s2 and [e.model_dump() for e in log1] == [e.model_dump() for e in log2]


@settings(max_examples=150, deadline=None)
@given(st.lists(Action, max_size=40), st.integers(min_value=1, max_value=80))
def test_a_crash_after_any_prefix_heals_without_gaps_or_stalls(actions: list[tuple[str, int]], cut: int) -> None:
    """Losing the tail of the log then recovering never duplicates a seq nor leaves a run stuck."""
    _, log = play(actions)
    prefix = log[: min(cut, len(log))]
    registry = Registry()
    registry.add(RICH)
    state = fold("r1", prefix)
    healed = decide(state, Recover(), 10**12, registry)
    refolded = fold("r1", prefix + healed)
    assert decide(refolded, Recover(), 10**12, registry) == []
    waiting = [n for n in refolded.nodes.values() if n.kind == "step" and n.phase == "scheduled"]
    assert refolded.terminal or waiting  # never stuck: either finished or waiting for a worker


def test_refuse_fails_a_live_run_rejects_a_new_one_and_leaves_a_finished_one() -> None:
    """What the engine records when a decision cannot be: small events with the reason, and their effects."""
    error = ErrorInfo(type="PayloadTooLarge", message="the join output is 1200000 bytes")
    sim = Sim(Workflow("w").parallel(x=Flow().step(a), y=Flow().step(b)), 1)
    d = refuse(sim.state, error, sim.now + 1, "result-9")
    assert [e.type for e in d.events] == ["RunFailed"] and d.state.status == "failed"
    assert d.events[0].causation_id == "result-9" and d.events[0].seq == sim.state.seq + 1
    assert sorted(o.envelope.type for o in effects(d)) == ["CancelStep", "CancelStep"]  # work in flight stops
    assert fold("r1", [*sim.log, *d.events]) == d.state  # a refusal is an ordinary part of the log

    new = refuse(RunState("r2"), error, 5, "c2", StartRun(workflow="w", input="x"))
    assert [e.type for e in new.events] == ["RunRejected"] and new.state.status == "rejected"
    assert "PayloadTooLarge: the join output" in new.events[0].payload.reason
    assert refuse(d.state, error, 6, "c3").events == []  # already failed: nothing more to say


def _late_input(kind: str, value: int, state: RunState) -> Any:
    """An input arriving after the run ended: a repeated start, a late or stale result, a signal, a timer."""
    def wrap(payload: Any) -> Envelope:
        return Envelope.wrap(payload, id=f"late-{kind}-{value}", key=state.run_id, occurred_at_ms=0)

    path = sorted(state.nodes)[value % len(state.nodes)] if state.nodes else "a"
    if kind == "start":
        return Start(wrap(StartRun(workflow="rich", input=value)), RICH_SPEC)
    if kind == "ok":
        return WorkerResult(wrap(StepSucceeded(path=path, step="a", attempt=value % 3 + 1, output=value,
                                               duration_ms=1)))
    if kind == "err":
        error = ErrorInfo(type="ValueError", message="late")
        return WorkerResult(wrap(StepErrored(path=path, step="a", attempt=1, error=error, retryable=True,
                                             duration_ms=1)))
    if kind == "paid":
        attempt = LlmAttemptFields(provider="p", model="m", tokens_in=value, outcome="ok")
        return WorkerResult(wrap(LlmCallCheckpoint(path=path, step="a", attempt=1, call=0, answer=value,
                                                   attempts=[attempt])))
    if kind == "resume":
        return Signal(wrap(ResumeRun(event=f"e{value}", payload={"v": value})))
    if kind == "cancel":
        return Signal(wrap(CancelRun()))
    if kind == "child":
        return Signal(wrap(ChildFinished(path=path, child_run_id=f"c{value}", status="completed", output=value)))
    if kind == "admit":
        return Signal(wrap(AdmitRun(slot=f"slot:rich:{value}")))
    return Recover()


RICH_SPEC = Registry().add(RICH)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(Action, max_size=40),
    st.lists(st.tuples(st.sampled_from(["start", "ok", "err", "paid", "resume", "cancel", "child", "admit", "timer"]),
                       st.integers(0, 99)), min_size=1, max_size=6),
)
def test_a_shrunk_finished_run_answers_late_inputs_as_its_full_state(
    actions: list[tuple[str, int]], late: list[tuple[str, int]]
) -> None:
    """What lets the engine drop a finished run's spec, input, nodes and output from memory: for every input that
    can still arrive, the shrunk state decides the very same events, and stays the shrink of the full state."""
    state, log = play(actions)
    if not state.terminal:
        ended = run(state, Signal(Envelope.wrap(CancelRun(), id="end", key="r1", occurred_at_ms=0)), 10**6)
        state, log = ended.state, [*log, *ended.events]
    small = shrink(state)
    assert small.shrunk and small.seq == state.seq and small.status == state.status
    assert recovery_effects(small, 10**9) == []
    registry = Registry()
    registry.add(RICH)
    now = 10**7
    for kind, value in late:
        now += 1_000
        full_decision = run(state, _late_input(kind, value, state), now, registry)
        small_decision = run(small, _late_input(kind, value, state), now, registry)
        assert [e.model_dump() for e in small_decision.events] == [e.model_dump() for e in full_decision.events]
        assert small_decision.state == shrink(full_decision.state)
        state, small, log = full_decision.state, small_decision.state, [*log, *full_decision.events]
    assert shrink(fold("r1", log)) == small  # what verify-engine compares a shrunk state with


def test_only_a_finished_run_can_be_shrunk() -> None:
    sim = Sim(Workflow("w").step(a), 1)
    with pytest.raises(ValueError, match="only a finished run"):
        shrink(sim.state)


# --- budgets before the call -----------------------------------------------------------------------------------------


def _paid(sim: Sim, path: str, tokens: int, cost: float = 0.0, attempt: int = 1) -> Decision:
    """An LLM step's result with the usage its call reported."""
    from tickflow.events.schemas import LlmAttemptFields

    usage = LlmAttemptFields(provider="p", model="m", tokens_in=tokens // 2, tokens_out=tokens - tokens // 2,
                             cost_usd=cost, outcome="ok")
    res = StepSucceeded(path=path, step=path.rsplit("/", 1)[-1], attempt=attempt, output="said", duration_ms=1,
                        llm_attempts=[usage])
    return sim.apply(WorkerResult(Envelope.wrap(res, id=f"paid-{path}-{attempt}", key="r1", occurred_at_ms=0)))


def _budgeted(wf: Workflow, tokens: int | None = None, cost: float | None = None) -> Sim:
    sim = Sim.__new__(Sim)
    sim.registry, sim.state, sim.log, sim.sent, sim.now = Registry(), RunState("r1"), [], [], 999
    sim.spec = sim.registry.add(wf)
    cmd = StartRun(workflow=wf.name, input="hi", budget_tokens=tokens, budget_cost_usd=cost)
    sim.apply(Start(Envelope.wrap(cmd, id="c1", key="r1", occurred_at_ms=0), sim.spec))
    return sim


def test_an_llm_call_that_could_pass_the_token_budget_is_not_made() -> None:
    """Each call reserves its output cap plus an estimate of its input; the run stops before the call that could
    pass the budget, so the overshoot is bounded by what one call was allowed."""
    wf = Workflow("w").step(a, name="plan", llm_reserve_tokens=100).step(a, name="write", llm_reserve_tokens=100)
    sim = _budgeted(wf, tokens=250)
    [first] = [e.payload for e in sim.log if e.type == "StepScheduled"]
    assert first.reserve_tokens == 101 and sim.state.nodes["plan"].reserved_tokens == 101  # 100 + len('"hi"') // 4
    d = _paid(sim, "plan", 180)
    assert sim.state.tokens == 180 and "StepScheduled" not in sim.types(d)  # 180 + 101 > 250: not called
    assert sim.state.status == "failed" and sim.state.error is not None
    assert sim.state.error.type == "BudgetExceeded" and "'write' was not called" in sim.state.error.message
    assert not [e for e in sim.sent if e.type == "RunStep" and e.payload.path == "write"]
    assert fold("r1", sim.log) == sim.state
    roomy = _budgeted(wf, tokens=400)
    _paid(roomy, "plan", 180)
    _paid(roomy, "write", 150)
    assert roomy.state.status == "completed" and roomy.state.tokens == 330


def test_calls_in_flight_hold_their_reservation_and_a_spent_cost_budget_stops_the_next() -> None:
    wf = Workflow("w").parallel(
        x=Flow().step(a, name="x", llm_reserve_tokens=100), y=Flow().step(a, name="y", llm_reserve_tokens=100)
    )
    sim = _budgeted(wf, tokens=150)  # room for one call in flight, not two
    scheduled = [e.payload.path for e in sim.log if e.type == "StepScheduled"]
    assert len(scheduled) == 1 and sim.state.status == "failed"
    assert any(e.type == "NodeFailed" and e.payload.error.type == "BudgetExceeded" for e in sim.log)
    costly = _budgeted(Workflow("c").step(a, name="one", llm_reserve_tokens=10).step(a, name="two",
                                                                                    llm_reserve_tokens=10), cost=0.01)
    _paid(costly, "one", 20, cost=0.02)
    assert costly.state.status == "failed" and costly.state.error is not None
    assert "cost budget is spent" in costly.state.error.message


def test_steps_that_are_no_llm_call_and_runs_without_a_budget_reserve_nothing() -> None:
    sim = _budgeted(Workflow("w").step(a, name="plain").step(a, name="llm", llm_reserve_tokens=50), tokens=10)
    assert [e.payload.reserve_tokens for e in sim.log if e.type == "StepScheduled"] == [0]
    free = Sim(Workflow("f").step(a, name="llm", llm_reserve_tokens=50), "hi")
    assert [e.payload.reserve_tokens for e in free.log if e.type == "StepScheduled"] == [0]


def test_a_child_gets_what_is_left_of_the_parent_s_budget() -> None:
    sim = _budgeted(Workflow("w").step(a, name="llm", llm_reserve_tokens=10).child("kid"), tokens=500, cost=1.0)
    _paid(sim, "llm", 120, cost=0.25)
    [start] = [e for e in sim.sent if e.type == "StartRun"]
    assert (start.payload.budget_tokens, start.payload.budget_cost_usd) == (380, 0.75)
    spent = ErrorInfo(type="BudgetExceeded", message="LLM step 'x' was not called")
    sim.signal(ChildFinished(path="child1", child_run_id=start.key, status="failed", error=spent, tokens=300))
    assert sim.state.status == "failed" and sim.state.error is not None and sim.state.tokens == 420
    assert sim.state.error.type == "BudgetExceeded"  # still a spent budget one level up: a stack pauses on it
