"""No silent skips: a run whose log cannot be folded is quarantined, says why, and resumes only when released.

Recovery's fold (``tickflow.runtime.recovery.fold_log``) and the projection (``tickflow.projections.rows.run_row``)
are pure, so the rules are proven here on crafted logs: an unreadable event or a seq gap quarantines the run at its
last good state (never folding on from stale state), later events are only counted, and an operator's release
(``tickflow.core.decider.release``) resumes it in a way a refold of the log reproduces exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiokafka import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.core.test_decider import Sim
from tickflow.core.decider import Recover, release, run
from tickflow.core.retention import Retention
from tickflow.core.state import RunState, SequenceError, evolve, fold
from tickflow.events import Envelope, ReleaseRun, RunQuarantined, RunReleased
from tickflow.events.codec import encode
from tickflow.projections.rows import QUARANTINED, run_row
from tickflow.runtime.claimcheck import FileBlobStore
from tickflow.runtime.recovery import SnapshotReader, fold_log
from tickflow.runtime.replay import compare_partition
from tickflow.runtime.snapshots import CHECKPOINT_KEY, encode_checkpoint, encode_snapshot
from tickflow.workflow import Workflow

_KEEP_ALL = Retention(state_ms=10**12, tick_state_ms=10**12, id_ms=10**12, full_state_ms=10**12)


def step1(x: Any) -> Any:
    return x


def step2(x: Any) -> Any:
    return x


def step3(x: Any) -> Any:
    return x


def _finished_log(run_id: str = "r1") -> list[Envelope]:
    sim = Sim(Workflow("q").step(step1).step(step2).step(step3), {"n": 1}, run_id=run_id)
    for name in ("step1", "step2", "step3"):
        sim.ok(name, {"n": name})
    assert sim.state.status == "completed"
    return sim.log


def _records(values: list[tuple[str, bytes]]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord("events", 0, offset, 0, 0, key.encode(), value, None, len(key), len(value), ())
        for offset, (key, value) in enumerate(values)
    ]


def _fold(values: list[tuple[str, bytes]]) -> tuple[dict[str, RunState], dict[str, Any]]:
    runs: dict[str, RunState] = {}
    held = fold_log(0, _records(values), runs, {}, {}, {})
    return runs, held


def _release(state: RunState, highest: int, now: int = 5_000) -> Envelope:
    command = Envelope.wrap(ReleaseRun(reason="checked by hand"), id="rel-1", key=state.run_id, occurred_at_ms=now)
    decision = release(state, highest, command, now)
    assert len(decision.events) == 1
    return decision.events[0]


def test_a_clean_log_quarantines_nothing() -> None:
    log = _finished_log()
    runs, held = _fold([(e.key, encode(e)) for e in log])
    assert held == {} and runs["r1"] == fold("r1", log)


@given(st.data())
def test_an_unreadable_event_quarantines_its_run_at_the_last_good_state(data: st.DataObject) -> None:
    log = _finished_log()
    bad = data.draw(st.integers(0, len(log) - 1))
    values = [(e.key, encode(e)) for e in log]
    values[bad] = ("r1", b"\xff not an event")
    other = _finished_log("r2")
    runs, held = _fold(values + [(e.key, encode(e)) for e in other])
    assert "r1" not in runs and runs["r2"] == fold("r2", other)  # the other run is untouched
    q = held["r1"]
    assert q.state == fold("r1", log[:bad]) and q.state.seq == bad
    # the unreadable record may have held any seq up to one past the last: a release skips past all of them
    assert q.highest_seq == max(len(log), bad + 1) and q.skipped == len(log) - bad - 1
    assert f"events[0]@{bad}" in q.reason and "cannot be read" in q.reason


def test_a_seq_gap_quarantines_instead_of_folding_on_from_stale_state() -> None:
    log = _finished_log()
    values = [(e.key, encode(e)) for i, e in enumerate(log) if i != 3]  # seq 4 is lost
    runs, held = _fold(values)
    assert "r1" not in runs
    q = held["r1"]
    assert q.state == fold("r1", log[:3]) and q.highest_seq == len(log)
    assert "expected seq 4, got 5" in q.reason


def test_the_engine_note_is_remembered_so_it_is_written_once() -> None:
    log = _finished_log()
    note = Envelope.wrap(
        RunQuarantined(reason="x", last_good_seq=2, highest_seq=len(log)), id="n", key="r1", occurred_at_ms=1
    )
    values = [(e.key, encode(e)) for e in log]
    values[2] = ("r1", b"garbage")
    _, held = _fold(values)
    assert not held["r1"].announced
    _, held = _fold([*values, ("r1", encode(note))])
    assert held["r1"].announced


@given(st.data())
def test_a_release_resumes_the_run_and_a_refold_of_the_log_agrees(data: st.DataObject) -> None:
    log = _finished_log()
    bad = data.draw(st.integers(1, len(log) - 2))
    values = [(e.key, encode(e)) for e in log]
    values[bad] = ("r1", b"garbage")
    _, held = _fold(values)
    q = held["r1"]
    released = _release(q.state, q.highest_seq)
    assert isinstance(released.payload, RunReleased)
    assert released.seq == len(log) + 1 and released.payload.resumed_from_seq == bad
    live = evolve(q.state, released)
    # The log now holds the release: recovery folds through the unreadable stretch to the same state.
    runs, held = _fold([*values, ("r1", encode(released))])
    assert held == {} and runs["r1"] == live
    # ... and it goes on: the engine decides for it again (the step in flight is re-sent by recovery).
    assert run(live, Recover("after-release"), 6_000, Sim(Workflow("noop").step(step1)).registry) is not None


def test_a_release_must_name_the_state_it_resumes() -> None:
    log = _finished_log()
    state = fold("r1", log[:2])
    released = _release(state, len(log))
    with pytest.raises(SequenceError):
        evolve(fold("r1", log[:3]), released)  # not the state it was decided for
    with pytest.raises(SequenceError):
        evolve(state, log[4])  # without a release a gap is still refused


def test_the_projection_quarantines_on_a_gap_or_a_note_and_says_why_until_released() -> None:
    log = _finished_log()
    row = None
    for event in log[:3]:
        row = run_row(row, event)
    assert row is not None and row.status == "running"
    gapped = run_row(row, log[4])  # seq 4 never arrives
    assert gapped.status == QUARANTINED and "skips seq 4 to 4" in gapped.error_message
    later = run_row(gapped, log[-1])  # RunCompleted: still quarantined, the reason kept
    assert later.status == QUARANTINED and later.last_seq == len(log) and later.finished_at_ms == 0
    note = Envelope.wrap(
        RunQuarantined(reason="the event at events[0]@9 cannot be read", last_good_seq=3, highest_seq=len(log)),
        id="n",
        key="r1",
        occurred_at_ms=1,
    )
    noted = run_row(later, note)
    assert noted.status == QUARANTINED and noted.error_message.startswith("the event at")
    released = _release(fold("r1", log[:3]), len(log))
    back = run_row(noted, released)
    assert back.status == "running" and back.error_type == "" and back.last_seq == len(log) + 1


def test_verify_engine_refolds_a_released_run_and_lists_a_quarantined_one() -> None:
    log = _finished_log()
    values = [(e.key, encode(e)) for e in log]
    values[2] = ("r1", b"garbage")
    _, held = _fold(values)
    released = _release(held["r1"].state, held["r1"].highest_seq)
    live = evolve(held["r1"].state, released)
    after = compare_partition(0, {"r1": live}, _records([*values, ("r1", encode(released))]), 10**13, _KEEP_ALL)
    assert (after.runs_compared, after.equal, after.differing_count) == (1, 1, 0), after
    during = compare_partition(0, {}, _records(values), 10**13, _KEEP_ALL, frozenset({"r1"}))
    assert during.quarantined == ["r1"] and during.missing_live == [], during


@given(st.data())
def test_a_refold_after_a_release_skips_the_released_stretch_even_once_it_is_readable(data: st.DataObject) -> None:
    """An upcaster added after the release makes the bad event readable again: the live run resumed without it, so
    every refold (``fold``, verify-engine) skips it too and agrees with the live state."""
    log = _finished_log()
    bad = data.draw(st.integers(1, len(log) - 2))
    values = [(e.key, encode(e)) for e in log]
    values[bad] = ("r1", b"garbage")
    _, held = _fold(values)
    released = _release(held["r1"].state, held["r1"].highest_seq)
    live = evolve(held["r1"].state, released)
    readable_now = [*log, released]  # the garbage decodes now: the original event
    assert fold("r1", readable_now) == live
    report = compare_partition(
        0, {"r1": live}, _records([(e.key, encode(e)) for e in readable_now]), 10**13, _KEEP_ALL
    )
    assert (report.equal, report.differing_count) == (1, 0), report


def test_a_quarantine_is_snapshotted_and_outlives_the_checkpoint_that_passes_it(tmp_path: Path) -> None:
    """The checkpoint after a quarantine passes the event that could not be folded. Before, the held run was not
    snapshotted: after a restart it came back from its stale snapshot (and wrote seqs its log already had), or
    vanished. Now the state topic holds its quarantine under its key, and recovery holds it again."""
    log = _finished_log()
    values = [(e.key, encode(e)) for e in log]
    values[2] = ("r1", b"garbage")
    _, held = _fold(values)
    held["r1"].announced = True
    blobs = FileBlobStore(tmp_path)
    stale = encode_snapshot(fold("r1", log[:1]))
    records = [(b"r1", stale), (b"r1", encode_snapshot(held["r1"])), (CHECKPOINT_KEY, encode_checkpoint(len(log)))]
    state = [
        ConsumerRecord("state", 0, offset, 0, 0, key, value, None, len(key), len(value), ())
        for offset, (key, value) in enumerate(records)
    ]
    reader = SnapshotReader(0, blobs)
    reader.feed(state)  # type: ignore[arg-type]
    runs, _, _, _, checkpoint = reader.result()
    assert "r1" not in runs and checkpoint == len(log)
    assert reader.held["r1"] == held["r1"]
    # What recovery folds after the checkpoint (here: the operator's release) applies to the held state.
    released = _release(held["r1"].state, held["r1"].highest_seq)
    after = fold_log(0, _records([("r1", encode(released))]), runs, {}, {}, {}, dict(reader.held))
    assert after == {} and runs["r1"] == evolve(held["r1"].state, released)
