"""A provider's limits split over a pool's workers by task partitions: the share arithmetic, live re-sizing of
buckets and gates, and calls made in a worker's context passing its share (fake clock, no broker)."""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from tests.unit.llm.test_llm_limits import FakeClock
from tickflow.llm import LimitShare, ProviderLimiter, ProviderLimits, TokenBucket
from tickflow.llm.limits import _Gate, current_share, use_share
from tickflow.runtime.worker import StepWorker
from tickflow.settings import Settings
from tickflow.workflow import Registry


def _split(partitions: int, workers: int, rng: random.Random) -> list[set[int]]:
    """Every partition to one worker, each worker at least one (as a consumer group assigns them)."""
    order = list(range(partitions))
    rng.shuffle(order)
    owned: list[set[int]] = [{order[w]} for w in range(workers)]
    for p in order[workers:]:
        owned[rng.randrange(workers)].add(p)
    return owned


def test_concurrency_shares_sum_to_the_limit_and_each_owner_keeps_a_slot() -> None:
    rng = random.Random(7)
    for partitions, workers, limit in itertools.product((1, 3, 4, 12), (1, 2, 3, 5), (1, 2, 3, 4, 7, 12, 50)):
        if workers > partitions:
            continue
        for _ in range(20):
            shares = []
            for owned in _split(partitions, workers, rng):
                share = LimitShare("p")
                share.assign(owned, partitions)
                shares.append(share)
            slots = [s.concurrency(limit) for s in shares]
            assert min(slots) >= 1
            if limit >= partitions:  # every partition carries a slot: exact
                assert sum(slots) == limit, (partitions, workers, limit, slots)
            else:  # a worker whose partitions carry none still gets one
                assert limit <= sum(slots) <= limit + workers - 1
            assert sum(s.fraction for s in shares) == pytest.approx(1.0)


def test_slots_of_contiguous_partitions_are_spread_evenly() -> None:
    share = LimitShare("p")
    per_pair = []
    for first in range(0, 8, 2):  # 4 workers, 2 neighbouring partitions each, 5 slots: none gets 0 or 3
        share.assign({first, first + 1}, 8)
        per_pair.append(share.concurrency(5))
    assert sorted(per_pair) == [1, 1, 1, 2]
    halves = []
    for half in (range(4), range(4, 8)):
        share.assign(half, 8)
        halves.append(share.concurrency(5))
    assert sorted(halves) == [2, 3]


def test_a_share_before_assignment_is_whole_and_without_partitions_is_nothing() -> None:
    share = LimitShare("llm")
    assert share.fraction == 1 and share.concurrency(6) == 6
    share.assign(set(), 4)
    assert share.fraction == 0 and share.concurrency(6) == 0
    with pytest.raises(ValueError, match=r"\[4\] are not among the 4 of pool"):
        share.assign({4}, 4)


async def test_resizing_keeps_debt_drops_excess_bank_and_paces_waiters_at_the_new_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10, capacity=100, clock=clock, sleep=clock.sleep)
    bucket.resize(5, 30)
    assert bucket.level == 30, "what was banked above the new capacity is dropped"
    await bucket.acquire(30)
    bucket.adjust(-20)  # the call cost 20 more than charged
    bucket.resize(2, 10)
    assert bucket.level == -20, "debt survives a resize"
    clock.now += 5  # accrues at the new rate only
    assert bucket.level == pytest.approx(-10)
    assert await bucket.acquire(4) == pytest.approx(7.0)  # 14 short at 2/s


async def test_a_waiter_sees_a_rate_cut_and_a_closed_bucket_holds_until_reopened() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=1, capacity=1, clock=clock, sleep=clock.sleep)
    await bucket.acquire(1)
    real_sleep = clock.sleep

    async def cut_while_sleeping(seconds: float) -> None:
        bucket.resize(0.25, 1)  # a rebalance while the caller waits: half the accrual at the old rate
        await real_sleep(seconds)

    bucket._sleep = cut_while_sleeping
    waited = await bucket.acquire(1)
    assert waited == pytest.approx(4.0), "after the cut it waits for the missing part at the new rate"

    async def yielding(seconds: float) -> None:  # lets the test run while a closed bucket's caller rechecks
        await real_sleep(seconds)
        await asyncio.sleep(0)

    bucket._sleep = yielding
    bucket.resize(0, 0)
    getter = asyncio.ensure_future(bucket.acquire(1))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not getter.done(), "a worker without partitions passes nothing"
    bucket.resize(1, 1)
    assert await getter >= 0.5


async def test_a_gate_shrinks_without_breaking_holders_and_grows_to_let_waiters_in() -> None:
    gate = _Gate(2)
    await gate.acquire()
    await gate.acquire()
    waiter = asyncio.ensure_future(gate.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.resize(1)
    gate.release()
    await asyncio.sleep(0)
    assert not waiter.done() and gate.held == 1, "shrunk to 1 with 1 held: nobody enters"
    gate.resize(3)
    await waiter
    assert gate.held == 2
    cancelled = asyncio.ensure_future(gate.acquire())
    gate.resize(2)
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    gate.release()
    gate.release()
    assert gate.held == 0 and not gate._waiters


async def _calls_in(share: LimitShare, limiter: ProviderLimiter, n: int, clock: FakeClock) -> list[float]:
    """``n`` calls from a worker whose steps run with ``share``; the fake times at which each one was let through."""
    times: list[float] = []

    async def one() -> None:
        async with limiter.slot(10) as slot:
            times.append(clock.now)
            slot.settle(10)

    context = contextvars.copy_context()
    context.run(use_share, share)
    for _ in range(n):
        await asyncio.create_task(one(), context=context)
    return times


async def test_three_workers_shares_of_one_limiter_pass_the_pool_limit_not_three_times_it() -> None:
    """Three workers (one limiter each, as in three processes) of a pool with 4 partitions, 60 requests/min and a
    3 s burst: over 20 s each passes its share, and together they pass what one limiter would."""
    limits = ProviderLimits(requests_per_minute=60, burst_window_s=3)
    passed = []
    for part in ({0, 3}, {1}, {2}):
        clock = FakeClock()
        start = clock.now
        share = LimitShare("llm")
        share.assign(part, 4)
        limiter = ProviderLimiter(limits, clock=clock, sleep=clock.sleep)
        times = await _calls_in(share, limiter, 40, clock)
        passed.append(sum(1 for t in times if t - start <= 20))
    # In T seconds a bucket passes floor(capacity + rate * T): rates 0.5, 0.25, 0.25 per second; capacities
    # 1.5, and 0.75 raised to one whole request. One whole limiter each (the old code) would pass 3 + 20 each.
    assert passed == [int(1.5 + 0.5 * 20), int(1 + 0.25 * 20), int(1 + 0.25 * 20)]
    assert sum(passed) <= 60 * 20 / 60 + 1.5 + 1 + 1
    whole = ProviderLimiter(limits)
    assert whole.requests is not None and whole.requests.capacity == 3


async def test_the_limits_follow_a_rebalance_and_the_process_limit_still_binds() -> None:
    clock = FakeClock()
    limits = ProviderLimits(max_concurrency=4, requests_per_minute=120, tokens_per_minute=1200, burst_window_s=1)
    limiter = ProviderLimiter(limits, clock=clock, sleep=clock.sleep)
    share = LimitShare("llm")
    share.assign({0, 1, 2, 3}, 4)
    mine = limiter.share_limits(share)
    assert mine.gate is not None and mine.requests is not None and mine.tokens is not None
    assert (mine.gate.size, mine.requests.rate, mine.tokens.rate, mine.tokens.capacity) == (4, 2, 20, 20)
    share.assign({2}, 4)  # two more workers joined
    assert (mine.gate.size, mine.requests.rate, mine.tokens.rate, mine.tokens.capacity) == (1, 0.5, 5, 5)
    assert mine.tokens.level == 5 and mine.requests.capacity == 1, "a request is indivisible: one may be banked"
    # Two pools' workers in one process each pass their share; the process's whole limit bounds them together.
    other = LimitShare("tools")
    other.assign({0, 1, 2, 3}, 4)
    share.assign({0, 1, 2, 3}, 4)
    context = contextvars.copy_context()
    context.run(use_share, share)
    held: list[ProviderLimiter] = []

    async def hold(ctx: contextvars.Context) -> None:
        async def body() -> None:
            async with limiter.slot(1):
                held.append(limiter)
                await asyncio.sleep(3600)

        await asyncio.create_task(body(), context=ctx)

    other_context = contextvars.copy_context()
    other_context.run(use_share, other)
    tasks = [asyncio.ensure_future(hold(ctx)) for ctx in (context, other_context) for _ in range(4)]
    for _ in range(50):
        await asyncio.sleep(0)
    assert len(held) == 4, "each share allows 4 at once, the process 4 in all"
    assert limiter.whole.gate is not None and limiter.whole.gate.held == 4
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert limiter.whole.gate.held == 0 and mine.gate.held == 0


async def test_a_worker_takes_its_share_on_assignment_and_its_steps_call_with_it() -> None:
    worker = StepWorker(Settings(), Registry(), concurrency=1)
    assert worker._context.run(current_share) is worker.limit_share, "steps start from this context"
    assert current_share() is None, "nothing outside the worker's steps"
    worker.consumer = SimpleNamespace(partitions_for_topic=lambda topic: {0, 1, 2, 3, 4, 5})  # type: ignore[assignment]
    tasks = worker.topics.tasks(worker.pool)
    await worker._share_limits({TopicPartition(tasks, 1), TopicPartition(tasks, 4), TopicPartition("other", 0)})
    assert (worker.limit_share.owned, worker.limit_share.partitions) == ({1, 4}, 6)
    gauges = {name: value for _, name, _, _, value in worker.metric_values()}
    assert gauges["tickflow_worker_llm_limit_share"] == pytest.approx(1 / 3)
    worker._sync_steps.shutdown()
