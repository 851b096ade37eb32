-- PostgreSQL twin of migrations/sqlite/2026-11-30-000010_idempotency_keys.
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    workload_id TEXT NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('sync', 'async')),
    created_at TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (scope, key)
);

-- The sweep deletes by age.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
