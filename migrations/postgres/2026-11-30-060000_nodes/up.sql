-- PostgreSQL twin of migrations/sqlite/2026-11-30-060000_nodes (see that file for the
-- design).
CREATE TABLE nodes (
    node_id TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    generation BIGINT NOT NULL,
    backends TEXT NOT NULL,
    started_at TEXT COLLATE "C" NOT NULL,
    heartbeat_at TEXT COLLATE "C" NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('alive', 'lost'))
);

ALTER TABLE workloads ADD COLUMN node_generation BIGINT NOT NULL DEFAULT 0;

-- The shared queue: pending work no node has claimed yet, FIFO per backend. Only
-- cluster nodes write unclaimed rows (node_id = ''), so on a single node the index
-- stays empty and costs nothing.
CREATE INDEX workloads_unclaimed ON workloads (backend, created_at, id)
    WHERE status = 'pending' AND node_id = '';
-- A node's claimed work, read when a survivor declares it lost.
CREATE INDEX workloads_node_active ON workloads (node_id)
    WHERE status IN ('pending', 'running');
