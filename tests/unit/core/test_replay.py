"""Replay without I/O: time travel over a scripted history, forks decided by the pure core, and ``diff_states``."""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tickflow.core.decider import Decision, Fork, Recover, RunState, Start, WorkerResult, effects, fold, run
from tickflow.core.state import NodeState, state_from_json, state_to_json
from tickflow.events import (
    Envelope,
    ErrorInfo,
    ForkRun,
    HistoryEvent,
    RunForked,
    RunRejected,
    RunStep,
    StartRun,
    StepErrored,
    StepSucceeded,
)
from tickflow.projections.rows import event_row
from tickflow.runtime.replay import (
    IncompleteHistory,
    NotForkable,
    SeqOutOfRange,
    UnknownHistory,
    diff_states,
    envelope_from_row,
    fork_command,
    history_of,
    state_at,
)
from tickflow.workflow import Registry, Workflow


def a(x: Any) -> Any:
    return x


def b(x: Any) -> Any:
    return x


def c(x: Any) -> Any:
    return x


registry = Registry()
spec = registry.add(
    Workflow("scripted", timeout_s=3_600).step(a).step(b, max_attempts=2, backoff_s=2).sleep(5, name="nap").step(c)
)


class Driver:
    """Drives one run with explicit time: each task gets a result (``b``'s first attempt fails), timers fire when
    due. Records every event, every task sent, and the state after every decision."""

    def __init__(self, run_id: str, now: int = 1_000) -> None:
        self.state = RunState(run_id)
        self.now = now
        self.log: list[Envelope] = []
        self.tasks: list[RunStep] = []
        self.after: dict[int, RunState] = {}  # the state after each decision, by its last seq
        self._open: list[RunStep] = []

    def apply(self, inp: Any, now: int | None = None) -> Decision:
        self.now = now if now is not None else self.now + 1
        d = run(self.state, inp, self.now, registry)
        self.log += d.events
        self.state = d.state
        self.after[d.state.seq] = d.state
        sent = [o.envelope.payload for o in effects(d)]
        new = [t for t in sent if isinstance(t, RunStep)]
        self.tasks += new
        self._open += new
        return d

    def start(self, value: Any) -> None:
        cmd = Envelope.wrap(
            StartRun(workflow="scripted", input=value), id="c1", key=self.state.run_id, occurred_at_ms=0
        )
        self.apply(Start(cmd, spec))

    def step(self) -> None:
        """One input: the oldest task's result, else the next timer."""
        if self._open:
            task = self._open.pop(0)
            result: StepSucceeded | StepErrored
            if task.step == "b" and task.attempt == 1:
                error = ErrorInfo(type="ConnectionError", message="flaky")
                result = StepErrored(path=task.path, step=task.step, attempt=1, error=error, duration_ms=1)
            else:
                output = {"n": task.input["n"] + 1, "by": task.idempotency_key}
                result = StepSucceeded(
                    path=task.path, step=task.step, attempt=task.attempt, output=output, duration_ms=1
                )
            rid = self.state.run_id
            self.apply(WorkerResult(Envelope.wrap(result, id=f"res/{task.idempotency_key}", key=rid, occurred_at_ms=0)))
            return
        due = self.state.next_due_ms()
        assert due is not None, f"run {self.state.run_id} is stuck at seq {self.state.seq}"
        self.apply(Recover(), max(self.now + 1, due))

    def finish(self) -> None:
        for _ in range(100):
            if self.state.terminal:
                return
            self.step()
        raise AssertionError("the run did not finish in 100 inputs")


@pytest.fixture(scope="module")
def source() -> Driver:
    d = Driver("src")
    d.start({"n": 0})
    d.finish()
    assert d.state.status == "completed"
    return d


def fork_of(src: Driver, at_seq: int, new_id: str = "fk", now: int | None = None) -> tuple[Driver, Decision]:
    cmd = fork_command(src.state.run_id, src.log, at_seq, new_id, now_ms=0)
    fork = Driver(new_id, now=src.log[at_seq - 1].occurred_at_ms if now is None else now)
    return fork, fork.apply(Fork(cmd), fork.now)


# --- time travel ----------------------------------------------------------------------------------------


def test_state_at_every_seq_is_the_fold_of_the_prefix_and_the_live_state_there(source: Driver) -> None:
    log = source.log
    assert [e.seq for e in log] == list(range(1, len(log) + 1))
    for n in range(1, len(log) + 1):
        at = state_at("src", log, n)
        assert at.seq == n and at == fold("src", log[:n])
        if n in source.after:  # a decision ended here: time travel gives exactly the state the engine had
            assert at == source.after[n]
    assert state_at("src", log) == source.state
    assert len(source.after) >= 6  # the script really went through several decisions


def test_time_travel_sees_the_run_move(source: Driver) -> None:
    seq_of = {(e.type, getattr(e.payload, "path", None)): e.seq or 0 for e in source.log}
    first_done = state_at("src", source.log, seq_of[("StepCompleted", "a")])
    assert first_done.status == "running" and first_done.nodes["a"].status == "done"
    assert "b" not in first_done.nodes
    retrying = state_at("src", source.log, seq_of[("StepFailed", "b")])
    assert retrying.nodes["b"].phase == "backoff" and retrying.nodes["b"].attempt == 1


def test_state_at_refuses_seqs_outside_the_history(source: Driver) -> None:
    last = len(source.log)
    with pytest.raises(SeqOutOfRange, match="at least 1"):
        state_at("src", source.log, 0)
    with pytest.raises(SeqOutOfRange, match=f"1..{last} visible, so there is no seq {last + 1}"):
        state_at("src", source.log, last + 1)
    with pytest.raises(UnknownHistory, match="no events of run 'nope'"):
        history_of("nope", [])
    with pytest.raises(IncompleteHistory, match=r"lacks events \[2\]"):
        state_at("src", [source.log[0], *source.log[2:]], 4)


def test_projected_rows_decode_back_to_the_events(source: Driver) -> None:
    rows = [event_row(e, "t.events", 0, i) for i, e in enumerate(source.log)]
    assert [envelope_from_row(r) for r in rows] == source.log
    assert history_of("src", rows) == source.log
    assert state_from_json(state_to_json(source.state)) == source.state


# --- diff_states ----------------------------------------------------------------------------------------


def test_diff_states_names_the_differing_fields(source: Driver) -> None:
    s = source.state
    assert diff_states(s, s) == [] and diff_states(s, replace(s)) == []
    assert diff_states(s, replace(s, status="failed")) == ["status"]
    nodes = dict(s.nodes)
    nodes["a"] = replace(nodes["a"], attempt=7)
    assert diff_states(s, replace(s, nodes=nodes)) == ["nodes['a'].attempt"]
    nodes["zz"] = NodeState(kind="step")
    del nodes["c"]
    assert diff_states(s, replace(s, nodes=nodes)) == ["nodes['a'].attempt", "nodes['c']", "nodes['zz']"]
    err = ErrorInfo(type="E", message="one")
    left = replace(s, error=err)
    assert diff_states(left, replace(s, error=err.model_copy(update={"message": "two"}))) == ["error.message"]
    assert diff_states(left, s) == ["error"]
    root = NodeState(kind="foreach", open=(1, 2))
    assert diff_states(root, replace(root, open=(1, 3, 4))) == ["open[1]", "open[2:]"]
    assert diff_states(s, replace(s, seq=s.seq + 1, output={"n": 9}))[0] == "seq"


# --- forks ----------------------------------------------------------------------------------------------


def test_fork_after_the_first_step_runs_only_the_later_steps(source: Driver) -> None:
    at = next(e.seq for e in source.log if e.type == "StepCompleted") or 0
    fork, d = fork_of(source, at, now=50_000)
    types = [e.type for e in d.events]
    assert types[: at + 1] == [e.type for e in source.log[:at]] + ["RunForked"]
    assert all(e.key == "fk" and e.id == f"fk/{e.seq}" for e in d.events)
    marker = d.events[at].payload
    assert isinstance(marker, RunForked) and (marker.source_run_id, marker.at_seq) == ("src", at)
    shift = 50_000 - source.log[at - 1].occurred_at_ms
    assert marker.shift_ms == shift and d.events[0].occurred_at_ms == source.log[0].occurred_at_ms + shift
    fork.finish()
    assert fork.state.status == "completed"
    assert [t.path for t in fork.tasks] == ["b", "b", "c"]  # a completed before the fork point: not again
    assert all(t.idempotency_key.startswith("fk/") for t in fork.tasks)
    assert fork.state.nodes["a"].output == source.state.nodes["a"].output  # its output came with the history
    assert fold("fk", fork.log) == fork.state


def test_fork_reissues_the_step_in_flight_and_keeps_the_time_left(source: Driver) -> None:
    retry = next(e for e in source.log if e.type == "StepScheduled" and getattr(e.payload, "attempt", 0) == 2)
    timer = next(e for e in source.log if e.type == "TimerStarted")
    fork, d = fork_of(source, retry.seq or 0, now=90_000)
    assert [(t.path, t.attempt, t.idempotency_key) for t in fork.tasks] == [("b", 2, "fk/b/2")]
    fork.finish()
    started = next(e for e in fork.log if e.type == "TimerStarted")
    assert started.seq == (timer.seq or 0) + 1 and fork.state.status == "completed"
    deadline = fork.log[0].payload.deadline_ms  # type: ignore[attr-defined]
    assert deadline == source.log[0].payload.deadline_ms + d.events[-1].payload.shift_ms  # type: ignore[attr-defined]


def test_fork_is_refused_with_a_reason_or_ignored(source: Driver) -> None:
    last = len(source.log)
    with pytest.raises(NotForkable, match="completed at seq"):
        fork_command("src", source.log, last, "new", now_ms=0)
    with pytest.raises(NotForkable, match="needs a new run id"):
        fork_command("src", source.log, 2, "src", now_ms=0)

    def forked(history: list[HistoryEvent], at_seq: int, state: RunState | None = None) -> Decision:
        cmd = Envelope.wrap(
            ForkRun(source_run_id="src", at_seq=at_seq, history=history), id="f", key="fk", occurred_at_ms=0
        )
        return run(state or RunState("fk"), Fork(cmd), 5_000, registry)

    history = fork_command("src", source.log, 3, "fk", now_ms=0).payload.history  # type: ignore[attr-defined]
    done = forked(history, 3)
    assert done.state.status == "running"
    # The engine checks again, for commands produced without the API:
    final = [
        HistoryEvent(
            type=e.type,
            schema_version=e.schema_version,
            occurred_at_ms=e.occurred_at_ms,
            payload=e.payload.model_dump(mode="json"),
        )
        for e in source.log
    ]
    finished = forked(final, last)
    assert [e.type for e in finished.events] == ["RunRejected"] and "completed at seq" in finished.state.error.message  # type: ignore[union-attr]
    short = forked(history, 4)
    assert isinstance(short.events[0].payload, RunRejected) and "carries the source's events 1..4, got 3" in (
        short.events[0].payload.reason
    )
    garbage = forked([HistoryEvent(type="StepCompleted", occurred_at_ms=1, payload={"path": "zz"})], 1)
    assert garbage.state.status == "rejected" and "does not fold" in garbage.state.error.message  # type: ignore[union-attr]
    assert forked(history, 3, state=done.state).events == []  # the same id again: forked once


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_a_fork_at_any_open_seq_equals_the_source_there_and_reruns_nothing_done(data: st.DataObject) -> None:
    src = Driver("p")
    src.start({"n": data.draw(st.integers(0, 1_000), label="input")})
    src.finish()
    open_seqs = [n for n in range(1, len(src.log) + 1) if not state_at("p", src.log, n).terminal]
    n = data.draw(st.sampled_from(open_seqs), label="at_seq")
    at = state_at("p", src.log, n)
    fork, d = fork_of(src, n, new_id="q")  # at the time of event n: the copy is the source, re-keyed
    assert fold("q", d.events[:n]) == replace(at, run_id="q")
    done_at_n = {p for p, node in at.nodes.items() if node.kind == "step" and node.status == "done"}
    fork.finish()
    assert not done_at_n & {t.path for t in fork.tasks}
    assert fork.state.status == "completed" and fold("q", fork.log) == fork.state
    assert diff_states(fork.state.nodes["c"].output["n"], src.state.nodes["c"].output["n"]) == []


# --- refold vs live, streamed ------------------------------------------------------------------------------


def _records(events: list[Envelope]) -> list[Any]:
    from aiokafka import ConsumerRecord

    from tickflow.events.codec import encode

    out = []
    for offset, event in enumerate(events):
        raw, key = encode(event), event.key.encode()
        out.append(ConsumerRecord("t.events", 0, offset, 0, 0, key, raw, None, len(key), len(raw), ()))
    return out


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(0, 200), max_size=6), stop_at=st.integers(1, 12))
def test_the_streamed_comparison_is_the_same_however_the_log_is_cut(
    source: Driver, cuts: list[int], stop_at: int
) -> None:
    """verify_engine feeds a partition a batch at a time: the report must not depend on where the batches end.
    A live state behind the log compares with the refold up to its seq; a tampered one differs; a live run with no
    events is reported missing from the log."""
    from tickflow.core.retention import Retention
    from tickflow.runtime.replay import PartitionComparison

    mid = Driver("mid")
    mid.start({"n": 10})
    mid.finish()
    decided = sorted(mid.after)  # the seqs a live state can stop at: after a whole decision
    live_seq = decided[min(stop_at, len(decided)) - 1]
    records = _records([e for pair in zip(source.log, mid.log, strict=False) for e in pair]
                       + source.log[len(mid.log):] + mid.log[len(source.log):])
    live = {"src": replace(source.state, status="failed"), "mid": mid.after[live_seq], "ghost": RunState("ghost")}
    retention = Retention(state_ms=10**12, tick_state_ms=10**12, id_ms=10**12, full_state_ms=10**12)

    def report(batches: list[list[Any]]) -> Any:
        comparison = PartitionComparison(0, live, 10**9, retention)
        for step in (comparison.note_releases, comparison.feed):
            for batch in batches:
                step(batch)
        return comparison.result()

    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    whole = report([records])
    assert report([records[a:b] for a, b in itertools.pairwise(bounds)]) == whole
    assert whole.runs_compared == 2 and whole.equal == 1 and whole.differing_count == 1
    assert whole.differing[0].run_id == "src" and whole.differing[0].first_path == "status"
    assert whole.missing_in_log == ["ghost"] and whole.events_read == len(records)
