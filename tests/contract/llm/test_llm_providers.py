"""The provider layer against a real OpenAI-compatible HTTP server (tests/llm_server.py) and the offline model.

No mocks: the official SDK talks HTTP to a local uvicorn server whose behaviour is scripted per model name, so
retries, Retry-After, fallbacks, timeouts, malformed bodies, limits and key handling are observed on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from tests.llm_server import LlmTestServer, running_llm_server
from tickflow.llm import (
    OFFLINE_LABEL,
    AllModelsFailed,
    ChatMessage,
    ChatRequest,
    EmbeddingFailed,
    LlmConfig,
    LlmRouter,
    OpenAICompatibleEmbedder,
    ToolSpec,
)

KEY_VAR = "TICKFLOW_TEST_LLM_KEY"
KEY2_VAR = "TICKFLOW_TEST_LLM_KEY2"
FAST_RETRY = {"max_attempts": 3, "base_delay_s": 0.01, "max_delay_s": 0.05, "max_retry_after_s": 1.0}
HTTP_MODELS = ["ok", "no-usage", "rate-limited", "always-503", "slow", "slow-counted", "malformed-json", "not-json",
               "no-choices", "tool-call", "json-answer", "json-wrong", "echo-key-401", "missing-model", "embed",
               "embed-503-once"]

WEATHER_TOOL = ToolSpec(name="get_weather", description="Current weather in a city",
                        parameters={"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]})


class Weather(BaseModel):
    city: str
    temp_c: int


def config(base_url: str, *, limits: dict[str, Any] | None = None, timeout_s: float = 5.0) -> LlmConfig:
    return LlmConfig.load({
        "providers": [
            {"name": "primary", "base_url": base_url, "api_key_env": KEY_VAR, "timeout_s": timeout_s,
             "retry": FAST_RETRY, "limits": limits or {}},
            {"name": "secondary", "base_url": base_url, "api_key_env": KEY2_VAR, "retry": FAST_RETRY},
            {"name": "offline", "kind": "offline"},
        ],
        "models": [{"id": m, "provider": "primary"} for m in HTTP_MODELS]
        + [{"id": "backup-ok", "provider": "secondary", "model": "ok"},
           {"id": "offline/echo", "provider": "offline"},
           {"id": "offline/tool-then-answer", "provider": "offline"}],
        "prices": {"ok": {"input_per_m": 1.0, "output_per_m": 2.0},
                   "backup-ok": {"input_per_m": 0.5, "output_per_m": 0.5}},
        "chains": {"default": ["always-503", "backup-ok"]},
    })


def ask(text: str = "hello", **kw: Any) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **kw)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    first, second = f"sk-test-first-{uuid.uuid4().hex}", f"sk-test-second-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_VAR, first)
    monkeypatch.setenv(KEY2_VAR, second)
    return first, second


@pytest.fixture
def server() -> Iterator[LlmTestServer]:
    with running_llm_server() as state:
        yield state


@pytest.fixture
async def router(server: LlmTestServer, keys: tuple[str, str]) -> AsyncIterator[LlmRouter]:
    async with LlmRouter(config(server.base_url, timeout_s=0.4)) as r:
        yield r


# -- one contract, two backends: the HTTP provider and the offline model -----------------------------------------

BACKENDS = {
    "http": {"text": "ok", "tool": "tool-call", "json": "json-answer"},
    "offline": {"text": "offline/echo", "tool": "offline/tool-then-answer", "json": "offline/echo"},
}


@pytest.mark.parametrize("backend", sorted(BACKENDS))
async def test_contract_text_tools_and_schema(router: LlmRouter, backend: str) -> None:
    models = BACKENDS[backend]

    text = await router.chat(ask("say hello"), chain=[models["text"]])
    assert text.text and not text.tool_calls
    assert text.usage.tokens_in > 0 and text.usage.tokens_out > 0
    assert [a.outcome for a in text.attempts] == ["ok"] and not text.fallback
    assert (text.label == OFFLINE_LABEL) == (backend == "offline") == text.attempts[0].offline

    first = await router.chat(ask("what is the weather in paris?", tools=[WEATHER_TOOL]), chain=[models["tool"]])
    assert len(first.tool_calls) == 1 and first.tool_calls[0].name == "get_weather"
    assert isinstance(first.tool_calls[0].parsed_arguments()["city"], str)
    call = first.tool_calls[0]
    follow_up = ChatRequest(tools=[WEATHER_TOOL], messages=[
        ChatMessage(role="user", content="what is the weather in paris?"),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content="sunny, 21 C"),
    ])
    answer = await router.chat(follow_up, chain=[models["tool"]])
    assert not answer.tool_calls and answer.text and "sunny, 21 C" in answer.text

    structured = await router.chat(ask("weather as JSON", response_model=Weather), chain=[models["json"]])
    assert isinstance(structured.parsed, Weather)


# -- HTTP behaviour -------------------------------------------------------------------------------------------------

async def test_success_sends_the_env_key_and_prices_the_attempt(router: LlmRouter, server: LlmTestServer,
                                                                keys: tuple[str, str]) -> None:
    result = await router.chat(ask(), chain=["ok"])
    assert result.text == "hello from ok" and result.provider == "primary" and result.model == "ok"
    assert result.usage.tokens_in == 11 and result.usage.tokens_out == 3
    assert result.cost_usd == pytest.approx((11 * 1.0 + 3 * 2.0) / 1e6)
    (attempt,) = result.attempts
    assert attempt.price_known and attempt.cost_usd == result.cost_usd and attempt.http_status is None
    assert attempt.latency_ms > 0 and attempt.started_at_ms > 1_600_000_000_000
    assert [r.authorization for r in server.for_model("ok")] == [f"Bearer {keys[0]}"]


async def test_rate_limited_honours_retry_after_then_succeeds(router: LlmRouter, server: LlmTestServer) -> None:
    result = await router.chat(ask(), chain=["rate-limited"])
    assert [(a.outcome, a.http_status, a.attempt) for a in result.attempts] == [("rate_limited", 429, 1),
                                                                              ("ok", None, 2)]
    assert result.attempts[0].retry_after_s == pytest.approx(0.2)
    first, second = server.for_model("rate-limited")
    assert second.started - first.finished >= 0.19, "the retry came before the server's Retry-After"
    # Not in the price table: cost 0, flagged.
    assert not result.attempts[1].price_known and result.cost_usd == 0


async def test_server_error_storm_falls_back_to_the_next_provider(router: LlmRouter, server: LlmTestServer,
                                                                  keys: tuple[str, str]) -> None:
    result = await router.chat(ask(), chain="default")
    outcomes = [(a.model, a.outcome, a.http_status, a.fallback) for a in result.attempts]
    assert outcomes == [("always-503", "server_error", 503, False)] * 3 + [("backup-ok", "ok", None, True)]
    assert [a.seq for a in result.attempts] == [1, 2, 3, 4]
    assert result.fallback and result.provider == "secondary" and result.text == "hello from ok"
    # The SDK's own retries are off: three attempts recorded, three requests on the wire.
    assert len(server.for_model("always-503")) == 3
    assert server.for_model("ok")[-1].authorization == f"Bearer {keys[1]}"


async def test_timeout_is_retried_then_falls_back(router: LlmRouter) -> None:
    started = time.monotonic()
    result = await router.chat(ask(), chain=["slow", "backup-ok"])
    assert [a.outcome for a in result.attempts] == ["timeout"] * 3 + ["ok"]
    assert all(350 <= a.latency_ms < 1500 for a in result.attempts[:3])
    assert time.monotonic() - started < 4


@pytest.mark.parametrize("model", ["malformed-json", "not-json", "no-choices", "json-wrong"])
async def test_malformed_moves_to_the_next_model_at_once(router: LlmRouter, server: LlmTestServer,
                                                         model: str) -> None:
    result = await router.chat(ask(response_model=Weather), chain=[model, "offline/echo"])
    assert [(a.model, a.outcome) for a in result.attempts] == [(model, "malformed"), ("offline/echo", "ok")]
    assert len(server.for_model(model)) == 1
    # The offline fallback still honours the schema.
    assert isinstance(result.parsed, Weather) and result.label == OFFLINE_LABEL


async def test_structured_output_asks_with_json_schema(router: LlmRouter, server: LlmTestServer) -> None:
    result = await router.chat(ask(response_model=Weather), chain=["json-answer"])
    assert result.parsed == Weather(city="Paris", temp_c=21)
    fmt = server.for_model("json-answer")[0].body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"]["required"] == ["city", "temp_c"]


async def test_missing_usage_is_estimated_and_flagged(router: LlmRouter) -> None:
    result = await router.chat(ask("one two three"), chain=["no-usage"])
    assert result.attempts[0].usage_estimated
    assert result.usage.tokens_in == 3 and result.usage.tokens_out == 3


async def test_every_model_failing_raises_one_error_naming_each(router: LlmRouter, server: LlmTestServer) -> None:
    with pytest.raises(AllModelsFailed) as info:
        await router.chat(ask(), chain=["always-503", "missing-model"])
    err = info.value
    assert [a.outcome for a in err.attempts] == ["server_error"] * 3 + ["client_error"]
    assert "always-503 (3 attempts, last server_error HTTP 503" in str(err)
    assert "missing-model (1 attempt, last client_error HTTP 404" in str(err)
    assert err.retryable
    assert len(server.for_model("missing-model")) == 1


async def test_missing_key_variable_is_a_client_error_naming_the_variable(
        server: LlmTestServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_VAR, raising=False)
    async with LlmRouter(config(server.base_url)) as router:
        with pytest.raises(AllModelsFailed) as info:
            await router.chat(ask(), chain=["ok"])
    assert info.value.attempts[0].outcome == "client_error"
    assert KEY_VAR in str(info.value) and not info.value.retryable
    assert server.requests == []


async def test_planted_key_never_leaks(server: LlmTestServer, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    planted = f"sk-test-PLANTED-{uuid.uuid4().hex}"
    monkeypatch.setenv(KEY_VAR, planted)
    monkeypatch.setenv(KEY2_VAR, planted)
    caplog.set_level(logging.DEBUG)
    cfg = config(server.base_url)
    async with LlmRouter(cfg) as router:
        with pytest.raises(AllModelsFailed) as info:
            await router.chat(ask(), chain=["echo-key-401", "always-503"])
        ok = await router.chat(ask(), chain=["ok"])
        texts = [str(info.value), repr(info.value), repr(cfg), cfg.model_dump_json(), repr(router),
                 repr(router.provider("primary")), caplog.text, ok.model_dump_json()]
        texts += [a.model_dump_json() for a in info.value.attempts]
    # The server did receive it (and echoed it in its 401 body) …
    assert server.for_model("echo-key-401")[0].authorization == f"Bearer {planted}"
    assert info.value.attempts[0].http_status == 401
    assert "Incorrect API key provided: [redacted]" in (info.value.attempts[0].error_message or "")
    # … and it appears nowhere we produce.
    for text in texts:
        assert planted not in text
        assert "PLANTED" not in text


async def test_requests_per_minute_delays_instead_of_failing(server: LlmTestServer, keys: tuple[str, str]) -> None:
    # 600/min = 10/s with a 0.5 s bucket (5 requests): 15 requests need at least ~1 s, and none fails.
    limits = {"requests_per_minute": 600, "burst_window_s": 0.5}
    async with LlmRouter(config(server.base_url, limits=limits)) as router:
        started = time.monotonic()
        results = await asyncio.gather(*(router.chat(ask(f"q{i}"), chain=["ok"]) for i in range(15)))
        elapsed = time.monotonic() - started
    assert all(len(r.attempts) == 1 and r.attempts[0].outcome == "ok" for r in results)
    assert elapsed >= 0.95, elapsed
    assert sum(r.attempts[0].waited_ms > 0 for r in results) >= 9
    assert len(server.for_model("ok")) == 15
    # When each request was let through (client side, so a busy server loop cannot bunch them): no 0.5 s
    # window admitted more than the bucket (5) plus what refilled in it (5), +1 for millisecond rounding.
    admitted = sorted(r.attempts[0].started_at_ms + r.attempts[0].waited_ms for r in results)
    assert max(sum(1 for t in admitted if s <= t < s + 500) for s in admitted) <= 11


async def test_concurrency_limit_caps_requests_in_flight(server: LlmTestServer, keys: tuple[str, str]) -> None:
    async with LlmRouter(config(server.base_url, limits={"max_concurrency": 2})) as router:
        started = time.monotonic()
        results = await asyncio.gather(*(router.chat(ask(f"q{i}"), chain=["slow-counted"]) for i in range(6)))
        elapsed = time.monotonic() - started
    assert server.peak_in_flight == 2
    assert all(r.attempts[0].outcome == "ok" for r in results)
    assert elapsed >= 0.55


async def test_openai_compatible_embeddings(router: LlmRouter, server: LlmTestServer) -> None:
    embedder = OpenAICompatibleEmbedder(router, "embed", batch_size=2)
    vectors = await embedder.embed(["a", "b", "c"])
    assert len(vectors) == 3 and embedder.dimension == 8
    assert vectors == await embedder.embed(["a", "b", "c"])
    assert [len(r.body["input"]) for r in server.for_model("embed")[:2]] == [2, 1]

    retried = await OpenAICompatibleEmbedder(router, "embed-503-once").embed(["x"])
    assert len(retried[0]) == 8 and len(server.for_model("embed-503-once")) == 2

    with pytest.raises(EmbeddingFailed, match="HTTP 404"):
        await OpenAICompatibleEmbedder(router, "missing-model").embed(["x"])


async def test_json_mode_providers_get_the_schema_in_a_system_message(server: LlmTestServer,
                                                                       keys: tuple[str, str]) -> None:
    cfg = LlmConfig.load({
        "providers": [{"name": "jsonmode", "base_url": server.base_url, "api_key_env": KEY_VAR,
                       "structured_output": "json_object", "max_tokens_param": "max_completion_tokens"}],
        "models": [{"id": "json-answer", "provider": "jsonmode", "max_tokens": 64}],
    })
    async with LlmRouter(cfg) as router:
        result = await router.chat(ask(response_model=Weather, temperature=0.2), chain=["json-answer"])
    assert result.parsed == Weather(city="Paris", temp_c=21)
    body = server.for_model("json-answer")[0].body
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0]["role"] == "system" and '"temp_c"' in body["messages"][0]["content"]
    assert body["max_completion_tokens"] == 64 and "max_tokens" not in body and body["temperature"] == 0.2
