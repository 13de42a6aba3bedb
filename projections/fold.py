"""The projection fold: a batch of log records in, the rows of every table out. Pure: no clock, no I/O.

The fold keeps what later events need (each run's row and workflow, open step attempts, open ticks, stacks) in
bounded caches. What a cold cache misses (after a restart) the projector loads from the store first — see
``ProjectionFold.missing`` — so the rows are the same whether the fold ran from offset 0 or resumed midway.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from tickflow.events.agents import STACK_PREFIX, TickFinished
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import StepCompleted, StepFailed, StepScheduled
from tickflow.events.topics import SLOT_PREFIX
from tickflow.projections.facts import (
    LlmCallRow,
    MessageRow,
    StackRow,
    StepRow,
    TickRow,
    llm_call_row,
    message_row,
    stack_row,
    step_row,
    tick_row,
)
from tickflow.projections.rows import EventRow, RunRow, event_row, run_row

__all__ = ["FACT_TABLES", "Missing", "ProjectionBatch", "ProjectionFold", "Record", "drop_projected"]

#: Tables whose rows come one per event, with the event's (partition, offset): inserted exactly once.
FACT_TABLES = ("events", "steps", "llm_calls", "ticks", "messages")

#: (partition, offset, event) of one record of the events topic.
Record = tuple[int, int, Envelope]


@dataclass
class ProjectionBatch:
    """Rows of every table produced by one batch of records."""

    events: list[EventRow] = field(default_factory=list)
    runs: list[RunRow] = field(default_factory=list)
    steps: list[StepRow] = field(default_factory=list)
    llm_calls: list[LlmCallRow] = field(default_factory=list)
    stacks: list[StackRow] = field(default_factory=list)
    ticks: list[TickRow] = field(default_factory=list)
    messages: list[MessageRow] = field(default_factory=list)

    def tables(self) -> dict[str, list[Any]]:
        return {
            "events": self.events,
            "runs": self.runs,
            "steps": self.steps,
            "llm_calls": self.llm_calls,
            "stacks": self.stacks,
            "ticks": self.ticks,
            "messages": self.messages,
        }

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.tables().values())


@dataclass
class Missing:
    """Keys a cold cache needs loaded from the store before a batch is folded."""

    runs: list[str] = field(default_factory=list)
    steps: list[tuple[str, str, int]] = field(default_factory=list)
    ticks: list[tuple[str, int]] = field(default_factory=list)
    stacks: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.runs or self.steps or self.ticks or self.stacks)


def _is_run(key: str) -> bool:
    return not (key.startswith(SLOT_PREFIX) or key.startswith(STACK_PREFIX))


class ProjectionFold:
    """Folds records into rows. Caches are LRU-bounded; open attempts and ticks leave when they finish."""

    def __init__(self, max_cached: int = 200_000) -> None:
        self.max_cached = max_cached
        self.runs: OrderedDict[str, RunRow] = OrderedDict()
        self.stacks: OrderedDict[str, StackRow] = OrderedDict()
        self.open_steps: dict[tuple[str, str, int], StepRow] = {}
        self.open_ticks: dict[tuple[str, int], TickRow] = {}

    def missing(self, records: list[Record]) -> Missing:
        """What the store must supply (``load``) so that ``fold`` of these records is exact."""
        need = Missing()
        seen: set[Any] = set()
        for _, _, env in records:
            key, p = env.key, env.payload
            if _is_run(key):
                if key not in self.runs and key not in seen:
                    seen.add(key)
                    need.runs.append(key)
                if isinstance(p, StepScheduled):
                    seen.add((key, p.path, p.attempt))  # scheduled in this batch: nothing to load
                elif isinstance(p, StepCompleted | StepFailed):
                    sk = (key, p.path, p.attempt)
                    if sk not in self.open_steps and sk not in seen:
                        seen.add(sk)
                        need.steps.append(sk)
            elif key.startswith(STACK_PREFIX):
                sid = key[len(STACK_PREFIX) :]
                if sid not in self.stacks and ("stack", sid) not in seen:
                    seen.add(("stack", sid))
                    need.stacks.append(sid)
                tick = getattr(p, "tick", None)
                if tick is not None and not isinstance(p, TickFinished):
                    seen.add((sid, tick))  # fired or skipped in this batch
                elif isinstance(p, TickFinished) and (sid, p.tick) not in self.open_ticks and (sid, p.tick) not in seen:
                    seen.add((sid, p.tick))
                    need.ticks.append((sid, p.tick))
        return need

    def load(
        self,
        runs: dict[str, RunRow],
        steps: dict[tuple[str, str, int], StepRow],
        ticks: dict[tuple[str, int], TickRow],
        stacks: dict[str, StackRow],
    ) -> None:
        self.runs.update(runs)
        self.open_steps.update(steps)
        self.open_ticks.update(ticks)
        self.stacks.update(stacks)

    def fold(self, records: list[Record], topic: str) -> ProjectionBatch:
        out = ProjectionBatch()
        runs: dict[str, RunRow] = {}
        steps: dict[tuple[str, str, int], StepRow] = {}
        ticks: dict[tuple[str, int], TickRow] = {}
        stacks: dict[str, StackRow] = {}
        for partition, offset, env in records:
            key = env.key
            workflow = ""
            if _is_run(key):
                row = run_row(self.runs.get(key), env)
                self.runs[key] = runs[key] = row
                self.runs.move_to_end(key)
                workflow = row.workflow
                self._fold_run_facts(env, workflow, partition, offset, out, steps)
            elif key.startswith(STACK_PREFIX):
                self._fold_stack(env, partition, offset, stacks, ticks)
            out.events.append(event_row(env, topic, partition, offset, workflow))
        out.runs = list(runs.values())
        out.steps = list(steps.values())
        out.ticks = list(ticks.values())
        out.stacks = list(stacks.values())
        self._trim()
        return out

    def fold_stacks(self, records: list[Record]) -> ProjectionBatch:
        """Only the stack board and tick rows of ``records`` (events of agent stacks; others are ignored)."""
        out = ProjectionBatch()
        stacks: dict[str, StackRow] = {}
        ticks: dict[tuple[str, int], TickRow] = {}
        for partition, offset, env in records:
            if env.key.startswith(STACK_PREFIX):
                self._fold_stack(env, partition, offset, stacks, ticks)
        out.stacks = list(stacks.values())
        out.ticks = list(ticks.values())
        self._trim()
        return out

    def _fold_run_facts(
        self,
        env: Envelope,
        workflow: str,
        partition: int,
        offset: int,
        out: ProjectionBatch,
        steps: dict[tuple[str, str, int], StepRow],
    ) -> None:
        p = env.payload
        if isinstance(p, StepScheduled | StepCompleted | StepFailed):
            sk = (env.key, p.path, p.attempt)
            srow = step_row(self.open_steps.get(sk), env, workflow, partition, offset)
            if srow is not None:
                if srow.status == "scheduled":
                    self.open_steps[sk] = srow
                else:
                    self.open_steps.pop(sk, None)
                steps[sk] = srow
            return
        if (call := llm_call_row(env, workflow, partition, offset)) is not None:
            out.llm_calls.append(call)
        elif (message := message_row(env, partition, offset)) is not None:
            out.messages.append(message)

    def _fold_stack(
        self,
        env: Envelope,
        partition: int,
        offset: int,
        stacks: dict[str, StackRow],
        ticks: dict[tuple[str, int], TickRow],
    ) -> None:
        sid = env.key[len(STACK_PREFIX) :]
        srow = stack_row(self.stacks.get(sid), env)
        if srow is not None:
            self.stacks[sid] = stacks[sid] = srow
            self.stacks.move_to_end(sid)
        p = env.payload
        tick = getattr(p, "tick", None)
        if tick is None:
            return
        tk = (sid, int(tick))
        trow = tick_row(self.open_ticks.get(tk), env, partition, offset)
        if trow is None:
            return
        ticks[tk] = trow
        if trow.status in ("fired", "queued"):
            self.open_ticks[tk] = trow
        else:
            self.open_ticks.pop(tk, None)

    def _trim(self) -> None:
        for cache in (self.runs, self.stacks):
            while len(cache) > self.max_cached:
                cache.popitem(last=False)


def drop_projected(batch: ProjectionBatch, watermarks: dict[str, dict[int, int]]) -> ProjectionBatch:
    """Drop fact rows at or below each table's projected high-water offset (per partition).

    Versioned tables (runs, stacks) are idempotent and keep all their rows; the fold's step and tick rows are
    versioned too, but the rollups read them, so a row already inserted must not be inserted again.
    """
    if not watermarks:
        return batch
    kept = ProjectionBatch(runs=batch.runs, stacks=batch.stacks)
    for table in FACT_TABLES:
        marks = watermarks.get(table, {})
        rows = getattr(batch, table)
        setattr(kept, table, [r for r in rows if r.offset > marks.get(r.partition, -1)])
    return kept
