"""Token buckets with a fake clock, the backoff schedule, and the router's policy over offline providers."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from tickflow.llm import (
    AllModelsFailed,
    ChatMessage,
    ChatRequest,
    LlmConfig,
    LlmRouter,
    ProviderLimiter,
    ProviderLimits,
    RetryPolicy,
    TokenBucket,
)
from tickflow.llm.router import backoff_delay


class FakeClock:
    """Time that moves only when somebody sleeps, so bucket arithmetic is exact."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def test_bucket_spends_its_capacity_then_waits_for_the_refill() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=2, capacity=4, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        assert await bucket.acquire(1) == 0
    assert await bucket.acquire(1) == pytest.approx(0.5)
    assert await bucket.acquire(3) == pytest.approx(1.5)
    clock.now += 10
    assert bucket.level == 4, "the level never exceeds the capacity"
    # An amount above the capacity is clamped, or it would wait forever.
    assert await bucket.acquire(100) == 0 and bucket.level == 0


async def test_correction_refunds_or_puts_the_bucket_in_debt() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10, capacity=100, clock=clock, sleep=clock.sleep)
    await bucket.acquire(60)          # estimate
    bucket.adjust(60 - 20)            # the call used 20: refund 40
    assert bucket.level == pytest.approx(80)
    await bucket.acquire(80)
    bucket.adjust(80 - 130)           # the call used 130: 50 of debt
    assert bucket.level == pytest.approx(-50)
    assert await bucket.acquire(10) == pytest.approx(6.0)


async def test_limiter_charges_requests_and_tokens_and_settles() -> None:
    clock = FakeClock()
    limits = ProviderLimits(requests_per_minute=60, tokens_per_minute=600, burst_window_s=10)
    limiter = ProviderLimiter(limits, clock=clock, sleep=clock.sleep)
    assert limiter.requests is not None and limiter.tokens is not None
    assert (limiter.requests.capacity, limiter.tokens.capacity) == (10, 100)
    async with limiter.slot(90) as slot:
        assert slot.waited_s == 0
        slot.settle(30)
    assert limiter.tokens.level == pytest.approx(70)
    async with limiter.slot(90) as slot:
        assert slot.waited_s == pytest.approx(2.0)   # 20 tokens short at 10 tokens/s


def test_backoff_is_jittered_exponential_and_honours_a_capped_retry_after() -> None:
    policy = RetryPolicy(base_delay_s=1, multiplier=2, max_delay_s=5, max_retry_after_s=3)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 5), (9, 5)]:
        delays = [backoff_delay(policy, attempt, rng, None) for _ in range(200)]
        assert min(delays) >= 0 and max(delays) <= ceiling
        assert max(delays) > ceiling * 0.8, "full jitter spreads over the whole range"
    assert backoff_delay(policy, 1, rng, 2.5) >= 2.5
    assert backoff_delay(policy, 1, rng, 3600) <= 3


def _two_offline(failure_rate: float, *, max_concurrency: int | None = None) -> LlmConfig:
    return LlmConfig.load({
        "providers": [
            {"name": "flaky", "kind": "offline", "offline": {"failure_rate": failure_rate, "seed": 1},
             "retry": {"max_attempts": 2, "base_delay_s": 0.01}, "limits": {"max_concurrency": max_concurrency}},
            {"name": "steady", "kind": "offline"},
        ],
        "models": [{"id": "offline/echo", "provider": "flaky"},
                   {"id": "offline/tool-then-answer", "provider": "steady"},
                   {"id": "offline/nonexistent", "provider": "steady"}],
        "chains": {"default": ["offline/echo", "offline/tool-then-answer"]},
    })


async def test_router_retries_then_falls_back_between_offline_providers() -> None:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    router = LlmRouter(_two_offline(1.0), rng=random.Random(0), sleep=sleep)
    result = await router.chat(ChatRequest(messages=[ChatMessage(role="user", content="hi")]))
    assert [(a.provider, a.outcome, a.attempt, a.fallback) for a in result.attempts] == [
        ("flaky", "server_error", 1, False), ("flaky", "server_error", 2, False), ("steady", "ok", 1, True)]
    assert len(slept) == 1 and 0 <= slept[0] <= 0.01
    assert all(a.offline and a.price_known and a.cost_usd == 0 for a in result.attempts)


async def test_router_raises_one_error_when_the_whole_chain_fails() -> None:
    router = LlmRouter(_two_offline(1.0))
    with pytest.raises(AllModelsFailed) as info:
        await router.chat(ChatRequest(messages=[ChatMessage(role="user", content="hi")]),
                          chain=["offline/echo", "offline/nonexistent"])
    message = str(info.value)
    assert "offline/echo (2 attempts, last server_error HTTP 503" in message
    assert "offline/nonexistent (1 attempt, last client_error HTTP 404" in message


async def test_router_concurrency_limit_holds_for_offline_models() -> None:
    config = LlmConfig.load({
        "providers": [{"name": "offline", "kind": "offline", "offline": {"latency_ms": [50, 50]},
                       "limits": {"max_concurrency": 3}}],
        "models": [{"id": "offline/echo", "provider": "offline"}],
    })
    router = LlmRouter(config)
    started = time.perf_counter()
    await asyncio.gather(*(router.chat(ChatRequest(messages=[ChatMessage(role="user", content=f"{i}")]),
                                       chain=["offline/echo"]) for i in range(9)))
    provider = router.provider("offline")
    assert provider.model.peak_in_flight == 3  # type: ignore[attr-defined]
    assert time.perf_counter() - started >= 0.14
