"""The one integrity checker of the fault tests: read every topic from offset 0 and count what went wrong.

What a fault may never do, counted rather than asserted piecemeal, so a failing test says everything at once:

* **lost**: a run whose acknowledged ``StartRun`` (commands topic) has no first event in the log;
* **duplicate (run, seq)**: the same seq of a key written twice;
* **gap**: a key whose seqs are not exactly 1..N (less the seqs an operator's ``RunReleased`` skipped on purpose);
* **result applied twice**: two ``StepCompleted``/``StepFailed`` for one (run, step path, attempt);
* **LLM attempt logged twice**: two ``LlmCallAttempted`` for one (run, result, call, attempt) — tokens counted twice;
* **command applied twice**: a resume whose command id completed a wait (or was refused) more than once in its
  run, or a stack command whose id changed its stack more than once (a redelivered or retried command taken again);
  ``resumes_without_effect`` lists the resume ids with no effect at all (a test whose resumes all target live
  runs asserts it empty: the checker of the events topic alone cannot see a command that never had an effect);
* **unfinished**: a started run with no terminal event (allowed only while a test still expects progress).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from tickflow.core.stacks import COMMANDED
from tickflow.events import Envelope, ForkRun, ResumeRun, RunReleased, StartRun
from tickflow.events.agents import STACK_PREFIX
from tickflow.events.codec import InvalidRecord, decode
from tickflow.events.schemas import RUN_TERMINAL_EVENTS
from tickflow.runtime.kafka import read_partition
from tickflow.settings import Settings

__all__ = ["Integrity", "check_log"]

FIRST_EVENTS = frozenset({"RunStarted", "RunRejected", "RunForked"})
#: The stack events a user's command causes (each command at most once).
STACK_COMMANDED = frozenset(t.TYPE for t in COMMANDED)


@dataclass
class Integrity:
    started: set[str] = field(default_factory=set)
    events: list[Envelope] = field(default_factory=list)
    unreadable: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, int]] = field(default_factory=list)
    gaps: list[tuple[str, list[int]]] = field(default_factory=list)
    results_applied_twice: list[tuple[str, str, int]] = field(default_factory=list)
    llm_attempts_twice: list[tuple[str, str, int, int]] = field(default_factory=list)
    commands_applied_twice: list[tuple[str, str]] = field(default_factory=list)
    resumes_without_effect: list[tuple[str, str]] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)

    def problems(self, *, finished: bool = True) -> list[str]:
        found: dict[str, list[Any]] = {
            "lost": self.lost,
            "duplicate (run, seq)": self.duplicates,
            "gap": self.gaps,
            "result applied twice": self.results_applied_twice,
            "LLM attempt logged twice": self.llm_attempts_twice,
            "command applied twice": self.commands_applied_twice,
        }
        if finished:
            found["unfinished"] = self.unfinished
        return [f"{len(items)} {what}: {items[:5]}" for what, items in found.items() if items]

    def assert_clean(self, *, finished: bool = True) -> None:
        problems = self.problems(finished=finished)
        assert not problems, f"{len(self.started)} runs, {len(self.events)} events: " + "; ".join(problems)

    def summary(self) -> str:
        return (
            f"{len(self.started)} runs started, {len(self.events)} events: lost={len(self.lost)} "
            f"dup={len(self.duplicates)} gap={len(self.gaps)} results-twice={len(self.results_applied_twice)} "
            f"llm-twice={len(self.llm_attempts_twice)} commands-twice={len(self.commands_applied_twice)} "
            f"unfinished={len(self.unfinished)}"
        )


async def check_log(settings: Settings) -> Integrity:
    """Read the commands and events topics of ``settings`` from offset 0 and count every violation."""
    found = Integrity()
    resumes: set[tuple[str, str]] = set()  # (run, command id) of every resume sent
    for partition in range(settings.partitions):
        for record in await read_partition(settings.kafka, settings.topics.commands, partition):
            try:
                command = decode(record.value, expect="command")
            except InvalidRecord:
                continue  # dead-lettered by the engine: never a run
            if record.key != command.key.encode():
                continue  # refused by the engine (the record key decides the owner): never a run
            if isinstance(command.payload, StartRun | ForkRun):
                found.started.add(command.key)
            elif isinstance(command.payload, ResumeRun):
                resumes.add((command.key, command.id))
    seqs: dict[str, Counter[int]] = defaultdict(Counter)
    firsts: set[str] = set()
    ended: set[str] = set()
    applied: Counter[tuple[str, str, int]] = Counter()
    llm: Counter[tuple[str, str, int, int]] = Counter()
    for partition in range(settings.partitions):
        for record in await read_partition(settings.kafka, settings.topics.events, partition):
            try:
                found.events.append(decode(record.value, expect="event"))
            except InvalidRecord:
                found.unreadable += 1  # not the engine's: the projector dead-letters it, readers skip it
    released: dict[str, set[int]] = defaultdict(set)  # seqs an operator's release skipped on purpose
    waits: dict[str, set[str]] = defaultdict(set)  # each run's wait nodes
    taken: Counter[tuple[str, str]] = Counter()  # (entity, command id): times a command took effect
    for event in found.events:
        if event.seq is not None:
            seqs[event.key][event.seq] += 1
        p = event.payload
        if isinstance(p, RunReleased) and event.seq is not None:
            released[event.key].update(range(p.resumed_from_seq + 1, event.seq))
        if event.type in FIRST_EVENTS:
            firsts.add(event.key)
        if event.type in RUN_TERMINAL_EVENTS:
            ended.add(event.key)
        if event.type in ("StepCompleted", "StepFailed"):
            applied[(event.key, p.path, p.attempt)] += 1  # type: ignore[attr-defined]
        if event.type == "LlmCallAttempted":
            llm[(event.key, event.causation_id or "", p.call, p.attempt)] += 1  # type: ignore[attr-defined]
        if event.type == "WaitStarted":
            waits[event.key].add(p.path)  # type: ignore[attr-defined]
        cause = event.causation_id or ""
        resumed = event.type == "NodeCompleted" and p.path in waits[event.key]  # type: ignore[attr-defined]
        commanded = event.key.startswith(STACK_PREFIX) and event.type in STACK_COMMANDED
        if resumed or commanded or event.type == "ResumeRejected":
            taken[(event.key, cause)] += 1
    for key, counts in sorted(seqs.items()):
        found.duplicates += [(key, seq) for seq, n in sorted(counts.items()) if n > 1]
        present = sorted(set(counts) | released.get(key, set()))
        if present != list(range(1, len(present) + 1)):
            found.gaps.append((key, sorted(counts)))
    found.lost = sorted(found.started - firsts)
    found.unfinished = sorted(found.started - ended)
    found.results_applied_twice = sorted(k for k, n in applied.items() if n > 1)
    found.llm_attempts_twice = sorted(k for k, n in llm.items() if n > 1)
    found.commands_applied_twice = sorted(k for k, n in taken.items() if n > 1)
    found.resumes_without_effect = sorted(r for r in resumes if taken[r] == 0)
    return found
