DROP INDEX workloads_node_active;
DROP INDEX workloads_unclaimed;
ALTER TABLE workloads DROP COLUMN node_generation;
DROP TABLE nodes;
