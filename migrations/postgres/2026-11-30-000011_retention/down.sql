DROP INDEX workloads_finished;
