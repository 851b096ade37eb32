-- Nodes of a cluster (issue 17): several Vulcan servers sharing one PostgreSQL
-- database. The table exists on SQLite too so both engines keep one schema; a single
-- node (SQLite, or PostgreSQL without cluster.enabled) never writes it.
--
-- generation is the fencing token: bumped at each registration of a node_id and when
-- a survivor declares the node lost. Every status write of a workload a node claimed
-- carries the generation it claimed it under (workloads.node_generation) in its WHERE,
-- so a node declared lost cannot overwrite what the survivor decided.
-- backends: JSON, one entry per backend with its name, slots and running count, as of
-- the node's last heartbeat. Timestamps are RFC 3339 UTC text like everywhere else.
CREATE TABLE nodes (
    node_id TEXT NOT NULL PRIMARY KEY,
    generation BIGINT NOT NULL,
    backends TEXT NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('alive', 'lost'))
);

-- The generation of the node that claimed the workload (0: never claimed by a
-- cluster node). node_id = '' marks a pending workload recorded by a cluster node and
-- not claimed yet; existing rows keep the node that accepted (and ran) them.
ALTER TABLE workloads ADD COLUMN node_generation BIGINT NOT NULL DEFAULT 0;
