-- PostgreSQL twin of migrations/sqlite/2026-11-30-000011_retention.
CREATE INDEX workloads_finished ON workloads (finished_at) WHERE finished_at IS NOT NULL;
