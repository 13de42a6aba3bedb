"""The gate every state-changing request passes before any of its body is read.

The API shares its event loop with the engine, the worker, the projector and their Kafka heartbeats (``tickflow
up``), so nothing a stranger sends may cost that loop more than a header lookup. ``RequestGate`` is plain ASGI and
checks an unsafe request (POST, PUT, PATCH, DELETE) in this order, each step cheap and bounded:

1. **Browsers same-origin only.** A request a browser marks as coming from another site (``Sec-Fetch-Site:
   cross-site`` or ``same-site``, or an ``Origin`` that is not this host's) is refused with 403: a page on the
   internet cannot cancel a run or play a stack through a loopback API that has no token, even with a body-less
   "simple" POST. Clients that are not browsers (the SDK, the CLI, curl) send neither header.
2. **Credentials** — the bearer token or a dashboard session with its CSRF header (``tickflow.api.sessions``),
   from headers and cookies alone. Signing in (``POST /ui/login``) is the one unsafe request without them; its
   body is capped at ``LOGIN_MAX_BYTES``.
3. **The body**, read with a size limit (``413``, declared or chunked) and a deadline for the whole body (``408``):
   a slow upload cannot pin a socket and its buffer for ever. A body must be JSON (``415`` otherwise), so a
   cross-site HTML form cannot produce one.
4. **Its shape**, by a scanner that works at C speed on the bytes (``json_body_problem``): at most
   ``max_values`` JSON values (parsing 1.4 million empty arrays takes the loop half a second), nesting at most
   ``MAX_JSON_DEPTH`` deep (the codec's own limit), no lone UTF-16 surrogate escape (text that cannot be encoded
   again). Only then does the route parse the body, at a cost bounded by those limits.

The body is then replayed to the app, which reads it as usual.
"""

from __future__ import annotations

import asyncio
import re
from itertools import accumulate
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tickflow.api.sessions import SAFE_METHODS, Credentials, Refusal
from tickflow.events.codec import MAX_JSON_DEPTH
from tickflow.events.errors import ErrorCode

__all__ = ["LOGIN_MAX_BYTES", "LOGIN_PATH", "RequestGate", "json_body_problem", "same_origin_problem"]

LOGIN_PATH = "/ui/login"
#: A sign-in form holds the token and a return path: nothing bigger is a sign-in.
LOGIN_MAX_BYTES = 16 * 1024
_FORM = "application/x-www-form-urlencoded"

#: A JSON string, escapes included; the unrolled form matches in linear time.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
#: A surrogate escape (\ud800-\udfff) anywhere: only then is the body parsed to tell a pair from a lone half.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_NOT_BRACKET = bytes(c for c in range(256) if c not in b"[]{}")
#: Opening brackets become +1, closing ones -1 (0xFF read as a signed byte): the running sum is the depth.
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_body_problem(body: bytes, max_values: int, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why ``body`` is refused before it is parsed, or None. Costs a few milliseconds for a 4 MiB body.

    Strings are blanked first (a bracket or comma inside text counts for nothing); then commas and brackets count
    the values (every value but the first of a container follows a comma: an estimate within a factor of two,
    which is all a limit needs), and the running sum of brackets gives the deepest nesting. A body that is not
    JSON passes: the route's parser answers that with the position of the error.
    """
    skeleton = _STRING.sub(b'""', body)
    values = skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{") + 1
    if values > max_values:
        return (f"the JSON body holds about {values:,} values; the limit is {max_values:,} "
                "(TICKFLOW_API_MAX_JSON_VALUES): send fewer, or put big inputs behind a reference")
    steps = skeleton.translate(None, _NOT_BRACKET).translate(_DEPTH_STEP)
    if max(accumulate(memoryview(steps).cast("b")), default=0) > max_depth:
        return f"the JSON body nests deeper than {max_depth} levels: flatten it"
    if _SURROGATE_ESCAPE.search(body):
        try:
            orjson.loads(body)  # bounded by the value count above; refuses a lone surrogate
        except orjson.JSONDecodeError as exc:
            if "surrogate" in str(exc):
                return ("the JSON body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff): "
                        "send valid Unicode text")
    return None


def same_origin_problem(headers: Headers, trusted_origins: frozenset[str]) -> str | None:
    """Why a browser's request from another site is refused, or None (same origin, or not a browser)."""
    fetch_site = headers.get("sec-fetch-site", "")
    origin = headers.get("origin", "")
    if origin and origin != "null":
        if origin in trusted_origins:
            return None
        if urlsplit(origin).netloc.lower() == headers.get("host", "").lower():
            return None
        return (f"a browser page of {origin} may not change anything here: the API answers its own pages only "
                "(add that origin to TICKFLOW_API_TRUSTED_ORIGINS if it is yours)")
    if origin == "null" or fetch_site in ("cross-site", "same-site"):
        return "a browser page of another site may not change anything here: use the dashboard, the SDK or the CLI"
    return None


class RequestGate:
    """Checks an unsafe request's origin, credentials, body size, read time and JSON shape, in that order, before
    the app sees it (see the module docstring). Safe methods pass through: their routes check credentials."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        credentials: Credentials,
        max_body_bytes: int,
        max_json_values: int,
        body_timeout_s: float,
        trusted_origins: frozenset[str] = frozenset(),
    ) -> None:
        self.app = app
        self.credentials = credentials
        self.max_body_bytes = max_body_bytes
        self.max_json_values = max_json_values
        self.body_timeout_s = body_timeout_s
        self.trusted_origins = trusted_origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in SAFE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        problem = same_origin_problem(headers, self.trusted_origins)
        if problem is not None:
            await _refuse(send, 403, problem, ErrorCode.FORBIDDEN)
            return
        login = scope["path"] == LOGIN_PATH
        if not login:
            refusal = self.credentials.check(scope["method"], headers, cookie_parser(headers.get("cookie", "")))
            if refusal is not None:
                await _refuse_with(send, refusal)
                return
        limit = min(self.max_body_bytes, LOGIN_MAX_BYTES) if login else self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, f"request body is {int(declared)} bytes; the limit is {limit}: send less, or "
                          "put big inputs behind a reference", ErrorCode.PAYLOAD_TOO_LARGE)
            return
        try:
            async with asyncio.timeout(self.body_timeout_s):
                body = await _read_body(receive, limit)
        except TimeoutError:
            await _refuse(send, 408, f"the request body did not arrive within {self.body_timeout_s:g} s "
                          "(TICKFLOW_API_BODY_TIMEOUT_S): send it faster, or less of it", ErrorCode.INVALID_REQUEST)
            return
        if body is None:  # the client went away
            return
        if isinstance(body, int):
            await _refuse(send, 413, f"request body exceeds the limit of {limit} bytes (sent chunked): send less, "
                          "or put big inputs behind a reference", ErrorCode.PAYLOAD_TOO_LARGE)
            return
        if body:
            media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            wanted = _FORM if login else "application/json"
            if media != wanted and not (not login and media.endswith("+json")):
                await _refuse(send, 415, f"send the body as {wanted} (Content-Type: {wanted}), not "
                              f"{media or 'without a content type'}", ErrorCode.INVALID_REQUEST)
                return
            if not login:
                problem = json_body_problem(body, self.max_json_values)
                if problem is not None:
                    await _refuse(send, 422, problem, ErrorCode.INVALID_REQUEST)
                    return
        await self.app(scope, _replay(body, receive), send)


async def _read_body(receive: Receive, limit: int) -> bytes | int | None:
    """The whole body; its size so far when it passes ``limit``; None when the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return size
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # after the body: the client's disconnect, for streaming responses

    return replay


async def _refuse_with(send: Send, refusal: Refusal) -> None:
    code = ErrorCode.UNAUTHORIZED if refusal.status == 401 else ErrorCode.FORBIDDEN
    await _refuse(send, refusal.status, refusal.detail, code)


async def _refuse(send: Send, status: int, detail: str, code: str) -> None:
    body = orjson.dumps({"detail": detail, "code": str(code)})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
