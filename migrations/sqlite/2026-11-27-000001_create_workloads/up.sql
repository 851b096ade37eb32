-- Workloads: every field of the API object, plus the payload so pending work survives
-- a restart. Times are RFC 3339 UTC text with milliseconds (they sort as text).
CREATE TABLE workloads (
    id TEXT PRIMARY KEY NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'killed')),
    isolation TEXT NOT NULL,
    requested_isolation TEXT NOT NULL,
    backend TEXT NOT NULL,
    runtime TEXT NOT NULL,
    node_id TEXT NOT NULL,
    input_hash TEXT NOT NULL,
    output TEXT,
    exit_code INTEGER,
    error TEXT,
    cpu_limit INTEGER NOT NULL,
    mem_limit INTEGER NOT NULL,
    timeout_s INTEGER NOT NULL,
    duration_ms BIGINT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    code TEXT,
    code_archive BLOB,
    input BLOB NOT NULL,
    image TEXT,
    command TEXT
);

-- Listing newest first, with or without one filter.
CREATE INDEX workloads_created ON workloads (created_at DESC, id DESC);
CREATE INDEX workloads_status_created ON workloads (status, created_at);
CREATE INDEX workloads_isolation_created ON workloads (isolation, created_at);
CREATE INDEX workloads_runtime_created ON workloads (runtime, created_at);
-- Per-backend percentiles walk durations in order.
CREATE INDEX workloads_backend_duration ON workloads (backend, duration_ms);

CREATE TABLE log_lines (
    workload_id TEXT NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    line TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (workload_id, seq)
) WITHOUT ROWID;
