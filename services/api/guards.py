"""What stands in front of every route: the body limit, the trusted hosts, the bind check.

``BodyLimit`` is plain ASGI, outermost: a body over the limit is refused with 413 whether its size is declared
(Content-Length) or streamed (chunked transfer), before authentication, validation or any route reads a byte of
it. It reads the body itself, at most ``limit`` bytes, and replays it to the app: the API's bodies are small
(bigger run inputs go through the claim-check), so holding one in memory costs what the route would anyway.

Trusted hosts defend a token-less API on loopback from DNS rebinding: a page of ``evil.example`` that re-resolves
its name to 127.0.0.1 reaches the port, but with ``Host: evil.example``, which is refused (400). An API bound
beyond loopback must have a token (``check_bind`` refuses to start otherwise); then a rebinding page has no
credential, and the hosts default to any.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tickflow.events.errors import ErrorCode

__all__ = ["LOOPBACK_HOSTS", "BodyLimit", "allowed_hosts", "check_bind", "is_loopback"]

#: The names a browser on this machine may use for a loopback-bound API.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_WITH_BODY = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve the API beyond this machine without a token (every route would be open to the network)."""
    if token is None and not is_loopback(host):
        raise ValueError(
            f"TICKFLOW_API_HOST={host} serves the API beyond this machine, and no TICKFLOW_API_TOKEN is set: every "
            "route (starting runs, SQL, admin) would be open to anyone who can reach it. Set TICKFLOW_API_TOKEN, or "
            "bind 127.0.0.1"
        )


def allowed_hosts(host: str, configured: Sequence[str] | None) -> list[str]:
    """The Host header values the API answers: as configured, else the loopback names (and the bind address)
    for a loopback bind, else any (an API beyond loopback has a token; see the module docstring)."""
    if configured:
        return list(configured)
    if is_loopback(host):
        return sorted({*LOOPBACK_HOSTS, host})
    return ["*"]


class BodyLimit:
    """Refuses request bodies over ``limit`` bytes with 413, declared or streamed (see the module docstring)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send, f"request body is {int(declared)} bytes; the limit is {self.limit}")
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send, f"request body exceeds the limit of {self.limit} bytes (sent chunked)")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the client's disconnect, for streaming responses

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, detail: str) -> None:
        body = orjson.dumps({"detail": f"{detail}: send less, or put big inputs behind a reference",
                             "code": str(ErrorCode.PAYLOAD_TOO_LARGE)})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
