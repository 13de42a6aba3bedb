"""Removing secrets from text before it reaches a record, an exception or a log line.

Providers echo keys back (OpenAI's 401 says "Incorrect API key provided: sk-…"), and SDK exceptions can carry
request details, so every error text this package keeps goes through :func:`scrub` first: the exact values of the
configured key variables are replaced, then anything shaped like a bearer token or a well-known key format.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

__all__ = ["MAX_ERROR_CHARS", "count_tokens", "scrub"]

#: Error messages kept in records and exceptions are cut to this length.
MAX_ERROR_CHARS = 500

# Each pattern keeps its first group (the label) and redacts the rest of the match.
_PATTERNS = [
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"()\b(?:sk|gsk|xai|pk|rk)[-_][A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?i)((?:api[_-]?key|authorization|token|secret)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
]
_REDACTED = "[redacted]"
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def scrub(text: str, env_vars: Iterable[str | None] = (), *, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` with the values of ``env_vars`` and key-shaped strings redacted, cut to ``limit`` characters."""
    for name in env_vars:
        value = os.environ.get(name) if name else None
        # Very short values would redact ordinary words; real keys are long.
        if value and len(value) >= 8:
            text = text.replace(value, _REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + _REDACTED, text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def count_tokens(text: str) -> int:
    """A tokenizer-free token count: words and single punctuation marks (``\\w+|[^\\w\\s]``).

    Used for the offline model's usage and for estimating a request before it is sent (rate limits). It is
    within a small factor of BPE tokenizers for prose; estimates are corrected with the provider's usage.
    """
    return len(_TOKEN_RE.findall(text))
