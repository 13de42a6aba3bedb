"""Who may call the API: the bearer token, or a dashboard session signed in with it.

A browser cannot put a bearer token on an ``EventSource`` request, so the dashboard signs in once with the token
and then holds a session cookie. The cookie is ``<expires>.<nonce>.<mac>``: an HMAC, keyed by the token, of its
expiry and a random nonce — never the token itself. So a session

* expires on its own (``ttl_s``; the cookie's max-age says the same to the browser),
* ends for everyone when the token is rotated (the key changes),
* ends at once when signed out: the nonce is revoked here, in the process that answers, until it would have
  expired anyway. (Several API processes behind one address each keep their own list; rotate the token to end
  every session everywhere.)

State-changing requests that rely on the cookie must also carry ``X-CSRF-Token`` equal to the ``tickflow_csrf``
cookie (double submit): a page of another origin can neither read that cookie nor set that header.

Every comparison is of bytes (``compare_digest`` refuses non-ASCII ``str`` with a TypeError, which would be a 500
instead of a 401) and runs in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "CSRF_COOKIE",
    "CSRF_HEADER",
    "SAFE_METHODS",
    "SESSION_COOKIE",
    "Credentials",
    "Refusal",
    "Sessions",
]

SESSION_COOKIE = "tickflow_session"
CSRF_COOKIE = "tickflow_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_REVOKED_LIMIT = 100_000


def _same(a: str, b: str) -> bool:
    """Constant-time equality of two header or cookie values, whatever characters they hold."""
    return secrets.compare_digest(a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape"))


class Sessions:
    """Mints, checks and revokes dashboard sessions for one API token (see the module docstring)."""

    def __init__(self, token: str, ttl_s: float, clock: Callable[[], float] = time.time) -> None:
        self._key = hashlib.sha256(b"tickflow-dashboard-session-v2\0" + token.encode()).digest()
        self.ttl_s = ttl_s
        self._clock = clock
        self._revoked: dict[str, float] = {}  # nonce -> when it would have expired

    def _now(self) -> float:
        return self._clock()

    def _mac(self, expires: str, nonce: str) -> str:
        return hmac.new(self._key, f"{expires}.{nonce}".encode(), hashlib.sha256).hexdigest()

    def mint(self) -> str:
        """A new session cookie value, valid for ``ttl_s`` from now."""
        expires, nonce = str(int(self._now() + self.ttl_s)), secrets.token_hex(16)
        return f"{expires}.{nonce}.{self._mac(expires, nonce)}"

    def valid(self, value: str) -> bool:
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdecimal() or len(parts[0]) > 12:
            return False
        expires, nonce, mac = parts
        if not _same(mac, self._mac(expires, nonce)):
            return False
        return int(expires) > self._now() and nonce not in self._revoked

    def revoke(self, value: str) -> None:
        """Sign this session out (a no-op for a value that is not a valid session)."""
        if not self.valid(value):
            return
        expires, nonce, _ = value.split(".")
        now = self._now()
        if len(self._revoked) >= _REVOKED_LIMIT:  # forget the ones that expired meanwhile
            self._revoked = {n: e for n, e in self._revoked.items() if e > now}
        self._revoked[nonce] = float(expires)


@dataclass(frozen=True)
class Refusal:
    """Why a request is not allowed in: the HTTP status and what to do about it."""

    status: int
    detail: str


UNAUTHORIZED = Refusal(401, "missing or wrong bearer token: send 'Authorization: Bearer <TICKFLOW_API_TOKEN>'")
NO_CSRF = Refusal(403, "missing or wrong X-CSRF-Token header: reload the dashboard page and try again")


class Credentials:
    """The one credential check, made from headers and cookies alone (no body is read before it)."""

    def __init__(self, token: str | None, session_ttl_s: float) -> None:
        self.token = token
        self.sessions = Sessions(token, session_ttl_s) if token is not None else None

    def check(self, method: str, headers: Mapping[str, str], cookies: Mapping[str, str]) -> Refusal | None:
        """None when the request may go on; otherwise why not. Without a token every request may."""
        if self.token is None or self.sessions is None:
            return None
        given = headers.get("authorization", "")
        if given.startswith("Bearer ") and _same(given[7:], self.token):
            return None
        if not self.sessions.valid(cookies.get(SESSION_COOKIE, "")):
            return UNAUTHORIZED
        if method not in SAFE_METHODS:
            expected, sent = cookies.get(CSRF_COOKIE, ""), headers.get(CSRF_HEADER, "")
            if not expected or not _same(expected, sent):
                return NO_CSRF
        return None
