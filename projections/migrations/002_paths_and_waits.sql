-- Workflows became node trees (v2): a step is addressed by its path, and a run can be suspended waiting
-- for an event. step_index stays for runs projected before the change and is -1 from now on.
ALTER TABLE {db}.runs ADD COLUMN IF NOT EXISTS current_path String AFTER step_index;
ALTER TABLE {db}.runs ADD COLUMN IF NOT EXISTS waiting_for String AFTER current_path;
