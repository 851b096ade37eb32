-- PostgreSQL twin of migrations/sqlite/2026-11-30-000016_webhooks (see that file for
-- the design: the delivery queue is workloads.delivery_due_at and its partial index).
ALTER TABLE workloads ADD COLUMN callback_url TEXT;
ALTER TABLE workloads ADD COLUMN delivery_id TEXT;
ALTER TABLE workloads ADD COLUMN delivery_due_at TEXT COLLATE "C";
CREATE INDEX workloads_delivery_due ON workloads (delivery_due_at)
    WHERE delivery_due_at IS NOT NULL;

CREATE TABLE webhook_attempts (
    workload_id TEXT NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL CHECK (attempt >= 1),
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    next_attempt_at TEXT,
    PRIMARY KEY (workload_id, attempt)
);
