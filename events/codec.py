"""The one codec: envelopes ⇄ bytes with orjson, payloads validated by their pydantic model.

Decoding never raises anything but ``InvalidRecord``, whose message is the reason a dead-letter record
carries, phrased so the producer knows what to fix.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ValidationError

import tickflow.events.agents  # noqa: F401 - registers the agent and stack event types
from tickflow.events.envelope import Envelope
from tickflow.events.schemas import PAYLOAD_TYPES, Kind
from tickflow.events.upcast import upcast

__all__ = ["MAX_JSON_DEPTH", "MAX_RECORD_BYTES", "InvalidRecord", "RecordTooLarge", "decode", "encode", "too_deep"]

#: Records above this size are refused (the broker's message.max.bytes is set above it).
MAX_RECORD_BYTES = 1_000_000
#: The deepest JSON nesting tickflow accepts anywhere: in a record (an envelope counts as one level, its payload as
#: a second) and in an API body. orjson reads up to 1,024 levels but writes only up to 254, so without this limit a
#: record could be read, and then the events it causes could not be written. One constant, used at every edge.
MAX_JSON_DEPTH = 128
_UNPARSED: Any = object()


class InvalidRecord(ValueError):
    """A record that cannot be accepted; ``str(exc)`` says why and what to fix."""


class RecordTooLarge(InvalidRecord):
    """A record above ``MAX_RECORD_BYTES`` (HTTP 413, where the other refusals are 422)."""


def too_deep(raw: bytes, value: Any = _UNPARSED) -> bool:
    """Whether ``value`` (parsed from, or serialised to, ``raw``; parsed here when not given) nests deeper than
    ``MAX_JSON_DEPTH``. Raises ``orjson.JSONDecodeError`` when ``raw`` must be parsed here and is not JSON.

    Counting the opening brackets of ``raw`` bounds the depth from above at C speed, so only records with many
    containers pay for parsing and the exact walk.
    """
    if raw.count(b"{") + raw.count(b"[") <= MAX_JSON_DEPTH:
        return False
    if value is _UNPARSED:
        value = orjson.loads(raw)
    level: list[tuple[Any, int]] = [(value, 1)]
    while level:
        node, depth = level.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list | tuple) else None
        if children is None:
            continue
        if depth > MAX_JSON_DEPTH:
            return True
        level.extend((child, depth + 1) for child in children if isinstance(child, dict | list | tuple))
    return False


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope; refuses records bigger than ``MAX_RECORD_BYTES``, nested deeper than
    ``MAX_JSON_DEPTH`` or holding values JSON cannot (an integer beyond 64 bits)."""
    try:
        data = envelope.model_dump(mode="python")
        raw = orjson.dumps(data)
    except (TypeError, ValueError) as exc:  # an integer beyond 64 bits, nesting beyond what pydantic or orjson write
        raise InvalidRecord(
            f"{envelope.type} record for key {envelope.key!r} cannot be encoded: {exc}; integers must fit in "
            f"64 bits and values may nest at most {MAX_JSON_DEPTH} levels"
        ) from None
    if too_deep(raw, data):
        raise InvalidRecord(
            f"{envelope.type} record for key {envelope.key!r} nests deeper than {MAX_JSON_DEPTH} levels; "
            "flatten inputs and outputs"
        )
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordTooLarge(
            f"{envelope.type} record for key {envelope.key!r} is {len(raw)} bytes, above the "
            f"{MAX_RECORD_BYTES}-byte limit; keep inputs and outputs smaller"
        )
    return raw


def _format_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(record)"
        parts.append(f"{loc}: {err['msg']}")
    more = "" if exc.error_count() <= 5 else f" (+{exc.error_count() - 5} more)"
    return "; ".join(parts) + more


def decode(raw: bytes | None, *, expect: Kind | None = None) -> Envelope:
    """Parse and validate a record; ``expect`` restricts the kind a consumer accepts."""
    if raw is None:
        raise InvalidRecord("record has no value (tombstone); send a JSON envelope")
    if len(raw) > MAX_RECORD_BYTES:
        raise InvalidRecord(f"record is {len(raw)} bytes, above the {MAX_RECORD_BYTES}-byte limit")
    try:
        data: Any = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRecord(f"record is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRecord("record must be a JSON object (an envelope with kind, type, key and payload)")
    if too_deep(raw, data):
        raise InvalidRecord(f"record nests deeper than {MAX_JSON_DEPTH} levels; flatten its values")
    kind, type_ = data.get("kind"), data.get("type")
    if expect is not None and kind != expect:
        raise InvalidRecord(f"expected a {expect!r} record on this topic, got kind={kind!r}")
    payload_cls = PAYLOAD_TYPES.get((str(kind), str(type_)))
    if payload_cls is None:
        known = sorted(t for k, t in PAYLOAD_TYPES if k == kind)
        raise InvalidRecord(f"unknown {kind} type {type_!r}; known types: {', '.join(known) or 'none'}")
    raw_payload = data.get("payload", {})
    version = data.get("schema_version", 1)
    if isinstance(version, int) and version != payload_cls.VERSION:
        if version > payload_cls.VERSION:
            raise InvalidRecord(
                f"{type_} v{version} was written by a newer tickflow (this one reads up to v{payload_cls.VERSION}); "
                "upgrade this consumer"
            )
        if not isinstance(raw_payload, dict):
            raise InvalidRecord(f"invalid {type_}: payload must be a JSON object")
        try:
            raw_payload = upcast(str(type_), version, payload_cls.VERSION, raw_payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRecord(f"cannot upcast {type_} v{version}: {exc}") from None
        data = {**data, "schema_version": payload_cls.VERSION}
    try:
        payload = payload_cls.model_validate(raw_payload)
        return Envelope.model_validate({**data, "payload": payload})
    except ValidationError as exc:
        raise InvalidRecord(f"invalid {type_}: {_format_validation(exc)}") from None
