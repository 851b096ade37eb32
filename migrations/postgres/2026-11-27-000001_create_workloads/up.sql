-- PostgreSQL twin of migrations/sqlite/2026-11-27-000001_create_workloads: the same
-- tables, columns (in the same order) and indexes, so one src/store/schema.rs serves
-- both. Types are chosen to map to the same Diesel types: TEXT -> Text, INTEGER ->
-- Integer, BIGINT -> BigInt, BYTEA -> Binary. Times stay RFC 3339 UTC text with
-- milliseconds; the ids and times that are compared or sorted are COLLATE "C", so they
-- compare byte-wise as SQLite's BINARY collation does, whatever the database's locale
-- (see docs/architecture.md).
CREATE TABLE workloads (
    id TEXT COLLATE "C" PRIMARY KEY NOT NULL,
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
    created_at TEXT COLLATE "C" NOT NULL,
    started_at TEXT COLLATE "C",
    finished_at TEXT COLLATE "C",
    code TEXT,
    code_archive BYTEA,
    input BYTEA NOT NULL,
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
);
