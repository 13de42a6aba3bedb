"""Step workers: run registered functions for one pool and report each attempt's result.

At-least-once: a task's offset is committed only once its result is acknowledged by the broker, and only up
to the lowest task still unfinished in its partition (tasks wait in a local priority queue and finish out of
order: ``runtime/scheduling.py``). A redelivered task runs again with the same idempotency key; the engine keeps an
attempt's first result, which ``runtime/step_results.py`` builds.

``CancelStep`` is best-effort: a queued attempt is dropped, a running async body is cancelled, but a sync body
already in its thread cannot be interrupted (Python cannot safely kill a thread): it runs on, outside the
concurrency limit, and its result is discarded. Cancelled attempts report nothing — the engine has moved on.
Cancels queue behind the tasks on the tasks topic, so none are read while the full local queue pauses fetching.

Concurrency can change at runtime (``set_concurrency``) and follows the pool's latest ``SetPoolConcurrency``
(``runtime/pool_control.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError

import tickflow.tracing as tracing
from tickflow.events.codec import InvalidRecord, decode, encode
from tickflow.events.envelope import Envelope
from tickflow.events.errors import NonRetryableError
from tickflow.events.redact import redact
from tickflow.events.schemas import CancelStep, RunStep, StepErrored, StepSucceeded, step_key
from tickflow.events.topics import DEFAULT_POOL
from tickflow.llm.limits import LimitShare, use_share
from tickflow.llm.streaming import listening
from tickflow.metrics import STEPS
from tickflow.runtime import step_logs
from tickflow.runtime.blobstores import open_blob_store
from tickflow.runtime.claimcheck import holds_ref, offload, resolve_all
from tickflow.runtime.journal import StepJournal
from tickflow.runtime.kafka import DeadLetters, PendingSends, Rebalance, consumer_lag, new_consumer, new_producer
from tickflow.runtime.pool_control import PoolControl
from tickflow.runtime.produced import ProducedResults
from tickflow.runtime.scheduling import Scheduler, TaskOffsets
from tickflow.runtime.step_results import (
    Outcome,
    error_info,
    observe_step,
    result_envelope,
    retry_after_ms,
    surely_fits,
)
from tickflow.runtime.tokens import TokenPublisher
from tickflow.settings import Settings
from tickflow.workflow import Registry, StepContext

__all__ = ["StepWorker"]

log = logging.getLogger("tickflow.worker")


def _now_ms() -> int:
    return int(time.time() * 1000)


#: Where an eagerly dispatched attempt's end goes, exactly once: ``(result, False)``; ``(None, False)`` when there is
#: nothing to report (cancelled, handed over, expired, or reported on the results topic); ``(None, True)`` when it
#: was lost (stopped with the worker): the engine then sends its task to the topic.
Reply = Callable[[Envelope | None, bool], None]


@dataclass(frozen=True, slots=True)
class _Job:
    env: Envelope
    task: RunStep
    #: Where the task was read from; None for a task handed over in memory by this process's engine (``run_eager``).
    tp: TopicPartition | None = None
    record: ConsumerRecord[bytes, bytes] | None = None
    #: An eager job's way back to the engine, the engine partition it was dispatched for, and the commit of the
    #: engine's transaction that scheduled it (its journal's checkpoints wait for it: ``runtime/eager.py``).
    reply: Reply | None = None
    owner: int = -1
    scheduled: asyncio.Future[None] | None = None


class StepWorker:
    """Consumes ``tasks.<pool>``, runs up to ``concurrency`` steps at once, produces results."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        pool: str = DEFAULT_POOL,
        concurrency: int | None = None,
        *,
        consumer_options: Mapping[str, Any] | None = None,
    ) -> None:
        """``consumer_options``: aiokafka consumer settings over tickflow's (tests shorten max_poll_interval_ms)."""
        self.settings = settings
        self._consumer_options = dict(consumer_options or {})
        self.registry = registry
        self.pool = pool
        self.topics = settings.topics
        self.name = f"{socket.gethostname()}:{os.getpid()}:{pool}"
        self.blobs = open_blob_store(settings)
        self.offsets = TaskOffsets()
        self.pending = PendingSends()
        self.executed = 0
        #: Tasks not started because the engine's deadline for them passed while they queued here.
        self.expired = 0
        self.dead_lettered = 0
        self.scheduler: Scheduler[_Job] = Scheduler(concurrency or settings.worker_concurrency, self._start_job)
        self._room = asyncio.Event()
        self._running: dict[str, set[asyncio.Task[None]]] = {}
        #: Attempts queued or running, by idempotency key, with the offsets of copies of their task that arrived
        #: meanwhile (an engine's recovery re-sends every task in flight): one attempt runs once at a time, and
        #: each copy's offset is done when that one run is.
        self._accepted: dict[str, list[tuple[TopicPartition, int]]] = {}
        self.copies_joined = 0
        self._inflight: set[asyncio.Task[None]] = set()
        self._jobs: dict[asyncio.Task[None], _Job] = {}
        #: Attempts stopped here because their partition went to another worker, which runs them now.
        self._handed_over: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        #: Follows the pool's ``SetPoolConcurrency`` (``runtime/pool_control.py``).
        self.control = PoolControl(settings, pool, self.set_concurrency)
        self._last_commit = 0.0
        self.produced = ProducedResults()
        self.reanswered = 0  # tasks answered with a result already produced, instead of running again
        self.eager_runs = 0  # attempts handed over in memory by this process's engine (``run_eager``)
        self._learned: set[int] = set()
        #: Engine partitions whose recent results and checkpoints were read back for their eager attempts
        #: (``_learn_for_eager``), whichever worker owns their task partitions.
        self._learned_eager: dict[int, asyncio.Future[int]] = {}
        # Jobs start from this context, not from whichever task freed their slot, so nothing a step body
        # sets in its context can leak into later steps.
        self._context = contextvars.copy_context()
        #: This worker's part of every provider's limits, so they hold for the pool as a whole (see llm.limits).
        self.limit_share = LimitShare(pool)
        self._context.run(use_share, self.limit_share)
        # Sync step bodies run on threads of this worker's own, bounded: a stuck one holds one of these, never a
        # thread of the loop's default executor, which the projector's and the API's store calls share.
        self._sync_steps = ThreadPoolExecutor(
            max_workers=max(concurrency or settings.worker_concurrency, 1), thread_name_prefix=f"tickflow-step-{pool}"
        )

    @property
    def concurrency(self) -> int:
        return self.scheduler.limit

    def set_concurrency(self, limit: int) -> None:
        """Change how many steps run at once; shrinking lets the running ones finish."""
        if limit != self.scheduler.limit:
            log.info("pool %s: concurrency %d -> %d", self.pool, self.scheduler.limit, limit)
        self.scheduler.set_limit(limit)

    async def start(self) -> None:
        step_logs.install()
        self.producer = new_producer(self.settings.kafka)
        await self.producer.start()
        self.dead_letters = DeadLetters(self.producer, self.topics.dead_letter, f"worker:{self.pool}")
        self.tokens = TokenPublisher(self.producer, self.topics.tokens)
        self.tokens.start()
        await self.control.start()
        self.consumer = new_consumer(
            self.settings.kafka, group_id=self.topics.worker_group(self.pool), **self._consumer_options
        )
        await self.consumer.start()
        listener = Rebalance(on_revoked=self.on_revoked, on_assigned=self.on_assigned)
        self.consumer.subscribe([self.topics.tasks(self.pool)], listener=listener)
        self._task = asyncio.create_task(self._loop(), name=f"tickflow-worker-{self.pool}")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def metric_values(self) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
        """This worker's counters and levels for /metrics (``tickflow.metrics.RoleCollector`` reads them)."""
        pool = {"pool": self.pool}
        yield "counter", "tickflow_worker_steps_executed", "Step attempts run and reported.", pool, float(self.executed)
        expired = "Step attempts not started: the engine's deadline passed while they queued."
        yield "counter", "tickflow_worker_steps_expired", expired, pool, float(self.expired)
        yield (
            "counter",
            "tickflow_worker_reanswered",
            "Results re-sent for an attempt that already ran.",
            pool,
            float(self.reanswered),
        )
        yield (
            "counter",
            "tickflow_worker_dead_letters",
            "Tasks refused to the dead-letter topic.",
            pool,
            float(self.dead_lettered),
        )
        reused = "Paid LLM calls answered from the journal instead of the provider (a step run again)."
        yield "counter", "tickflow_worker_llm_calls_reused", reused, pool, float(self.produced.calls.reused)
        yield "gauge", "tickflow_worker_running", "Steps running now.", pool, float(self.scheduler.running)
        yield (
            "gauge",
            "tickflow_worker_results_kept_bytes",
            "Memory of the results kept to answer a redelivered task without running it again.",
            pool,
            float(self.produced.memory_bytes),
        )
        yield (
            "gauge",
            "tickflow_worker_queued",
            "Steps fetched and waiting for a slot.",
            pool,
            float(len(self.scheduler.queue)),
        )
        yield (
            "gauge",
            "tickflow_worker_concurrency",
            "Steps this worker runs at once.",
            pool,
            float(self.scheduler.limit),
        )
        yield (
            "gauge",
            "tickflow_worker_llm_limit_share",
            "This worker's part of each LLM provider's limits: its task partitions over the pool's.",
            pool,
            self.limit_share.fraction,
        )
        if hasattr(self, "tokens"):
            yield from self.tokens.metric_values()
        if hasattr(self, "consumer"):
            yield from consumer_lag(f"worker:{self.pool}", self.consumer, self.offsets.fetched)

    async def stop(self, drain_s: float = 30.0) -> None:
        """Stop taking tasks, give the running ones ``drain_s`` to finish, then cancel the rest: a task from the topic
        stays uncommitted (redelivered), a step handed over in memory goes back to the engine as lost."""
        self.scheduler.stopped = True
        for job in self.scheduler.queue.remove_if(lambda _, j: j.reply is not None):  # they will never start here
            self._accepted.pop(job.task.idempotency_key, None)
            assert job.reply is not None
            job.reply(None, True)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.control.stop()
        await self._drain_inflight(drain_s)
        left = [t for t in self._inflight if not t.done()]
        for t in left:
            t.cancel()
        if left:
            await asyncio.wait(left, timeout=1.0)
        self._sync_steps.shutdown(wait=False, cancel_futures=True)  # a stuck sync body is left to finish alone
        try:
            await self._commit()
        finally:
            await self.tokens.stop()
            await self.consumer.stop()
            await self.producer.stop()

    async def _loop(self) -> None:
        interval = self.settings.commit_interval_ms / 1000
        while True:
            # Pausing (rather than not polling) keeps the consumer in its group while long steps run.
            room = self.scheduler.room
            if room == 0:
                self.consumer.pause(*self.consumer.assignment())
                # Wake as soon as a step finishes, not at the next 100 ms poll: that poll capped throughput
                # at about (2 x concurrency) tasks per 100 ms.
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout=1.0)
                # A poll of paused partitions returns nothing, but counts as one: without it, steps that hold every
                # slot longer than max.poll.interval.ms (5 min) would make this worker leave its group.
                await self.consumer.getmany(timeout_ms=0)
                continue
            if paused := self.consumer.paused():
                self.consumer.resume(*paused)
            batch = await self.consumer.getmany(timeout_ms=100, max_records=max(room, 1))
            await self._learn_new_partitions()
            for tp, records in batch.items():
                for record in records:
                    await self._accept(tp, record)
            if time.monotonic() - self._last_commit >= interval:
                await self._commit()

    async def _accept(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> None:
        self.offsets.begin(tp, record.offset)
        try:
            env = decode(record.value, expect="task")
            if not isinstance(env.payload, RunStep | CancelStep):
                raise InvalidRecord(f"a step worker cannot handle {env.type} tasks")
        except InvalidRecord as exc:
            try:
                self.pending.add(await self.dead_letters.send(record, str(exc), _now_ms()))
                self.dead_lettered += 1
            except Exception:  # left uncommitted: redelivered after a restart
                log.exception("could not dead-letter %s[%d]@%d", tp.topic, tp.partition, record.offset)
                return
        else:
            task = env.payload
            if isinstance(task, CancelStep):
                self.cancel(task.idempotency_key)
                log.info("cancel %s: %s", task.idempotency_key, task.reason or "no reason given")
            elif (done := self.produced.get(task.idempotency_key)) is not None:
                # This attempt already ran and reported: answer again instead of running the body twice.
                self.pending.add(await self.producer.send(self.topics.results, done, key=record.key))
                self.reanswered += 1
                log.info("%s already ran; re-sent its result instead of running it again", task.idempotency_key)
            elif (copies := self._accepted.get(task.idempotency_key)) is not None:
                copies.append((tp, record.offset))  # the same attempt is queued or running: it runs once
                self.copies_joined += 1
                log.info("%s is queued or running already; this copy waits for that run", task.idempotency_key)
                return
            elif self.scheduler.offer(
                _Job(env, task, tp=tp, record=record), key=task.idempotency_key, priority=task.priority
            ):
                self._accepted[task.idempotency_key] = []
                return  # its offset is done once its result is sent
            else:
                log.info("skipping %s: it was cancelled", task.idempotency_key)
        self.offsets.done(tp, record.offset)

    def cancel(self, key: str) -> None:
        """Cancel attempt ``key``: dropped if queued, cancelled if running (best effort, see the module docstring)."""
        for job in self.scheduler.cancel(key):
            if job.tp is not None and job.record is not None:
                self.offsets.done(job.tp, job.record.offset)
            if job.reply is not None:
                job.reply(None, False)
            self._settle_copies(key)
        for running in self._running.get(key, ()):
            running.cancel()

    def run_eager(self, task: Envelope, owner: int, reply: Reply, scheduled: asyncio.Future[None]) -> bool:
        """Queue (and maybe start) a task handed over in memory by this process's engine (eager local dispatch).

        False, and nothing happens, when the local queue is full (as full as fetching from the topic may make it),
        the worker is stopping, or the attempt is already here (a copy from the topic is queued or running) or was
        cancelled: the engine then sends the task record to the topic as usual, where any worker of the pool may
        take it. An eager attempt waits and runs like the others, under the same concurrency and priorities; how
        its end reaches ``reply`` is ``_execute_eager``'s to say.
        """
        payload = task.payload
        if not isinstance(payload, RunStep) or self.scheduler.stopped:
            return False
        key = payload.idempotency_key
        if self.scheduler.room == 0 or key in self._accepted or key in self.scheduler.cancelled:
            return False
        self._accepted[key] = []
        self.eager_runs += 1
        job = _Job(task, payload, reply=reply, owner=owner, scheduled=scheduled)
        self.scheduler.offer(job, key=key, priority=payload.priority)
        return True

    def drop_eager(self, owner: int) -> None:
        """The engine gave up partition ``owner``: stop its eager attempts, unreported (the partition's next owner
        re-sends every task in flight when it rebuilds the partition's runs from the log)."""
        self._learned_eager.pop(owner, None)  # if it comes back, what others journaled meanwhile is read again
        for job in self.scheduler.queue.remove_if(lambda _, j: j.reply is not None and j.owner == owner):
            self._accepted.pop(job.task.idempotency_key, None)
            assert job.reply is not None
            job.reply(None, False)
        for t, job in list(self._jobs.items()):
            if job.reply is not None and job.owner == owner and not t.done():
                self._handed_over.add(job.task.idempotency_key)
                t.cancel()

    def _start_job(self, job: _Job) -> None:
        t = asyncio.create_task(self._execute(job), context=self._context.copy())
        self._inflight.add(t)
        self._jobs[t] = job
        self._running.setdefault(job.task.idempotency_key, set()).add(t)
        t.add_done_callback(lambda done: self._job_done(job, done))

    def _job_done(self, job: _Job, t: asyncio.Task[None]) -> None:
        # A done callback, not a ``finally``: a task cancelled before its first step never runs its body.
        key = job.task.idempotency_key
        self._inflight.discard(t)
        self._jobs.pop(t, None)
        tasks = self._running.get(key, set())
        tasks.discard(t)
        if not tasks:
            self._running.pop(key, None)
        if t.cancelled():
            if job.reply is not None:  # lost only if cancelled by the worker's stop, not by a cancel or a hand-over
                job.reply(None, key not in self._handed_over and key not in self.scheduler.cancelled)
            if key in self._handed_over:
                self._handed_over.discard(key)  # its offset is the new owner's to commit
            elif key in self.scheduler.cancelled:
                log.info("cancelled %s while it ran; no result is reported", key)
                if job.tp is not None and job.record is not None:
                    self.offsets.done(job.tp, job.record.offset)
            else:
                self.scheduler.stopped = True  # cancelled by the event loop's teardown: start nothing more
        self._settle_copies(key)
        self.scheduler.finished()
        self._room.set()

    def _settle_copies(self, key: str) -> None:
        """The run of attempt ``key`` ended (its result is pending, or it was cancelled): so are its copies."""
        for tp, offset in self._accepted.pop(key, []):
            self.offsets.done(tp, offset)

    async def _commit(self) -> None:
        await self.pending.drain()  # results first, then the offsets of the tasks that produced them
        offsets = self.offsets.committable()
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # A rebalance got in first: the tasks are redelivered to their new owner, which answers the ones
                # already run with their produced results.
                log.warning("offset commit skipped during a rebalance: %s", exc)
        self._last_commit = time.monotonic()

    async def _drain_inflight(self, timeout_s: float = 30.0) -> None:
        if self._inflight and timeout_s > 0:
            await asyncio.wait(set(self._inflight), timeout=timeout_s)

    async def _execute(self, job: _Job) -> None:
        deadline = job.task.deadline_ms
        if deadline is not None and time.time() * 1000 > deadline:
            # The engine stopped waiting for this attempt while it queued here: it failed it (and cancels it, and
            # may have scheduled the next attempt). Starting it now would only repeat an effect for nothing.
            log.info("not starting %s: its deadline passed while it queued", job.task.idempotency_key)
            self.expired += 1
            if job.tp is not None and job.record is not None:
                self.offsets.done(job.tp, job.record.offset)
            if job.reply is not None:
                job.reply(None, False)
            return
        if job.reply is not None:
            await self._execute_eager(job, job.reply)
            return
        assert job.tp is not None and job.record is not None
        tp, record = job.tp, job.record
        try:
            outcome = await self._run(job.env, job.task)
            if job.task.idempotency_key in self.scheduler.cancelled:
                log.info("cancelled %s as it finished; no result is reported", job.task.idempotency_key)
            else:
                await self._report(job.task.idempotency_key, outcome, record.key)
                self.executed += 1
            # Only now may the commit pass this offset; if sending raised, it stays uncommitted and the task
            # is redelivered after a restart.
            self.offsets.done(tp, record.offset)
        except Exception:
            log.exception("could not report task %s[%d]@%d", tp.topic, tp.partition, record.offset)

    async def _execute_eager(self, job: _Job, reply: Reply) -> None:
        """Run an attempt handed over in memory and give its result back the same way.

        Only a success comes back in memory: its events record it whole (``core.divergence.rebuilt_results``
        rebuilds it from them for a divergence diff). A failure goes to the results topic (whether it is retried
        depends on what the event does not keep: ``retryable``, ``retry_after_ms``), as does a result whose attempt
        journaled paid LLM calls or was given journaled answers (the engine reads their checkpoints from that topic:
        the result must come after them, or the run could end before a call's cost is logged; after a restart, the
        engine may not have read a recalled call's checkpoint yet when its worker answers the re-run). A result whose
        task also came from the topic meanwhile goes both ways (an engine elsewhere may wait for it).
        """
        key = job.task.idempotency_key
        await self._learn_for_eager(job.owner)
        try:
            outcome = await self._run(job.env, job.task, job.scheduled)
        except Exception:  # a bug here must not leave the run waiting for a reply that never comes
            log.exception("eager attempt %s failed to run; its task goes to the topic instead", key)
            reply(None, True)
            return
        if key in self.scheduler.cancelled:
            log.info("cancelled %s as it finished; no result is reported", key)
            reply(None, False)
            return
        self.executed += 1
        in_memory = isinstance(outcome.result.payload, StepSucceeded) and not outcome.on_the_log
        if not in_memory or self._accepted.get(key):
            try:
                await self._report(key, outcome, job.env.key.encode())
            except Exception:  # the broker is away: its task goes to the topic later, and the attempt runs again
                log.exception("could not report eager attempt %s to the topic", key)
                reply(None, True)
                return
        reply(outcome.result if in_memory else None, False)

    async def _learn_for_eager(self, partition: int) -> None:
        """Before the first eager attempt of engine partition ``partition``, read back its recent results and
        checkpoints, as for a task partition taken over: a restarted process's engine hands its worker the re-runs of
        steps the killed one ran, and the paid calls those journaled must be recalled, not paid again, whether or
        not this worker owns the task partition (yet). Once per partition while the engine serves it."""
        pending = self._learned_eager.get(partition)
        if partition in self._learned or (pending is not None and pending.done()):
            return  # every eager attempt passes here: read once, then no await at all
        if pending is None:
            pending = self._learned_eager[partition] = asyncio.ensure_future(
                self.produced.learn(self.settings.kafka, self.topics.results, {partition}))
        try:
            await asyncio.shield(pending)
        except Exception as exc:  # the broker is away: run it anyway (a call not recalled is paid again)
            if self._learned_eager.get(partition) is pending:
                del self._learned_eager[partition]
            log.warning("could not read back partition %d's results before its eager attempts: %s", partition, exc)

    async def _report(self, key: str, outcome: Outcome, record_key: bytes | None) -> None:
        """Send an attempt's result to the results topic, kept to answer a redelivery of its task."""
        result = outcome.encoded()
        self.pending.add(await self.producer.send(self.topics.results, result, key=record_key))
        self.produced.add(key, result)

    async def _run(self, env: Envelope, task: RunStep, scheduled: asyncio.Future[None] | None = None) -> Outcome:
        """``_attempt`` in a span of the run's trace (a child of the decision that sent the task), when tracing is
        on; the result it reports carries that span, so the engine's next decision continues the trace."""
        if not tracing.enabled():
            return await self._attempt(env, task, scheduled)
        name = f"step {task.step}"
        attrs = {"tickflow__run_id": env.key, "tickflow__step": task.path, "tickflow__attempt": task.attempt}
        with tracing.span(name, env.trace_parent, **attrs):
            return await self._attempt(env, task, scheduled)

    async def _attempt(self, env: Envelope, task: RunStep, scheduled: asyncio.Future[None] | None) -> Outcome:
        send = self._send_durably if scheduled is None else functools.partial(self._send_durably, after=scheduled)
        journal = StepJournal(self.produced.calls, send, env)
        ctx = StepContext(
            run_id=env.key,
            workflow=task.workflow,
            step=task.step,
            attempt=task.attempt,
            idempotency_key=step_key(env.key, task.path),
            path=task.path,
            settings=self.settings,
            journal=journal,
            budget_tokens=task.budget_tokens,
            budget_cost_usd=task.budget_cost_usd,
        )
        common: dict[str, Any] = {"path": task.path, "step": task.step, "attempt": task.attempt, "worker": self.name}
        # What the body reported on the way (LLM attempts, memory messages) goes with either outcome.
        reported = {"llm_attempts": ctx.report.llm_attempts, "messages": ctx.report.messages}
        logs, started = step_logs.LogBuffer(), time.perf_counter()
        STEPS.labels(task.workflow, task.step, "started").inc()
        error: BaseException
        try:
            # What an LLM streams while the body runs goes to the tokens topic, for watchers (the result records it).
            with step_logs.capture(logs), listening(self.tokens.listener(env, task)):
                value = task.input
                if holds_ref(value):  # rare: read the blobs off the loop
                    value = await asyncio.to_thread(resolve_all, value, self.blobs.get)
                call = self.registry.call(task.fn, value, ctx, self._sync_steps)
                output: Any = await (asyncio.wait_for(call, task.timeout_s) if task.timeout_s else call)
            s = self.settings
            what = f"the output of step {task.step!r}"
            raw = orjson.dumps(output)
            if len(raw) > s.offload_bytes:  # rare: write the blob off the loop
                output = await asyncio.to_thread(
                    offload, output, self.blobs, s.offload_bytes, s.max_payload_bytes, what
                )
            else:
                # The value the log will hold (JSON types only: a tuple is a list): an eager result is applied
                # without a round trip through the codec, and must decide exactly as its record would on replay.
                output = orjson.loads(raw)
            ms = (time.perf_counter() - started) * 1000
            observe_step(task, "succeeded", ms, [*ctx.report.llm_attempts, *journal.paid])
            text = redact(logs.getvalue())
            success = StepSucceeded(**common, **reported, output=output, duration_ms=ms, logs=text)
            succeeded = result_envelope(env, success)
            if surely_fits(raw, text, ctx.report.llm_attempts, ctx.report.messages):
                return Outcome(succeeded, None, journal.on_the_log)  # encoded only if it goes to the topic
            return Outcome(succeeded, encode(succeeded), journal.on_the_log)  # a record too big fails the step
        except asyncio.CancelledError as exc:
            current = asyncio.current_task()
            if current is None or current.cancelling():
                raise  # a cancel of this task (CancelStep or shutdown), not an error of the step
            error = exc  # the body raised CancelledError itself
        except Exception as exc:  # a step body may raise anything; report it, never crash the worker
            error = exc
        observe_step(task, "failed", (time.perf_counter() - started) * 1000, [*ctx.report.llm_attempts, *journal.paid])
        failed = StepErrored(
            **common,
            **reported,
            error=error_info(task, error),
            # Only tickflow's own verdicts are terminal: a user's KeyError or LookupError is retried like any error.
            retryable=not isinstance(error, NonRetryableError),
            retry_after_ms=retry_after_ms(error),
            duration_ms=(time.perf_counter() - started) * 1000,
            logs=redact(logs.getvalue()),
        )
        result = result_envelope(env, failed)
        try:
            return Outcome(result, encode(result), journal.on_the_log)
        except InvalidRecord:  # the report made the record too big: keep the error and the (small) attempts
            result = result_envelope(env, failed.model_copy(update={"messages": [], "logs": ""}))
            return Outcome(result, encode(result), journal.on_the_log)

    async def _send_durably(self, key: bytes, raw: bytes, after: asyncio.Future[None] | None = None) -> None:
        """Send a paid call's checkpoint and wait until the broker has it (acks=all): only then may the step go on.

        An eager attempt's checkpoint is sent only ``after`` the engine's transaction that scheduled the attempt
        committed (see ``runtime/eager.py``): the engine drops a checkpoint of a step its log does not know.
        """
        if after is not None:
            await asyncio.shield(after)
        await (await self.producer.send(self.topics.results, raw, key=key))

    async def _learn_new_partitions(self) -> None:
        """Before running tasks of partitions just taken over, learn which of their steps already reported."""
        assigned = {tp.partition for tp in self.consumer.assignment()}
        new = assigned - self._learned
        self._learned &= assigned
        if new:
            read = await self.produced.learn(self.settings.kafka, self.topics.results, new)
            self._learned |= new
            log.info(
                "pool %s: read %d recent results of partitions %s before running their tasks",
                self.pool,
                read,
                sorted(new),
            )

    async def _share_limits(self, assigned: set[TopicPartition]) -> None:
        """Take this worker's part of the pool's LLM provider limits: its task partitions out of all of them. Only on
        assignment: while partitions are revoked, the steps being drained still call with the old share."""
        topic = self.topics.tasks(self.pool)
        owned = {tp.partition for tp in assigned if tp.topic == topic}
        known = self.consumer.partitions_for_topic(topic) or range(self.settings.partitions)
        # Stale metadata must not fail the rebalance: a partition assigned is one the topic has.
        self.limit_share.assign(owned, max(len(known), max(owned, default=-1) + 1))
        log.info("pool %s: LLM provider limits shared as %r", self.pool, self.limit_share)

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Queued tasks of lost partitions stay uncommitted; their new owner runs them (this worker too, when the
        # partition comes back: so they are forgotten as accepted, or their redelivery would wait for a run that
        # will never happen).
        for job in self.scheduler.queue.remove_if(lambda _, job: job.tp in revoked):
            self._accepted.pop(job.task.idempotency_key, None)
        await self._drain_inflight()
        await self._commit()
        for tp in revoked:
            self.offsets.fetched.pop(tp, None)
            self.offsets.running.pop(tp, None)

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """A step still running (past the revoke's drain) for a partition that went to another worker stops here:
        the new owner runs that attempt from its task record, and one attempt must not run on two workers at once
        (an effect made twice at the same moment, which even a stable idempotency key may not stop at a provider
        that has not finished the first). A sync body in a thread cannot be stopped: it finishes unreported.
        Then this worker takes its share of the pool's LLM provider limits for what it owns now."""
        await self._share_limits(assigned)
        for t, job in list(self._jobs.items()):
            if job.tp is not None and job.tp not in assigned and not t.done():  # eager jobs follow their engine
                self._handed_over.add(job.task.idempotency_key)
                t.cancel()
                log.info("stopping %s: its partition went to another worker, which runs it", job.task.idempotency_key)
