-- The log, every event, as written by the engine. ReplacingMergeTree on (run_id, seq): a redelivered
-- event collapses onto its first copy, so reads with FINAL never see a (run, seq) twice.
CREATE TABLE IF NOT EXISTS {db}.events
(
    run_id          String,
    seq             UInt64,
    event_id        String,
    type            LowCardinality(String),
    schema_version  UInt16,
    occurred_at     DateTime64(3, 'UTC'),
    causation_id    String,
    correlation_id  String,
    payload         String CODEC(ZSTD(3)),
    topic           LowCardinality(String),
    partition       UInt16,
    offset          UInt64,
    projected_at    DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (run_id, seq);

-- Current status of every run, versioned by the seq of the last event folded in: the row with the
-- highest last_seq wins, so replays and duplicates can never move a run backwards.
CREATE TABLE IF NOT EXISTS {db}.runs
(
    run_id           String,
    workflow         LowCardinality(String),
    spec_hash        String,
    status           LowCardinality(String),
    input            String CODEC(ZSTD(3)),
    output           String CODEC(ZSTD(3)),
    error_type       String,
    error_message    String,
    current_step     String,
    step_index       Int32,
    attempt          UInt32,
    steps_total      UInt32,
    steps_completed  UInt32,
    started_at       DateTime64(3, 'UTC'),
    updated_at       DateTime64(3, 'UTC'),
    finished_at      DateTime64(3, 'UTC'),
    last_seq         UInt64,
    projected_at     DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(last_seq)
ORDER BY run_id;
