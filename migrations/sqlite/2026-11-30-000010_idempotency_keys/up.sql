-- Idempotency-Key: a client's key (scoped to the token that sent it; empty without
-- auth), a digest of the request it was first used with, and the workload it created.
-- Rows older than idempotency_ttl_s are swept. Times are RFC 3339 UTC text.
CREATE TABLE idempotency_keys (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    workload_id TEXT NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('sync', 'async')),
    created_at TEXT NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;

-- The sweep deletes by age.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
