"""How long a finished run stays with the engine, in three stages. Pure: the time is always passed in.

1. **Full state** for ``full_state_ms`` after its end: long enough that the parent report and slot release its last
   decision owed went out (they are committed with its last events), and a recovery could re-send them.
2. **Shrunk state** (``core.state.shrink``) until ``state_ms`` after its end: id, seq, status, lineage and totals,
   which answer a late or repeated input exactly as the full state would, for a few hundred bytes.
3. **Id only** (a ``Gone`` marker) for ``id_ms`` more, so a late start of that id cannot begin a second seq 1.

A stack's tick runs skip the third stage and keep their state ``tick_state_ms`` at most: only their stack starts
them, by a tick number it never reuses, and it re-sends the start of the running tick alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tickflow.core.stacks import is_stack
from tickflow.core.state import RunState

__all__ = ["Retention", "Stage"]

#: What is due for a run at a moment: decide its timer (a live run), or, for a finished one, keep it as it is,
#: shrink it, or expire its state.
Stage = Literal["decide", "keep", "shrink", "expire"]


@dataclass(frozen=True, slots=True)
class Retention:
    """The engine's retention of finished runs (settings in milliseconds; see the module docstring)."""

    state_ms: int
    tick_state_ms: int
    id_ms: int
    full_state_ms: int

    @staticmethod
    def is_tick(state: RunState) -> bool:
        """A stack's tick run (its parent is a stack)."""
        return state.parent_run_id is not None and is_stack(state.parent_run_id)

    def state_kept_ms(self, state: RunState) -> int:
        """How long after its end a finished run's state stays (and deduplicates a repeated start of its id)."""
        return min(self.state_ms, self.tick_state_ms) if self.is_tick(state) else self.state_ms

    def stage(self, state: RunState, now: int) -> Stage:
        ended = state.ended_at_ms
        if not state.terminal:
            return "decide"
        if ended is None:  # finished without an end time: nothing to time its stages by
            return "keep"
        if now >= ended + self.state_kept_ms(state):
            return "expire"
        if not state.shrunk and now >= ended + self.full_state_ms:
            return "shrink"
        return "keep"

    def due_ms(self, state: RunState) -> int | None:
        """When the run's next timer is due: its own next deadline while it runs, else its next stage."""
        ended = state.ended_at_ms
        if not state.terminal or ended is None:
            return state.next_due_ms()
        kept = self.state_kept_ms(state)
        return ended + (kept if state.shrunk else min(self.full_state_ms, kept))

    def id_taken_until(self, state: RunState, now: int) -> int | None:
        """Until when the id of a run whose state expires at ``now`` stays taken (None: a tick run's is not kept)."""
        return None if self.is_tick(state) else now + self.id_ms
