"""Removing secrets from text before it reaches a record, an exception or a log line.

Providers echo keys back (OpenAI's 401 says "Incorrect API key provided: sk-…"), and SDK exceptions can carry
request details, so every error text this package keeps goes through :func:`scrub` first: the exact values of the
configured key variables are replaced, then everything ``tickflow.events.redact`` knows as a secret (URL
credentials, secret-named environment variables, bearer tokens, well-known key formats).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from tickflow.events.redact import REDACTED, redact

__all__ = ["MAX_ERROR_CHARS", "count_tokens", "scrub"]

#: Error messages kept in records and exceptions are cut to this length.
MAX_ERROR_CHARS = 500

_REDACTED = REDACTED
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def scrub(text: str, env_vars: Iterable[str | None] = (), *, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` with the values of ``env_vars`` and key-shaped strings redacted, cut to ``limit`` characters."""
    # Very short values would redact ordinary words; real keys are long (``redact`` skips those under 8).
    text = redact(text, [v for name in env_vars if name and (v := os.environ.get(name))])
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def count_tokens(text: str) -> int:
    """A tokenizer-free token count: words and single punctuation marks (``\\w+|[^\\w\\s]``).

    Used for the offline model's usage and for estimating a request before it is sent (rate limits). It is
    within a small factor of BPE tokenizers for prose; estimates are corrected with the provider's usage.
    """
    return len(_TOKEN_RE.findall(text))
