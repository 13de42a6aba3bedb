"""The router: one chat call through a chain of models, with limits, retries, backoff and fallback.

Policy, per model of the chain in order:

* wait for the provider's limits (concurrency, requests/min, tokens/min — waiting is not a failure);
* send the request; ``rate_limited`` / ``server_error`` / ``timeout`` / ``connection_error`` are retried up to
  ``RetryPolicy.max_attempts`` with exponential backoff and full jitter, never sooner than the server's
  Retry-After (capped at ``max_retry_after_s``);
* ``client_error`` (400/401/403/404…, a missing key) and ``malformed`` (unparseable body, no choices, output
  not matching the requested schema) move to the next model at once — retrying the same request would not help;
* when retries are exhausted, the next model of the chain is tried (``fallback=True`` on its attempts).

Each request that went out — and each one refused before it could (missing key) — is one :class:`LlmAttempt`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import jsonschema
import pydantic

import tickflow.llm.streaming as streaming
import tickflow.tracing as tracing
from tickflow.llm.config import OFFLINE_LABEL, LlmConfig, ModelConfig, RetryPolicy
from tickflow.llm.limits import ProviderLimiter
from tickflow.llm.providers import Provider, build_provider
from tickflow.llm.scrub import count_tokens, scrub
from tickflow.llm.types import (
    RETRYABLE,
    AllModelsFailed,
    ChatRequest,
    ChatResult,
    LlmAttempt,
    ModelReply,
    ProviderFailure,
)

__all__ = ["DEFAULT_OUTPUT_ESTIMATE", "LlmRouter", "backoff_delay"]

log = logging.getLogger("tickflow.llm")

#: Output tokens assumed for the tokens/min bucket when neither the request nor the model sets max_tokens.
DEFAULT_OUTPUT_ESTIMATE = 256


def backoff_delay(policy: RetryPolicy, attempt: int, rng: random.Random, retry_after_s: float | None) -> float:
    """Seconds to wait after failed ``attempt`` (1-based): full jitter over an exponential ceiling, but never
    less than the server's Retry-After, itself capped so a hostile header cannot park a worker for an hour."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * policy.multiplier ** (attempt - 1))
    delay = rng.uniform(0, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, policy.max_retry_after_s))
    return delay


class LlmRouter:
    """Holds one client and one limiter per provider; share one router per process so limits are shared."""

    def __init__(self, config: LlmConfig, *, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.config = config
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._providers: dict[str, Provider] = {}
        self._limiters: dict[str, ProviderLimiter] = {}

    def __repr__(self) -> str:
        return f"LlmRouter(providers={[p.name for p in self.config.providers]}, chains={sorted(self.config.chains)})"

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = build_provider(self.config.provider(name))
        return self._providers[name]

    def limiter(self, name: str) -> ProviderLimiter:
        if name not in self._limiters:
            self._limiters[name] = ProviderLimiter(self.config.provider(name).limits)
        return self._limiters[name]

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
        self._providers.clear()

    async def __aenter__(self) -> LlmRouter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def chat(self, request: ChatRequest, chain: str | Sequence[str] = "default") -> ChatResult:
        """Ask the first model of ``chain`` (a chain name or model ids) that answers; see the module docstring.

        Raises:
            AllModelsFailed: every model failed; it carries every attempt and says why each model failed.
            LlmConfigError: the chain or a model in it is not configured.
        """
        models = self.config.resolve_chain(chain if isinstance(chain, str) else list(chain))
        attempts: list[LlmAttempt] = []
        for index, model in enumerate(models):
            policy = self.config.provider(model.provider).retry
            for attempt in range(1, policy.max_attempts + 1):
                record, result = await self._attempt(request, model, attempt, len(attempts) + 1, index > 0)
                attempts.append(record)
                if result is not None:
                    return result.model_copy(update={"attempts": attempts})
                log.info("llm attempt failed: %s attempt %d: %s %s", model.id, attempt, record.outcome,
                         record.error_message)
                if record.outcome not in RETRYABLE or attempt == policy.max_attempts:
                    break
                await self._sleep(backoff_delay(policy, attempt, self._rng, record.retry_after_s))
        raise AllModelsFailed(attempts)

    async def _attempt(self, request: ChatRequest, model: ModelConfig, attempt: int, seq: int,
                       fallback: bool) -> tuple[LlmAttempt, ChatResult | None]:
        provider = self.provider(model.provider)
        pconf = provider.config
        max_tokens = request.max_tokens or model.max_tokens
        estimate = _estimate_input(request) + (max_tokens or DEFAULT_OUTPUT_ESTIMATE)
        timeout_s = model.timeout_s or pconf.timeout_s
        started_at_ms = int(time.time() * 1000)
        reply: ModelReply | None = None
        failure: ProviderFailure | None = None
        parsed: Any = None
        async with self.limiter(model.provider).slot(estimate) as slot:
            waited_s = slot.waited_s
            call_start = time.perf_counter()
            attrs = {"gen_ai__operation__name": "chat", "gen_ai__system": pconf.name}
            attrs["gen_ai__request__model"] = model.id
            listener = streaming.current_listener() if pconf.stream else None
            stream = listener.open(provider=pconf.name, model=model.id) if listener is not None else None
            with tracing.span(f"chat {model.id}", None, **attrs) as span:  # a child of the step's span
                try:
                    reply = await provider.complete(model, request, timeout_s=timeout_s, max_tokens=max_tokens,
                                                    stream=stream)
                except ProviderFailure as exc:
                    failure = exc
                except BaseException:
                    if stream is not None:  # cancelled (or a bug): the watcher still learns the stream ended
                        stream.close("client_error", "cancelled")
                    raise
                if span is not None:
                    _annotate(span, reply, failure, attempt)
            slot.settle(reply.usage.tokens_in + reply.usage.tokens_out if reply else 0)
        latency_ms = (time.perf_counter() - call_start) * 1000
        if reply is not None:
            try:
                parsed = _structured(request, reply)
            except ProviderFailure as exc:
                failure = exc
        if stream is not None:
            stream.close(failure.outcome if failure else "ok", reply.finish_reason if reply else None)
        tokens_in = reply.usage.tokens_in if reply else 0
        tokens_out = reply.usage.tokens_out if reply else 0
        price = self.config.prices.get(model.id)
        # An unpriced offline model is free (its 0 is true); an unpriced real model's 0 means "unknown".
        price_known = price is not None or provider.offline
        cost = price.cost(tokens_in, tokens_out) if price is not None else 0.0
        record = LlmAttempt(
            provider=pconf.name, model=model.id, attempt=attempt, seq=seq, started_at_ms=started_at_ms,
            latency_ms=round(latency_ms, 3), waited_ms=round(waited_s * 1000, 3),
            outcome=failure.outcome if failure else "ok", tokens_in=tokens_in, tokens_out=tokens_out,
            usage_estimated=reply is not None and not reply.usage_reported,
            cost_usd=cost, price_known=price_known, price_illustrative=price is not None and price.illustrative,
            http_status=failure.http_status if failure else None,
            error_type=failure.error_type if failure else None,
            # Scrubbed again here: a provider's message is the one place a key could slip in.
            error_message=scrub(failure.message, [pconf.api_key_env]) if failure else None,
            retry_after_s=failure.retry_after_s if failure else None,
            fallback=fallback, offline=provider.offline,
        )
        if failure is not None or reply is None:
            return record, None
        result = ChatResult(
            provider=pconf.name, model=model.id, text=reply.text, tool_calls=reply.tool_calls, parsed=parsed,
            finish_reason=reply.finish_reason, usage=reply.usage, cost_usd=cost, fallback=fallback,
            label=OFFLINE_LABEL if provider.offline else None, attempts=[],
        )
        return record, result


def _estimate_input(request: ChatRequest) -> int:
    """Input tokens before the call, for the tokens/min bucket (corrected with the real usage afterwards)."""
    total = sum(count_tokens(m.content or "") + sum(count_tokens(c.arguments) for c in m.tool_calls or [])
                for m in request.messages)
    if request.tools:
        total += count_tokens(json.dumps([t.to_openai() for t in request.tools]))
    schema = request.json_schema()
    if schema is not None:
        total += count_tokens(json.dumps(schema))
    return total


def _structured(request: ChatRequest, reply: ModelReply) -> Any:
    """The validated structured output, or None when none was asked for or the model called tools instead."""
    if reply.tool_calls:
        return None
    if reply.text is None:
        raise ProviderFailure("malformed", "the reply has neither content nor tool calls", error_type="EmptyReply")
    schema = request.json_schema()
    if schema is None:
        return None
    text = reply.text or ""
    if request.response_model is not None:
        try:
            return request.response_model.model_validate_json(text)
        except pydantic.ValidationError as exc:
            raise ProviderFailure("malformed", f"the reply does not match {request.response_model.__name__}: "
                                  f"{_short(exc)}", error_type="SchemaMismatch") from None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ProviderFailure("malformed", f"the reply is not JSON: {exc}", error_type="SchemaMismatch") from None
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        raise ProviderFailure("malformed", f"the reply does not match the schema: {exc.message}",
                              error_type="SchemaMismatch") from None
    return value


def _short(exc: pydantic.ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()[:5])


def _annotate(span: Any, reply: ModelReply | None, failure: ProviderFailure | None, attempt: int) -> None:
    """GenAI semantic conventions on an LLM call's span: tokens, finish reason, or the error."""
    span.set_attribute("tickflow.attempt", attempt)
    if reply is not None:
        span.set_attribute("gen_ai.usage.input_tokens", reply.usage.tokens_in)
        span.set_attribute("gen_ai.usage.output_tokens", reply.usage.tokens_out)
        if reply.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [reply.finish_reason])
    if failure is not None:
        span.set_attribute("error.type", failure.error_type or failure.outcome)
