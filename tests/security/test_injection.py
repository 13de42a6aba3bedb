"""SQL injection through every query-string and path parameter of the read endpoints, and through the SQL
endpoint's bound parameters, against the real stack (broker, engine, worker, projector, chDB, API).

Each payload must get a 4xx or a normal empty answer; afterwards the tables hold exactly what they held
before, and no answer carries a row it should not (the seeded runs' ids never appear in a filtered answer).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from click.testing import CliRunner, Result

from tests.conftest import free_port
from tests.integration.flows import registry
from tests.integration.harness import settings_for
from tickflow.cli import main
from tickflow.client import Client
from tickflow.events.errors import TickflowError
from tickflow.node import Node

pytestmark = pytest.mark.integration

PAYLOADS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    "x'); DROP TABLE runs; --",
    'x"; DROP TABLE events; --',
    "1; DROP TABLE runs",
    "' UNION ALL SELECT run_id FROM runs --",
    "{db}",
    "{db}.runs",
    "{status:String}",
    "\\",
    "\\' OR 1=1 --",
    "%27%20OR%201%3D1",
    "ñandú 🙂 \u202e evil \u0301",
    "nul\x00byte",
    "\x00",
    "completed' --",
    "*/ SELECT 1 /*",
    "$$ OR 1=1 $$",
]
SEEDED = ("inj-a", "inj-b", "inj-c")
COUNTS_SQL = "SELECT (SELECT count() FROM runs FINAL) AS runs, (SELECT count() FROM events FINAL) AS events"
#: The tables of tickflow's database (the SQL endpoint reads no system table, so it lists them itself).
TABLES_SQL = "SHOW TABLES"


@pytest.fixture
async def http(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    node = Node(settings_for(prefix, kafka_bootstrap, tmp_path, free_port()), registry)
    await node.start()
    try:
        async with httpx.AsyncClient(base_url=node.settings.api_url, timeout=30) as h:
            for rid in SEEDED:
                r = await h.post("/runs", json={"workflow": "math", "input": 1, "run_id": rid})
                assert r.status_code == 202, r.text
            for _ in range(600):
                listed = (await h.get("/runs", params={"status": "completed"})).json()
                if {r["run_id"] for r in listed} >= set(SEEDED):
                    break
                await asyncio.sleep(0.1)
            else:
                pytest.fail(f"the seeded runs did not complete within 60 s; last list: {listed}")
            yield h
    finally:
        await node.stop()


async def snapshot(h: httpx.AsyncClient) -> list[Any]:
    r = await h.post("/sql", json={"query": COUNTS_SQL})
    assert r.status_code == 200, r.text
    tables = await h.post("/sql", json={"query": TABLES_SQL})
    assert tables.status_code == 200, tables.text
    runs = sorted(x["run_id"] for x in (await h.get("/runs", params={"limit": 1000})).json())
    return [r.json()["rows"], tables.json()["rows"], runs]


def assert_harmless(r: httpx.Response, empty: Any, what: str) -> None:
    assert r.status_code < 500, f"{what}: {r.status_code} {r.text}"
    if r.status_code == 200:
        assert r.json() == empty, f"{what} answered rows it should not: {r.text}"
    for rid in SEEDED:
        assert rid not in r.text or r.status_code >= 400, f"{what} leaked {rid}: {r.text}"


async def test_read_endpoints_resist_injection(http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    assert before[0][0][0] == 3 and before[2] == sorted(SEEDED) and ["runs"] in before[1]
    for p in PAYLOADS:
        for name in ("status", "workflow"):
            r = await http.get("/runs", params={name: p})
            assert_harmless(r, [], f"GET /runs?{name}={p!r}")
        for name in ("limit", "offset"):
            r = await http.get("/runs", params={name: p})
            assert r.status_code == 422, f"GET /runs?{name}={p!r}: {r.status_code} {r.text}"
        r = await http.get("/stats", params={"workflow": p})
        assert r.status_code == 200 and r.json()["runs"] == {} and r.json()["total"] == 0, r.text
        path = quote(p, safe="")
        r = await http.get(f"/runs/{path}")
        assert r.status_code in (404, 422), f"GET /runs/{p!r}: {r.status_code} {r.text}"
        r = await http.get(f"/runs/{path}/events")
        assert_harmless(r, [], f"GET /runs/{p!r}/events")
    assert await snapshot(http) == before


async def test_sql_parameters_are_values_never_code(http: httpx.AsyncClient) -> None:
    before = await snapshot(http)
    for p in PAYLOADS:
        by_id = {"query": "SELECT run_id FROM runs FINAL WHERE run_id = {id:String}", "params": {"id": p}}
        r = await http.post("/sql", json=by_id)
        assert r.status_code == 200 and r.json()["rows"] == [], f"{p!r}: {r.status_code} {r.text}"
        echo = await http.post("/sql", json={"query": "SELECT {v:String} AS v", "params": {"v": p}})
        assert echo.status_code == 200 and echo.json()["rows"] == [[p]], f"{p!r}: {echo.text}"
        many = {"query": "SELECT count() FROM runs FINAL WHERE run_id IN {ids:Array(String)}", "params": {"ids": [p]}}
        r = await http.post("/sql", json=many)
        assert r.status_code == 200 and r.json()["rows"] == [[0]], f"{p!r}: {r.text}"
        # A payload as a parameter *name*, or as the query itself, is refused or answered harmlessly.
        r = await http.post("/sql", json={"query": "SELECT 1", "params": {p: "x"}})
        assert r.status_code == 400, f"{p!r} as a name: {r.status_code} {r.text}"
        r = await http.post("/sql", json={"query": f"SELECT count() FROM runs WHERE run_id = '{p}'"})
        assert r.status_code in (200, 400), f"{p!r} spliced by the caller: {r.status_code} {r.text}"
    assert await snapshot(http) == before


async def test_lone_surrogates_are_refused_not_crashed_on(http: httpx.AsyncClient) -> None:
    """JSON can escape half a UTF-16 pair; Python keeps it as a str nothing downstream can encode (this
    was a 500 from the Kafka codec, chDB and the error response itself)."""
    before = await snapshot(http)
    headers = {"content-type": "application/json"}
    bodies = [
        ("/runs", '{"workflow": "math", "input": "\\ud800"}'),
        ("/runs", '{"workflow": "math", "input": {"\\udfff": 1}}'),
        ("/sql", '{"query": "SELECT \'\\ud800\'"}'),
        ("/sql", '{"query": "SELECT {v:String}", "params": {"v": "a\\udc00b"}}'),
        ("/runs/inj-a/cancel", '{"reason": "\\ud83d"}'),
        ("/runs/inj-a/resume", '{"event": "e", "payload": "\\ud800"}'),
    ]
    for path, raw in bodies:
        r = await http.post(path, content=raw, headers=headers)
        assert r.status_code == 422 and "surrogate" in r.json()["detail"], f"{path} {raw}: {r.status_code} {r.text}"
    pair = await http.post(
        "/sql", content='{"query": "SELECT {v:String}", "params": {"v": "\\ud83d\\ude00"}}', headers=headers
    )
    assert pair.status_code == 200 and pair.json()["rows"] == [["\U0001f600"]], pair.text  # a full pair is fine
    assert await snapshot(http) == before


async def test_sdk_and_cli_run_the_same_bound_query(http: httpx.AsyncClient) -> None:
    url = str(http.base_url).rstrip("/")
    query = "SELECT run_id, status FROM runs FINAL WHERE run_id IN {ids:Array(String)} ORDER BY run_id"

    def sdk() -> None:
        with Client(url) as c:
            res = c.sql(query, {"ids": ["inj-a", "inj-c", "' OR 1=1 --"]})
            assert (res.columns, res.rows, res.truncated) == (
                ["run_id", "status"],
                [["inj-a", "completed"], ["inj-c", "completed"]],
                False,
            )
            assert c.sql("SELECT number FROM numbers(10)", max_rows=3).truncated
            with pytest.raises(TickflowError, match="only read statements"):
                c.sql("DROP TABLE runs")

    def cli(*args: str) -> Result:
        port = url.rsplit(":", 1)[1]
        return CliRunner().invoke(main, ["sql", *args], env={"TICKFLOW_API_PORT": port}, catch_exceptions=False)

    await asyncio.to_thread(sdk)
    as_json = await asyncio.to_thread(cli, query, "--param", 'ids=["inj-b"]', "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    assert orjson.loads(as_json.stdout)["rows"] == [["inj-b", "completed"]]
    table = await asyncio.to_thread(cli, "SELECT status, count() AS n FROM runs FINAL GROUP BY status")
    assert table.exit_code == 0 and table.stdout.splitlines()[2].split() == ["completed", "3"], table.output
    refused = await asyncio.to_thread(cli, "SELECT {x:String}", "--param", "y=1")
    assert refused.exit_code == 1 and "parameter 'y' is not used" in refused.output
