"""The API's outer guards, in process (Starlette's TestClient on the in-memory store): the token on every route
(documentation and metrics included), a token compare that answers 401 to any header, body limits that hold for
chunked bodies too and act before authentication, trusted hosts against DNS rebinding, and the bind check."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.unit.api.test_api_errors import RecordingProducer
from tickflow.api.app import create_api
from tickflow.api.guards import allowed_hosts, check_bind
from tickflow.events.topics import TopicNames
from tickflow.projections.store import MemoryStore

LIMIT = 5_000


@pytest.fixture
def app_client() -> Iterator[TestClient]:
    app = create_api(store=MemoryStore(), producer=RecordingProducer(), topics=TopicNames("t"), workflows={"known"},
                     token="s3cret", max_body_bytes=LIMIT, hosts=allowed_hosts("127.0.0.1", None))
    with TestClient(app, base_url="http://127.0.0.1:8700") as client:
        yield client


AUTH = {"authorization": "Bearer s3cret"}


@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/metrics", "/runs", "/stacks", "/ui/board",
                                  "/admin/rebuild", "/live/streams", "/schemas", "/schemas/StartRun"])
def test_every_route_but_health_needs_the_token(app_client: TestClient, path: str) -> None:
    refused = app_client.get(path, follow_redirects=False)
    assert refused.status_code in (401, 303), (path, refused.status_code)  # 303: a dashboard page → sign-in
    assert app_client.get(path, headers=AUTH).status_code == 200, path
    assert app_client.get("/healthz").status_code == 200


@pytest.mark.parametrize("header", ["Bearer s3crét", "Bearer \u00ff\u00fe", "Bearer ", "s3cret", "Bearer s3cret "])
def test_a_wrong_token_of_any_shape_is_a_401(app_client: TestClient, header: str) -> None:
    raw = [(b"authorization", header.encode("latin-1"))]  # non-ASCII bytes, as a hostile client sends them
    answer = app_client.get("/runs", headers=raw)  # type: ignore[arg-type]
    assert answer.status_code == 401 and answer.json()["code"]


def test_a_body_over_the_limit_is_refused_declared_or_chunked_after_authentication(app_client: TestClient) -> None:
    big = b'{"workflow": "known", "input": "' + b"x" * (2 * LIMIT) + b'"}'
    stranger = app_client.post("/runs", content=big, headers={"content-type": "application/json"})
    assert stranger.status_code == 401  # no body is read for a stranger, whatever its size
    declared = app_client.post("/runs", content=big, headers={"content-type": "application/json", **AUTH})
    assert declared.status_code == 413 and "limit" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 1_000):
            yield big[i:i + 1_000]

    chunked = app_client.post("/runs", content=chunks(), headers={"content-type": "application/json", **AUTH})
    assert chunked.status_code == 413 and "chunked" in chunked.json()["detail"]
    small = b'{"workflow": "known", "input": 1}'
    fine = app_client.post("/runs", content=iter([small[:10], small[10:]]),
                           headers={"content-type": "application/json", **AUTH})
    assert fine.status_code == 202, fine.text


def test_a_foreign_host_header_is_refused(app_client: TestClient) -> None:
    assert app_client.get("/healthz", headers={"host": "evil.example"}).status_code == 400
    assert app_client.get("/healthz", headers={"host": "localhost:8700"}).status_code == 200


def test_hosts_and_bind_rules() -> None:
    assert allowed_hosts("127.0.0.1", None) == ["127.0.0.1", "localhost"]
    assert allowed_hosts("0.0.0.0", None) == ["*"]
    assert allowed_hosts("0.0.0.0", ("api.example.com",)) == ["api.example.com"]
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "a-token")
    with pytest.raises(ValueError, match="TICKFLOW_API_TOKEN"):
        check_bind("0.0.0.0", None)
    with pytest.raises(ValueError, match="beyond this machine"):
        check_bind("10.1.2.3", None)


def test_the_interactive_docs_load_nothing_from_outside(app_client: TestClient) -> None:
    """/docs works where the API has no internet: every script, style and icon it names is served by the API."""
    page = app_client.get("/docs", headers=AUTH).text
    assert "https://" not in page and "http://" not in page, "the docs page names an outside address"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert len(assets) == 3, assets  # script, style sheet, icon
    for asset in assets:
        answer = app_client.get(asset)
        assert answer.status_code == 200 and len(answer.content) > 500, asset
    assert '"validatorUrl": null' in page  # no badge fetched from the online validator
