"""Redacting secrets from text that is about to be kept: a dead letter's excerpt, a step's error and logs.

What counts as a secret: the value of any environment variable of this process whose name says it holds one
(``…KEY…``, ``…TOKEN…``, ``…SECRET…``, ``…PASSWORD…``, ``…CREDENTIAL…``; values of 8 characters or more), the
credentials in a URL (``https://user:password@host``), and strings shaped like keys or bearer tokens. The text
keeps its shape; each secret becomes ``[redacted]``.
"""

from __future__ import annotations

import os
import re

__all__ = ["REDACTED", "redact", "secret_values"]

REDACTED = "[redacted]"
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
# Each pattern keeps its first group (the label) and redacts the rest of the match.
_PATTERNS = [
    # scheme://user:password@host. The scheme starts where no scheme character precedes it and is at most 32 long:
    # unanchored, a long run of letters (a 100 kB dead-letter reason) cost quadratic backtracking, 16 s of a loop.
    re.compile(r"(?<![a-z0-9+.\-])([a-z][a-z0-9+.\-]{0,31}://)[^\s/@:]+:[^\s/@]+(?=@)", re.IGNORECASE),
    re.compile(r"(?i)(bearer\s+)[^\s\"',]+"),
    re.compile(r"()\b(?:sk|gsk|xai|pk|rk)[-_][A-Za-z0-9_\-]{6,}"),
    re.compile(r"(?i)((?:api[_-]?key|authorization|token|secret|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
]


def secret_values() -> list[str]:
    """Values of this process's environment variables whose names say they hold a secret, longest first."""
    found = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(found, key=len, reverse=True)


def redact(text: str, extra: list[str] | None = None) -> str:
    """``text`` with every secret (see the module docstring, plus the values in ``extra``) replaced."""
    if not text:
        return text
    for value in [*(extra or []), *secret_values()]:
        if value and len(value) >= 8:
            text = text.replace(value, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text
