"""A scripted, in-process stand-in for an LLM (provider kind ``offline``) — for demos, tests and benchmarks.

It is *not* a language model and says so: model ids are ``offline/<script>`` and every result carries
``OFFLINE_LABEL``. A reply is a pure function of the request (a SHA-256 of the messages, tools and schema seeds
every choice), so the same request always gets the same answer, replays are stable and tests can assert exact
outputs. Latency and failures are drawn from a separate seeded generator, so the benchmark can simulate a slow,
flaky provider without making the content random.

Scripts:

* ``offline/echo`` — answers with text quoting the last user message (or JSON when a schema is asked for).
* ``offline/tool-then-answer`` — when tools are offered and no tool result has come back since the last user
  message, calls one tool (the first whose name appears in the user's message, else the first) with arguments
  generated from its JSON schema; once the tool result is in, answers quoting it. This exercises a tool loop.

Structured output: with a response schema the reply is a JSON document generated from the schema (objects with
every property, enums, bounds, ``$ref``/``$defs``, ``anyOf``), deterministic for the request.

Token counts: ``count_tokens`` (words and punctuation marks) over the message contents and tool-call arguments
for input, over the reply text or tool call for output.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re
from typing import Any

from tickflow.llm.config import OFFLINE_SCRIPTS, OfflineSettings
from tickflow.llm.scrub import count_tokens
from tickflow.llm.streaming import TokenStream
from tickflow.llm.types import ChatRequest, ModelReply, ProviderFailure, ToolCall, ToolSpec, Usage

__all__ = ["FIRST_TOKEN_SHARE", "OfflineModel", "instance_from_schema"]

#: The share of a streamed reply's latency spent before its first word (a real model's time to first token).
FIRST_TOKEN_SHARE = 0.3


class OfflineModel:
    """The scripted model. ``reply`` is the pure part; ``complete`` adds the simulated latency and failures."""

    def __init__(self, settings: OfflineSettings | None = None) -> None:
        self.settings = settings or OfflineSettings()
        self._rng = random.Random(self.settings.seed)
        self.calls = 0
        self.in_flight = 0
        self.peak_in_flight = 0

    def __repr__(self) -> str:
        return f"OfflineModel({self.settings!r})"

    async def complete(self, model: str, request: ChatRequest, *, stream: TokenStream | None = None) -> ModelReply:
        """Sleep a uniform latency in ``settings.latency_ms``, fail with probability ``failure_rate``, else reply.

        With ``stream``, the reply is told word by word: the first word after ``FIRST_TOKEN_SHARE`` of the
        latency, the others spread evenly over the rest, so a watcher sees it arrive as from a real model.
        """
        self.calls += 1
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            low, high = self.settings.latency_ms
            delay_s = self._rng.uniform(low, high) / 1000
            failing = self._rng.random() < self.settings.failure_rate
            if (failing or stream is None) and delay_s > 0:
                await asyncio.sleep(delay_s)
            if failing:
                raise ProviderFailure(
                    "server_error",
                    f"simulated failure of the offline model (failure_rate={self.settings.failure_rate})",
                    error_type="OfflineSimulatedFailure",
                    http_status=503,
                )
            reply = self.reply(model, request)
            if stream is not None:
                await _tell(reply, stream, delay_s)
            return reply
        finally:
            self.in_flight -= 1

    def reply(self, model: str, request: ChatRequest) -> ModelReply:
        """The deterministic answer of script ``model`` (``offline/<script>`` or ``<script>``) to ``request``."""
        script = model.removeprefix("offline/")
        if script not in OFFLINE_SCRIPTS:
            raise ProviderFailure(
                "client_error",
                f"unknown offline model {model!r}; the offline scripts are "
                f"{', '.join('offline/' + s for s in OFFLINE_SCRIPTS)}",
                error_type="UnknownOfflineModel",
                http_status=404,
            )
        digest = hashlib.sha256(
            json.dumps(request.fingerprint_payload(), sort_keys=True, default=str).encode()
        ).hexdigest()
        rng = random.Random(int(digest[:16], 16))
        tokens_in = sum(
            count_tokens(m.content or "") + sum(count_tokens(c.arguments) for c in m.tool_calls or [])
            for m in request.messages
        )
        last_user = max((i for i, m in enumerate(request.messages) if m.role == "user"), default=-1)
        user_text = request.messages[last_user].content or "" if last_user >= 0 else ""
        tool_results = [m for m in request.messages[last_user + 1:] if m.role == "tool"]

        if script == "tool-then-answer" and request.tools and not tool_results:
            tool = _pick_tool(request.tools, user_text)
            call = ToolCall(id=f"call_{digest[:12]}", name=tool.name,
                            arguments=json.dumps(instance_from_schema(tool.parameters, rng), sort_keys=True))
            return ModelReply(text=None, tool_calls=[call], finish_reason="tool_calls",
                              usage=Usage(tokens_in=tokens_in, tokens_out=count_tokens(call.name + call.arguments)))

        schema = request.json_schema()
        if schema is not None:
            text = json.dumps(instance_from_schema(schema, rng), sort_keys=True)
        elif tool_results:
            quoted = "; ".join(f"{m.name or m.tool_call_id}: {(m.content or '')[:200]}" for m in tool_results)
            text = f"[offline {script} {digest[:8]}] from the tool results — {quoted}"
        else:
            text = f"[offline {script} {digest[:8]}] you said: {user_text[:200]}"
        return ModelReply(text=text, finish_reason="stop",
                          usage=Usage(tokens_in=tokens_in, tokens_out=count_tokens(text)))


async def _tell(reply: ModelReply, stream: TokenStream, delay_s: float) -> None:
    """Tell ``reply`` to ``stream`` in pieces over ``delay_s`` seconds.

    Each piece is due at a fixed time from the start, as a provider's bytes arrive whatever the reader does: a busy
    event loop that wakes late takes the overdue pieces at once and the reply still ends ``delay_s`` after it began.
    (Sleeping a gap after each piece instead added the loop's lag once per word: a loaded process saw its model
    twice as slow as configured.)
    """
    pieces: list[tuple[str | None, str]] = [(None, word) for word in re.findall(r"\s*\S+", reply.text or "")]
    for call in reply.tool_calls:
        size = max(len(call.arguments) // 3, 1)
        pieces.extend((call.name, call.arguments[i:i + size]) for i in range(0, len(call.arguments), size))
    loop = asyncio.get_running_loop()
    start = loop.time()
    first = delay_s * FIRST_TOKEN_SHARE
    gap = delay_s * (1 - FIRST_TOKEN_SHARE) / max(len(pieces) - 1, 1)
    for i, (tool, piece) in enumerate(pieces):
        wait = start + first + i * gap - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        if tool is None:
            stream.text(piece)
        else:
            stream.tool(tool, piece)


def _pick_tool(tools: list[ToolSpec], user_text: str) -> ToolSpec:
    lowered = user_text.lower()
    return next((t for t in tools if t.name.lower() in lowered), tools[0])


def instance_from_schema(schema: dict[str, Any], rng: random.Random, *, _root: dict[str, Any] | None = None,
                         _depth: int = 0) -> Any:
    """A value matching ``schema`` (the JSON-schema subset pydantic emits), chosen with ``rng``.

    The router validates the result like any model's output, so an unsupported construct shows up as a
    ``malformed`` attempt rather than a silently wrong answer.
    """
    root = _root if _root is not None else schema
    if _depth > 12:
        return None
    if "$ref" in schema:
        ref: str = schema["$ref"]
        target: Any = root
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        return instance_from_schema(target, rng, _root=root, _depth=_depth + 1)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "default" in schema and rng.random() < 0.5:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return instance_from_schema(options[0], rng, _root=root, _depth=_depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(part)
        return instance_from_schema(merged, rng, _root=root, _depth=_depth + 1)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        return {name: instance_from_schema(sub, rng, _root=root, _depth=_depth + 1) for name, sub in props.items()}
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = max(low, min(int(schema.get("maxItems", 3)), low + 2))
        items = schema.get("items", {})
        return [instance_from_schema(items, rng, _root=root, _depth=_depth + 1) for _ in range(rng.randint(low, high))]
    if kind in ("integer", "number"):
        return _number(schema, rng, integer=kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    length = max(int(schema.get("minLength", 0)), 1)
    word = f"offline-{rng.getrandbits(32):08x}"
    text = (word * (length // len(word) + 1))[: max(length, len(word))]
    return text[: int(schema["maxLength"])] if "maxLength" in schema else text


def _number(schema: dict[str, Any], rng: random.Random, *, integer: bool) -> int | float:
    if "minimum" in schema:
        low = math.ceil(schema["minimum"])
    elif "exclusiveMinimum" in schema:
        low = math.floor(schema["exclusiveMinimum"]) + 1
    else:
        low = 0
    if "maximum" in schema:
        high = math.floor(schema["maximum"])
    elif "exclusiveMaximum" in schema:
        high = math.ceil(schema["exclusiveMaximum"]) - 1
    else:
        high = low + 100
    if high < low:
        # No integer fits (e.g. 0.1 <= x <= 0.9): only a number can, the middle of the bounds.
        lo = float(schema.get("minimum", schema.get("exclusiveMinimum", 0)))
        hi = float(schema.get("maximum", schema.get("exclusiveMaximum", lo)))
        return (lo + hi) / 2
    value = rng.randint(low, high)
    return value if integer else float(value)
