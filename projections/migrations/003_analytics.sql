-- Analytics: every step attempt, every LLM call attempt, agent stacks and their ticks, agent memory, and
-- per-minute rollups. Fact tables carry the (partition, offset) of the event each row came from: the projector
-- reads the highest projected offset per table and partition at start and skips what is already there, so a
-- crash between an insert and the offset commit never inserts a fact twice and the rollups never double count.

-- The workflow of each event (empty for stack and slot entities), so per-workflow rollups need no join.
ALTER TABLE {db}.events ADD COLUMN IF NOT EXISTS workflow LowCardinality(String) DEFAULT '' AFTER run_id;

-- One row per step attempt, versioned by the seq of its latest event: scheduled, then completed or failed.
CREATE TABLE IF NOT EXISTS {db}.steps
(
    run_id         String,
    workflow       LowCardinality(String),
    path           String,
    step           LowCardinality(String),
    attempt        UInt32,
    pool           LowCardinality(String),
    status         LowCardinality(String),
    scheduled_at   DateTime64(3, 'UTC'),
    finished_at    DateTime64(3, 'UTC'),
    duration_ms    Float64,
    worker         String,
    error_type     String,
    error_message  String CODEC(ZSTD(3)),
    will_retry     UInt8,
    version        UInt64,
    partition      UInt16,
    offset         UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (run_id, path, attempt);

-- One row per LLM call attempt (failed attempts included), as the engine recorded it.
CREATE TABLE IF NOT EXISTS {db}.llm_calls
(
    run_id         String,
    seq            UInt64,
    workflow       LowCardinality(String),
    path           String,
    call           UInt32,
    attempt        UInt32,
    agent          LowCardinality(String),
    stack_id       String,
    provider       LowCardinality(String),
    model          LowCardinality(String),
    tokens_in      UInt64,
    tokens_out     UInt64,
    cost_usd       Float64,
    latency_ms     Float64,
    outcome        LowCardinality(String),
    error_type     String,
    error_message  String CODEC(ZSTD(3)),
    http_status    Int32,
    fallback       UInt8,
    started_at     DateTime64(3, 'UTC'),
    occurred_at    DateTime64(3, 'UTC'),
    partition      UInt16,
    offset         UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (run_id, seq);

-- Current state of every agent stack (the stack board), versioned by the seq of its last event.
CREATE TABLE IF NOT EXISTS {db}.stacks
(
    stack_id         String,
    name             String,
    workflow         LowCardinality(String),
    status           LowCardinality(String),
    paused_by        LowCardinality(String),
    pause_reason     String,
    interval_s       Float64,
    priority         Int32,
    overlap          LowCardinality(String),
    budget_tokens    Int64,
    budget_cost_usd  Float64,
    tokens_used      UInt64,
    cost_used_usd    Float64,
    ticks_fired      UInt64,
    ticks_skipped    UInt64,
    ticks_failed     UInt64,
    last_tick        UInt64,
    last_run_id      String,
    last_run_status  LowCardinality(String),
    last_tick_at     DateTime64(3, 'UTC'),
    created_at       DateTime64(3, 'UTC'),
    updated_at       DateTime64(3, 'UTC'),
    last_seq         UInt64
)
ENGINE = ReplacingMergeTree(last_seq)
ORDER BY stack_id;

-- One row per tick of a stack: fired (or skipped), then finished with its run's outcome and usage.
CREATE TABLE IF NOT EXISTS {db}.ticks
(
    stack_id     String,
    tick         UInt64,
    run_id       String,
    status       LowCardinality(String),
    reason       String,
    due_at       DateTime64(3, 'UTC'),
    fired_at     DateTime64(3, 'UTC'),
    finished_at  DateTime64(3, 'UTC'),
    lag_ms       Float64,
    tokens       UInt64,
    cost_usd     Float64,
    idle         UInt8,
    version      UInt64,
    partition    UInt16,
    offset       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (stack_id, tick);

-- Agent memory: every message of every thread, with its embedding for semantic recall (cosineDistance).
CREATE TABLE IF NOT EXISTS {db}.messages
(
    thread_id    String,
    message_id   String,
    run_id       String,
    seq          UInt64,
    stack_id     String,
    agent        LowCardinality(String),
    role         LowCardinality(String),
    content      String CODEC(ZSTD(3)),
    embedding    Array(Float32),
    embedder     LowCardinality(String),
    created_at   DateTime64(3, 'UTC'),
    partition    UInt16,
    offset       UInt64
)
ENGINE = ReplacingMergeTree
ORDER BY (thread_id, message_id);

-- Rollups. Each is fed by a materialised view on a fact table that receives every fact exactly once.

CREATE TABLE IF NOT EXISTS {db}.runs_per_minute
(
    minute     DateTime('UTC'),
    workflow   LowCardinality(String),
    started    UInt64,
    completed  UInt64,
    failed     UInt64,
    cancelled  UInt64
)
ENGINE = SummingMergeTree
ORDER BY (minute, workflow);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.runs_per_minute_mv TO {db}.runs_per_minute AS
SELECT
    toStartOfMinute(occurred_at) AS minute,
    workflow,
    countIf(type = 'RunStarted') AS started,
    countIf(type = 'RunCompleted') AS completed,
    countIf(type IN ('RunFailed', 'RunRejected')) AS failed,
    countIf(type = 'RunCancelled') AS cancelled
FROM {db}.events
WHERE type IN ('RunStarted', 'RunCompleted', 'RunFailed', 'RunRejected', 'RunCancelled')
GROUP BY minute, workflow;

CREATE TABLE IF NOT EXISTS {db}.llm_usage_per_minute
(
    minute      DateTime('UTC'),
    provider    LowCardinality(String),
    model       LowCardinality(String),
    agent       LowCardinality(String),
    stack_id    String,
    calls       UInt64,
    errors      UInt64,
    fallbacks   UInt64,
    tokens_in   UInt64,
    tokens_out  UInt64,
    cost_usd    Float64,
    latency_ms  Float64
)
ENGINE = SummingMergeTree
ORDER BY (minute, provider, model, agent, stack_id);

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
    sum(latency_ms) AS latency_ms
FROM {db}.llm_calls
GROUP BY minute, provider, model, agent, stack_id;

CREATE TABLE IF NOT EXISTS {db}.step_latency_per_minute
(
    minute     DateTime('UTC'),
    workflow   LowCardinality(String),
    step       LowCardinality(String),
    attempts   SimpleAggregateFunction(sum, UInt64),
    failures   SimpleAggregateFunction(sum, UInt64),
    latency    AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Float64)
)
ENGINE = AggregatingMergeTree
ORDER BY (minute, workflow, step);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.step_latency_per_minute_mv TO {db}.step_latency_per_minute AS
SELECT
    toStartOfMinute(finished_at) AS minute,
    workflow,
    step,
    toUInt64(count()) AS attempts,
    toUInt64(countIf(status != 'completed')) AS failures,
    quantilesTDigestState(0.5, 0.9, 0.99)(duration_ms) AS latency
FROM {db}.steps
WHERE status IN ('completed', 'failed')
GROUP BY minute, workflow, step;
