"""The scripted offline model: deterministic replies, a tool loop, schema output, token counts, latency, failures."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel

from tickflow.llm import (
    ChatMessage,
    ChatRequest,
    OfflineModel,
    OfflineSettings,
    ToolSpec,
    count_tokens,
)
from tickflow.llm.types import ProviderFailure

SEARCH = ToolSpec(name="search", description="web search",
                  parameters={"type": "object", "properties": {"query": {"type": "string", "minLength": 3},
                                                               "limit": {"type": "integer", "minimum": 1,
                                                                         "maximum": 5}},
                              "required": ["query", "limit"]})
CALC = ToolSpec(name="calculator", parameters={"type": "object", "properties": {"expr": {"type": "string"}}})


class Item(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    id: int
    status: Literal["new", "paid", "shipped"]
    items: list[Item]
    note: str | None = None
    express: bool
    ratio: float


def user(text: str, **kw: object) -> ChatRequest:
    return ChatRequest(messages=[ChatMessage(role="user", content=text)], **kw)


def test_same_request_same_reply_and_different_request_different_reply() -> None:
    model = OfflineModel()
    a = model.reply("offline/echo", user("hello there"))
    assert a == OfflineModel().reply("offline/echo", user("hello there"))
    b = model.reply("offline/echo", user("hello there!"))
    assert a.text != b.text
    assert a.text is not None and "you said: hello there" in a.text and a.finish_reason == "stop"


def test_token_counts_are_words_and_punctuation() -> None:
    assert count_tokens("Hello, world! It's 42.") == 9  # Hello , world ! It ' s 42 .
    reply = OfflineModel().reply("offline/echo", user("one two, three"))
    assert reply.usage.tokens_in == 4
    assert reply.usage.tokens_out == count_tokens(reply.text or "")


def test_tool_then_answer_script_drives_a_tool_loop() -> None:
    model = OfflineModel()
    first = model.reply("offline/tool-then-answer", user("please use the calculator: 2+2", tools=[SEARCH, CALC]))
    assert first.text is None and first.finish_reason == "tool_calls"
    (call,) = first.tool_calls
    assert call.name == "calculator"  # named in the user's message; otherwise the first tool
    jsonschema.validate(call.parsed_arguments(), CALC.parameters)

    default = model.reply("offline/tool-then-answer", user("look it up", tools=[SEARCH, CALC])).tool_calls[0]
    assert default.name == "search"
    jsonschema.validate(default.parsed_arguments(), SEARCH.parameters)

    second = model.reply("offline/tool-then-answer", ChatRequest(tools=[SEARCH, CALC], messages=[
        ChatMessage(role="user", content="please use the calculator: 2+2"),
        ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id=call.id, name="calculator", content="4"),
    ]))
    assert not second.tool_calls and second.text is not None and "calculator: 4" in second.text

    # A new user turn after the tool result starts a new tool round.
    third = model.reply("offline/tool-then-answer", ChatRequest(tools=[CALC], messages=[
        ChatMessage(role="user", content="2+2"), ChatMessage(role="assistant", tool_calls=[call]),
        ChatMessage(role="tool", tool_call_id=call.id, content="4"), ChatMessage(role="user", content="and 3+3?"),
    ]))
    assert third.tool_calls

    # The echo script never calls tools.
    assert not model.reply("offline/echo", user("calculator", tools=[CALC])).tool_calls


def test_schema_output_matches_a_nested_pydantic_model() -> None:
    model = OfflineModel()
    for i in range(20):
        reply = model.reply("offline/echo", user(f"order {i}", response_model=Order))
        order = Order.model_validate_json(reply.text or "")
        assert order.items, "arrays get at least minItems (default 1) entries"
    raw_schema = {"type": "object", "properties": {"score": {"type": "number", "minimum": 0.1, "maximum": 0.9},
                                                  "tags": {"type": "array", "items": {"enum": ["a", "b"]},
                                                           "minItems": 2}}}
    reply = model.reply("offline/echo", user("score", response_schema=raw_schema))
    jsonschema.validate(json.loads(reply.text or ""), raw_schema)


def test_unknown_script_is_a_client_error_listing_the_scripts() -> None:
    with pytest.raises(ProviderFailure) as info:
        OfflineModel().reply("offline/gpt-5", user("x"))
    assert info.value.outcome == "client_error" and "offline/tool-then-answer" in info.value.message


async def test_latency_is_uniform_in_the_configured_range() -> None:
    model = OfflineModel(OfflineSettings(latency_ms=(50, 120), seed=3))

    async def timed(i: int) -> float:
        started = time.perf_counter()
        await model.complete("offline/echo", user(f"q{i}"))
        return (time.perf_counter() - started) * 1000

    latencies = await asyncio.gather(*(timed(i) for i in range(30)))
    assert min(latencies) >= 49
    assert max(latencies) < 120 + 300  # generous scheduling slack: the machine is shared
    assert max(latencies) - min(latencies) > 25, "latencies should spread over the range"
    assert model.peak_in_flight == 30


async def test_failure_rate_is_seeded_and_roughly_respected() -> None:
    async def failures(seed: int) -> list[bool]:
        model = OfflineModel(OfflineSettings(failure_rate=0.3, seed=seed))
        out = []
        for i in range(300):
            try:
                await model.complete("offline/echo", user(f"q{i}"))
                out.append(False)
            except ProviderFailure as exc:
                assert exc.outcome == "server_error" and exc.http_status == 503
                out.append(True)
        return out

    first = await failures(11)
    assert first == await failures(11)
    assert 60 <= sum(first) <= 120
    always = OfflineModel(OfflineSettings(failure_rate=1.0))
    with pytest.raises(ProviderFailure):
        await always.complete("offline/echo", user("x"))


def test_latency_range_is_validated() -> None:
    with pytest.raises(ValueError, match="latency_ms"):
        OfflineSettings(latency_ms=(500, 50))


async def test_a_late_event_loop_does_not_slow_a_streamed_reply_word_by_word(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each word is due at a fixed time from the start: a loop that wakes every sleep 5 ms late (a loaded process)
    ends the reply 5 ms late, not 5 ms per word (it was: the model read twice as slow as configured under load)."""
    from tickflow.llm import offline
    from tickflow.llm.types import ModelReply, Usage

    clock = [100.0]
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "time", lambda: clock[0])

    async def late_sleep(seconds: float) -> None:
        clock[0] += seconds + 0.005

    monkeypatch.setattr(offline.asyncio, "sleep", late_sleep)
    words: list[tuple[float, str]] = []

    class Stream:
        def text(self, delta: str) -> None:
            words.append((clock[0], delta))

        def tool(self, name: str, delta: str) -> None:
            raise AssertionError("no tool call here")

    reply = ModelReply(text=" ".join(f"w{i}" for i in range(20)), finish_reason="stop", usage=Usage())
    await offline._tell(reply, Stream(), 0.1)  # type: ignore[arg-type]
    assert len(words) == 20 and "".join(w for _, w in words).split() == [f"w{i}" for i in range(20)]
    assert 0.1 <= words[-1][0] - 100.0 <= 0.105 + 1e-9  # sleeping a gap after each word: ~0.2
