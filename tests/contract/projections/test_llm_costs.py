"""Honest LLM costs in ClickHouse (embedded chDB): the ``llm_calls`` flags, the rollup's counts of attempts at
unknown and illustrative prices, the analytics that report them, the bulk rebuild path (old events included), and
migration 004 applied to a database that already holds rows."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import orjson

from tests.contract.projecting import project
from tickflow.events import Envelope, encode
from tickflow.events.agents import LlmCallAttempted
from tickflow.projections import analytics
from tickflow.projections.bulk import BulkLoad
from tickflow.projections.fold import ProjectionFold, Record
from tickflow.projections.store import ClickHouseStore, _statements

T0 = 1_700_000_000_000


def _call(model: str, **kw: object) -> LlmCallAttempted:
    base: dict[str, object] = dict(path="a.llm", provider="p", model=model, outcome="ok", tokens_in=100,
                                   tokens_out=20, agent="planner", stack_id="s1")
    return LlmCallAttempted(**(base | kw))


def _records(calls: list[tuple[str, LlmCallAttempted]]) -> list[Record]:
    seqs: dict[str, int] = {}
    out: list[Record] = []
    for offset, (run_id, payload) in enumerate(calls):
        seqs[run_id] = seqs.get(run_id, 0) + 1
        env = Envelope.wrap(payload, id=f"{run_id}/{seqs[run_id]}", key=run_id, seq=seqs[run_id],
                            occurred_at_ms=T0 + 1000 * offset)
        out.append((0, offset, env))
    return out


def scenario() -> list[Record]:
    """Run r-unknown calls a model without a price (twice, the second with estimated usage); run r-demo calls an
    offline model at an illustrative price; run r-paid a priced model."""
    return _records([
        ("r-unknown", _call("unpriced", price_known=False)),
        ("r-unknown", _call("unpriced", price_known=False, usage_estimated=True)),
        ("r-demo", _call("offline/echo", provider="offline", cost_usd=0.00008, price_illustrative=True,
                         stack_id="s2")),
        ("r-paid", _call("priced", cost_usd=0.0012)),
    ])


def _store(tmp_path: Path, database: str = "tickflow") -> ClickHouseStore:
    store = ClickHouseStore(path=str(tmp_path / "ch"), database=database)  # chDB: one path per process
    store.migrate()
    return store


def _usage(store: ClickHouseStore) -> dict[str, dict[str, object]]:
    rows = analytics.usage(store, by="model", since_ms=T0 - 60_000, until_ms=T0 + 60_000, bucket="total")
    return {str(r["model"]): r for r in rows}


def test_usage_reports_unknown_and_illustrative_costs_apart(tmp_path: Path) -> None:
    store = _store(tmp_path)
    project(store, scenario())
    usage = _usage(store)
    unknown, demo, paid = usage["unpriced"], usage["offline/echo"], usage["priced"]
    assert (unknown["calls"], unknown["calls_price_unknown"], unknown["cost_complete"]) == (2, 2, False)
    assert unknown["calls_usage_estimated"] == 1 and unknown["cost_usd"] == 0
    assert (demo["calls_price_unknown"], demo["calls_price_illustrative"], demo["cost_complete"]) == (0, 1, True)
    assert demo["cost_usd"] == demo["cost_illustrative_usd"] == 0.00008
    assert (paid["cost_usd"], paid["cost_illustrative_usd"], paid["cost_complete"]) == (0.0012, 0.0, True)

    calls = analytics.run_llm_calls(store, "r-unknown")
    assert [(c["cost_usd"], c["price_known"], c["usage_estimated"]) for c in calls] == [
        (None, False, False), (None, False, True)]
    (demo_call,) = analytics.run_llm_calls(store, "r-demo")
    assert demo_call["cost_usd"] == 0.00008 and demo_call["price_illustrative"] and demo_call["price_known"]

    assert analytics.stack_costs(store) == {
        "s1": {"calls_price_unknown": 2, "calls_price_illustrative": 0},
        "s2": {"calls_price_unknown": 0, "calls_price_illustrative": 1},
    }
    assert analytics.stack_costs(store, ["s2", "nope"]) == {
        "s2": {"calls_price_unknown": 0, "calls_price_illustrative": 1}}
    store.close()


def test_the_bulk_rebuild_derives_the_same_flags_and_reads_old_events_as_priced(tmp_path: Path) -> None:
    records = scenario()
    old = _records([("r-old", _call("legacy", cost_usd=0.5))])[0]
    records.append((0, len(records), old[2]))
    values = []
    for _, offset, env in records:
        raw = encode(env)
        if env.key == "r-old":  # as a worker wrote it before the flags existed
            doc = orjson.loads(raw)
            for name in ("price_known", "price_illustrative", "usage_estimated"):
                del doc["payload"][name]
            raw = orjson.dumps(doc)
        values.append(SimpleNamespace(offset=offset, value=raw))

    folded = _store(tmp_path, "folded")
    project(folded, records)
    bulk_store = _store(tmp_path, "bulk")
    bulk = BulkLoad(bulk_store, "t.events", ProjectionFold())
    bulk.create_tables()
    bulk.suspend_views()
    bulk.add(0, values)
    bulk.stage(bulk.take())
    bulk.derive()
    bulk.drop_tables()

    sql = ("SELECT run_id, seq, model, cost_usd, price_known, price_illustrative, usage_estimated "
           "FROM {db}.llm_calls FINAL ORDER BY run_id, seq")
    assert bulk_store.query(sql) == folded.query(sql)
    assert ("r-old", 1, "legacy", 0.5, 1, 0, 0) in bulk_store.query(sql)
    assert _usage(bulk_store) == _usage(folded)  # the view, re-created after the load, filled the new columns
    assert _usage(bulk_store)["unpriced"]["calls_price_unknown"] == 2
    folded.close()
    bulk_store.close()


def test_migration_004_upgrades_a_database_that_holds_calls(tmp_path: Path) -> None:
    """Rows projected before 004 read as priced (what their events said); calls projected after it are counted."""
    store = ClickHouseStore(path=str(tmp_path / "ch"))
    db = store.quoted_database
    store.command(f"CREATE DATABASE IF NOT EXISTS {db}")
    store.command(f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations (version UInt32, name String, "
                  "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version")
    folder = resources.files("tickflow.projections") / "migrations"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        version = int(entry.name.split("_", 1)[0]) if entry.name.endswith(".sql") else 0
        if 0 < version < 4:
            for statement in _statements(entry.read_text()):
                store.command(statement.replace("{db}", db))
            store.command(f"INSERT INTO {db}.schema_migrations (version, name) VALUES ({version}, '{entry.name}')")
    store.command(f"INSERT INTO {db}.llm_calls (run_id, seq, model, provider, cost_usd, started_at, occurred_at, "
                  f"partition, offset) VALUES ('r-before', 1, 'legacy', 'p', 0.25, fromUnixTimestamp64Milli({T0}), "
                  f"fromUnixTimestamp64Milli({T0}), 9, 0)")  # another partition: the scenario's offsets are new

    store.migrate()
    assert store.query("SELECT price_known, price_illustrative, usage_estimated FROM {db}.llm_calls "
                       "WHERE run_id = 'r-before'") == [(1, 0, 0)]
    project(store, scenario())
    usage = _usage(store)
    assert usage["legacy"]["cost_usd"] == 0.25 and usage["legacy"]["calls_price_unknown"] == 0
    assert usage["unpriced"]["calls_price_unknown"] == 2 and usage["offline/echo"]["calls_price_illustrative"] == 1
    store.close()
