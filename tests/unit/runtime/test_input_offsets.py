"""The engine's input offsets: nothing handled is committable before its partition's transaction committed, a
dropped partition commits nothing of what it handled, and recovery resumes after the later of the group's offset
and the applied note."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from tickflow.runtime.input_offsets import InputOffsets
from tickflow.runtime.snapshots import APPLIED_KEY, decode_applied

_steps = st.lists(
    st.tuples(st.sampled_from(["handle", "commit", "drop"]), st.integers(0, 2), st.booleans(), st.integers(1, 50))
)


@given(_steps)
def test_only_offsets_of_committed_turns_are_ever_committable(steps: list[tuple[str, int, bool, int]]) -> None:
    offsets = InputOffsets("t.commands", "t.results", "t.state")
    durable: dict[object, int] = {}  # what a committed transaction made durable, per input
    handled: dict[object, int] = {}
    for action, partition, commands, n in steps:
        tp = offsets.inputs(partition)[0 if commands else 1]
        if action == "handle":
            offset = max(handled.get(tp, 0), durable.get(tp, 0)) + n
            offsets.handled(tp, offset)
            handled[tp] = offset
        elif action == "commit":
            note = offsets.note(partition)
            mine = {t: o for t, o in handled.items() if t in offsets.inputs(partition)}
            if note is not None:
                topic, value, key, at = note
                assert (topic, key, at) == ("t.state", APPLIED_KEY, partition)
                roles = decode_applied(value)
                assert all(roles[offsets.role(t)] == o for t, o in mine.items())  # type: ignore[arg-type]
            offsets.committed(partition)
            durable.update(mine)
            for t in mine:
                del handled[t]
        else:
            offsets.drop(partition)
            for t in offsets.inputs(partition):
                handled.pop(t, None)
                durable.pop(t, None)
        assert offsets.committable == durable


def test_recovery_resumes_after_the_later_of_the_group_offset_and_the_note() -> None:
    offsets = InputOffsets("t.commands", "t.results", "t.state")
    commands, results = offsets.inputs(3)
    offsets.recovered(3, {"commands": 42})
    assert offsets.resume_at(commands, 7) == 42  # the group lags the transactions
    assert offsets.resume_at(commands, 50) == 50  # inputs that changed nothing carry no note
    assert offsets.resume_at(results, None) == 0  # nothing applied, nothing committed: from the beginning
    offsets.handled(results, 9)
    note = offsets.note(3)
    assert note is not None and orjson.loads(note[1]) == {"applied": {"commands": 42, "results": 9}}
