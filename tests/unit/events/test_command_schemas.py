"""Commands from any client: the published JSON Schemas match the models, say what the codec says, and are served;
a malformed command's refusal names the field to fix.

The schemas are files shipped in the package (``tickflow/events/published/``); the first test here is CI's check
that they were regenerated after a model changed."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from tests.paths import REPO_ROOT
from tests.unit.api.test_api_errors import RecordingProducer
from tickflow.api.app import create_api
from tickflow.events import (
    AcquireSlot,
    CancelRun,
    Envelope,
    InvalidRecord,
    ResumeRun,
    StartRun,
    decode,
    encode,
    jsonschemas,
)
from tickflow.events.agents import CreateStack, PauseStack
from tickflow.events.topics import TopicNames
from tickflow.projections.store import MemoryStore


def test_the_shipped_schemas_are_the_models_schemas() -> None:
    problems = jsonschemas.differences(REPO_ROOT / "events" / "published")
    assert not problems, (
        "events/published/ is out of date with the pydantic models; run "
        "`.venv/bin/python -m tickflow.events.jsonschemas --write` and commit the files:\n" + "\n".join(problems)
    )
    generated = jsonschemas.generate()
    for name in [jsonschemas.ENVELOPE, jsonschemas.INDEX, *jsonschemas.published()["command"]]:
        assert jsonschemas.load(name) == generated[name], name  # and the installed package ships those files


def test_every_command_and_event_is_published_under_its_type() -> None:
    index = jsonschemas.published()
    assert {"StartRun", "ResumeRun", "CancelRun", "ReleaseRun", "ForkRun", "CreateStack", "PauseStack"} <= set(
        index["command"]
    )
    assert {"RunStarted", "RunCompleted", "WaitStarted", "LlmCallAttempted"} <= set(index["event"])
    assert index["dead_letter"] == ["DeadLetter"] and index["envelope"] == "envelope"
    for name in ["envelope", *index["command"], *index["event"], *index["dead_letter"]]:
        Draft202012Validator.check_schema(jsonschemas.load(name) or {"type": "nonsense"})
    assert jsonschemas.load("../codec") is None and jsonschemas.load("Task") is None


def _validator(name: str) -> Draft202012Validator:
    schema = jsonschemas.load(name)
    assert schema is not None
    return Draft202012Validator(schema)


@pytest.mark.parametrize(
    "payload",
    [
        StartRun(workflow="refund", input={"order": "A-1", "amount": 4.5}, priority=-3, budget_tokens=10),
        ResumeRun(event="approval", payload={"approved": True, "by": "dana"}),
        CancelRun(reason="changed my mind"),
        AcquireSlot(run_id="r", limit=2),
        CreateStack(workflow="stack_tick", interval_s=10, input={"goal": "x"}),
        PauseStack(),
    ],
)
def test_what_tickflow_writes_is_valid_by_the_published_schema(payload: Any) -> None:
    record = orjson.loads(encode(Envelope.wrap(payload, id="c-1", key="k-1", occurred_at_ms=1_767_225_600_000)))
    assert list(_validator(payload.TYPE).iter_errors(record)) == []
    assert list(_validator("envelope").iter_errors(record)) == []


RECORD = {"id": "c", "kind": "command", "type": "StartRun", "key": "r-1", "occurred_at_ms": 1, "payload": {}}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"payload": {}}, "payload.workflow: Field required (add it)"),
        ({"type": "StartRn", "payload": {"workflow": "w"}},
         "type: unknown command type 'StartRn' (did you mean 'StartRun'?); known command types: AcquireSlot"),
        ({"payload": {"workflow": "w", "colour": "red"}},
         "payload.colour: Extra inputs are not permitted (remove it; allowed here: workflow, input, "),
        ({"payload": {"workflow": "w", "priority": 5000}},
         "payload.priority: Input should be less than or equal to 1000 (got 5000)"),
        ({"occurred_at_ms": "now", "payload": {"workflow": "w", "priority": 5000}},
         'occurred_at_ms: Input should be a valid integer, unable to parse string as an integer (got "now"); '
         "payload.priority"),
        ({"kind": None, "payload": {"workflow": "w"}},
         'kind: expected a \'command\' record on this topic, kind is missing (set "kind": "command")'),
        ({"runId": "r-1", "payload": {"workflow": "w"}},
         "runId: Extra inputs are not permitted (remove it; allowed here: id, kind"),
        ({"payload": {"workflow": "w", "input": 1, "budget_tokens": -1}},
         "payload.budget_tokens: Input should be greater than or equal to 0 (got -1)"),
    ],
)
def test_a_malformed_command_is_refused_by_schema_and_codec_with_the_field_to_fix(
    change: dict[str, Any], reason: str
) -> None:
    record = {k: v for k, v in {**RECORD, **change}.items() if v is not None}
    with pytest.raises(InvalidRecord) as refused:
        decode(orjson.dumps(record), expect="command")
    assert reason in str(refused.value), str(refused.value)
    if record.get("type") == "StartRun" and record.get("kind") == "command":
        assert str(refused.value).endswith("see the StartRun JSON Schema (GET /schemas/StartRun)")
        assert list(_validator("StartRun").iter_errors(record)), "the schema lets through what the codec refuses"


def test_a_fields_own_bounds_hold_beside_the_64_bit_ones() -> None:
    """``Int64 = Field(ge=…)`` used to lose the field's own bound to Int64's: a priority of 5000 started a run."""
    with pytest.raises(ValidationError, match="less than or equal to 1000"):
        StartRun(workflow="w", priority=5000)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        AcquireSlot(run_id="r", limit=0)
    with pytest.raises(ValidationError, match="less than 9223372036854775808"):
        StartRun(workflow="w", budget_tokens=2**63)
    assert StartRun(workflow="w", budget_tokens=2**63 - 1).budget_tokens == 2**63 - 1
    schema = jsonschemas.generate()["StartRun"]["properties"]["payload"]["properties"]
    assert (schema["priority"]["minimum"], schema["priority"]["maximum"]) == (-1000, 1000)


def _docs_lines() -> list[tuple[str, str]]:
    section = (REPO_ROOT / "docs" / "open-log.md").read_text().split("## Commands from any Kafka client", 1)[1]
    section = section.split("\n## ", 1)[0]
    found: list[tuple[str, str]] = re.findall(r"^([A-Za-z0-9_.:\-]+)\|(\{.*\})$", section, flags=re.M)
    return found


def test_the_docs_hand_written_commands_are_judged_alike_by_schema_and_codec() -> None:
    accepted, refused = set(), []
    for key, value in _docs_lines():
        record = orjson.loads(value)
        schema_errors = list(_validator(record["type"]).iter_errors(record))
        try:
            envelope = decode(value.encode(), expect="command")
        except InvalidRecord as exc:
            assert schema_errors, f"the schema accepts what the codec refuses ({exc}): {value}"
            refused.append(str(exc))
            continue
        assert schema_errors == [], value
        assert envelope.key == key  # the console producer's key is the envelope's key
        accepted.add(envelope.type)
    assert {"StartRun", "ResumeRun"} <= accepted
    assert refused and "payload.inputs: Extra inputs are not permitted (remove it; allowed here: workflow, input" in (
        refused[0]
    )


@pytest.fixture
def api() -> TestClient:
    app = create_api(store=MemoryStore(), producer=RecordingProducer(), topics=TopicNames("t"), workflows=None,
                     token="s3cret")
    return TestClient(app, headers={"authorization": "Bearer s3cret"})


def test_the_api_serves_the_shipped_schemas(api: TestClient) -> None:
    index = api.get("/schemas")
    assert index.status_code == 200 and "StartRun" in index.json()["command"]
    assert index.json()["url"] == "/schemas/{name}"
    start = api.get("/schemas/StartRun")
    assert start.status_code == 200 and start.headers["content-type"].startswith("application/schema+json")
    assert start.json() == jsonschemas.load("StartRun")
    assert api.get("/schemas/envelope").json()["title"] == "tickflow record envelope"
    for missing in ("StartRn", "index", "Task"):
        answer = api.get(f"/schemas/{missing}")
        assert answer.status_code == 404 and answer.json()["code"] == "not_found", missing
    assert api.get("/schemas/..%2Fcodec.py").status_code == 404
    assert "StartRun" in api.get("/schemas/StartRn").json()["detail"]
    assert api.get("/schemas/StartRun", headers={"authorization": "Bearer nope"}).status_code == 401
