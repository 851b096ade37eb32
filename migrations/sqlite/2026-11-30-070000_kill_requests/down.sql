ALTER TABLE workloads DROP COLUMN kill_requested_at;
