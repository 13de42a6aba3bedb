"""The engine's side of claim-checked commands: what it must read from the blob store before it can decide.

Producers (the API, the SDK through it) put a resume payload or a fork's history that would not fit a Kafka
record into the blob store and send a reference (``tickflow.runtime.claimcheck``). The decider is pure, so the
engine reads what a decision needs first — on a thread, never on its loop, which serves every partition it owns:

* a ``ForkRun`` whose ``history_blob`` names its history: the copied events are the decision itself, so the
  history is read and handed over inline (the events it yields are the source's, each within a record's size);
* a ``ResumeRun`` whose payload is a reference, when the wait it resumes has a schema: the schema is checked
  against the value. The event (``NodeCompleted``) keeps the reference, and the next step's worker reads the
  value, as it does for any claim-checked step input. Conditions and mappers, which run inside the decider,
  see the reference — branch on small values.

Reading can fail (a blob deleted, a store not shared). That never stops the engine: the fork is rejected and
the resume refused, each with the reason in the run's events, and the sender may try again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from tickflow.core.decider import ClaimedPayload, Fork, RunState, Signal, resume_schema
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import ForkRun, ResumeRun
from tickflow.runtime.claimcheck import BlobStore, is_ref, resolve

__all__ = ["claimed_fork", "claimed_signal"]


def _read_history(fork: ForkRun, store: BlobStore) -> ForkRun:
    assert fork.history_blob is not None
    history = orjson.loads(store.get(fork.history_blob.sha256))
    return ForkRun.model_validate({"source_run_id": fork.source_run_id, "at_seq": fork.at_seq, "history": history})


async def claimed_fork(env: Envelope, store: BlobStore) -> Fork:
    """The decider's input for a ForkRun command, its claim-checked history read (off the loop) when it has one."""
    fork = env.payload
    assert isinstance(fork, ForkRun)
    if fork.history_blob is None:
        return Fork(env)
    try:
        inline = await asyncio.to_thread(_read_history, fork, store)
    except Exception as exc:  # a missing, corrupt or malformed blob rejects the fork; it must not stop the engine
        return Fork(env, unreadable=f"{type(exc).__name__}: {exc}"[:1_000])
    return Fork(env.model_copy(update={"payload": inline}))


async def claimed_signal(env: Envelope, state: RunState, store: BlobStore) -> Signal:
    """The decider's input for a command to a run: with the value of a claim-checked resume payload when the
    wait it resumes checks a schema (read off the loop)."""
    p = env.payload
    if not isinstance(p, ResumeRun) or not is_ref(p.payload) or resume_schema(state, p.event) is None:
        return Signal(env)
    try:
        value: Any = await asyncio.to_thread(resolve, p.payload, store)
    except Exception as exc:  # refused with the reason in the run's events; the run keeps waiting
        return Signal(env, ClaimedPayload(problem=f"{type(exc).__name__}: {exc}"[:1_000]))
    return Signal(env, ClaimedPayload(value=value))
