"""Codec round trips, clear rejections, and spec content hashing."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
    MAX_RECORD_BYTES,
    Envelope,
    InvalidRecord,
    RetryPolicy,
    StartRun,
    StepSpec,
    WorkflowSpec,
    decode,
    encode,
)
from services.workflow import Registry, Workflow

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
    a = WorkflowSpec(name="w", steps=(StepSpec(name="s", fn="w.s"),))
    b = WorkflowSpec.model_validate(orjson.loads(orjson.dumps(a.model_dump(mode="json"))))
    assert a.content_hash() == b.content_hash()
    c = WorkflowSpec(name="w", steps=(StepSpec(name="s", fn="w.s", retry=RetryPolicy(max_attempts=2)),))
    assert a.content_hash() != c.content_hash()


def test_builder_compiles_and_registers_functions() -> None:
    def fetch(x: int) -> int:
        return x + 1

    async def store(x: int) -> int:
        return x

    reg = Registry()
    spec = reg.add(Workflow("etl").step(fetch).step(store, max_attempts=3))
    assert [s.name for s in spec.steps] == ["fetch", "store"]
    assert spec.steps[1].retry.max_attempts == 3
    assert set(reg.functions) == {"etl.fetch", "etl.store"}
    with pytest.raises(ValueError, match="already has a step named"):
        Workflow("x").step(fetch).step(fetch)
