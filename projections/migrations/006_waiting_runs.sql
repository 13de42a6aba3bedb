-- A run suspended in a wait node reads status 'waiting' (projections.rows.run_row), with the open waits it holds:
-- `waits` lists them as (path, event), oldest first; `waiting_for` and `waiting_path` name the first.
-- The new columns default to empty, so every row written before stays readable as it was.
ALTER TABLE {db}.runs ADD COLUMN IF NOT EXISTS waiting_path String AFTER waiting_for;
ALTER TABLE {db}.runs ADD COLUMN IF NOT EXISTS waits Array(Tuple(path String, event String)) AFTER waiting_path;
-- Rows written before knew the event a running run waited for, not the wait's path: they read 'waiting' from now
-- on, with an empty waiting_path until the next rebuild fills it in (the fold ends such a wait at the first node
-- that finishes, as the rule that wrote them did). A database created by this migration has no such row. Synchronous,
-- so the rows read 'waiting' once the store has started.
ALTER TABLE {db}.runs UPDATE status = 'waiting' WHERE status = 'running' AND waiting_for != ''
SETTINGS mutations_sync = 2;
