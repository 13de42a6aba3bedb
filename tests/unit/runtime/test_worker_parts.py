"""The worker's parts that need no broker: step log capture, the local priority queue, cancel bookkeeping,
and the worker's task handling driven with hand-made records and a fake producer."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRecord, TopicPartition

from tickflow.agents import paid_once
from tickflow.events.agents import LlmCallCheckpoint
from tickflow.events.codec import decode, encode
from tickflow.events.envelope import Envelope
from tickflow.events.errors import NonRetryableError, RetryableError
from tickflow.events.schemas import (
    CancelStep,
    LlmAttemptFields,
    RunStep,
    SetPoolConcurrency,
    StepErrored,
    StepSucceeded,
)
from tickflow.runtime import step_logs
from tickflow.runtime.kafka import DeadLetters
from tickflow.runtime.scheduling import CancelledKeys, LocalQueue, Scheduler
from tickflow.runtime.tokens import TokenPublisher
from tickflow.runtime.worker import StepWorker
from tickflow.settings import Settings
from tickflow.workflow import Registry, StepContext, Workflow, current_step

# --- step log capture -----------------------------------------------------------------------------------


@contextlib.contextmanager
def teed() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """Fresh "real" streams under the tee, so a test can see what still reaches them. A context manager
    rather than a fixture: pytest's own capture sets ``sys.stdout`` again between setup and the test call."""
    saved = sys.stdout, sys.stderr
    out, err = io.StringIO(), io.StringIO()
    sys.stdout, sys.stderr = out, err
    step_logs.install()
    try:
        yield out, err
    finally:
        step_logs.uninstall()
        sys.stdout, sys.stderr = saved


def _noisy(tag: str) -> str:
    logger = logging.getLogger(f"tickflow.test.{tag}")
    logger.setLevel(logging.INFO)
    logger.info("info from %s", tag)
    print(f"print from {tag}")
    print(f"stderr from {tag}", file=sys.stderr)
    return tag


async def test_sync_body_in_a_thread_is_captured_and_still_reaches_the_real_streams() -> None:
    buffer = step_logs.LogBuffer()
    with teed() as (out, err), step_logs.capture(buffer):
        # What Registry.call does for a sync body.
        assert await asyncio.to_thread(contextvars.copy_context().run, _noisy, "sync") == "sync"
    assert buffer.getvalue() == "INFO tickflow.test.sync: info from sync\nprint from sync\nstderr from sync\n"
    assert out.getvalue() == "print from sync\n"
    assert err.getvalue() == "stderr from sync\n"


async def test_concurrent_async_bodies_each_get_only_their_own_output() -> None:
    async def step(tag: str) -> str:
        buffer = step_logs.LogBuffer()
        with step_logs.capture(buffer):
            for i in range(3):
                print(f"{tag} {i}")
                logging.getLogger("tickflow.test").warning("%s warns %d", tag, i)
                await asyncio.sleep(0)
        return buffer.getvalue()

    with teed() as (out, _):
        a, b = await asyncio.gather(step("a"), step("b"))
    assert a == "".join(f"a {i}\nWARNING tickflow.test: a warns {i}\n" for i in range(3))
    assert b == "".join(f"b {i}\nWARNING tickflow.test: b warns {i}\n" for i in range(3))
    assert out.getvalue().count("a 2\n") == 1


def test_nothing_is_captured_outside_a_step() -> None:
    with teed() as (out, _):
        assert step_logs.current() is None
        print("outside")
        logging.getLogger("tickflow.test").warning("outside")
    assert out.getvalue() == "outside\n"


def test_logging_to_a_teed_stream_is_not_captured_twice() -> None:
    logger = logging.getLogger("tickflow.test.stream")
    buffer = step_logs.LogBuffer()
    with teed() as (_, err):
        handler = logging.StreamHandler(sys.stderr)  # the tee, as in a process configured after install()
        logger.addHandler(handler)
        try:
            with step_logs.capture(buffer):
                logger.error("boom")
        finally:
            logger.removeHandler(handler)
    assert buffer.getvalue() == "ERROR tickflow.test.stream: boom\n"
    assert err.getvalue() == "boom\n"


def test_exceptions_logged_in_a_step_carry_their_traceback() -> None:
    buffer = step_logs.LogBuffer()
    with teed(), step_logs.capture(buffer):
        try:
            raise ValueError("bad input")
        except ValueError:
            logging.getLogger("tickflow.test").exception("step failed")
    assert buffer.getvalue().startswith("ERROR tickflow.test: step failed\nTraceback")
    assert "ValueError: bad input" in buffer.getvalue()


def test_buffer_keeps_the_tail_and_says_how_much_was_dropped() -> None:
    buffer = step_logs.LogBuffer(limit=100)
    for i in range(25):
        buffer.write(f"line {i:03d}\n")  # 9 chars each: 225 in all
    text = buffer.getvalue()
    assert buffer.dropped == 125
    assert text.startswith("[… 125 earlier chars dropped]\n")
    assert text.endswith("line 024\n")
    assert len(text.split("\n", 1)[1]) == 100
    big = step_logs.LogBuffer(limit=10)
    big.write("x" * 5)
    big.write("0123456789abcdef")
    assert big.getvalue() == "[… 11 earlier chars dropped]\n6789abcdef"


def test_default_limit_fits_in_a_result() -> None:
    buffer = step_logs.LogBuffer()
    buffer.write("y" * 100_000)
    assert len(buffer.getvalue()) < 16_100 < 64_000


async def test_a_thread_outliving_its_step_cannot_change_reported_logs() -> None:
    release, done = threading.Event(), threading.Event()

    def lingering() -> None:
        print("before")
        release.wait(5)
        print("after")
        done.set()

    buffer = step_logs.LogBuffer()
    with teed() as (out, _):
        with step_logs.capture(buffer):
            thread = threading.Thread(target=contextvars.copy_context().run, args=(lingering,))
            thread.start()
            await asyncio.sleep(0.05)
        release.set()
        assert done.wait(5)
        thread.join()
    assert buffer.getvalue() == "before\n"
    assert out.getvalue() == "before\nafter\n"


def test_a_broken_buffer_never_breaks_the_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(self: step_logs.LogBuffer, text: str) -> None:
        raise RuntimeError("capture is broken")

    monkeypatch.setattr(step_logs.LogBuffer, "write", explode)
    with teed() as (out, _), step_logs.capture(step_logs.LogBuffer()):
        print("still printed")
        logging.getLogger("tickflow.test").warning("still logged")
    assert out.getvalue() == "still printed\n"


def test_install_is_idempotent() -> None:
    with teed():
        tee = sys.stdout
        step_logs.install()
        assert sys.stdout is tee
        assert sum(isinstance(h, step_logs._CaptureHandler) for h in logging.getLogger().handlers) == 1
        assert sys.stdout.isatty() is False  # other attributes are the real stream's
    assert not isinstance(sys.stdout, step_logs._Tee)


# --- local queue, cancelled keys, scheduler -------------------------------------------------------------


def test_queue_pops_highest_priority_first_and_fifo_among_equals() -> None:
    queue: LocalQueue[str] = LocalQueue()
    for name, priority in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1), ("f", 0)]:
        queue.push(name, key=name, priority=priority)
    assert [queue.pop() for _ in range(len(queue))] == ["b", "d", "a", "c", "f", "e"]


def test_queue_removes_by_key_in_arrival_order_and_keeps_the_rest_ordered() -> None:
    queue: LocalQueue[str] = LocalQueue()
    for i, (key, priority) in enumerate([("k", 1), ("x", 0), ("k", 3), ("y", 2)]):
        queue.push(f"{key}{i}", key=key, priority=priority)
    assert queue.remove_if(lambda key, _: key == "k") == ["k0", "k2"]
    assert queue.remove_if(lambda key, _: key == "nope") == []
    assert [queue.pop(), queue.pop()] == ["y3", "x1"]


def test_cancelled_keys_are_bounded_and_forget_the_oldest() -> None:
    keys = CancelledKeys(capacity=3)
    for key in ["a", "b", "c"]:
        keys.add(key)
    keys.add("a")  # refreshed: now the newest
    keys.add("d")
    assert "b" not in keys
    assert all(k in keys for k in ["a", "c", "d"])


def _scheduler(limit: int) -> tuple[Scheduler[str], list[str]]:
    started: list[str] = []
    return Scheduler(limit, started.append), started


def test_scheduler_runs_at_most_limit_and_starts_by_priority() -> None:
    sched, started = _scheduler(1)
    sched.offer("first", key="first")
    for name, priority in [("low", 0), ("high", 9), ("low2", 0), ("mid", 4)]:
        sched.offer(name, key=name, priority=priority)
    assert started == ["first"]
    assert (sched.running, len(sched.queue), sched.room) == (1, 4, 0)
    for _ in range(4):
        sched.finished()
    assert started == ["first", "high", "mid", "low", "low2"]
    sched.finished()
    assert sched.running == 0


def test_scheduler_grows_at_once_and_shrinks_by_letting_running_items_finish() -> None:
    sched, started = _scheduler(2)
    for i in range(6):
        sched.offer(str(i), key=str(i))
    assert started == ["0", "1"]
    sched.set_limit(4)
    assert started == ["0", "1", "2", "3"]
    sched.set_limit(1)
    assert sched.running == 4 and sched.room == 0
    for _ in range(3):
        sched.finished()
    assert len(started) == 4  # still at or above the new limit
    sched.finished()
    assert started[-1] == "4" and sched.running == 1
    with pytest.raises(ValueError):
        sched.set_limit(0)


def test_scheduler_cancel_drops_queued_items_and_refuses_redeliveries() -> None:
    sched, started = _scheduler(1)
    sched.offer("run-a", key="a")
    sched.offer("run-b", key="b")
    assert sched.cancel("b") == ["run-b"]
    assert sched.cancel("not-seen-yet") == []
    assert not sched.offer("run-b again", key="b")
    assert not sched.offer("late", key="not-seen-yet")
    sched.finished()
    assert started == ["run-a"] and len(sched.queue) == 0


def test_stopped_scheduler_starts_nothing() -> None:
    sched, started = _scheduler(1)
    sched.stopped = True
    sched.offer("x", key="x")
    assert started == [] and len(sched.queue) == 1


# --- the worker's task handling, without a broker -------------------------------------------------------

TP = TopicPartition("tickflow.tasks.default", 0)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[Any]:
        self.sent.append((topic, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


def _record(offset: int, value: bytes | None, topic: str = TP.topic) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, 0, offset, 0, 0, b"run-1", value, None, 5, len(value or b""), ())


def _task(payload: RunStep | CancelStep | SetPoolConcurrency, id: str) -> bytes:
    return encode(Envelope.wrap(payload, id=id, key="run-1", occurred_at_ms=1))


def _run_step(key: str, fn: str, priority: int = 0, input: Any = 1) -> bytes:
    step = RunStep(
        workflow="wf", path="0", step=fn, fn=fn, attempt=1, input=input, idempotency_key=key, priority=priority
    )
    return _task(step, id=f"task/{key}")


class FakeConsumer:
    """What a rebalance's callbacks use of the consumer: offset commits and the topic's partitions."""

    def __init__(self) -> None:
        self.committed: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(offsets)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0, 1}


@pytest.fixture
def worker() -> Iterator[StepWorker]:
    w = StepWorker(Settings(), Registry(), concurrency=1)
    w.consumer = FakeConsumer()  # type: ignore[assignment]
    producer = FakeProducer()
    w.producer = producer
    w.dead_letters = DeadLetters(producer, "dlq", "test")
    w.tokens = TokenPublisher(producer, "tokens")  # not started: chunks wait in its queue
    w._learned = set(range(w.settings.partitions))  # as if it had read back every partition (no broker here)
    yield w
    for t in w._inflight:
        t.cancel()


async def _until(cond: Any) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def _results(w: StepWorker) -> list[Envelope]:
    sent: list[tuple[str, bytes]] = w.producer.sent
    return [decode(v) for topic, v in sent if topic == w.topics.results]


async def test_worker_reports_path_and_logs_and_commits_past_cancelled_tasks(worker: StepWorker) -> None:
    gate, began = asyncio.Event(), asyncio.Event()

    async def slow(x: Any) -> Any:
        began.set()
        await gate.wait()
        return x

    def quick(x: int) -> int:
        logging.getLogger("tickflow.test.quick").warning("doubling %d", x)
        print("quick ran")
        return x * 2

    worker.registry.functions.update({"slow": slow, "quick": quick})
    with teed():
        await worker._accept(TP, _record(0, _run_step("a", "slow")))  # starts: one slot
        await worker._accept(TP, _record(1, _run_step("b", "quick")))  # waits
        await worker._accept(TP, _record(2, _run_step("c", "quick", priority=5, input=21)))  # waits, first in line
        await worker._accept(TP, _record(3, _task(CancelStep(idempotency_key="b"), id="cancel/b")))
        assert len(worker.scheduler.queue) == 1
        await began.wait()
        await worker._accept(TP, _record(4, _task(CancelStep(idempotency_key="a"), id="cancel/a")))
        await _until(lambda: worker.executed == 1)
        await worker._accept(TP, _record(5, _run_step("b", "quick")))  # redelivered after its cancel: skipped
        await _until(lambda: not worker._inflight)
    [result] = _results(worker)
    assert isinstance(result.payload, StepSucceeded)
    assert result.payload.path == "0" and result.payload.output == 42
    assert result.payload.logs == "WARNING tickflow.test.quick: doubling 21\nquick ran\n"
    assert result.id == "task/c/result"
    assert worker.offsets.committable() == {TP: 6}
    assert worker.scheduler.running == 0 and not worker._running


async def test_a_task_whose_deadline_passed_in_the_queue_is_not_started(worker: StepWorker) -> None:
    """The engine stopped waiting for it (and failed it, and cancels it): starting it now would only repeat an
    effect. A task still in time runs, and its body sees the step's key, the same for every attempt."""
    keys: list[str] = []

    async def effect(x: Any) -> Any:
        keys.append(f"{current_step().idempotency_key} #{current_step().attempt}")
        return x

    worker.registry.functions["effect"] = effect
    now_ms = int(time.time() * 1000)
    for offset, (key, attempt, deadline) in enumerate([("late", 1, now_ms - 1), ("ok", 2, now_ms + 60_000)]):
        task = RunStep(workflow="wf", path="charge", step="effect", fn="effect", attempt=attempt, input=1,
                       idempotency_key=key, deadline_ms=deadline)
        await worker._accept(TP, _record(offset, _task(task, id=f"task/{key}")))
    await _until(lambda: worker.executed == 1 and not worker._inflight)
    assert worker.expired == 1 and keys == ["run-1/charge #2"]
    assert [r.id for r in _results(worker)] == ["task/ok/result"]
    assert worker.offsets.committable() == {TP: 2}  # the expired task is done with: its offset may pass


async def test_a_re_sent_task_joins_the_run_of_its_attempt_instead_of_running_it_twice(worker: StepWorker) -> None:
    """An engine's recovery re-sends every task in flight; a copy that arrives while its attempt is queued or still
    running must not start the body a second time (before, both copies ran at once: an effect repeated). Its offset
    is done with that one run; a copy arriving after it is answered with the result already produced."""
    gate, runs = asyncio.Event(), []

    async def effect(x: Any) -> Any:
        runs.append(x)
        await gate.wait()
        return x

    worker.registry.functions.update({"effect": effect})
    await worker._accept(TP, _record(0, _run_step("a", "effect")))
    await _until(lambda: runs == [1])
    await worker._accept(TP, _record(1, _run_step("a", "effect")))  # re-sent while it runs
    assert worker.copies_joined == 1 and worker.offsets.committable() == {TP: 0}  # neither is done yet
    gate.set()
    await _until(lambda: not worker._inflight)
    assert runs == [1] and len(_results(worker)) == 1
    assert worker.offsets.committable() == {TP: 2}
    await worker._accept(TP, _record(2, _run_step("a", "effect")))  # after it: answered from what it produced
    assert runs == [1] and len(_results(worker)) == 2 and worker.reanswered == 1


async def test_worker_cancels_a_task_before_its_first_step(worker: StepWorker) -> None:
    async def never(x: Any) -> Any:
        raise AssertionError("must not run")

    worker.registry.functions["never"] = never
    await worker._accept(TP, _record(0, _run_step("a", "never")))
    await worker._accept(TP, _record(1, _task(CancelStep(idempotency_key="a"), id="cancel/a")))
    await _until(lambda: not worker._inflight)
    assert _results(worker) == []
    assert worker.offsets.committable() == {TP: 2}
    assert worker.scheduler.running == 0 and not worker.scheduler.stopped


async def test_worker_reports_errors_with_their_logs(worker: StepWorker) -> None:
    def broken(x: Any) -> Any:
        print("about to fail")
        raise RuntimeError("no luck")

    worker.registry.functions["broken"] = broken
    with teed():
        await worker._accept(TP, _record(0, _run_step("a", "broken")))
        await worker._accept(TP, _record(1, b"not json"))  # dead-lettered, and its offset is done
        await _until(lambda: not worker._inflight)
    [result] = _results(worker)
    assert isinstance(result.payload, StepErrored)
    assert result.payload.path == "0" and result.payload.retryable
    assert result.payload.error.message == "no luck"
    assert result.payload.logs == "about to fail\n"
    assert worker.offsets.committable() == {TP: 2}


async def test_only_tickflow_verdicts_are_terminal(worker: StepWorker) -> None:
    """A user's KeyError is retried like any error; NonRetryableError and an unknown function are terminal;
    RetryableError carries its retry_after to the engine."""

    def missing_key(x: Any) -> Any:
        return {}["nope"]

    def refuse(x: Any) -> Any:
        raise NonRetryableError("card declined")

    def later(x: Any) -> Any:
        raise RetryableError("rate limited", retry_after=2.5)

    worker.registry.functions.update({"missing_key": missing_key, "refuse": refuse, "later": later})
    for offset, fn in enumerate(["missing_key", "refuse", "later", "not_registered"]):
        await worker._accept(TP, _record(offset, _run_step(fn, fn)))
        await _until(lambda: not worker._inflight)
    results = {r.payload.step: r.payload for r in _results(worker)}
    assert all(isinstance(p, StepErrored) for p in results.values())
    assert (results["missing_key"].error.type, results["missing_key"].retryable) == ("KeyError", True)
    assert results["refuse"].retryable is False
    assert (results["later"].retryable, results["later"].retry_after_ms) == (True, 2_500)
    assert results["missing_key"].retry_after_ms is None
    unknown = results["not_registered"]
    assert (unknown.error.type, unknown.retryable) == ("UnknownStepFunction", False)
    assert "not_registered" in unknown.error.message and "@named" in unknown.error.message


async def test_set_concurrency_starts_waiting_tasks(worker: StepWorker) -> None:
    gate = asyncio.Event()

    async def wait(x: Any) -> Any:
        await gate.wait()
        return x

    worker.registry.functions["wait"] = wait
    for i in range(3):
        await worker._accept(TP, _record(i, _run_step(f"k{i}", "wait")))
    assert worker.scheduler.running == 1
    worker.set_concurrency(3)
    assert worker.scheduler.running == 3 and worker.concurrency == 3
    gate.set()
    await _until(lambda: worker.executed == 3)
    assert worker.offsets.committable() == {TP: 3}


def test_control_records_for_this_pool_set_the_limit(worker: StepWorker) -> None:
    control = worker.control
    topic = control.topic
    assert topic == f"{worker.topics.prefix}.control"
    ours = _task(SetPoolConcurrency(pool="default", limit=7), id="c1")
    theirs = _task(SetPoolConcurrency(pool="gpu", limit=2), id="c2")
    assert control.limit_in(_record(0, ours, topic)) == 7
    assert control.limit_in(_record(1, theirs, topic)) is None
    assert control.limit_in(_record(2, b"{", topic)) is None  # invalid: logged and skipped
    assert control.limit_in(_record(3, None, topic)) is None  # tombstone
    assert control.limit_in(_record(4, _run_step("a", "f"), topic)) is None  # not a control record


async def test_an_attempt_that_already_reported_is_answered_again_not_run_again(worker: StepWorker) -> None:
    runs: list[int] = []

    def tool(x: int) -> int:
        runs.append(x)
        return x + 1

    worker.registry.functions.update({"tool": tool})
    await worker._accept(TP, _record(0, _run_step("run-1/0/1", "tool", input=1)))
    await _until(lambda: worker.executed == 1 and not worker._inflight)
    # The same attempt again: a redelivery after a crash before the commit, or an engine re-sending it.
    await worker._accept(TP, _record(1, _run_step("run-1/0/1", "tool", input=1)))
    await _until(lambda: len(_results(worker)) == 2)
    first, again = _results(worker)
    assert runs == [1] and worker.reanswered == 1
    assert again.id == first.id and again.payload == first.payload  # the same result: the engine applies it once
    # A worker that takes over the partition learns the result from the results topic's records.
    fresh = StepWorker(Settings(), Registry(), concurrency=1)
    fresh.produced.add_raw(worker.producer.sent[-1][1])
    assert fresh.produced.get("run-1/0/1") is not None


def test_remembered_results_are_bounded_by_count_and_memory() -> None:
    from tickflow.runtime.produced import ProducedResults, _cost

    one = _cost("k0", b"x" * 10)  # key, bytes object and table entry, as Python holds them
    memory = ProducedResults(capacity=3, max_bytes=one * 2 + one // 2)
    for i in range(3):
        memory.add(f"k{i}", b"x" * 10)  # three entries' worth: the oldest goes
    assert memory.get("k0") is None and len(memory) == 2
    memory.add("k1", b"y" * 5)  # replacing a result counts its new size only
    memory.add("k3", b"z")
    assert [memory.get(k) for k in ("k1", "k2", "k3")] == [b"y" * 5, None, b"z"]  # k2 was the oldest
    assert memory.memory_bytes <= memory.max_bytes
    memory = ProducedResults(capacity=10)
    for i in range(3):
        memory.add(f"k{i}", b"x" * 10)
    assert len(memory) == 3 and memory.memory_bytes == 3 * one


def test_remembered_results_cost_what_they_hold_not_orjsons_buffer() -> None:
    """orjson's bytes keep its 4 KiB output buffer; a kept result is an exact copy, so the memory bound holds."""
    import tracemalloc

    from tickflow.runtime.produced import ProducedResults

    memory = ProducedResults()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2_000):
            memory.add(f"run-{i}/charge/1", orjson.dumps({"key": f"run-{i}", "output": "x" * 400}))
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1.5 * memory.memory_bytes, (held, memory.memory_bytes)  # not 4 KiB per result


async def test_stuck_sync_steps_hold_the_workers_threads_not_the_loops_default_ones() -> None:
    """More sync bodies blocked at once than the loop's default executor has threads leave that executor free for
    the store calls of the projector and the API."""
    release = threading.Event()
    n = min(32, (os.cpu_count() or 1) + 4) + 2  # asyncio's default executor size, and then some

    def stuck(value: int) -> int:
        release.wait(10)
        return value

    reg = Registry()
    reg.add(Workflow("stuck").step(stuck))
    name = next(iter(reg.functions))
    own = ThreadPoolExecutor(max_workers=n, thread_name_prefix="tickflow-step-test")
    ctx = StepContext(run_id="r", workflow="w", step="s", attempt=1, idempotency_key="k")
    try:
        held = [asyncio.create_task(reg.call(name, i, ctx, own)) for i in range(n)]
        await asyncio.sleep(0.1)
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "a store call"), 2) == "a store call"
        release.set()
        assert sorted(await asyncio.gather(*held)) == list(range(n))
    finally:
        release.set()
        own.shutdown(wait=False)


async def test_a_task_queued_when_its_partition_was_revoked_runs_when_it_comes_back(worker: StepWorker) -> None:
    """A rebalance drops the queued tasks of revoked partitions (their new owner runs them). When the partition
    comes back to this worker, the redelivered task must run; before, it joined the dropped job as a copy and
    waited for a run that never came (a run stuck until its step timed out, or forever without a timeout)."""
    gate, runs = asyncio.Event(), []

    async def effect(x: Any) -> Any:
        runs.append(x)
        await gate.wait()
        return x

    worker.registry.functions.update({"effect": effect})
    await worker._accept(TP, _record(0, _run_step("busy", "effect", input=0)))  # holds the one slot
    await worker._accept(TP, _record(1, _run_step("queued", "effect", input=1)))
    await _until(lambda: runs == [0])
    gate.set()
    await worker.on_revoked({TP})  # drains the running step; drops the queued one
    await worker.on_assigned({TP})
    await worker._accept(TP, _record(1, _run_step("queued", "effect", input=1)))  # redelivered from the commit
    gate.set()
    await _until(lambda: runs == [0, 1] and not worker._inflight)
    assert [r.id for r in _results(worker)] == ["task/busy/result", "task/queued/result"]


async def test_a_step_whose_partition_went_to_another_worker_stops_here(worker: StepWorker) -> None:
    """One attempt never runs on two workers at once: a step still running after the revoke's drain is cancelled
    when the new assignment leaves its partition out; it reports nothing, and the worker keeps working."""
    began, cancelled = asyncio.Event(), asyncio.Event()

    async def long(x: Any) -> Any:
        began.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return x

    other = TopicPartition(TP.topic, 1)
    worker.registry.functions.update({"long": long})
    await worker._accept(TP, _record(0, _run_step("moved", "long")))
    await began.wait()
    await worker.on_assigned({other})  # partition 0 went elsewhere
    await cancelled.wait()
    await _until(lambda: not worker._inflight)
    assert _results(worker) == [] and not worker.scheduler.stopped and not worker._handed_over
    assert worker.scheduler.running == 0


async def test_an_eager_attempt_journals_a_paid_call_only_once_its_scheduling_committed(worker: StepWorker) -> None:
    """The engine drops a checkpoint of a step its log does not know: written before the turn that scheduled the
    step committed, a crash could leave the checkpoint without the step, and the step's re-run would take the
    journaled answer without its cost ever being logged (seen in CI: one ``LlmCallAttempted`` of two)."""
    asked = asyncio.Event()
    attempt = LlmAttemptFields(call=1, attempt=1, provider="local", model="m", tokens_in=1, tokens_out=1,
                               cost_usd=0.1, outcome="ok")

    async def provider() -> dict[str, Any]:
        asked.set()
        return {"text": "hi"}

    async def turn(x: Any) -> Any:
        return await paid_once(current_step(), provider, save=lambda v: v, load=lambda v: v, ledger=lambda _: [attempt])

    worker.registry.functions["turn"] = turn
    scheduled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    replies: list[tuple[Envelope | None, bool]] = []
    task = decode(_run_step("run-1/turn/1", "turn"), expect="task")
    assert worker.run_eager(task, 0, lambda result, lost: replies.append((result, lost)), scheduled)
    await asyncio.wait_for(asked.wait(), 5)
    await asyncio.sleep(0.05)
    assert _results(worker) == [] and not replies  # the answer waits in the body, unjournaled
    scheduled.set_result(None)
    await _until(lambda: replies)
    checkpoint, result = _results(worker)
    assert isinstance(checkpoint.payload, LlmCallCheckpoint) and isinstance(result.payload, StepSucceeded)
    assert replies == [(None, False)]  # it journaled a paid call: its result went to the topic, after the checkpoint


async def test_an_eager_attempt_first_reads_back_what_its_partition_journaled(worker: StepWorker) -> None:
    """A restarted process's engine hands its worker the re-runs of steps the killed process ran, before that worker
    owns (or has read back) their task partitions: the first eager attempt of a partition waits for its recent
    results and checkpoints, so a call the killed process paid for is recalled, not paid again (seen with a Pydantic
    AI agent: its first model request was sent twice)."""
    worker._learned = set()
    reads: list[list[int]] = []
    paid: list[str] = []
    journaled = _results_of_a_killed_process()

    async def learn(kafka: Any, topic: str, partitions: set[int], now_ms: int | None = None) -> int:
        reads.append(sorted(partitions))
        await asyncio.sleep(0.05)
        for raw in journaled:
            worker.produced.add_raw(raw)
        return len(journaled)

    async def provider() -> dict[str, Any]:
        paid.append("asked")
        return {"text": "paid again"}

    async def turn(x: Any) -> Any:
        return await paid_once(current_step(), provider, save=lambda v: v, load=lambda v: v, ledger=lambda _: [])

    worker.produced.learn = learn  # type: ignore[method-assign]
    worker.registry.functions["turn"] = turn
    replies: list[tuple[Envelope | None, bool]] = []
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    for n in (1, 2):
        task = decode(_run_step(f"run-1/turn/{n}", "turn"), expect="task")
        assert worker.run_eager(task, 0, lambda result, lost: replies.append((result, lost)), done)
        await _until(lambda n=n: len(replies) == n)  # type: ignore[misc]
    assert reads == [[0]] and paid == []  # read back once, and the journaled answer was taken
    worker.drop_eager(0)
    task = decode(_run_step("run-1/turn/3", "turn"), expect="task")
    assert worker.run_eager(task, 0, lambda result, lost: replies.append((result, lost)), done)
    await _until(lambda: len(replies) == 3)
    assert reads == [[0], [0]]  # given back and taken again: read again


def _results_of_a_killed_process() -> list[bytes]:
    """The checkpoint a killed process journaled for the step at path ``0`` of run ``run-1``."""
    checkpoint = LlmCallCheckpoint(path="0", step="turn", attempt=1, call=0, answer={"text": "paid once"})
    return [encode(Envelope.wrap(checkpoint, id="cp", key="run-1", occurred_at_ms=0))]
