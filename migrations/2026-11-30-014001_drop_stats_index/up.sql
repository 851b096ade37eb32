-- `GET /v1/stats` is answered from counters kept by the store (seeded by one grouped
-- scan at start-up), so no query reads workloads by (backend, duration_ms) any more;
-- the index only cost a write on every insert and terminal update.
DROP INDEX IF EXISTS workloads_backend_duration;
