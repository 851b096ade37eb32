ALTER TABLE workloads DROP COLUMN node_generation;
DROP TABLE nodes;
