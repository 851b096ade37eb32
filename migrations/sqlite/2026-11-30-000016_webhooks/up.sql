-- Completion webhooks (issue 16).
--
-- The callback URL is stored with the workload, so a pending workload keeps it across a
-- restart; existing rows get NULL (no webhook). delivery_id (sent as Vulcan-Delivery)
-- is chosen when the workload is recorded, so every attempt carries the same id, even
-- one repeated after a crash before it was recorded.
ALTER TABLE workloads ADD COLUMN callback_url TEXT;
ALTER TABLE workloads ADD COLUMN delivery_id TEXT;

-- When the next delivery attempt is due; NULL when none is (no callback_url, not
-- terminal yet, delivered, or out of attempts). The statement that records the terminal
-- status sets it (to finished_at, for workloads with a callback_url): the delivery is
-- enqueued in the same write, and a workload without one pays nothing (no trigger to
-- compile into every status update, no second row). The partial index holds only the
-- pending deliveries: it is the queue.
ALTER TABLE workloads ADD COLUMN delivery_due_at TEXT;
CREATE INDEX workloads_delivery_due ON workloads (delivery_due_at)
    WHERE delivery_due_at IS NOT NULL;

-- Every delivery attempt, as recorded when it ended: the receiver's HTTP status, or an
-- error (timeout, connection error, refused address), and when the next attempt is due
-- (NULL when there is none: delivered, or the last attempt). Deleted with the workload.
CREATE TABLE webhook_attempts (
    workload_id TEXT NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL CHECK (attempt >= 1),
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    next_attempt_at TEXT,
    PRIMARY KEY (workload_id, attempt)
) WITHOUT ROWID;
