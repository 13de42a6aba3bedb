"""Read-only SQL for analysts, run by ClickHouse itself under limits it enforces.

Why each layer exists (every one was checked against chDB 26.9 through clickhouse-connect, see
``tests/security/test_sql_confinement.py``):

* Each query gets its **own connection** whose session settings are the limits (rows, time, memory) followed
  by ``readonly=1``. Once ``readonly=1`` is set, ClickHouse refuses writes, DDL, ``SET`` and any ``SETTINGS``
  clause in the query (so ``SETTINGS readonly=0`` or a raised ``max_execution_time`` cannot undo the limits),
  and most table functions that reach outside (``url``, ``s3``, ``remote``, ``executable``, ``mysql``…).
* ``readonly`` does **not** stop everything: on chDB the ``file('/etc/passwd')`` *function* reads any file,
  ``SELECT … INTO OUTFILE`` writes one, the chDB-only ``Python()`` / ``arrowstream()`` table functions read
  objects of this process, and ``SELECT 1; SELECT …`` runs several statements. So the query is first parsed
  by ClickHouse (``formatQuery``, which refuses multi-statements) and the canonical text it returns is what
  is inspected and executed: its AST (``EXPLAIN AST``) may use only allow-listed table functions and no
  deny-listed function; ``INTO OUTFILE`` and ``FORMAT`` clauses are refused.
* Values only ever travel as bound parameters (``{name:Type}`` placeholders): a query with parameters but no
  placeholder is refused, because clickhouse-connect would otherwise splice them in client-side.
* ``result_overflow_mode='break'`` stops at a block boundary, not at the row, so rows are also cut here and
  the result says ``truncated``.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import math
import re
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from tickflow.events.errors import ErrorCode, NonRetryableError, TickflowError
from tickflow.projections.models import SqlResult
from tickflow.projections.store import ClickHouseStore, ProjectionStore

__all__ = [
    "DENIED_FUNCTIONS",
    "READ_KEYWORDS",
    "STATEMENTS",
    "TABLE_FUNCTIONS",
    "ReadOnlySql",
    "SqlError",
    "SqlResult",
    "SqlUnavailable",
    "check_ast",
    "check_statement",
    "reader_statements",
]

#: Statements an analyst may run (first keyword of ClickHouse's canonical form of the query).
READ_KEYWORDS = frozenset({"SELECT", "WITH", "EXPLAIN", "DESCRIBE", "SHOW", "EXISTS"})

#: Table functions that only generate data or read this database's own tables. Anything else (file, url, s3,
#: remote, executable, mysql, Python, arrowstream, merge — which reads any database by regex — …) is refused
#: before ClickHouse sees the query.
TABLE_FUNCTIONS = frozenset(
    {
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "values",
        "generate_series",
        "generateseries",
        "generaterandom",
        "primes",
        "view",
    }
)

#: Ordinary functions that read outside the database even under ``readonly=1`` (checked on chDB: ``file``
#: returns any file's content) or expose the server's configuration.
DENIED_FUNCTIONS = frozenset(
    {"file", "showcertificate", "catboostevaluate", "getserversetting", "getclienthttpheader", "getmacro",
     # These read tables (or dictionaries, any function named dict*) by a name given as a string, which
     # names any database: hasColumnInTable('system', 'users', …).
     "hascolumnintable", "joinget", "joingetornull"}
)

#: Statements allowed, by the type of the root node of ClickHouse's own AST of the query (``EXPLAIN AST``): an
#: allow-list, so a statement kind ClickHouse adds later is refused until someone looks at it. Not here, for
#: instance: ShowCreateDatabaseQuery, ShowCreateViewQuery, ShowCreateDictionaryQuery, ExistsDatabaseQuery,
#: ExistsViewQuery, ExistsDictionaryQuery, ShowGrantsQuery, ShowProcesslistQuery, SHOW CREATE USER/ROLE/QUOTA.
#: ``ShowTables`` also stands for SHOW DATABASES/SETTINGS/CLUSTERS…, told apart by ``_SHOW_ALLOWED``.
STATEMENTS = frozenset({
    "SelectWithUnionQuery", "Explain", "DescribeQuery", "ShowTables", "ShowCreateTableQuery", "ExistsTableQuery",
    "ShowColumns", "ShowIndexes",
})
#: What EXPLAIN may show (of a SELECT only): not ``TABLE OVERRIDE``, which takes a table function.
_EXPLAIN_KINDS = frozenset({"EXPLAIN", "EXPLAIN AST", "EXPLAIN SYNTAX", "EXPLAIN PIPELINE", "EXPLAIN ESTIMATE",
                            "EXPLAIN QUERY TREE", "EXPLAIN PLAN"})
_EXPLAIN_ROOT = re.compile(r"^Explain (.*?)(?: \(children \d+\))?$")

#: SHOW statements that stay in tickflow's database (``SHOW TABLES FROM <db>`` is checked to name it).
_SHOW_ALLOWED = re.compile(r"^SHOW (TABLES|CREATE TABLE|CREATE|COLUMNS|FULL COLUMNS|INDEX|INDEXES|KEYS)\b")

MAX_QUERY_CHARS = 100_000
MAX_PARAMS = 100
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PLACEHOLDER = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:")
_AST_LINE = re.compile(r"^( *)(\S+)(?: (\S+))?")
_VERSION_TRAILER = re.compile(r"\s*\(version [^)]*\)")
_CREDENTIALS = re.compile(r"://[^/@\s]+@")
_CODE_PREFIX = re.compile(r"Code: \d+\. DB::Exception: ")
_REPEATED_NAME = re.compile(r"(\([A-Z_]+\))(?:\.? \1)+")
_SCOPE = re.compile(r":? In scope SELECT formatQuery\(.*?\)\.? ?(?=\([A-Z_]+\)|$)", re.S)


class SqlError(NonRetryableError, ValueError):
    """The query was refused or failed; the message (ClickHouse's own, trimmed) says why. HTTP 400.

    Never retried (the same query is refused again); still a ``ValueError`` for code that catches that."""

    code = ErrorCode.INVALID_REQUEST


class SqlUnavailable(TickflowError):
    """This store has no SQL engine (the in-memory twin). HTTP 501."""

    code = ErrorCode.UNAVAILABLE


def check_ast(ast: str, database: str | None = None) -> None:
    """Refuse an ``EXPLAIN AST`` dump that calls a denied function or a table function not allow-listed, or —
    given ``database`` — names a table of another database (``system.*``, ``INFORMATION_SCHEMA.*``, any other).

    A table function is a ``Function`` node whose parent is a ``TableExpression``; the parent is the nearest
    earlier line indented one level less. Literals are printed quoted with newlines escaped, so a value that
    looks like ``Function file`` can never start a line of its own.
    """
    parents: list[tuple[int, str]] = []
    for line in ast.splitlines():
        m = _AST_LINE.match(line)
        if m is None:
            continue
        depth, node, name = len(m.group(1)), m.group(2), (m.group(3) or "")
        while parents and parents[-1][0] >= depth:
            parents.pop()
        parent = parents[-1][1] if parents else ""
        parents.append((depth, node))
        if database is not None:
            _check_database(node, name, line, database)
        if node != "Function":
            continue
        lowered = name.lower()
        if parent == "TableExpression" and lowered not in TABLE_FUNCTIONS:
            allowed = ", ".join(sorted(TABLE_FUNCTIONS))
            raise SqlError(f"table function {name}() is not allowed here; allowed table functions: {allowed}")
        if lowered in DENIED_FUNCTIONS or lowered.startswith("dict"):
            raise SqlError(f"function {name}() reads outside the database and is not allowed here")


def check_statement(ast: str) -> None:
    """Refuse an ``EXPLAIN AST`` dump whose root is not an allowed statement (``STATEMENTS``); an EXPLAIN must be
    of one of ``_EXPLAIN_KINDS`` and explain a SELECT."""
    lines = [line for line in ast.splitlines() if line.strip()]
    root = lines[0].split()[0] if lines else ""
    if root not in STATEMENTS:
        raise SqlError(f"this kind of statement ({root or 'empty'}) is not allowed here: run SELECT, WITH, EXPLAIN, "
                       "DESCRIBE, SHOW TABLES/COLUMNS/CREATE TABLE or EXISTS [TABLE] on tickflow's own tables")
    if root == "Explain":
        match = _EXPLAIN_ROOT.match(lines[0])
        kind = match.group(1) if match else ""
        child = lines[1].split()[0] if len(lines) > 1 else ""
        if kind not in _EXPLAIN_KINDS or child != "SelectWithUnionQuery":
            raise SqlError("EXPLAIN is allowed for SELECT queries only (EXPLAIN [AST|SYNTAX|PIPELINE|ESTIMATE|"
                           "QUERY TREE] SELECT …)")


def reader_statements(user: str, password: str, database: str) -> list[str]:
    """What ``tickflow sql create-reader`` runs on a ClickHouse server (as an admin): a user that may read
    tickflow's database and nothing else. ``/sql`` then connects as that user (``TICKFLOW_CLICKHOUSE_SQL_URL``),
    never as the projector, which may write and may see whatever its server lets it see.

    The grants: SELECT and SHOW on the database's tables — no INSERT, ALTER, CREATE, DROP, no other database, no
    access management. The session's ``readonly=1`` and limits come on top, per query (``ReadOnlySql.run``).
    """
    for name, value in (("user", user), ("database", database)):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", value):
            raise ValueError(f"{name} {value!r}: use letters, digits and _ (not first)")
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    return [
        f"CREATE USER IF NOT EXISTS `{user}` IDENTIFIED WITH sha256_password BY '{quoted}'",
        f"REVOKE ALL ON *.* FROM `{user}`",
        f"GRANT SELECT, SHOW TABLES, SHOW COLUMNS ON `{database}`.* TO `{user}`",
    ]


def _check_database(node: str, name: str, line: str, database: str) -> None:
    """A table named with a database must be in ``database``: ``TableIdentifier system.tables``, or
    ``ExistsTableQuery system tables`` / ``ShowCreateTableQuery system tables`` (database, then table)."""
    named: str | None = None
    if node == "TableIdentifier" and "." in name:
        named = name.split(".", 1)[0]
    elif node in ("ExistsTableQuery", "ShowCreateTableQuery"):
        words = line.split()
        if len(words) >= 3 and not words[2].startswith("("):
            named = words[1]
    if named is not None and named.strip("`\"") != database:
        raise SqlError(f"only tickflow's own database ({database}) can be read here, not {named}: system tables "
                       "and other databases are out of reach")


def _trim(exc: BaseException, limit: int = 1_000) -> str:
    """ClickHouse's message without the version trailer and repeated prefixes, and never a password."""
    text = _SCOPE.sub(" ", _CREDENTIALS.sub("://", str(exc)))
    text = _VERSION_TRAILER.sub("", text)
    nested = list(_CODE_PREFIX.finditer(text))  # chDB wraps the same exception twice: keep the innermost
    if len(nested) > 1:
        text = text[nested[-1].start() :]
    text = _REPEATED_NAME.sub(r"\1", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    """Turn what clickhouse-connect returns into plain JSON (NaN/Inf become strings: JSON has no such number)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (Decimal, uuid.UUID, ipaddress.IPv4Address, ipaddress.IPv6Address, dt.timedelta)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(raw).decode()
    if isinstance(value, Mapping):
        return {str(_jsonable(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


class ReadOnlySql:
    """Runs analysts' queries on a ``ClickHouseStore``'s database; ``run`` is blocking (call it in a thread). How
    many run at once is the caller's to bound (``tickflow.api.sql`` runs them on a pool of their own).

    Unqualified table names resolve in the store's database (each connection starts with it as default), and
    ``{db}`` in the query text is replaced by its quoted name, like in migrations.
    """

    def __init__(
        self,
        store: ProjectionStore,
        *,
        max_rows_cap: int = 100_000,
        timeout_cap_s: float = 60.0,
        max_memory_bytes: int = 512 * 1024 * 1024,
        max_result_bytes: int = 64 * 1024 * 1024,
        reader_url: str | None = None,
    ) -> None:
        if not isinstance(store, ClickHouseStore):
            raise SqlUnavailable(
                f"SQL needs the ClickHouse store; this API runs on {type(store).__name__}, which has no SQL engine. "
                "Start tickflow with the projector's ClickHouse (embedded chDB or TICKFLOW_CLICKHOUSE_URL)."
            )
        if store.on_server and not reader_url:
            raise SqlUnavailable(
                "on a ClickHouse server, /sql connects as a read-only user of its own, never as the projector: "
                "create it with `tickflow sql create-reader` and set TICKFLOW_CLICKHOUSE_SQL_URL to its URL"
            )
        self._reader_url = reader_url if store.on_server else None
        self._store = store
        self._max_rows_cap = max_rows_cap
        self._timeout_cap_s = timeout_cap_s
        self._max_memory_bytes = max_memory_bytes
        self._max_result_bytes = max_result_bytes

    def run(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        max_rows: int = 1_000,
        timeout_s: float = 10.0,
    ) -> SqlResult:
        """Run one read-only statement with bound ``params``; raise ``SqlError`` with the reason if refused."""
        params = dict(params or {})
        max_rows = max(1, min(int(max_rows), self._max_rows_cap))
        timeout_s = max(0.001, min(float(timeout_s), self._timeout_cap_s))
        text = self._prepare(query, params)
        settings: dict[str, Any] = {
            "max_result_rows": max_rows + 1,
            "max_result_bytes": self._max_result_bytes,
            "result_overflow_mode": "break",
            # 'break' stops at a block boundary: smaller blocks keep the overshoot (and its memory) small.
            "max_block_size": min(max(max_rows + 1, 1_024), 65_536),
            "max_execution_time": timeout_s,
            "timeout_overflow_mode": "throw",
            "max_memory_usage": self._max_memory_bytes,
            "readonly": 1,  # last: once set, nothing above can be changed by the session or the query
        }
        from clickhouse_connect.driver.exceptions import ClickHouseError

        started = time.perf_counter()
        try:
            client = self._store.open_client(settings, self._reader_url)
        except ClickHouseError as exc:
            raise SqlError(f"cannot open a read-only ClickHouse session: {_trim(exc)}") from None
        try:
            canonical = self._canonical(client, text, self._store.database)
            ast = "\n".join(
                str(r[0]) for r in client.query(f"EXPLAIN AST {canonical}", parameters=params).result_rows
            )
            check_statement(ast)
            check_ast(ast, self._store.database)
            result = client.query(canonical, parameters=params)
        except ClickHouseError as exc:
            raise SqlError(_trim(exc)) from None
        finally:
            client.close()
        elapsed_ms = (time.perf_counter() - started) * 1000
        rows = result.result_rows
        return SqlResult(
            columns=list(result.column_names),
            types=[t.name for t in result.column_types],
            rows=[[_jsonable(v) for v in row] for row in rows[:max_rows]],
            truncated=len(rows) > max_rows,
            elapsed_ms=round(elapsed_ms, 3),
        )

    def _prepare(self, query: str, params: dict[str, Any]) -> str:
        if not query.strip():
            raise SqlError("the query is empty: send a SELECT, WITH, EXPLAIN, DESCRIBE, SHOW or EXISTS statement")
        if len(query) > MAX_QUERY_CHARS:
            raise SqlError(f"the query is {len(query)} characters; the limit is {MAX_QUERY_CHARS}")
        if len(params) > MAX_PARAMS:
            raise SqlError(f"{len(params)} parameters sent; the limit is {MAX_PARAMS}")
        placeholders = set(_PLACEHOLDER.findall(query))
        for name in params:
            if not _PARAM_NAME.match(name):
                raise SqlError(f"parameter name {name!r} is invalid: use letters, digits and _ (not first)")
            if name not in placeholders:
                raise SqlError(
                    f"parameter {name!r} is not used: reference it in the query as {{{name}:Type}}, "
                    f"e.g. {{{name}:String}}; values are always bound, never spliced into the text"
                )
        return query.replace("{db}", f"`{self._store.database}`")

    @staticmethod
    def _check_show(canonical: str, database: str) -> None:
        """SHOW TABLES [FROM db], SHOW COLUMNS/INDEX FROM table [FROM db] (or FROM db.table), SHOW CREATE TABLE
        (its table is checked in the AST): any database named must be tickflow's."""
        if not _SHOW_ALLOWED.match(canonical):
            raise SqlError("of the SHOW statements only SHOW TABLES, SHOW CREATE TABLE and SHOW COLUMNS are allowed, "
                           "and only of tickflow's own database")
        words = canonical.split()
        targets = [words[i + 1] for i, word in enumerate(words[:-1]) if word.upper() in ("FROM", "IN")]
        if canonical.startswith("SHOW TABLES"):
            named = targets[:1]
        else:
            named = targets[1:2] or [t.split(".", 1)[0] for t in targets[:1] if "." in t]
        for db in named:
            if db.strip("`\"") != database:
                raise SqlError(f"only tickflow's own database ({database}) can be shown here, not {db}")

    @staticmethod
    def _canonical(client: Any, text: str, database: str) -> str:
        """ClickHouse's own formatting of the statement: one statement, no comments, clauses on their lines."""
        canonical = str(client.query("SELECT formatQuery({q:String})", parameters={"q": text}).result_rows[0][0])
        keyword = canonical.split(None, 1)[0].upper() if canonical.strip() else ""
        if keyword not in READ_KEYWORDS:
            allowed = ", ".join(sorted(READ_KEYWORDS))
            raise SqlError(f"only read statements are allowed ({allowed}); this one starts with {keyword or '?'}")
        # formatQuery escapes newlines inside literals, so a clause can only start a line as a real clause.
        if keyword == "SHOW":
            ReadOnlySql._check_show(canonical, database)
        if re.search(r"(?m)^\s*INTO OUTFILE\b", canonical):
            raise SqlError("INTO OUTFILE is not allowed: the result comes back in the response")
        if re.search(r"(?m)^\s*FORMAT\b", canonical):
            raise SqlError("drop the FORMAT clause: the endpoint returns columns, types and rows as JSON")
        return canonical
