"""The engine's timer heap stays proportional to what is armed.

Before, entries were only ever invalidated lazily: every rebalance that dropped and re-armed a partition's finished
ids (their id markers are due in days) added a copy of each, and the heap grew by every finished id per rebalance.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tickflow.runtime.timers import Timers

IDS = 20_000


def test_rebalances_do_not_grow_the_heap() -> None:
    timers = Timers()
    owned = {f"r{i}": i for i in range(IDS)}
    for _ in range(10):  # ten rebalances handing the same partition back
        for run_id, i in owned.items():
            timers.arm(0, run_id, 10**12 + i)
        timers.drop_partition(owned)
    for run_id, i in owned.items():
        timers.arm(0, run_id, 10**12 + i)
    assert len(timers) <= 2 * IDS + 1_024
    assert timers.next_due() == 10**12


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 30), st.one_of(st.none(), st.integers(0, 100)))))
def test_what_fires_is_what_was_last_armed(arms: list[tuple[int, int, int | None]]) -> None:
    timers = Timers()
    expected: dict[str, tuple[int, int]] = {}
    for partition, n, due in arms:
        run_id = f"r{n}"
        timers.arm(partition, run_id, due)
        if due is None:
            expected.pop(run_id, None)
        else:
            expected[run_id] = (partition, due)
    fired = timers.pop_due(50)
    assert sorted(fired) == sorted((p, r) for r, (p, d) in expected.items() if d <= 50)
    assert timers.next_due() == min((d for p, d in expected.values() if d > 50), default=None)
