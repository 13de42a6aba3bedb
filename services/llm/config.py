"""The LLM layer's configuration: providers, models, prices and fallback chains (format: see ``tickflow.llm``).

Configuration objects hold the *name* of the environment variable that carries a provider's key, never the key
itself, so they can be printed, logged, serialised into events and diffed without leaking anything.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tickflow.events.errors import ErrorCode, TickflowError

__all__ = [
    "OFFLINE_LABEL",
    "OFFLINE_SCRIPTS",
    "LlmConfig",
    "LlmConfigError",
    "ModelConfig",
    "ModelPrice",
    "OfflineSettings",
    "ProviderConfig",
    "ProviderLimits",
    "RetryPolicy",
]

#: Shown on every result an offline model produces, so nobody mistakes a scripted reply for a model's answer.
OFFLINE_LABEL = "offline scripted model — not a real LLM"
#: The scripts the offline model plays (model ids ``offline/<script>``; see ``tickflow.llm.offline``).
OFFLINE_SCRIPTS = ("echo", "tool-then-answer")


class LlmConfigError(TickflowError):
    """The LLM configuration is invalid or incomplete; the message names the field to fix."""

    code = ErrorCode.MISCONFIGURED


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelPrice(_Strict):
    """USD per one million tokens, as providers publish them.

    ``illustrative = true`` marks a price nobody charges — a sample figure for a model that bills nothing (the
    demo's offline models), so cost views have something to show. Every attempt priced with it carries
    ``price_illustrative`` and the views label its cost as illustrative, never as money spent.
    """

    input_per_m: float = Field(ge=0)
    output_per_m: float = Field(ge=0)
    illustrative: bool = False

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.input_per_m + tokens_out * self.output_per_m) / 1_000_000


class ProviderLimits(_Strict):
    """Client-side limits per provider, so a burst of agents queues here instead of earning 429s upstream.

    Waiting for a limit is not an error: callers simply wait (the attempt record shows how long).
    """

    max_concurrency: int | None = Field(default=None, ge=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    #: Bucket size in seconds of the rate: 60 lets a full minute's allowance go at once (as providers allow);
    #: smaller values smooth traffic into a steady flow.
    burst_window_s: float = Field(default=60.0, gt=0)


class RetryPolicy(_Strict):
    """Retries of one model before the chain falls back to the next: exponential backoff with full jitter."""

    max_attempts: int = Field(default=3, ge=1)
    base_delay_s: float = Field(default=0.5, ge=0)
    max_delay_s: float = Field(default=20.0, ge=0)
    multiplier: float = Field(default=2.0, ge=1)
    #: A server's Retry-After is honoured up to this many seconds; longer waits are cut to it.
    max_retry_after_s: float = Field(default=30.0, ge=0)


class OfflineSettings(_Strict):
    """Behaviour of the in-process scripted model (provider kind ``offline``)."""

    latency_ms: tuple[float, float] = (0.0, 0.0)
    failure_rate: float = Field(default=0.0, ge=0, le=1)
    #: Seeds latency and failure draws; the *content* of a reply depends on the request alone.
    seed: int | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        low, high = self.latency_ms
        if low < 0 or high < low:
            raise ValueError(f"latency_ms must be [min, max] with 0 <= min <= max, got {list(self.latency_ms)}")
        return self


class ProviderConfig(_Strict):
    """One endpoint. ``kind="openai"`` covers every OpenAI-compatible server (OpenAI, Groq, vLLM, Ollama…)."""

    name: str = Field(min_length=1)
    kind: Literal["openai", "offline"] = "openai"
    base_url: str | None = None
    #: Name of the environment variable holding the key, read only when the client is built. None: no key needed
    #: (a local Ollama or vLLM).
    api_key_env: str | None = None
    timeout_s: float = Field(default=60.0, gt=0)
    limits: ProviderLimits = ProviderLimits()
    retry: RetryPolicy = RetryPolicy()
    #: How to ask for structured output: OpenAI's ``json_schema`` response format, or ``json_object`` plus the
    #: schema in a system message for servers that only know JSON mode.
    structured_output: Literal["json_schema", "json_object"] = "json_schema"
    #: Newer OpenAI models want ``max_completion_tokens``; most compatible servers want ``max_tokens``.
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    #: Stream replies (``stream=True`` with usage in the last chunk) when someone listens — a step in a worker,
    #: whose deltas go to the tokens topic. Off for servers that cannot stream; the reply is the same either way.
    stream: bool = True
    offline: OfflineSettings = OfflineSettings()

    @model_validator(mode="after")
    def _kind_fields(self) -> Self:
        if self.kind == "openai" and not self.base_url:
            raise ValueError(f"provider {self.name!r}: kind 'openai' needs base_url (e.g. https://api.openai.com/v1)")
        return self

    def api_key(self) -> str:
        """The key from the environment, now. Raises a message naming the variable (never its value)."""
        if self.api_key_env is None:
            # The SDK insists on a non-empty key; keyless local servers ignore it.
            return "no-key-configured"
        value = os.environ.get(self.api_key_env)
        if not value:
            raise LlmConfigError(
                f"provider {self.name!r} reads its API key from the environment variable {self.api_key_env}, "
                "which is not set (or empty): export it before starting tickflow"
            )
        return value


class ModelConfig(_Strict):
    """A model as chains name it (``id``), served by ``provider`` under ``model`` (defaults to ``id``)."""

    id: str = Field(min_length=1)
    provider: str
    model: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)

    @property
    def remote_name(self) -> str:
        return self.model or self.id


class LlmConfig(_Strict):
    """Providers, models, prices and named fallback chains; validated so a typo fails at load time."""

    providers: list[ProviderConfig] = Field(min_length=1)
    models: list[ModelConfig] = Field(min_length=1)
    prices: dict[str, ModelPrice] = {}
    chains: dict[str, list[str]] = {}

    @model_validator(mode="after")
    def _references(self) -> Self:
        names = [p.name for p in self.providers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"provider names must be unique; repeated: {sorted(dupes)}")
        ids = [m.id for m in self.models]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"model ids must be unique; repeated: {sorted(dupes)}")
        kinds = {p.name: p.kind for p in self.providers}
        for m in self.models:
            if m.provider not in kinds:
                raise ValueError(f"model {m.id!r} names provider {m.provider!r}; configured providers: {names}")
            if kinds[m.provider] == "offline" and not m.id.startswith("offline/"):
                raise ValueError(f"model {m.id!r} is served by the offline scripted provider: name it 'offline/…'")
        for chain, members in self.chains.items():
            if not members:
                raise ValueError(f"chain {chain!r} is empty: list at least one model id")
            for model_id in members:
                if model_id not in ids:
                    raise ValueError(f"chain {chain!r} names model {model_id!r}; configured models: {ids}")
        return self

    # -- lookups -------------------------------------------------------------------------------------------------

    def provider(self, name: str) -> ProviderConfig:
        for p in self.providers:
            if p.name == name:
                return p
        raise LlmConfigError(f"no provider named {name!r}; configured: {[p.name for p in self.providers]}")

    def model(self, model_id: str) -> ModelConfig:
        for m in self.models:
            if m.id == model_id:
                return m
        raise LlmConfigError(f"no model with id {model_id!r}; configured: {[m.id for m in self.models]}")

    def resolve_chain(self, chain: str | list[str] | tuple[str, ...]) -> list[ModelConfig]:
        """A chain name, or an explicit list of model ids, as the models to try in order."""
        if isinstance(chain, str):
            if chain not in self.chains:
                raise LlmConfigError(f"no chain named {chain!r}; configured chains: {sorted(self.chains)}")
            chain = self.chains[chain]
        if not chain:
            raise LlmConfigError("the chain is empty: give at least one model id")
        return [self.model(m) for m in chain]

    # -- loading -------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, source: str | Path | Mapping[str, Any]) -> LlmConfig:
        """From a mapping, or a ``.json`` / ``.toml`` file path; errors name the file and the offending field."""
        where = "the LLM configuration"
        if isinstance(source, Mapping):
            data: Any = dict(source)
        else:
            path = Path(source)
            where = str(path)
            try:
                raw = path.read_bytes()
            except OSError as exc:
                raise LlmConfigError(f"cannot read the LLM configuration {path}: {exc.strerror}") from None
            try:
                if path.suffix == ".toml":
                    data = tomllib.loads(raw.decode())
                elif path.suffix == ".json":
                    data = json.loads(raw)
                else:
                    raise LlmConfigError(f"{path}: use a .json or .toml file for the LLM configuration")
            except (ValueError, UnicodeDecodeError) as exc:
                raise LlmConfigError(f"{path} is not valid {path.suffix[1:].upper()}: {exc}") from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top level)'}: {err['msg']}" for err in exc.errors()
            )
            raise LlmConfigError(f"{where} is invalid: {problems}") from None

    @classmethod
    def offline_default(cls, *, latency_ms: tuple[float, float] = (0.0, 0.0), failure_rate: float = 0.0,
                        seed: int | None = None) -> LlmConfig:
        """A ready configuration of only scripted offline models, for demos and tests; chain ``default``."""
        settings = OfflineSettings(latency_ms=latency_ms, failure_rate=failure_rate, seed=seed)
        return cls(
            providers=[ProviderConfig(name="offline", kind="offline", offline=settings)],
            models=[ModelConfig(id=f"offline/{s}", provider="offline") for s in OFFLINE_SCRIPTS],
            chains={"default": ["offline/tool-then-answer"]},
        )
