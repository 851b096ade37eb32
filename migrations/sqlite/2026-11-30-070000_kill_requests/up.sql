-- A kill asked of the node running a workload by another node of a cluster: kept
-- until the workload ends, so the running node finds it again after missing the
-- notification (its listen connection was being reopened). NULL: none asked.
ALTER TABLE workloads ADD COLUMN kill_requested_at TEXT;
