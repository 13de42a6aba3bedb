-- Retention: `vacuum` (and the projector's periodic expiry, TICKFLOW_CLICKHOUSE_TTL_DAYS) deletes a finished run
-- from every per-run table by run id. Ticks are ordered by (stack_id, tick), so a delete by run id, or of the
-- skipped ticks by due time, would read every part: these skip indexes let it read only the granules that hold them.
-- (The TTL clauses older versions put on events and runs are removed by ClickHouseStore.drop_legacy_ttl: the one on
-- events expired rows by event time, including those of runs still in flight.)
ALTER TABLE {db}.ticks ADD INDEX IF NOT EXISTS ticks_run_id run_id TYPE bloom_filter GRANULARITY 4;
ALTER TABLE {db}.ticks ADD INDEX IF NOT EXISTS ticks_due_at due_at TYPE minmax GRANULARITY 4;
ALTER TABLE {db}.ticks MATERIALIZE INDEX ticks_run_id;
ALTER TABLE {db}.ticks MATERIALIZE INDEX ticks_due_at;
