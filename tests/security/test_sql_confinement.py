"""The analyst SQL runner on real embedded ClickHouse (chDB through clickhouse-connect): what it answers,
what it refuses, and that the limits are enforced by ClickHouse itself. The in-memory twin has no SQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.contract.projections.test_projection_store import events_for, project
from tickflow.api.app import create_api
from tickflow.events.topics import TopicNames
from tickflow.projections.queries import RunQuery
from tickflow.projections.sql import ReadOnlySql, SqlError, SqlUnavailable, check_ast, reader_statements
from tickflow.projections.store import ClickHouseStore, MemoryStore


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseStore]:
    s = ClickHouseStore(path=str(tmp_path_factory.mktemp("sql") / "ch"), database="sqltest")
    s.migrate()
    for i in range(5):
        project(s, events_for(f"r{i}", fail=i % 2 == 1, t0=1_700_000_000_000 + i * 10), offset0=i * 2)
    yield s
    s.close()


@pytest.fixture(scope="module")
def sql(store: ClickHouseStore) -> ReadOnlySql:
    return ReadOnlySql(store)


def counts(store: ClickHouseStore) -> tuple[int, int]:
    return store.event_count(), len(store.list_runs(RunQuery(limit=1000)))


def test_select_with_bound_parameters(sql: ReadOnlySql) -> None:
    res = sql.run("SELECT run_id, status FROM runs FINAL WHERE status = {s:String} ORDER BY run_id", {"s": "failed"})
    assert res.columns == ["run_id", "status"] and res.types == ["String", "LowCardinality(String)"]
    assert res.rows == [["r1", "failed"], ["r3", "failed"]] and not res.truncated and res.elapsed_ms > 0
    ids = {"ids": ["r0", "r4"]}
    qualified = sql.run("SELECT count() FROM {db}.runs FINAL WHERE run_id IN {ids:Array(String)}", ids)
    assert qualified.rows == [[2]]
    # A value that looks like SQL is only ever a value.
    evil = "' OR 1=1 --"
    assert sql.run("SELECT count() FROM runs FINAL WHERE run_id = {id:String}", {"id": evil}).rows == [[0]]
    assert sql.run("SELECT {v:String} AS v", {"v": evil}).rows == [[evil]]


def test_read_statements_and_json_safe_values(sql: ReadOnlySql) -> None:
    assert ["events"] in sql.run("SHOW TABLES").rows
    assert sql.run("DESCRIBE TABLE runs").rows[0][:2] == ["run_id", "String"]
    assert sql.run("EXPLAIN SELECT 1").columns == ["explain"]
    res = sql.run("WITH 1 AS a SELECT a, nan AS n, toDecimal32(1.5, 2) AS d, [1, 2] AS arr, map('k', 1) AS m")
    assert res.rows == [[1, "nan", "1.50", [1, 2], {"k": 1}]]


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO runs (run_id) VALUES ('x')",
        "ALTER TABLE runs DELETE WHERE 1",
        "DROP TABLE runs",
        "TRUNCATE TABLE events",
        "CREATE TABLE x (a Int8) ENGINE = Memory",
        "SET readonly = 0",
        "SELECT count() FROM runs SETTINGS readonly = 0",
        "SELECT count() FROM numbers(10) SETTINGS max_execution_time = 0",
        "SELECT 1; DROP TABLE runs",
        "SELECT 1; SELECT file('/etc/passwd')",
        "OPTIMIZE TABLE runs FINAL",
        "SYSTEM STOP MERGES",
    ],
)
def test_writes_and_setting_changes_are_refused(sql: ReadOnlySql, store: ClickHouseStore, query: str) -> None:
    before = counts(store)
    with pytest.raises(SqlError):
        sql.run(query)
    assert counts(store) == before == (10, 5)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file() is not allowed"),
        ("SELECT file('/etc/passwd')", "file() reads outside"),
        ("SELECT length(FILE('/etc/passwd'))", "FILE() reads outside"),
        ("SELECT * FROM url('http://127.0.0.1:9/x', 'CSV', 'a String')", "url() is not allowed"),
        ("SELECT * FROM s3('http://127.0.0.1:9/bucket/x.csv')", "s3() is not allowed"),
        ("SELECT * FROM remote('127.0.0.1:9000', system.one)", "remote() is not allowed"),
        ("SELECT * FROM executable('ls', 'TSV', 'x String')", "executable() is not allowed"),
        ("SELECT * FROM Python(store)", "Python() is not allowed"),
        ("SELECT * FROM numbers(1) AS n JOIN (SELECT * FROM url('http://x/y', 'CSV', 'a String')) AS u ON 1", "url()"),
        ("SELECT arrayMap(p -> file(p), ['/etc/passwd'])", "file() reads outside"),
        ("EXPLAIN SYNTAX SELECT file('/etc/passwd')", "file() reads outside"),
        ("DESCRIBE file('/etc/passwd')", "file() is not allowed"),
        ("SELECT getServerSetting('path')", "getServerSetting() reads outside"),
    ],
)
def test_reaching_outside_is_refused(sql: ReadOnlySql, query: str, reason: str) -> None:
    with pytest.raises(SqlError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        sql.run(query)


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("SELECT count() FROM system.tables", "not system"),
        ("SELECT count() FROM `system`.`users`", "not system"),
        ("SELECT * FROM INFORMATION_SCHEMA.tables", "not INFORMATION_SCHEMA"),
        ("SELECT * FROM default.anything", "not default"),
        ("SELECT count() FROM runs AS r JOIN system.one AS o ON 1", "not system"),
        ("SELECT (SELECT count() FROM system.tables)", "not system"),
        ("SELECT * FROM view(SELECT * FROM system.one)", "not system"),
        ("SELECT * FROM merge('system', '.*')", "merge() is not allowed"),
        ("SELECT * FROM clusterAllReplicas('default', system.one)", "clusterAllReplicas() is not allowed"),
        ("DESCRIBE system.tables", "not system"),
        ("EXISTS system.tables", "not system"),
        ("SHOW CREATE TABLE system.tables", "not system"),
        ("SHOW TABLES FROM system", "not system"),
        ("SHOW COLUMNS FROM tables FROM system", "not system"),
        ("SHOW COLUMNS FROM system.tables", "not system"),
        ("SHOW DATABASES", "only SHOW TABLES"),
        ("SHOW USERS", "only SHOW TABLES"),
        ("SHOW PROCESSLIST", "only SHOW TABLES"),
        ("SHOW SETTINGS LIKE 'max%'", "only SHOW TABLES"),
        ("SELECT hasColumnInTable('system', 'tables', 'name')", "hasColumnInTable() reads outside"),
        ("SELECT dictGet('system.d', 'x', 1)", "dictGet() reads outside"),
        ("SELECT joinGet('system.j', 'x', 1)", "joinGet() reads outside"),
        # Metadata of other databases, by statement kind (refused by the root of ClickHouse's own AST).
        ("SHOW CREATE DATABASE system", "ShowCreateDatabaseQuery) is not allowed"),
        ("SHOW CREATE DATABASE sqltest", "ShowCreateDatabaseQuery) is not allowed"),
        ("EXISTS DATABASE system", "ExistsDatabaseQuery) is not allowed"),
        ("SHOW CREATE VIEW other.x", "ShowCreateViewQuery) is not allowed"),
        ("EXISTS VIEW other.x", "ExistsViewQuery) is not allowed"),
        ("SHOW CREATE DICTIONARY system.d", "ShowCreateDictionaryQuery) is not allowed"),
        ("EXISTS DICTIONARY system.d", "ExistsDictionaryQuery) is not allowed"),
        ("SHOW CREATE USER default", "is not allowed"),
        ("SHOW CREATE ROLE r", "is not allowed"),
        ("SHOW CREATE QUOTA", "is not allowed"),
        ("SHOW GRANTS", "only SHOW TABLES"),
        ("SHOW ACCESS", "only SHOW TABLES"),
        ("SHOW PRIVILEGES", "only SHOW TABLES"),
        ("SHOW FUNCTIONS", "only SHOW TABLES"),
        ("SHOW ENGINES", "only SHOW TABLES"),
        ("SHOW DICTIONARIES", "only SHOW TABLES"),
        ("SHOW CLUSTERS", "only SHOW TABLES"),
        ("SHOW MERGES", "only SHOW TABLES"),
        ("EXISTS TABLE system.tables", "not system"),
        ("EXPLAIN SELECT * FROM system.tables", "not system"),
        ("EXPLAIN TABLE OVERRIDE mysql('a', 'b', 'c', 'd', 'e') PARTITION BY x", "EXPLAIN is allowed for SELECT"),
        ("EXPLAIN AST SHOW CREATE DATABASE system", "EXPLAIN is allowed for SELECT"),
    ],
)
def test_other_databases_are_out_of_reach(sql: ReadOnlySql, query: str, reason: str) -> None:
    with pytest.raises(SqlError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        sql.run(query)


def test_its_own_database_stays_readable_every_way(sql: ReadOnlySql, store: ClickHouseStore) -> None:
    db = store.database
    assert sql.run("EXPLAIN SELECT count() FROM runs").rows and sql.run("EXPLAIN AST SELECT 1").rows
    assert sorted(sql.run("SELECT 1 UNION ALL SELECT 2").rows) == [[1], [2]]  # UNION ALL keeps no order
    assert sql.run("SHOW INDEX FROM runs").columns and sql.run("EXISTS TABLE runs").rows == [[1]]
    assert sql.run(f"SELECT count() FROM {db}.runs FINAL").rows == [[5]]
    assert ["runs"] in sql.run(f"SHOW TABLES FROM {db}").rows
    assert sql.run("EXISTS runs").rows == [[1]] and sql.run(f"EXISTS {db}.runs").rows == [[1]]
    assert sql.run("SHOW CREATE TABLE runs").rows[0][0].startswith(f"CREATE TABLE {db}.runs")
    assert sql.run("SHOW COLUMNS FROM runs").rows and sql.run(f"DESCRIBE {db}.runs").rows


def test_the_session_itself_is_read_only_and_limited(sql: ReadOnlySql, store: ClickHouseStore) -> None:
    """The limits are ClickHouse settings of the session, not a filter of ours: check ClickHouse sees them."""
    res = sql.run(
        "SELECT getSetting('readonly'), getSetting('max_execution_time'), getSetting('max_result_rows')",
        max_rows=9,
        timeout_s=3,
    )
    assert [str(v) for v in res.rows[0]] == ["1", "3.0", "10"]
    client = store.open_client({"readonly": 1})
    try:
        with pytest.raises(Exception, match="READONLY"):
            client.command("INSERT INTO runs (run_id) VALUES ('sneaky')")
    finally:
        client.close()
    assert counts(store) == (10, 5)


def test_into_outfile_writes_nothing(sql: ReadOnlySql, tmp_path: Path) -> None:
    target = tmp_path / "leak.csv"
    with pytest.raises(SqlError, match="INTO OUTFILE"):
        sql.run(f"SELECT * FROM runs INTO OUTFILE '{target}'")
    with pytest.raises(SqlError, match="FORMAT"):
        sql.run("SELECT 1 FORMAT JSON")
    assert not target.exists()


def test_rows_time_and_memory_are_bounded(sql: ReadOnlySql) -> None:
    res = sql.run("SELECT number FROM numbers(1000000)", max_rows=7)
    assert res.truncated and res.rows == [[i] for i in range(7)]
    assert not sql.run("SELECT number FROM numbers(7)", max_rows=7).truncated
    with pytest.raises(SqlError, match="TIMEOUT_EXCEEDED"):
        sql.run("SELECT count() FROM numbers(1000000000000)", timeout_s=0.5)
    small = ReadOnlySql(sql._store, max_memory_bytes=50_000_000)
    with pytest.raises(SqlError, match="MEMORY_LIMIT_EXCEEDED"):
        small.run("SELECT groupArray(number) FROM numbers(100000000)")


def test_parameters_are_only_ever_bound(sql: ReadOnlySql) -> None:
    # clickhouse-connect would format %(x)s client-side; the runner refuses a parameter without a placeholder.
    with pytest.raises(SqlError, match="not used"):
        sql.run("SELECT %(x)s", {"x": "1"})
    with pytest.raises(SqlError, match="invalid"):
        sql.run("SELECT {x:String}", {"$x$": "1"})
    with pytest.raises(SqlError, match="empty"):
        sql.run("   ")
    with pytest.raises(SqlError, match="SYNTAX_ERROR"):
        sql.run("SELEC 1")
    with pytest.raises(SqlError, match="UNKNOWN_TABLE"):
        sql.run("SELECT * FROM no_such_table")
    with pytest.raises(SqlError, match="BAD_QUERY_PARAMETER"):
        sql.run("SELECT {n:UInt8}", {"n": "not a number"})


def test_check_ast_reads_table_functions_by_position() -> None:
    ast = "\n".join(
        [
            "SelectWithUnionQuery (children 1)",
            " SelectQuery (children 2)",
            "  ExpressionList (children 1)",
            "   Function upper (children 1)",
            "  TablesInSelectQuery (children 1)",
            "   TablesInSelectQueryElement (children 1)",
            "    TableExpression (children 1)",
            "     Function numbers (alias n) (children 1)",
            "      Literal '\\nFunction file'",
        ]
    )
    check_ast(ast)  # upper() is an ordinary function; numbers() is allowed; the literal is a value
    with pytest.raises(SqlError, match="mysql"):
        check_ast(ast.replace("Function numbers", "Function mysql"))


def test_memory_store_has_no_sql(tmp_path: Path) -> None:
    with pytest.raises(SqlUnavailable, match="MemoryStore"):
        ReadOnlySql(MemoryStore())
    app = create_api(store=MemoryStore(), producer=None, topics=TopicNames("t"), workflows=None)
    with TestClient(app) as http:
        answer = http.post("/sql", json={"query": "SELECT 1"})
    assert answer.status_code == 501 and "no SQL engine" in answer.json()["detail"]


def test_api_answers_400_with_the_reason(store: ClickHouseStore) -> None:
    app = create_api(store=store, producer=None, topics=TopicNames("t"), workflows=None)
    with TestClient(app) as http:
        ok = http.post("/sql", json={"query": "SELECT count() AS n FROM runs FINAL", "max_rows": 5})
        bad = http.post("/sql", json={"query": "DROP TABLE runs"})
        unknown_field = http.post("/sql", json={"query": "SELECT 1", "sql": "x"})
    assert ok.status_code == 200 and ok.json()["rows"] == [[5]] and ok.json()["columns"] == ["n"]
    assert bad.status_code == 400 and "only read statements" in bad.json()["detail"]
    assert unknown_field.status_code == 422


def test_on_a_server_sql_needs_a_reader_of_its_own_and_its_grants_are_valid_sql(store: ClickHouseStore) -> None:
    """A server store without TICKFLOW_CLICKHOUSE_SQL_URL has no /sql (the projector's user may write); the
    statements ``tickflow create-sql-reader`` runs parse in ClickHouse and grant reads of one database only."""
    on_server = ClickHouseStore.__new__(ClickHouseStore)
    on_server._url, on_server._path = "clickhouse://admin:pw@db:8123", None  # a server store, never connected
    with pytest.raises(SqlUnavailable, match="TICKFLOW_CLICKHOUSE_SQL_URL"):
        ReadOnlySql(on_server)
    statements = reader_statements("tickflow_reader", "p'w\\", "tickflow")
    client = store.open_client({})
    try:
        for statement in statements:
            assert client.query("SELECT formatQuery({q:String})", parameters={"q": statement}).result_rows
    finally:
        client.close()
    assert statements[-1] == "GRANT SELECT, SHOW TABLES, SHOW COLUMNS ON `tickflow`.* TO `tickflow_reader`"
    assert not any(word in " ".join(statements) for word in ("INSERT", "ALTER", "DROP", "*.* TO"))
    with pytest.raises(ValueError, match="letters"):
        reader_statements("x; DROP", "pw", "tickflow")


async def test_queries_queue_on_their_own_slots_and_a_full_queue_answers_429(store: ClickHouseStore) -> None:
    """One slot, eight waiting: the tenth concurrent query is refused at once instead of tying up a thread."""
    import asyncio

    import httpx

    from tests.unit.api.test_api_errors import RecordingProducer

    app = create_api(store=store, producer=RecordingProducer(), topics=TopicNames("q"), workflows=None,
                     sql_concurrency=1)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        body = {"query": "SELECT sleep(0.3)", "timeout_s": 10}
        answers = await asyncio.gather(*(http.post("/sql", json=body) for _ in range(10)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 9 + [429], codes
    assert next(a for a in answers if a.status_code == 429).json()["code"] == "busy"
