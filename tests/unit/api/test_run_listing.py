"""Run listings, asked one way everywhere (``RunQuery``), and what a waiting run says in each view: the HTTP API,
the SDK, the CLI and the dashboard's runs table, in process on the in-memory store (no broker)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from pydantic import ValidationError

from tests.unit.api.test_idempotency_keys import RecordingProducer
from tickflow.api.app import create_api
from tickflow.cli import main as cli
from tickflow.client import Client
from tickflow.events import Envelope, RunCompleted, RunStarted, SequenceNode, StepNode, WorkflowSpec
from tickflow.events.schemas import Payload, StepCompleted, StepScheduled, WaitStarted
from tickflow.events.topics import TopicNames
from tickflow.projections.fold import ProjectionFold
from tickflow.projections.queries import RunQuery
from tickflow.projections.store import MemoryStore
from tickflow.wire import WaitingOn

SPEC = WorkflowSpec(name="approval", root=SequenceNode(name="main", nodes=(StepNode(name="draft", fn="m.draft"),)))
T0 = 1_700_000_000_000


def _run(run_id: str, t0: int, *payloads: Payload) -> list[tuple[int, int, Envelope]]:
    start = RunStarted(workflow="approval", spec_hash=SPEC.content_hash(), spec=SPEC, input=None)
    return [
        (0, t0 + i, Envelope.wrap(p, id=f"{run_id}/{i}", key=run_id, seq=i, occurred_at_ms=t0 + i))
        for i, p in enumerate((start, *payloads), 1)
    ]


@pytest.fixture
def store() -> MemoryStore:
    """Three runs of one workflow: one waiting for approval after its first step, one running it, one done."""
    draft = StepScheduled(path="draft", step="draft", attempt=1, pool="default")
    drafted = StepCompleted(path="draft", step="draft", attempt=1, duration_ms=1.0)
    records = [
        *_run("waits", T0, draft, drafted, WaitStarted(path="review/approve", event="approve")),
        *_run("drafts", T0 + 100, draft),
        *_run("done", T0 + 200, RunCompleted(output=1)),
    ]
    s = MemoryStore()
    s.write(ProjectionFold().fold(records, "t.events"))
    return s


@pytest.fixture
def api(store: MemoryStore) -> Iterator[TestClient]:
    app = create_api(store=store, producer=RecordingProducer(), topics=TopicNames("t"), workflows={"approval"})
    with TestClient(app, base_url="http://testserver") as client:
        yield client


def sdk_of(api: TestClient) -> Client:
    """An SDK client whose requests go to the in-process ``api``."""

    def forward(request: httpx.Request) -> httpx.Response:
        answer = api.request(request.method, str(request.url), content=request.content, headers=request.headers)
        return httpx.Response(answer.status_code, content=answer.content, headers=answer.headers)

    client = Client("http://testserver")
    client._http = httpx.Client(base_url="http://testserver", transport=httpx.MockTransport(forward))
    return client


@pytest.fixture
def sdk(api: TestClient) -> Client:
    return sdk_of(api)


def test_the_query_model_is_one_description_of_a_listing() -> None:
    assert RunQuery(status="", workflow="").params() == {"limit": 50, "offset": 0}  # a form's "any" is no filter
    query = RunQuery.of(RunQuery(workflow="approval", limit=5), status="waiting", limit=7)
    assert query == RunQuery(status="waiting", workflow="approval", limit=7)
    with pytest.raises(TypeError, match="RunQuery has no field 'stauts'"):
        RunQuery.of(stauts="waiting")
    with pytest.raises(ValidationError):
        RunQuery(status="asleep")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        RunQuery(limit=1_001)


def test_a_waiting_run_over_http(api: TestClient) -> None:
    run = api.get("/runs/waits").json()
    assert (run["status"], run["waiting_for"], run["waiting_path"]) == ("waiting", "approve", "review/approve")
    assert run["waits"] == [{"path": "review/approve", "event": "approve"}]
    assert (run["current_step"], run["current_path"], run["steps_completed"]) == ("", "", 1)  # draft has finished
    assert api.get("/runs/drafts").json()["current_step"] == "draft"
    assert [r["run_id"] for r in api.get("/runs", params={"status": "waiting"}).json()] == ["waits"]
    assert [r["run_id"] for r in api.get("/runs", params={"status": ""}).json()] == ["done", "drafts", "waits"]
    assert api.get("/runs", params={"status": "asleep"}).status_code == 422
    assert api.get("/stats").json()["runs"] == {"waiting": 1, "running": 1, "completed": 1}


def test_a_waiting_run_in_the_sdk(sdk: Client) -> None:
    status = sdk.status("waits")
    assert (status.status, status.waiting_for, status.waiting_path) == ("waiting", "approve", "review/approve")
    assert status.waits == [WaitingOn(path="review/approve", event="approve")]
    assert [r.run_id for r in sdk.list_runs(status="waiting")] == ["waits"]
    assert [r.run_id for r in sdk.list_runs(RunQuery(workflow="approval"), limit=1)] == ["done"]
    assert [r.run_id for r in sdk.list_runs(RunQuery(status="running"))] == ["drafts"]
    with pytest.raises(TypeError, match="no field 'stauts'"):
        sdk.list_runs(stauts="waiting")
    with pytest.raises(TimeoutError, match="it waits for 'approve' at 'review/approve'; resume it to go on"):
        sdk.wait("waits", timeout=0.2, poll_s=0.05)


def test_a_waiting_run_in_the_cli(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tickflow.cli.runs.client", lambda _ctx: sdk_of(api))  # each command closes its client
    listed = CliRunner().invoke(cli, ["runs", "--status", "waiting"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.split() == ["waits", "approval", "waiting", "1/1", "waits", "for", "approve", "at",
                                     "review/approve"]
    running = CliRunner().invoke(cli, ["runs", "--workflow", "approval", "--since", str(T0 + 50)])
    assert running.exit_code == 0, running.output
    assert [line.split()[0] for line in running.output.splitlines()] == ["done", "drafts"]
    assert "runs draft" in running.output
    refused = CliRunner().invoke(cli, ["runs", "--limit", "5000"])
    assert refused.exit_code == 2 and "--limit: Input should be less than or equal to 1000" in refused.output


def test_a_waiting_run_in_the_dashboards_runs_table(api: TestClient) -> None:
    html = api.get("/ui/runs/table", params={"status": "waiting", "workflow": "", "offset": 0, "within_s": 0}).text
    assert 'id="run-waits"' in html and 'class="pill waiting"' in html and "id=\"run-drafts\"" not in html
    assert "waits for <code>approve</code> at <code>review/approve</code>" in html
    panel = api.get("/ui/runs/waits/panel").text
    assert '<span class="pill waiting" id="run-status">waiting</span>' in panel
    assert '<code id="run-waiting-path">review/approve</code>' in panel
