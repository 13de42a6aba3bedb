"""A local OpenAI-compatible server over real HTTP whose behaviour is scripted by the requested model name.

The provider layer is tested against this instead of mocks, so what is exercised is the real SDK, real HTTP,
real status codes, headers and bodies. Start it with :func:`running_llm_server`; it records every request
(model, Authorization header, body, timing) so tests can check what went over the wire, and counts them per
time window (:meth:`LlmTestServer.most_in_window`) and at once (:meth:`LlmTestServer.peak_overlap`).

Scripted chat models:

==================  ===================================================================================
``ok``              200 with a short text answer and usage
``no-usage``        200 without a usage block
``rate-limited``    429 with ``Retry-After: 0.2`` on the first call for this model, then 200
``always-503``      503 every time
``slow``            sleeps 2 s before answering (longer than the tests' timeouts)
``slow-counted``    sleeps 0.2 s and tracks how many requests were in flight at once
``malformed-json``  200, ``application/json``, a truncated JSON body
``not-json``        200, ``text/html`` body
``no-choices``      200 with ``"choices": []``
``tool-call``       a ``get_weather`` tool call, or — once a tool result is in the messages — an answer
``json-answer``     content ``{"city": "Paris", "temp_c": 21}``
``json-wrong``      content ``{"city": 5}`` (does not match the tests' schema)
``echo-key-401``    401 whose message echoes the presented key, as OpenAI's does
``stream-slow``     a 24-word answer; streamed, one word per chunk 60 ms apart (about 1.4 s in all)
``stream-break``    streamed: three words, then the connection drops mid-stream; whole: 503
``trip-agent``      a framework agent's three turns: a ``note`` tool call; once one tool result is in the
                    messages, a ``book`` tool call; once two are, an answer quoting the last result
anything else       404 model not found
==================  ===================================================================================

With ``"stream": true`` every answer above is sent as Server-Sent Events of ``chat.completion.chunk`` objects, as
OpenAI streams: the role, the content word by word (a tool call's name, then its arguments in pieces), the finish
reason, then — when ``stream_options.include_usage`` — a last chunk with no choices and the usage. Errors stay
plain JSON answers with their status, as OpenAI's are.

A fake external service for tools to act on (``/svc/…``, counted in ``LlmTestServer.effects``): ``POST
/svc/effect/<name>`` is an effect (counted, answered ``<name> #<n>``); ``GET /svc/quote`` is a read whose first
call is held ``STALL_S`` seconds, so a test can kill a worker inside a tool, after the model calls before it.

Embedding models: ``embed`` (8-dim deterministic vectors), ``embed-503-once`` (503 then vectors),
``embed-stall-2nd`` (vectors, but the 2nd request is held ``STALL_S`` seconds first: an agent turn embeds its
answer after the chat call, so a test can hold a worker between a paid answer and its step's report).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tests.conftest import free_port

__all__ = ["LlmTestServer", "Recorded", "running_llm_server"]


@dataclass
class Recorded:
    path: str
    model: str
    authorization: str | None
    body: dict[str, Any]
    started: float
    finished: float = 0.0


@dataclass
class LlmTestServer:
    base_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    peak_in_flight: int = 0
    #: Calls of the fake external service, by name (``effect/<name>``, ``quote``).
    effects: Counter[str] = field(default_factory=Counter)

    def for_model(self, model: str) -> list[Recorded]:
        return [r for r in self.requests if r.model == model]

    def most_in_window(self, model: str, window_s: float, *, since: float = float("-inf")) -> int:
        """The most requests for ``model`` that arrived within any ``window_s`` seconds (60: requests per minute),
        counting those that arrived at ``since`` (``time.monotonic()``) or later."""
        starts = sorted(r.started for r in self.for_model(model) if r.started >= since)
        first, most = 0, 0
        for last, t in enumerate(starts):
            while t - starts[first] > window_s:
                first += 1
            most = max(most, last - first + 1)
        return most

    def peak_overlap(self, model: str) -> int:
        """The most requests for ``model`` the server answered at once (from each one's arrival to its answer)."""
        edges = sorted([(r.started, 1) for r in self.for_model(model) if r.finished]
                       + [(r.finished, -1) for r in self.for_model(model) if r.finished])
        now = peak = 0
        for _, step in edges:  # at a tie the end sorts first: one ending as the next arrives is not an overlap
            now += step
            peak = max(peak, now)
        return peak


def _completion(model: str, message: dict[str, Any], *, usage: bool = True, finish: str = "stop") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{model}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
    }
    if usage:
        body["usage"] = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}
    return body


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "test_error", "code": None}}, status_code=status,
                        headers=headers)


def build_app(state: LlmTestServer) -> FastAPI:
    app = FastAPI()

    async def record(request: Request) -> tuple[Recorded, int]:
        body = await request.json()
        rec = Recorded(request.url.path, str(body.get("model")), request.headers.get("authorization"), body,
                       time.monotonic())
        state.requests.append(rec)
        state.calls[rec.model] += 1
        return rec, state.calls[rec.model]

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        rec, nth = await record(request)
        state.in_flight += 1
        state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
        try:
            response = await _chat(rec, nth)
            if rec.body.get("stream") and response.status_code == 200 and isinstance(response, JSONResponse):
                return _streamed(rec, json.loads(bytes(response.body)))
            return response
        finally:
            state.in_flight -= 1
            rec.finished = time.monotonic()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        rec, nth = await record(request)
        if rec.model == "embed-503-once" and nth == 1:
            return _error(503, "embedding backend overloaded")
        if rec.model == "embed-stall-2nd" and nth == 2:
            await asyncio.sleep(STALL_S)
        if rec.model not in ("embed", "embed-503-once", "embed-stall-2nd"):
            return _error(404, f"The model `{rec.model}` does not exist")
        texts = rec.body["input"]
        data = [
            {"object": "embedding", "index": i,
             "embedding": [b / 255 for b in hashlib.sha256(str(t).encode()).digest()[:8]]}
            for i, t in enumerate(texts)
        ]
        return JSONResponse({"object": "list", "data": data, "model": rec.model,
                             "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)}})

    @app.post("/svc/effect/{name}")
    async def effect(name: str) -> Response:
        state.effects[f"effect/{name}"] += 1
        return JSONResponse({"done": f"{name} #{state.effects[f'effect/{name}']}"})

    @app.get("/svc/quote")
    async def quote() -> Response:
        state.effects["quote"] += 1
        if state.effects["quote"] == 1:
            await asyncio.sleep(STALL_S)
        return JSONResponse({"price_eur": 420})

    return app


#: How long ``embed-stall-2nd`` holds its 2nd request (bounded: the server must still stop).
STALL_S = 60.0

#: Seconds between streamed chunks, per model (the others stream as fast as they can).
STREAM_GAP_S = {"stream-slow": 0.06, "stream-break": 0.06}
SLOW_ANSWER = " ".join(f"word{i}" for i in range(1, 25))


def _streamed(rec: Recorded, completion: dict[str, Any]) -> StreamingResponse:
    """A whole completion told as OpenAI's chunk stream."""
    choice = completion["choices"][0]
    message = choice["message"]
    base = {"id": completion["id"], "object": "chat.completion.chunk", "created": completion["created"],
            "model": completion["model"]}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in re.findall(r"\s*\S+", message.get("content") or "")]
    for i, call in enumerate(message.get("tool_calls") or []):
        deltas.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                       "function": {"name": call["function"]["name"], "arguments": ""}}]})
        args = call["function"]["arguments"]
        deltas += [{"tool_calls": [{"index": i, "function": {"arguments": args[j:j + 6]}}]}
                   for j in range(0, len(args), 6)]
    include_usage = bool((rec.body.get("stream_options") or {}).get("include_usage"))
    gap = STREAM_GAP_S.get(rec.model, 0.0)

    async def chunks() -> Any:
        for n, delta in enumerate(deltas):
            if rec.model == "stream-break" and n == 4:
                raise ConnectionResetError("the test server drops the stream on purpose")
            yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            if gap:
                await asyncio.sleep(gap)
        yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]})
        if include_usage and "usage" in completion:
            yield _sse({**base, "choices": [], "usage": completion["usage"]})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


async def _chat(rec: Recorded, nth: int) -> Response:
    model = rec.model
    if model == "stream-slow":
        return JSONResponse(_completion(model, {"content": SLOW_ANSWER}))
    if model == "stream-break":
        if rec.body.get("stream"):
            return JSONResponse(_completion(model, {"content": SLOW_ANSWER}))
        return _error(503, "stream-break only streams")
    if model == "ok":
        return JSONResponse(_completion(model, {"content": "hello from ok"}))
    if model == "no-usage":
        return JSONResponse(_completion(model, {"content": "hello without usage"}, usage=False))
    if model == "rate-limited":
        if nth == 1:
            return _error(429, "Rate limit reached, try again in 200ms", {"retry-after": "0.2"})
        return JSONResponse(_completion(model, {"content": "served after the 429"}))
    if model == "always-503":
        return _error(503, "the server is overloaded")
    if model == "slow":
        await asyncio.sleep(2.0)
        return JSONResponse(_completion(model, {"content": "too late"}))
    if model == "slow-counted":
        await asyncio.sleep(0.2)
        return JSONResponse(_completion(model, {"content": "counted"}))
    if model == "malformed-json":
        return Response(b'{"id": "x", "choices": [{"index": 0, "mess', media_type="application/json")
    if model == "not-json":
        return Response(b"<html>502 bad gateway</html>", media_type="text/html")
    if model == "no-choices":
        body = _completion(model, {"content": "x"})
        body["choices"] = []
        return JSONResponse(body)
    if model == "tool-call":
        messages = rec.body["messages"]
        if messages[-1]["role"] == "tool":
            return JSONResponse(_completion(model, {"content": f"The weather: {messages[-1]['content']}"}))
        call = {"id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        return JSONResponse(_completion(model, {"content": None, "tool_calls": [call]}, finish="tool_calls"))
    if model == "trip-agent":
        results = [m for m in rec.body["messages"] if m["role"] == "tool"]
        if len(results) >= 2:
            return JSONResponse(_completion(model, {"content": f"All set: {results[-1]['content']}"}))
        name, args = ("book", '{"what": "flight"}') if results else ("note", '{"text": "window seat"}')
        call = {"id": f"call_{name}", "type": "function", "function": {"name": name, "arguments": args}}
        return JSONResponse(_completion(model, {"content": None, "tool_calls": [call]}, finish="tool_calls"))
    if model == "json-answer":
        return JSONResponse(_completion(model, {"content": '{"city": "Paris", "temp_c": 21}'}))
    if model == "json-wrong":
        return JSONResponse(_completion(model, {"content": '{"city": 5}'}))
    if model == "echo-key-401":
        presented = (rec.authorization or "").removeprefix("Bearer ")
        return _error(401, f"Incorrect API key provided: {presented}. You can find your API key at "
                           "https://platform.example/account/api-keys.")
    return _error(404, f"The model `{model}` does not exist or you do not have access to it.")


@contextmanager
def running_llm_server() -> Iterator[LlmTestServer]:
    """The scripted server on 127.0.0.1 and a free port, in a background thread, for the ``with`` body."""
    state = LlmTestServer()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(state), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, name="llm-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"the LLM test server did not start on 127.0.0.1:{port}")
        time.sleep(0.02)
    state.base_url = f"http://127.0.0.1:{port}/v1"
    try:
        yield state
    finally:
        server.should_exit = True
        thread.join(timeout=10)
