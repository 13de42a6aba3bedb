"""Embeddings for agent memory: a small protocol, an OpenAI-compatible implementation, and an offline default.

The offline default is a *hashed bag of words* (the hashing trick): it captures shared words, not meaning. It
is deterministic, needs no network and no model download, and its name says what it is so nobody reads its
similarities as semantic.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from tickflow.events.errors import ErrorCode, TickflowError
from tickflow.llm.router import LlmRouter, backoff_delay
from tickflow.llm.scrub import count_tokens
from tickflow.llm.types import RETRYABLE, ProviderFailure

__all__ = ["Embedder", "EmbeddingFailed", "HashedBagOfWordsEmbedder", "OpenAICompatibleEmbedder"]

_WORD = re.compile(r"\w+")


class EmbeddingFailed(TickflowError):
    """The embedding request failed after its retries; the message (scrubbed) says why and what to check."""

    code = ErrorCode.LLM_FAILED

    def __init__(self, message: str, *, outcome: str, http_status: int | None) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.http_status = http_status


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors of ``dimension`` floats (None: known only after the first call)."""

    name: str
    dimension: int | None

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...


class HashedBagOfWordsEmbedder:
    """Lower-cased words hashed (BLAKE2b) into ``dimension`` signed buckets, counted, then L2-normalised.

    Cosine similarity of two vectors approximates the overlap of their vocabularies; an empty text is the zero
    vector. Not a semantic model.
    """

    def __init__(self, dimension: int = 256) -> None:
        if dimension < 8:
            raise ValueError("use at least 8 dimensions for the hashed bag-of-words embedder")
        self.dimension: int | None = dimension
        self._dim = dimension
        self.name = f"offline/hashed-bag-of-words-{dimension}"
        self.label = "offline hashed bag-of-words — shared words only, not a semantic embedding"

    def __repr__(self) -> str:
        return f"HashedBagOfWordsEmbedder(dimension={self._dim})"

    def embed_one(self, text: str) -> list[float]:
        vector = [0.0] * self._dim
        for word in _WORD.findall(text.lower()):
            digest = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
            # The sign bit spreads collisions around zero instead of piling them up (Weinberger et al., 2009).
            vector[digest % self._dim] += 1.0 if (digest >> 63) & 1 else -1.0
        norm = math.sqrt(sum(v * v for v in vector))
        return [v / norm for v in vector] if norm else vector

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [self.embed_one(t) for t in texts]


class OpenAICompatibleEmbedder:
    """A configured embedding model (``LlmConfig.models`` entry) through its provider's SDK client, limits and
    retry policy; requests are split into batches of ``batch_size`` texts."""

    def __init__(self, router: LlmRouter, model_id: str, *, batch_size: int = 128,
                 rng: random.Random | None = None) -> None:
        self._router = router
        self._model = router.config.model(model_id)
        self._batch = batch_size
        self._rng = rng or random.Random()
        self.name = model_id
        self.dimension: int | None = None

    def __repr__(self) -> str:
        return f"OpenAICompatibleEmbedder(model={self.name!r})"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), self._batch):
            out.extend(await self._embed_batch(texts[start:start + self._batch]))
        if out:
            self.dimension = len(out[0])
        return out

    async def _embed_batch(self, texts: Sequence[str]) -> list[list[float]]:
        provider = self._router.provider(self._model.provider)
        policy = provider.config.retry
        timeout_s = self._model.timeout_s or provider.config.timeout_s
        estimate = sum(count_tokens(t) for t in texts)
        for attempt in range(1, policy.max_attempts + 1):
            async with self._router.limiter(self._model.provider).slot(estimate) as slot:
                try:
                    vectors = await provider.embed(self._model.remote_name, texts, timeout_s=timeout_s)
                except ProviderFailure as exc:
                    slot.settle(0)
                    failure = exc
                else:
                    slot.settle(estimate)
                    return vectors
            if failure.outcome not in RETRYABLE or attempt == policy.max_attempts:
                status = f" HTTP {failure.http_status}" if failure.http_status else ""
                raise EmbeddingFailed(
                    f"embedding with {self.name} failed after {attempt} attempt(s): {failure.outcome}{status}: "
                    f"{failure.message}", outcome=failure.outcome, http_status=failure.http_status)
            await asyncio.sleep(backoff_delay(policy, attempt, self._rng, failure.retry_after_s))
        raise AssertionError("unreachable: the loop returns or raises")
