"""The offline hashed bag-of-words embedder."""

from __future__ import annotations

import math

import pytest

from tickflow.llm import Embedder, HashedBagOfWordsEmbedder


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_vectors_are_deterministic_normalised_and_lexical() -> None:
    embedder = HashedBagOfWordsEmbedder(dimension=128)
    assert isinstance(embedder, Embedder)
    assert "hashed-bag-of-words" in embedder.name and "not a semantic" in embedder.label
    cat, cat2, stocks, empty = await embedder.embed(
        ["The cat sat on the mat", "the CAT sat on a mat!", "quarterly stock prices fell", ""])
    assert len(cat) == 128
    assert math.isclose(math.sqrt(sum(v * v for v in cat)), 1.0)
    assert cat == (await HashedBagOfWordsEmbedder(dimension=128).embed(["The cat sat on the mat"]))[0]
    assert cosine(cat, cat2) > 0.7 > abs(cosine(cat, stocks))
    assert empty == [0.0] * 128


def test_dimension_is_validated() -> None:
    with pytest.raises(ValueError, match="at least 8"):
        HashedBagOfWordsEmbedder(dimension=4)
