"""One engine partition's state and stage (``runtime.partition.Partition``), without an engine or a broker.

* A dropped partition keeps nothing that could be decided on or written: states, ids, quarantines, writer and pending
  sends go together; only what its last recovery read and why it is parked stay.
* A recovery that ends does not unregister a newer one started meanwhile (a give-up during its install).
* The events offset a snapshot round checkpoints only moves forward, to after the last event sent.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from tickflow.core.slots import SlotState
from tickflow.core.stacks import StackState
from tickflow.core.state import RunState
from tickflow.runtime.partition import Partition, Stage
from tickflow.runtime.recovery import Rebuilt
from tickflow.runtime.snapshots import Quarantine


def _rebuilt() -> Rebuilt:
    held = {"q": Quarantine(state=RunState("q"), reason="a gap", highest_seq=3)}
    return Rebuilt({"r": RunState("r")}, {"slot:w:k": SlotState("slot:w:k")}, {"stack:s": StackState("stack:s")},
                   {"old": 99}, held, 17, {}, 0, 0.0, 0.0)


def test_a_dropped_partition_keeps_nothing_it_served() -> None:
    part = Partition(3)
    writer: Any = SimpleNamespace(open=True)
    part.install(writer, _rebuilt())
    part.go_live()
    part.events_end, part.early_note = 40, ("t.state", b"note", b"__applied__", 3)
    assert part.live and part.writing and part.require_writer() is writer
    assert [part.state_of(k) is not None for k in ("r", "slot:w:k", "stack:s", "q", "old")] == [True] * 4 + [False]
    part.parked = "an earlier failure"
    assert part.drop() is writer
    part.give_up()
    assert (part.runs, part.slots, part.stacks, part.gone, part.quarantined) == ({}, {}, {}, {}, {})
    assert (part.writer, part.events_end, part.last_event_send, part.early_note) == (None, None, None, None)
    assert part.stage is Stage.GIVEN_UP and not part.live and not part.writing
    assert (part.recovered_from, part.parked) == (17, "an earlier failure")


async def test_an_ended_recovery_leaves_a_newer_one_registered() -> None:
    part = Partition(0)
    first = asyncio.create_task(asyncio.sleep(0))
    part.recovering(first)
    second = asyncio.create_task(asyncio.sleep(0))
    part.recovering(second)  # a give-up during the first one's install started it
    part.recovery_ended(first)
    assert part.recovery is second and part.stage is Stage.RECOVERING
    part.recovery_ended(second)
    assert part.recovery is None
    await asyncio.gather(first, second)


async def test_events_end_moves_to_after_the_last_event_sent_never_back() -> None:
    part = Partition(0)
    part.settle_events_end()
    assert part.events_end is None  # nothing sent yet: no checkpoint to write
    for offset, expected in ((41, 42), (7, 42)):
        sent: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        sent.set_result(SimpleNamespace(offset=offset))
        part.last_event_send = sent
        part.settle_events_end()
        assert (part.events_end, part.last_event_send) == (expected, None)


def test_a_note_already_in_the_transaction_is_taken_once() -> None:
    part = Partition(0)
    note = ("t.state", b"note", b"__applied__", 0)
    part.early_note = note
    assert part.take_early_note(note) and part.early_note is None
    assert not part.take_early_note(note)
