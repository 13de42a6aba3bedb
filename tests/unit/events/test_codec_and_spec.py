"""Codec round trips, clear rejections, and spec content hashing."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from tickflow.events import (
    MAX_RECORD_BYTES,
    Envelope,
    InvalidRecord,
    StartRun,
    WorkflowSpec,
    dead_letter,
    decode,
    encode,
)
from tickflow.events.codec import MAX_JSON_DEPTH
from tickflow.events.errors import NonRetryableError
from tickflow.events.redact import redact
from tickflow.events.spec import walk
from tickflow.workflow import Flow, Registry, StepContext, Workflow

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values, st.text(min_size=1, max_size=40))
def test_round_trip(value: object, key: str) -> None:
    env = Envelope.wrap(StartRun(workflow="w", input=value), id="c1", key=key, occurred_at_ms=7)
    assert decode(encode(env)) == env


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1,2]", "must be a JSON object"),
        (b'{"kind":"command","type":"Launch"}', "unknown command type 'Launch'"),
        (
            b'{"id":"x","kind":"command","type":"StartRun","key":"k","occurred_at_ms":1,'
            b'"payload":{"workflow":"w","extra":1}}',
            "extra: Extra inputs are not permitted",
        ),
        (
            b'{"id":"x","kind":"command","type":"StartRun","key":"k","occurred_at_ms":1,"payload":{}}',
            "workflow: Field required",
        ),
        (None, "tombstone"),
    ],
)
def test_bad_records_are_refused_with_a_reason(raw: bytes | None, reason: str) -> None:
    with pytest.raises(InvalidRecord, match=reason):
        decode(raw)


def test_kind_is_checked_per_topic() -> None:
    env = Envelope.wrap(StartRun(workflow="w"), id="c1", key="k", occurred_at_ms=7)
    with pytest.raises(InvalidRecord, match="expected a 'result' record"):
        decode(encode(env), expect="result")


def test_oversized_records_are_refused() -> None:
    env = Envelope.wrap(StartRun(workflow="w", input="x" * MAX_RECORD_BYTES), id="c", key="k", occurred_at_ms=1)
    with pytest.raises(InvalidRecord, match="above the"):
        encode(env)
    with pytest.raises(InvalidRecord, match="above the"):
        decode(orjson.dumps({"pad": "x" * MAX_RECORD_BYTES}))


def test_spec_hash_is_stable_and_content_sensitive() -> None:
    def s(x: int) -> int:
        return x

    a = Workflow("w").step(s).wait_for_event("go", schema={"type": "object"}).compile()
    b = WorkflowSpec.model_validate(orjson.loads(orjson.dumps(a.model_dump(mode="json", by_alias=True))))
    assert a == b and a.content_hash() == b.content_hash()
    c = Workflow("w").step(s, max_attempts=2).wait_for_event("go", schema={"type": "object"}).compile()
    assert a.content_hash() != c.content_hash()


def test_builder_compiles_names_and_registers_functions() -> None:
    def fetch(x: int) -> int:
        return x + 1

    async def store(x: int) -> int:
        return x

    def big(scope: object) -> bool:
        return True

    reg = Registry()
    spec = reg.add(Workflow("etl").step(fetch).branch((big, Flow().step(store, max_attempts=3))).sleep(5))
    names = [n.name for n in walk(spec.root)]
    assert names == ["__root__", "fetch", "branch1", "store", "sleep1"]
    assert spec.root.nodes[0].input_schema == {"type": "integer"}  # type: ignore[union-attr]
    assert len(reg.functions) == 2 and len(reg.conditions) == 1
    with pytest.raises(ValueError, match="two nodes named 'fetch'"):
        Workflow("x").step(fetch).step(fetch).compile()


class Order(BaseModel):
    id: int


def total(order: Order) -> Order:
    return Order(id=order.id + 1)


async def test_typed_steps_validate_input_and_output() -> None:
    reg = Registry()
    spec = reg.add(Workflow("typed").step(total))
    fn = spec.root.nodes[0].fn  # type: ignore[union-attr]
    ctx = StepContext(run_id="r", workflow="typed", step="total", attempt=1, idempotency_key="k")
    assert await reg.call(fn, {"id": "41"}, ctx) == {"id": 42}
    with pytest.raises(NonRetryableError, match="input of step 'total' does not match"):
        await reg.call(fn, {"id": "x"}, ctx)


def _nested(depth: int) -> object:
    """A JSON value ``depth`` containers deep."""
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def _start(value: object) -> bytes:
    body = {"workflow": "w", "input": 1, "parent_run_id": None, "parent_path": None, "priority": 0}
    env = {"id": "c1", "kind": "command", "type": "StartRun", "key": "r1", "occurred_at_ms": 1, "payload": body}
    return orjson.dumps(env).replace(b'"input":1', b'"input":' + orjson.dumps(value))


def test_one_depth_limit_for_reading_and_writing() -> None:
    # The record adds two levels (envelope, payload) above the input.
    assert decode(_start(_nested(MAX_JSON_DEPTH - 2))).payload.input == _nested(MAX_JSON_DEPTH - 2)
    with pytest.raises(InvalidRecord, match=f"deeper than {MAX_JSON_DEPTH} levels"):
        decode(_start(_nested(MAX_JSON_DEPTH - 1)))
    with pytest.raises(InvalidRecord, match="depth limit"):  # orjson's own stop, far below the recursion limit
        decode(b"[" * 2_000 + b"]" * 2_000)
    too_deep_start = Envelope.wrap(StartRun(workflow="w", input=_nested(200)), id="c", key="r", occurred_at_ms=1)
    with pytest.raises(InvalidRecord, match="nest"):
        encode(too_deep_start)
    way_too_deep = Envelope.wrap(StartRun(workflow="w", input=_nested(400)), id="c", key="r", occurred_at_ms=1)
    with pytest.raises(InvalidRecord):  # beyond what pydantic and orjson write: refused, not a crash
        encode(way_too_deep)
    wide = {"items": [{"n": i} for i in range(5_000)]}  # many containers, shallow: the exact walk says fine
    assert decode(encode(Envelope.wrap(StartRun(workflow="w", input=wide), id="c", key="r", occurred_at_ms=1)))


def test_integers_and_times_every_reader_can_hold() -> None:
    with pytest.raises(InvalidRecord, match="occurred_at_ms"):
        decode(_start(1).replace(b'"occurred_at_ms":1', b'"occurred_at_ms":18446744073709551615'))
    with pytest.raises(InvalidRecord, match="priority"):
        decode(_start(1).replace(b'"priority":0', b'"priority":9223372036854775808'))
    big = Envelope.wrap(StartRun(workflow="w", input=2**64), id="c", key="r", occurred_at_ms=1)
    with pytest.raises(InvalidRecord, match="64 bits"):
        encode(big)


def test_a_dead_letter_can_always_be_written() -> None:
    letter = dead_letter(
        consumer="engine",
        topic="t.commands",
        partition=3,
        offset=9,
        key=b"k" * 5_000,
        value=b"\xff" * 10,
        reason="r" * 100_000,
        now_ms=1,
        scrub=redact,
    )
    assert letter.key == "t.commands/3" and decode(encode(letter)).payload.source_key == "k" * 1_000
