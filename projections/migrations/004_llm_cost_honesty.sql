-- Honest LLM costs: how far each call's cost can be trusted, so no view prints an unknown as $0.
--   price_known         0: the model had no price; cost_usd is 0 and means unknown, not free
--   price_illustrative  1: the price is marked illustrative in the LLM config (a sample figure, not money spent)
--   usage_estimated     1: the provider reported no usage; the token counts are tickflow's estimate
-- Rows projected before this migration read as known, reported, not illustrative: what their events said.
-- Every statement is idempotent: a migration that stopped half way is run again from its start.

ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS price_known UInt8 DEFAULT 1;
ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS price_illustrative UInt8 DEFAULT 0;
ALTER TABLE {db}.llm_calls ADD COLUMN IF NOT EXISTS usage_estimated UInt8 DEFAULT 0;

-- The per-minute rollup counts them (a SummingMergeTree sums every numeric column outside its key, new ones
-- included), and keeps the illustrative part of cost_usd apart so a total can say how much of it is a sample.
ALTER TABLE {db}.llm_usage_per_minute ADD COLUMN IF NOT EXISTS calls_price_unknown UInt64 DEFAULT 0;
ALTER TABLE {db}.llm_usage_per_minute ADD COLUMN IF NOT EXISTS calls_price_illustrative UInt64 DEFAULT 0;
ALTER TABLE {db}.llm_usage_per_minute ADD COLUMN IF NOT EXISTS calls_usage_estimated UInt64 DEFAULT 0;
ALTER TABLE {db}.llm_usage_per_minute ADD COLUMN IF NOT EXISTS cost_illustrative_usd Float64 DEFAULT 0;

-- The view is replaced to fill the new columns. Migrations run when a store opens, before its projector
-- writes; a projector of another process still writing to the same database during this migration could
-- leave calls inserted between the drop and the create out of the rollup (stop projectors to upgrade, or
-- rebuild the projections afterwards: a rebuild fills every rollup from llm_calls).
DROP VIEW IF EXISTS {db}.llm_usage_per_minute_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.llm_usage_per_minute_mv TO {db}.llm_usage_per_minute AS
SELECT
    toStartOfMinute(started_at) AS minute,
    provider,
    model,
    agent,
    stack_id,
    count() AS calls,
    countIf(outcome != 'ok') AS errors,
    countIf(fallback = 1 AND outcome = 'ok') AS fallbacks,
    sum(tokens_in) AS tokens_in,
    sum(tokens_out) AS tokens_out,
    sum(cost_usd) AS cost_usd,
    sum(latency_ms) AS latency_ms,
    countIf(price_known = 0) AS calls_price_unknown,
    countIf(price_illustrative = 1) AS calls_price_illustrative,
    countIf(usage_estimated = 1) AS calls_usage_estimated,
    sumIf(llm_calls.cost_usd, price_illustrative = 1) AS cost_illustrative_usd
FROM {db}.llm_calls
GROUP BY minute, provider, model, agent, stack_id;
