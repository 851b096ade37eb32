-- PostgreSQL twin of migrations/sqlite/2026-11-30-070000_kill_requests.
ALTER TABLE workloads ADD COLUMN kill_requested_at TEXT COLLATE "C";
