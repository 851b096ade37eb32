DROP TABLE log_lines;
DROP TABLE workloads;
