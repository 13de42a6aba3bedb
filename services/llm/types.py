"""Requests, results and per-attempt records of LLM calls.

Everything here is a plain pydantic model that can be serialised into a log event as is: an attempt record is
what a later agent worker turns into an ``llm_calls`` row, so it carries no secret and its error text is scrubbed
and bounded before it is built.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tickflow.events.errors import ErrorCode, TickflowError

__all__ = [
    "AllModelsFailed",
    "ChatMessage",
    "ChatRequest",
    "ChatResult",
    "LlmAttempt",
    "ModelReply",
    "Outcome",
    "ProviderFailure",
    "ToolCall",
    "ToolSpec",
    "Usage",
]

Outcome = Literal["ok", "rate_limited", "server_error", "timeout", "connection_error", "malformed", "client_error"]

#: Outcomes worth another attempt of the same model; the others move to the next model at once.
RETRYABLE: frozenset[str] = frozenset({"rate_limited", "server_error", "timeout", "connection_error"})


class ToolCall(BaseModel):
    """A function call the model asked for; ``arguments`` is the raw JSON text the model wrote."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments decoded; models do write invalid JSON, so callers should be ready for ``ValueError``."""
        return json.loads(self.arguments or "{}")


class ChatMessage(BaseModel):
    """One message in OpenAI's chat format (system, user, assistant with tool calls, tool result)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ToolSpec(BaseModel):
    """A tool the model may call: a name, what it is for, and a JSON schema of its arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})

    def to_openai(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


class ChatRequest(BaseModel):
    """What to ask. ``response_model`` (a pydantic class) or ``response_schema`` (a JSON schema) asks for
    structured output, validated on return; ``metadata`` stays with the caller's records and is not sent."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[ToolSpec] = []
    response_model: type[BaseModel] | None = None
    response_schema: dict[str, Any] | None = None
    schema_name: str = Field(default="response", pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    metadata: dict[str, str] = {}

    def json_schema(self) -> dict[str, Any] | None:
        """The schema the reply must match, if structured output was asked for."""
        if self.response_model is not None:
            return self.response_model.model_json_schema()
        return self.response_schema

    def fingerprint_payload(self) -> dict[str, Any]:
        """The parts of the request that determine an answer (used by the offline model's hash)."""
        return {
            "messages": [m.to_openai() for m in self.messages],
            "tools": [t.to_openai() for t in self.tools],
            "schema": self.json_schema(),
        }


class Usage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens_in: int = 0
    tokens_out: int = 0


class LlmAttempt(BaseModel):
    """One request to one model: the unit of the ``llm_calls`` projection. No key, bounded scrubbed error text."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str
    model: str
    #: 1-based attempt of this model; ``seq`` counts attempts across the whole chain.
    attempt: int
    seq: int
    started_at_ms: int
    latency_ms: float
    #: Time spent waiting for this provider's concurrency / rate limits before the request went out.
    waited_ms: float = 0.0
    outcome: Outcome
    tokens_in: int = 0
    tokens_out: int = 0
    #: True when the provider reported no usage and the counts are this package's estimate (``count_tokens``).
    usage_estimated: bool = False
    cost_usd: float = 0.0
    #: False when a model that bills (not offline) has no entry in the price table: ``cost_usd`` is then 0 and
    #: means unknown, not free. An offline model without a price is free, so known.
    price_known: bool = True
    #: True when the price is marked ``illustrative`` in the configuration: a sample figure, not money spent.
    price_illustrative: bool = False
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    #: The server's Retry-After, when it sent one (seconds, uncapped).
    retry_after_s: float | None = None
    #: True when this model is not the first of the chain.
    fallback: bool = False
    offline: bool = False


class ChatResult(BaseModel):
    """The answer that served the call plus every attempt that led to it (failed ones included)."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    provider: str
    model: str
    text: str | None
    tool_calls: list[ToolCall] = []
    #: A ``response_model`` instance, or the decoded JSON for a ``response_schema``; None without structured output.
    parsed: Any = None
    finish_reason: str | None = None
    usage: Usage
    cost_usd: float
    fallback: bool
    #: Set on offline replies (``OFFLINE_LABEL``), so a scripted answer is never taken for a real model's.
    label: str | None = None
    attempts: list[LlmAttempt]


class AllModelsFailed(TickflowError):
    """Every model of the chain failed; ``attempts`` holds each try and the message says why each model failed.

    ``retryable`` tells the caller whether the last failure of some model was transient (rate limit, 5xx,
    timeout, connection), i.e. whether trying the whole call again later may help.
    """

    code = ErrorCode.LLM_FAILED

    def __init__(self, attempts: list[LlmAttempt]) -> None:
        self.attempts = attempts
        per_model: dict[str, list[LlmAttempt]] = {}
        for a in attempts:
            per_model.setdefault(a.model, []).append(a)
        parts = []
        for model, tries in per_model.items():
            last = tries[-1]
            status = f" HTTP {last.http_status}" if last.http_status else ""
            detail = f": {last.error_message}" if last.error_message else ""
            parts.append(f"{model} ({len(tries)} attempt{'s' if len(tries) > 1 else ''}, last {last.outcome}{status}"
                         f"{detail})")
        self.retryable = any(tries[-1].outcome in RETRYABLE for tries in per_model.values())
        hint = ("transient failures: retry later or add a fallback model" if self.retryable
                else "fix the request or the configuration (key, model name, base URL)")
        super().__init__(f"all {len(per_model)} model(s) of the chain failed — {'; '.join(parts)}; {hint}")


class ModelReply(BaseModel):
    """What one provider returned for one attempt, before the router adds cost and bookkeeping."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str | None
    tool_calls: list[ToolCall] = []
    finish_reason: str | None = None
    usage: Usage
    #: False when the provider sent no usage and the counts are this package's estimate.
    usage_reported: bool = True


class ProviderFailure(TickflowError):
    """One attempt failed; ``outcome`` carries the retry decision. The message is already scrubbed."""

    code = ErrorCode.LLM_FAILED

    def __init__(self, outcome: Outcome, message: str, *, error_type: str, http_status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.outcome: Outcome = outcome
        self.message = message
        self.error_type = error_type
        self.http_status = http_status
        self.retry_after_s = retry_after_s
