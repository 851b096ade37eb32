-- Completion webhooks (issue 16).
--
-- The callback URL is stored with the workload, so a pending workload keeps it across a
-- restart. Existing rows get NULL (no webhook).
ALTER TABLE workloads ADD COLUMN callback_url TEXT;

-- One delivery per workload with a callback_url, created by the trigger below in the
-- same statement that records the terminal status: a crash can never leave a finished
-- workload without its delivery. `delivery_id` is sent as `Vulcan-Delivery` on every
-- attempt (receivers deduplicate on it). `attempts` counts recorded attempts;
-- `next_attempt_at` is when the next one is due while `state` is 'pending', NULL once
-- the delivery is settled ('delivered' after a 2xx, 'failed' after the last attempt).
CREATE TABLE webhook_deliveries (
    workload_id TEXT PRIMARY KEY NOT NULL REFERENCES workloads (id) ON DELETE CASCADE,
    delivery_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at TEXT,
    created_at TEXT NOT NULL,
    CHECK ((state = 'pending') = (next_attempt_at IS NOT NULL))
);

-- The deliverer looks for due pending deliveries, oldest due first, and counts the
-- pending ones (not a partial index: the state is a bound parameter in those queries).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);

-- Every attempt, as recorded when it ended: an HTTP status, or an error (timeout,
-- connection error, address refused), and when the next attempt is due (NULL when
-- there is none).
CREATE TABLE webhook_attempts (
    workload_id TEXT NOT NULL REFERENCES webhook_deliveries (workload_id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL CHECK (attempt >= 1),
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    status_code INTEGER,
    error TEXT,
    next_attempt_at TEXT,
    PRIMARY KEY (workload_id, attempt)
) WITHOUT ROWID;

-- Enqueue the delivery with the terminal status (pending|running -> completed|failed|
-- killed). Due at once; the id is 128 random bits in hex.
CREATE TRIGGER workloads_enqueue_webhook
AFTER UPDATE OF status ON workloads
FOR EACH ROW
WHEN NEW.callback_url IS NOT NULL
    AND NEW.status IN ('completed', 'failed', 'killed')
    AND OLD.status NOT IN ('completed', 'failed', 'killed')
BEGIN
    INSERT INTO webhook_deliveries (workload_id, delivery_id, state, attempts, next_attempt_at, created_at)
    VALUES (
        NEW.id,
        lower(hex(randomblob(16))),
        'pending',
        0,
        COALESCE(NEW.finished_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        COALESCE(NEW.finished_at, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
    );
END;
