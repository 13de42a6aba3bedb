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

__all__ = ["MAX_RECORD_BYTES", "InvalidRecord", "RecordTooLarge", "decode", "encode"]

#: Records above this size are refused (the broker's message.max.bytes is set above it).
MAX_RECORD_BYTES = 1_000_000


class InvalidRecord(ValueError):
    """A record that cannot be accepted; ``str(exc)`` says why and what to fix."""


class RecordTooLarge(InvalidRecord):
    """A record above ``MAX_RECORD_BYTES`` (HTTP 413, where the other refusals are 422)."""


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope; refuses records bigger than ``MAX_RECORD_BYTES`` or values JSON cannot hold."""
    try:
        raw = orjson.dumps(envelope.model_dump(mode="python"))
    except TypeError as exc:  # e.g. an integer beyond 64 bits, which no JSON consumer reads back exactly
        raise InvalidRecord(
            f"{envelope.type} record for key {envelope.key!r} cannot be encoded: {exc}; integers must fit in 64 bits"
        ) from None
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
