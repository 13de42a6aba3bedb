"""The one codec: envelopes ⇄ bytes with orjson, payloads validated by their pydantic model.

Decoding never raises anything but ``InvalidRecord``, whose message is the reason a dead-letter record
carries, phrased so the producer knows what to fix.
"""

from __future__ import annotations

import difflib
from typing import Any

import orjson
from pydantic import ValidationError

import tickflow.events.agents  # noqa: F401 - registers the agent and stack event types
from tickflow.events.envelope import Envelope
from tickflow.events.errors import ErrorCode, NonRetryableError, PayloadTooLarge
from tickflow.events.schemas import PAYLOAD_TYPES, Kind, Payload
from tickflow.events.upcast import upcast

__all__ = ["MAX_JSON_DEPTH", "MAX_RECORD_BYTES", "InvalidRecord", "RecordTooLarge", "decode", "encode", "too_deep"]

#: Records above this size are refused (the broker's message.max.bytes is set above it).
MAX_RECORD_BYTES = 1_000_000
#: The deepest JSON nesting tickflow accepts anywhere: in a record (an envelope counts as one level, its payload as
#: a second) and in an API body. orjson reads up to 1,024 levels but writes only up to 254, so without this limit a
#: record could be read, and then the events it causes could not be written. One constant, used at every edge.
MAX_JSON_DEPTH = 128
_UNPARSED: Any = object()


class InvalidRecord(NonRetryableError, ValueError):
    """A record that cannot be accepted; ``str(exc)`` says why and what to fix.

    Record-level, so never retried: the same bytes never decode. Still a ``ValueError``, as it was before it joined
    tickflow's error tree, for code that catches that."""

    code = ErrorCode.INVALID_RECORD


class RecordTooLarge(InvalidRecord, PayloadTooLarge):
    """A record above ``MAX_RECORD_BYTES`` (HTTP 413, where the other refusals are 422); also a
    ``PayloadTooLarge``, the name failures record it under."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


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


def _excerpt(value: Any) -> str:
    """A refused value as the producer wrote it, short enough for a reason (and redacted with it by the writer)."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fix(err: Any, fields: list[str]) -> str:
    """What to do about one pydantic error, in the producer's terms."""
    kind = err["type"]
    if kind == "missing":
        return "add it"
    if kind == "extra_forbidden":
        return f"remove it; allowed here: {', '.join(fields)}" if fields else "remove it"
    return f"got {_excerpt(err.get('input'))}"


def _format_validation(exc: ValidationError, *, under: str = "", fields: list[str] | None = None) -> str:
    """One ``path: problem; fix`` clause per error, the path written from the record's top (``payload.workflow``)
    so the producer finds the field to fix; ``fields`` are the names allowed where an unknown one was found."""
    parts = []
    for err in exc.errors()[:5]:
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in (*([under] if under else []), *err["loc"]))
        path = path.lstrip(".") or "(record)"
        allowed = (fields or []) if len(err["loc"]) == 1 else []  # the fields of nested models are not listed
        parts.append(f"{path}: {err['msg']} ({_fix(err, allowed)})")
    more = "" if exc.error_count() <= 5 else f" (+{exc.error_count() - 5} more)"
    return "; ".join(parts) + more


_ENVELOPE_FIELDS = list(Envelope.model_fields)


def _unknown_type(kind: Any, type_: Any) -> str:
    """The reason for a record whose kind or type names no payload: which field, and the names it may take."""
    kinds = sorted({k for k, _ in PAYLOAD_TYPES})
    if kind is None:
        return f'kind: Field required (add it: "kind": "command" on the commands topic; one of {", ".join(kinds)})'
    if kind not in kinds:
        return f"kind: unknown kind {_excerpt(kind)}; one of {', '.join(kinds)}"
    known = sorted(t for k, t in PAYLOAD_TYPES if k == kind)
    if type_ is None:
        return f"type: Field required (add it: the {kind} type, one of {', '.join(known)})"
    near = difflib.get_close_matches(str(type_), known, n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    return f"type: unknown {kind} type {type_!r}{hint}; known {kind} types: {', '.join(known) or 'none'}"


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
        got = "kind is missing" if kind is None else f"got kind={kind!r}"
        raise InvalidRecord(f'kind: expected a {expect!r} record on this topic, {got} (set "kind": "{expect}")')
    payload_cls = PAYLOAD_TYPES.get((str(kind), str(type_)))
    if payload_cls is None:
        raise InvalidRecord(_unknown_type(kind, type_))
    raw_payload = data.get("payload", {})
    version = data.get("schema_version", 1)
    if isinstance(version, int) and version != payload_cls.VERSION:
        if version > payload_cls.VERSION:
            raise InvalidRecord(
                f"schema_version: {type_} v{version} was written by a newer tickflow (this one reads up to "
                f"v{payload_cls.VERSION}); upgrade this consumer"
            )
        if not isinstance(raw_payload, dict):
            raise InvalidRecord(f"invalid {type_}: payload: must be a JSON object (got {_excerpt(raw_payload)})")
        try:
            raw_payload = upcast(str(type_), version, payload_cls.VERSION, raw_payload)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidRecord(f"cannot upcast {type_} v{version}: {exc}") from None
        data = {**data, "schema_version": payload_cls.VERSION}
    reasons = []
    try:
        payload: Payload = payload_cls.model_validate(raw_payload)
    except ValidationError as exc:
        reasons.append(_format_validation(exc, under="payload", fields=list(payload_cls.model_fields)))
        payload = Payload()  # stands in, so the header's own errors are reported in the same reason
    try:
        envelope = Envelope.model_validate({**data, "payload": payload})
    except ValidationError as exc:
        reasons.insert(0, _format_validation(exc, fields=_ENVELOPE_FIELDS))
    if reasons:
        raise InvalidRecord(f"invalid {type_}: {'; '.join(reasons)}{_schema_hint(payload_cls)}")
    return envelope


def _schema_hint(payload_cls: type[Payload]) -> str:
    """Where a producer finds the whole shape (``tickflow.events.jsonschemas``): only commands come from outside."""
    if payload_cls.KIND != "command":
        return ""
    return f"; see the {payload_cls.TYPE} JSON Schema (GET /schemas/{payload_cls.TYPE})"
