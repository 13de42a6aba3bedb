"""Streamed replies: the SDK's ``stream=True`` against the local OpenAI-compatible server, and the offline model.

A listener set with ``tickflow.llm.listening`` hears every delta while the request runs; the router still returns
the one result a whole reply would give. The listener here records what it hears (it is the component's real
interface, not a stand-in for something under test).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from tests.contract.llm.test_llm_providers import FAST_RETRY, KEY_VAR, WEATHER_TOOL, Weather, ask
from tests.llm_server import SLOW_ANSWER, LlmTestServer, running_llm_server
from tickflow.llm import AllModelsFailed, ChatMessage, ChatRequest, LlmConfig, LlmRouter, listening


@dataclass
class Heard:
    provider: str
    model: str
    deltas: list[tuple[float, str | None, str]] = field(default_factory=list)  # (when, tool, text)
    closed: list[tuple[str, str | None]] = field(default_factory=list)

    def text(self, delta: str) -> None:
        self.deltas.append((time.monotonic(), None, delta))

    def tool(self, name: str, delta: str) -> None:
        self.deltas.append((time.monotonic(), name, delta))

    def close(self, outcome: str, finish_reason: str | None) -> None:
        self.closed.append((outcome, finish_reason))

    def content(self) -> str:
        return "".join(d for _, tool, d in self.deltas if tool is None)

    def arguments(self, name: str) -> str:
        return "".join(d for _, tool, d in self.deltas if tool == name)


@dataclass
class Recorder:
    streams: list[Heard] = field(default_factory=list)

    def open(self, *, provider: str, model: str) -> Heard:
        self.streams.append(Heard(provider, model))
        return self.streams[-1]


def config(base_url: str, *, stream: bool = True, latency_ms: tuple[float, float] = (0, 0)) -> LlmConfig:
    models = ["ok", "no-usage", "tool-call", "json-answer", "stream-slow", "stream-break", "always-503"]
    return LlmConfig.load({
        "providers": [
            {"name": "http", "base_url": base_url, "api_key_env": KEY_VAR, "timeout_s": 5, "retry": FAST_RETRY,
             "stream": stream},
            {"name": "offline", "kind": "offline", "offline": {"latency_ms": list(latency_ms)}},
        ],
        "models": [{"id": m, "provider": "http"} for m in models]
        + [{"id": "offline/echo", "provider": "offline"}, {"id": "offline/tool-then-answer", "provider": "offline"}],
        "chains": {"default": ["ok"]},
    })


@pytest.fixture
def server() -> Iterator[LlmTestServer]:
    with running_llm_server() as state:
        yield state


@pytest.fixture
async def router(server: LlmTestServer, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[LlmRouter]:
    monkeypatch.setenv(KEY_VAR, f"sk-test-{uuid.uuid4().hex}")
    async with LlmRouter(config(server.base_url)) as r:
        yield r


@pytest.mark.parametrize("model", ["ok", "offline/echo"])
async def test_a_streamed_reply_is_the_same_result_as_a_whole_one(router: LlmRouter, model: str) -> None:
    whole = await router.chat(ask("say hello"), chain=[model])
    heard = Recorder()
    with listening(heard):
        streamed = await router.chat(ask("say hello"), chain=[model])
    (stream,) = heard.streams
    assert stream.model == model and stream.closed == [("ok", "stop")]
    assert stream.content() == streamed.text == whole.text
    assert len([d for d in stream.deltas if d[2]]) >= 2, "the reply came in one piece: it was not streamed"
    assert (streamed.usage, streamed.finish_reason, streamed.attempts[0].usage_estimated) == \
        (whole.usage, whole.finish_reason, whole.attempts[0].usage_estimated)


async def test_the_http_provider_asks_for_a_stream_with_usage(router: LlmRouter, server: LlmTestServer) -> None:
    heard = Recorder()
    with listening(heard):
        result = await router.chat(ask(), chain=["ok"])
    body = server.for_model("ok")[-1].body
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    # The usage came in the stream's last chunk, so it is the server's count, not an estimate.
    assert (result.usage.tokens_in, result.usage.tokens_out) == (11, 3)
    assert not result.attempts[0].usage_estimated

    with listening(Recorder()):
        estimated = await router.chat(ask(), chain=["no-usage"])
    assert estimated.attempts[0].usage_estimated and estimated.usage.tokens_out > 0


@pytest.mark.parametrize("model", ["tool-call", "offline/tool-then-answer"])
async def test_tool_call_arguments_stream_and_add_up_to_the_call(router: LlmRouter, model: str) -> None:
    heard = Recorder()
    with listening(heard):
        result = await router.chat(ask("what is the weather in paris?", tools=[WEATHER_TOOL]), chain=[model])
    (call,) = result.tool_calls
    (stream,) = heard.streams
    assert call.name == "get_weather" and stream.arguments("get_weather") == call.arguments
    assert len([d for d in stream.deltas if d[1] == "get_weather" and d[2]]) >= 2
    assert stream.closed == [("ok", "tool_calls")]


async def test_structured_output_streams_and_still_validates(router: LlmRouter) -> None:
    heard = Recorder()
    with listening(heard):
        result = await router.chat(ask("weather as JSON", response_model=Weather), chain=["json-answer"])
    assert result.parsed == Weather(city="Paris", temp_c=21)
    assert heard.streams[0].content() == result.text


async def test_deltas_arrive_while_the_model_is_still_answering(router: LlmRouter) -> None:
    heard = Recorder()
    with listening(heard):
        result = await router.chat(ask(), chain=["stream-slow"])
        ended = time.monotonic()
    assert result.text == SLOW_ANSWER
    words = [when for when, _, text in heard.streams[0].deltas if text.strip()]
    assert len(words) == 24
    # One word every 60 ms: the first was heard over a second before the reply was complete.
    assert ended - words[0] > 1.0, f"first word only {ended - words[0]:.3f} s before the end"


async def test_a_stream_broken_off_is_a_connection_error_retried_and_every_stream_is_closed(
    router: LlmRouter, server: LlmTestServer,
) -> None:
    heard = Recorder()
    with listening(heard), pytest.raises(AllModelsFailed) as failed:
        await router.chat(ask(), chain=["stream-break"])
    outcomes = [a.outcome for a in failed.value.attempts]
    assert outcomes == ["connection_error"] * FAST_RETRY["max_attempts"]
    assert [s.closed for s in heard.streams] == [[("connection_error", None)]] * FAST_RETRY["max_attempts"]
    assert all(s.content().split() == SLOW_ANSWER.split()[:3] for s in heard.streams)  # what came before the break


async def test_a_failed_request_closes_its_stream_with_the_outcome(router: LlmRouter) -> None:
    heard = Recorder()
    with listening(heard), pytest.raises(AllModelsFailed):
        await router.chat(ask(), chain=["always-503"])
    assert {s.closed[0][0] for s in heard.streams} == {"server_error"} and not any(s.deltas for s in heard.streams)


async def test_a_provider_with_streaming_off_is_asked_whole(server: LlmTestServer,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_VAR, "sk-test-off")
    heard = Recorder()
    async with LlmRouter(config(server.base_url, stream=False)) as r:
        with listening(heard):
            result = await r.chat(ask(), chain=["ok"])
    assert result.text == "hello from ok" and heard.streams == []
    assert "stream" not in server.for_model("ok")[-1].body


async def test_the_offline_model_spreads_its_words_over_its_latency(server: LlmTestServer) -> None:
    async with LlmRouter(config(server.base_url, latency_ms=(600, 600))) as r:
        heard = Recorder()
        request = ChatRequest(messages=[ChatMessage(role="user", content="one two three four five six seven")])
        started = time.monotonic()
        with listening(heard):
            result = await r.chat(request, chain=["offline/echo"])
        ended = time.monotonic()
    words = [when - started for when, _, text in heard.streams[0].deltas]
    assert heard.streams[0].content() == result.text
    assert 0.15 < words[0] < 0.35 and ended - started >= 0.6  # first word at 30 % of the latency
    assert words[-1] - words[0] > 0.3  # the rest spread over what remains
