"""Providers: one request to one model, classified into an outcome the router can act on.

``OpenAICompatibleProvider`` talks to any OpenAI-compatible endpoint through the official SDK with the SDK's own
retries switched off (``max_retries=0``): the router retries, so every request on the wire is one attempt record.
``OfflineProvider`` serves the scripted :class:`~tickflow.llm.offline.OfflineModel` in process.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Sequence
from typing import Any, Protocol

import httpx
import openai
import pydantic
from openai import AsyncOpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageFunctionToolCall

from tickflow.llm.config import LlmConfigError, ModelConfig, ProviderConfig
from tickflow.llm.offline import OfflineModel
from tickflow.llm.scrub import count_tokens, scrub
from tickflow.llm.streaming import TokenStream
from tickflow.llm.types import ChatRequest, ModelReply, ProviderFailure, ToolCall, Usage

__all__ = ["OfflineProvider", "OpenAICompatibleProvider", "Provider", "build_provider"]


class Provider(Protocol):
    """One configured endpoint. ``complete`` raises :class:`ProviderFailure` for every failure it understands."""

    config: ProviderConfig

    @property
    def offline(self) -> bool: ...

    async def complete(self, model: ModelConfig, request: ChatRequest, *, timeout_s: float,
                       max_tokens: int | None, stream: TokenStream | None = None) -> ModelReply:
        """The reply; with ``stream``, streamed, each delta told to ``stream`` as it arrives."""
        ...

    async def embed(self, model: str, texts: Sequence[str], *, timeout_s: float) -> list[list[float]]: ...

    async def aclose(self) -> None: ...


def build_provider(config: ProviderConfig) -> Provider:
    if config.kind == "offline":
        return OfflineProvider(config)
    return OpenAICompatibleProvider(config)


class OfflineProvider:
    """The scripted model behind the provider interface; it has no embedding models."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.model = OfflineModel(config.offline)

    def __repr__(self) -> str:
        return f"OfflineProvider(name={self.config.name!r})"

    @property
    def offline(self) -> bool:
        return True

    async def complete(self, model: ModelConfig, request: ChatRequest, *, timeout_s: float,
                       max_tokens: int | None, stream: TokenStream | None = None) -> ModelReply:
        try:
            async with asyncio.timeout(timeout_s):
                return await self.model.complete(model.remote_name, request, stream=stream)
        except TimeoutError:
            raise ProviderFailure("timeout", f"no reply within {timeout_s:g} s", error_type="TimeoutError") from None

    async def embed(self, model: str, texts: Sequence[str], *, timeout_s: float) -> list[list[float]]:
        raise ProviderFailure(
            "client_error",
            f"the offline provider {self.config.name!r} serves no embedding model; use HashedBagOfWordsEmbedder "
            "for offline embeddings",
            error_type="NoEmbeddingModel",
        )

    async def aclose(self) -> None:
        return None


class OpenAICompatibleProvider:
    """An OpenAI-compatible HTTP endpoint. The key is read from the environment when the client is first built
    and lives only inside the SDK client; nothing here prints or records it."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._client: AsyncOpenAI | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatibleProvider(name={self.config.name!r}, base_url={self.config.base_url!r})"

    @property
    def offline(self) -> bool:
        return False

    def client(self) -> AsyncOpenAI:
        if self._client is None:
            try:
                key = self.config.api_key()
            except LlmConfigError as exc:
                raise ProviderFailure("client_error", str(exc), error_type="MissingApiKey") from None
            self._client = AsyncOpenAI(api_key=key, base_url=self.config.base_url, max_retries=0,
                                       timeout=self.config.timeout_s)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def _params(self, model: ModelConfig, request: ChatRequest, max_tokens: int | None) -> dict[str, Any]:
        messages = [m.to_openai() for m in request.messages]
        params: dict[str, Any] = {"model": model.remote_name}
        schema = request.json_schema()
        if schema is not None:
            if self.config.structured_output == "json_schema":
                params["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": request.schema_name, "schema": schema},
                }
            else:
                # JSON mode only promises *some* JSON; the schema goes in the prompt (and the word JSON must too).
                params["response_format"] = {"type": "json_object"}
                messages.insert(0, {"role": "system", "content": "Answer with one JSON document matching this "
                                    f"JSON schema: {json.dumps(schema, sort_keys=True)}"})
        params["messages"] = messages
        if request.tools:
            params["tools"] = [t.to_openai() for t in request.tools]
        if max_tokens is not None:
            params[self.config.max_tokens_param] = max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    async def complete(self, model: ModelConfig, request: ChatRequest, *, timeout_s: float,
                       max_tokens: int | None, stream: TokenStream | None = None) -> ModelReply:
        params = self._params(model, request, max_tokens)
        client = self.client()
        try:
            # The SDK's timeout bounds each socket operation; this one bounds the whole exchange.
            async with asyncio.timeout(timeout_s):
                if stream is None:
                    response: Any = await client.chat.completions.create(**params, timeout=timeout_s)
                else:
                    response = await self._streamed(client, params, timeout_s, stream)
        except ProviderFailure:
            raise
        except Exception as exc:
            raise self._classify(exc, timeout_s) from None
        if stream is None and not isinstance(response, ChatCompletion):
            raise ProviderFailure("malformed", "the server did not answer with a chat completion JSON object",
                                  error_type="MalformedResponse")
        return _reply(response, request)

    @staticmethod
    async def _streamed(client: AsyncOpenAI, params: dict[str, Any], timeout_s: float, stream: TokenStream) -> Any:
        """Stream the reply, telling ``stream`` each delta, and return the completion the chunks add up to (the
        SDK's own accumulator builds it, tool-call fragments included)."""
        state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
        chunks = await client.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}, timeout=timeout_s
        )
        tools: dict[int, str] = {}  # a tool call's name comes in its first delta only
        seen = False
        async with chunks:
            async for chunk in chunks:
                if not isinstance(chunk, ChatCompletionChunk):
                    raise ProviderFailure("malformed", "the stream sent something other than a chat completion "
                                          "chunk", error_type="MalformedResponse")
                state.handle_chunk(chunk)
                seen = True
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    if choice.delta.content:
                        stream.text(choice.delta.content)
                    for call in choice.delta.tool_calls or []:
                        function = call.function
                        new = call.index not in tools
                        if function is not None and function.name:
                            tools[call.index] = function.name
                        arguments = function.arguments if function is not None and function.arguments else ""
                        if arguments or (new and call.index in tools):
                            stream.tool(tools.get(call.index, ""), arguments)
        if not seen:
            raise ProviderFailure("malformed", "the stream ended without a single chunk", error_type="EmptyStream")
        return state.current_completion_snapshot

    async def embed(self, model: str, texts: Sequence[str], *, timeout_s: float) -> list[list[float]]:
        client = self.client()
        try:
            async with asyncio.timeout(timeout_s):
                response: Any = await client.embeddings.create(model=model, input=list(texts), timeout=timeout_s)
        except Exception as exc:
            raise self._classify(exc, timeout_s) from None
        data = getattr(response, "data", None)
        if not isinstance(data, list) or len(data) != len(texts):
            raise ProviderFailure("malformed", f"expected {len(texts)} embeddings in the response",
                                  error_type="MalformedResponse")
        return [list(item.embedding) for item in sorted(data, key=lambda d: d.index)]

    def _classify(self, exc: Exception, timeout_s: float) -> Exception:
        """The outcome of a failed request; an exception this does not understand is a bug and passes through."""
        secret_vars = [self.config.api_key_env]
        name = type(exc).__name__
        if isinstance(exc, openai.APITimeoutError | TimeoutError):
            return ProviderFailure("timeout", f"no reply within {timeout_s:g} s", error_type=name)
        if isinstance(exc, httpx.TimeoutException):  # raised while a stream is read, outside the SDK's wrapping
            return ProviderFailure("timeout", f"no reply within {timeout_s:g} s", error_type=name)
        if isinstance(exc, httpx.TransportError):
            detail = scrub(str(exc), secret_vars)
            return ProviderFailure("connection_error", f"the stream from {self.config.base_url} broke off ({detail})",
                                   error_type=name)
        if isinstance(exc, openai.APIConnectionError):
            cause = f" ({scrub(str(exc.__cause__), secret_vars)})" if exc.__cause__ else ""
            return ProviderFailure("connection_error", f"cannot reach {self.config.base_url}{cause}", error_type=name)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            message = scrub(str(exc), secret_vars)
            if status == 429:
                return ProviderFailure("rate_limited", message, error_type=name, http_status=status,
                                       retry_after_s=_retry_after(exc.response.headers))
            if status == 408:
                return ProviderFailure("timeout", message, error_type=name, http_status=status)
            if status >= 500:
                return ProviderFailure("server_error", message, error_type=name, http_status=status,
                                       retry_after_s=_retry_after(exc.response.headers))
            return ProviderFailure("client_error", message, error_type=name, http_status=status)
        if isinstance(exc, openai.APIResponseValidationError | ValueError | pydantic.ValidationError):
            # ValueError covers a body that is not JSON at all (json.JSONDecodeError).
            return ProviderFailure("malformed", f"the response could not be parsed: {scrub(str(exc), secret_vars)}",
                                   error_type=name)
        if isinstance(exc, openai.APIError):  # an error event in the middle of a stream: the server failed
            return ProviderFailure("server_error", f"the stream reported an error: {scrub(str(exc), secret_vars)}",
                                   error_type=name)
        if isinstance(exc, openai.OpenAIError):
            return ProviderFailure("client_error", scrub(str(exc), secret_vars), error_type=name)
        return exc


def _reply(response: Any, request: ChatRequest) -> ModelReply:
    """The reply in a completion, whole (``ChatCompletion``) or added up from a stream (its snapshot)."""
    if not response.choices:
        raise ProviderFailure("malformed", "the response has no choices", error_type="MalformedResponse")
    choice = response.choices[0]
    message = choice.message
    if message is None:
        raise ProviderFailure("malformed", "the first choice has no message", error_type="MalformedResponse")
    calls = [
        ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments or "{}")
        for c in message.tool_calls or []
        # Custom (free-text) tools are not offered by ChatRequest, so only function calls can come back.
        if isinstance(c, ChatCompletionMessageFunctionToolCall)
    ]
    if response.usage is not None:
        usage = Usage(tokens_in=response.usage.prompt_tokens, tokens_out=response.usage.completion_tokens)
        reported = True
    else:
        usage = Usage(
            tokens_in=sum(count_tokens(m.content or "") for m in request.messages),
            tokens_out=count_tokens(message.content or "") + sum(count_tokens(c.arguments) for c in calls),
        )
        reported = False
    return ModelReply(text=message.content, tool_calls=calls, finish_reason=choice.finish_reason, usage=usage,
                      usage_reported=reported)


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (a number or an HTTP date), if the server sent one."""
    for header, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) / divisor)
        except ValueError:
            pass
        if header == "retry-after":
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                return None
    return None
