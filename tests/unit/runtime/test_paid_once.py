"""A paid call is paid once (no broker): the journal of paid calls in the worker, ``paid_once`` in a step body and
the engine's logging of a checkpoint's attempts — once, whichever attempt of the step paid."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.unit.core.test_decider import Sim, a
from tickflow.agents import paid_once
from tickflow.core.decider import Recover, WorkerResult, run
from tickflow.events import Envelope, RunStep
from tickflow.events.agents import LlmCallCheckpoint
from tickflow.events.codec import encode
from tickflow.events.schemas import LlmAttemptFields
from tickflow.runtime.journal import PaidCalls, StepJournal
from tickflow.runtime.produced import ProducedResults
from tickflow.workflow import StepContext, Workflow

ATTEMPT = LlmAttemptFields(call=1, attempt=1, provider="local", model="m", tokens_in=100, tokens_out=20,
                           cost_usd=0.5, outcome="ok")


def task(path: str = "llm", attempt: int = 1, run_id: str = "r1") -> Envelope:
    step = RunStep(workflow="w", path=path, step=path, fn="f", attempt=attempt,
                   idempotency_key=f"{run_id}/{path}/{attempt}")
    return Envelope.wrap(step, id=f"{run_id}/task/{path}/{attempt}", key=run_id, occurred_at_ms=1)


class Broker:
    """Stands for the results topic: keeps what was sent; ``down`` makes every send fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.down = False

    async def send(self, key: bytes, raw: bytes) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        self.sent.append((key, raw))


class Provider:
    def __init__(self) -> None:
        self.requests = 0

    async def answer(self) -> dict[str, Any]:
        self.requests += 1
        return {"text": f"answer {self.requests}"}


def context(journal: StepJournal | None, attempt: int = 1) -> StepContext:
    return StepContext(run_id="r1", workflow="w", step="llm", attempt=attempt, idempotency_key="r1/llm", path="llm",
                       journal=journal)


async def ask(ctx: StepContext, provider: Provider) -> dict[str, Any]:
    return await paid_once(ctx, provider.answer, save=lambda v: v, load=lambda v: v, ledger=lambda _: [ATTEMPT])


async def test_a_re_run_of_the_step_gets_the_paid_answer_without_asking_again() -> None:
    calls, broker, provider = PaidCalls(), Broker(), Provider()
    first_journal = StepJournal(calls, broker.send, task())
    first = context(first_journal)
    assert await ask(first, provider) == {"text": "answer 1"}
    assert provider.requests == 1 and len(broker.sent) == 1
    assert first.report.llm_attempts == []  # the engine logs them from the checkpoint, not from the step's report
    # The step ran again (a crash, a timeout): a new attempt, a new journal view on the same calls.
    again_journal = StepJournal(calls, broker.send, task(attempt=2))
    again = context(again_journal, attempt=2)
    assert await ask(again, provider) == {"text": "answer 1"}
    assert provider.requests == 1 and len(broker.sent) == 1 and again.report.llm_attempts == []
    assert calls.reused == 1
    # Both results travel after the checkpoint, by the results topic, never in memory: the one that paid, and the
    # one given the answer (a restarted engine may not have read the checkpoint yet; the run must not end first).
    assert first_journal.on_the_log and again_journal.on_the_log
    assert not StepJournal(calls, broker.send, task(attempt=3)).on_the_log


async def test_calls_are_numbered_in_the_order_the_body_makes_them() -> None:
    calls, broker, provider = PaidCalls(), Broker(), Provider()
    ctx = context(StepJournal(calls, broker.send, task()))
    assert [await ask(ctx, provider), await ask(ctx, provider)] == [{"text": "answer 1"}, {"text": "answer 2"}]
    rerun = context(StepJournal(calls, broker.send, task()))
    assert [await ask(rerun, provider), await ask(rerun, provider)] == [{"text": "answer 1"}, {"text": "answer 2"}]
    assert provider.requests == 2


async def test_without_a_durable_journal_the_call_is_reported_by_the_step() -> None:
    provider = Provider()
    bare = context(None)
    await ask(bare, provider)
    assert bare.report.llm_attempts == [ATTEMPT]
    broker = Broker()
    broker.down = True
    degraded = context(StepJournal(PaidCalls(), broker.send, task()))
    await ask(degraded, provider)
    assert degraded.report.llm_attempts == [ATTEMPT] and provider.requests == 2
    assert await paid_once(None, provider.answer, save=dict, load=dict, ledger=lambda _: [ATTEMPT]) == {
        "text": "answer 3"
    }


async def test_a_worker_learns_the_checkpoints_of_partitions_it_takes_over() -> None:
    broker = Broker()
    await ask(context(StepJournal(PaidCalls(), broker.send, task())), Provider())
    (_, raw), = broker.sent
    produced = ProducedResults()  # another worker process, reading the results topic at takeover
    produced.add_raw(raw)
    assert len(produced) == 0 and len(produced.calls) == 1  # a checkpoint is not a step's result
    provider = Provider()
    assert await ask(context(StepJournal(produced.calls, broker.send, task())), provider) == {"text": "answer 1"}
    assert provider.requests == 0


def test_paid_calls_stay_within_their_memory_bound() -> None:
    calls = PaidCalls(max_bytes=50_000)
    for i in range(100):
        calls.add(f"r{i}/llm", 0, b"x" * 1_000)
    assert calls.memory_bytes <= 50_000 and calls.answer("r99/llm", 0) is None  # kept, but not a checkpoint
    assert ("r0/llm", "#0") not in calls._calls and ("r99/llm", "#0") in calls._calls


async def test_named_calls_are_journaled_under_their_names_whatever_order_they_ran_in() -> None:
    """A framework's parallel tool calls finish in any order: each is journaled by a name a re-run sees again."""
    broker = Broker()
    journal = StepJournal(PaidCalls(), broker.send, task())
    assert await journal.record("tool:call_b", {"result": "b"}, ())
    assert await journal.record("tool:call_a", {"result": "a"}, ())
    assert await journal.record(journal.next_call(), {"text": "counted"}, [ATTEMPT])
    produced = ProducedResults()  # the worker that re-runs the step learns them from the results topic
    for _, raw in broker.sent:
        produced.add_raw(raw)
    rerun = StepJournal(produced.calls, broker.send, task(attempt=2))
    assert rerun.recall("tool:call_a") == {"result": "a"} and rerun.recall("tool:call_b") == {"result": "b"}
    assert rerun.recall(0) == {"text": "counted"} and rerun.recall("tool:call_c") is None
    ids = [orjson.loads(raw)["id"] for _, raw in broker.sent]
    assert ids == ["r1/task/llm/1/call/tool:call_b", "r1/task/llm/1/call/tool:call_a", "r1/task/llm/1/call/0"]
    with pytest.raises(ValueError, match="must be non-empty"):
        await journal.record("", {}, ())
    with pytest.raises(ValueError, match="start with '#'"):
        await journal.record("#0", {}, ())


def checkpoint(path: str, attempt: int, run_id: str = "r1", id_: str = "cp") -> WorkerResult:
    cp = LlmCallCheckpoint(path=path, step=path, attempt=attempt, call=0, answer={"text": "x"}, attempts=[ATTEMPT])
    envelope = Envelope.wrap(cp, id=id_, key=run_id, occurred_at_ms=0)
    assert orjson.loads(encode(envelope))["kind"] == "result"
    return WorkerResult(envelope)


def test_the_engine_logs_a_paid_call_once_when_its_checkpoint_arrives() -> None:
    sim = Sim(Workflow("w").step(a), 1)
    d = sim.apply(checkpoint("a", 1))
    assert sim.types(d) == ["LlmCallAttempted"] and sim.state.tokens == 120 and sim.state.cost_usd == 0.5
    sim.ok("a", 2)  # the step's report leaves the journaled call out
    assert sim.state.status == "completed" and sim.state.tokens == 120
    sim.check_refold()


def test_a_paid_call_of_a_superseded_attempt_still_counts_but_not_after_the_run_ended() -> None:
    sim = Sim(Workflow("w").step(a, max_attempts=3, backoff_s=1), 1)
    sim.err("a", 1)
    sim.apply(Recover(), now=sim.now + 60_000)  # the retry is due: attempt 2 is sent
    assert sim.state.nodes["a"].attempt == 2
    sim.apply(checkpoint("a", 1, id_="late"))  # attempt 1 had paid before it failed: the money is spent all the same
    assert sim.state.tokens == 120
    sim.check_refold()
    done = Sim(Workflow("w").step(a), 1)
    done.ok("a", 2)
    assert run(done.state, checkpoint("a", 1), done.now + 1).events == []  # the run's ledger is closed
    assert run(sim.state, checkpoint("nope", 1), sim.now + 1).events == []  # no such step
