"""The envelope every record travels in, whatever its kind.

``id`` identifies the record for deduplication: events derive it from (run id, seq), so a redelivered or
re-emitted event always carries the same id — never change that format. ``seq`` is the per-run sequence
number of events (1, 2, 3… without gaps); other kinds leave it empty.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, StringConstraints

from tickflow.events.schemas import DeadLetter, EpochMs, Kind, Payload

__all__ = ["MAX_ID_CHARS", "Envelope", "dead_letter", "event_id"]

#: The longest id or key an envelope holds (record ids, run ids, stack and slot keys).
MAX_ID_CHARS = 256
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]


def event_id(run_id: str, seq: int) -> str:
    """The id of event ``seq`` of run ``run_id``: the dedup key of the log. Never change this format."""
    return f"{run_id}/{seq}"


class Envelope(BaseModel):
    """Header + typed payload. ``occurred_at_ms`` is epoch milliseconds, taken from the input, not a clock."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The descriptions are the published JSON Schema's (``tickflow.events.jsonschemas``): what a producer outside
    # tickflow reads to write a record by hand.
    id: Id = Field(description="Unique id of this record. A command's id is its idempotency key: a ResumeRun or a "
                               "stack command sent again with the same id is applied once (a StartRun is applied "
                               "once per key, the run id, whatever its id).")
    kind: Kind = Field(description='What the record is; "command" for everything produced to the commands topic.')
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        description="The payload's type, e.g. StartRun or ResumeRun; it decides which schema the payload has."
    )
    schema_version: int = Field(default=1, ge=1, description="Version of the payload's schema (1 when left out).")
    key: Id = Field(description="The entity the record is about: the run id (or stack:<id>). The Kafka record's key "
                                "must be these same bytes: it decides which engine partition owns the run.")
    seq: int | None = Field(default=None, ge=1, le=2**63 - 1,
                            description="Per-run sequence number of events; left out of commands.")
    causation_id: Id | None = Field(default=None, description="Id of the record that caused this one, if any.")
    correlation_id: Id | None = Field(default=None, description="Id grouping related records (tickflow: the run id).")
    occurred_at_ms: EpochMs = Field(description="When the record was written, in milliseconds since the Unix epoch.")
    #: W3C ``traceparent`` of the span that wrote the record (``tickflow.tracing``); left out of the JSON when None,
    #: so records written without tracing are byte for byte what they were. Before the payload: readers that take
    #: the payload as the rest of the record (the bulk rebuild) stay right.
    trace_parent: str | None = Field(
        default=None, max_length=256, exclude_if=lambda v: v is None,
        description="Optional W3C traceparent of the span that wrote the record, to join its trace.",
    )
    payload: SerializeAsAny[Payload] = Field(description="The typed body; its fields depend on type.")

    @classmethod
    def wrap(
        cls,
        payload: Payload,
        *,
        id: str,
        key: str,
        occurred_at_ms: int,
        seq: int | None = None,
        causation_id: str | None = None,
        correlation_id: str | None = None,
        trace_parent: str | None = None,
    ) -> Envelope:
        """Build an envelope whose kind, type and version come from the payload class."""
        return cls(
            id=id,
            kind=payload.KIND,
            type=payload.TYPE,
            schema_version=payload.VERSION,
            key=key,
            seq=seq,
            causation_id=causation_id,
            correlation_id=correlation_id,
            occurred_at_ms=occurred_at_ms,
            payload=payload,
            trace_parent=trace_parent,
        )


def dead_letter(
    *,
    consumer: str,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    now_ms: int,
    scrub: Callable[[str], str],
) -> Envelope:
    """The dead-letter record of a refused record: where it came from, why, and an excerpt of it.

    ``scrub`` cleans the reason and the excerpt (``tickflow.events.redact.redact``): a refused record may carry a
    secret pasted into a payload, and the letter must keep none. It is a parameter, not an import, so this module
    stays free of the environment the redaction reads.
    """
    source_key = key.decode(errors="replace") if key else None
    # The letter's own key must be a valid envelope key whatever the refused record's key was (a key that is too
    # long is one of the reasons records are refused): the source key itself when it fits, else its coordinates.
    letter_key = source_key if source_key and len(source_key) <= MAX_ID_CHARS else f"{topic}/{partition}"
    return Envelope.wrap(
        DeadLetter(
            consumer=consumer,
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            source_key=source_key[:1_000] if source_key else None,
            reason=scrub(reason[:60_000]),
            record_excerpt=scrub((value or b"")[:2_000].decode(errors="replace")),
        ),
        # Deterministic id: a redelivered bad record yields the same dead-letter id. Never change it.
        id=f"dlq/{topic}/{partition}/{offset}",
        key=letter_key,
        occurred_at_ms=now_ms,
    )
