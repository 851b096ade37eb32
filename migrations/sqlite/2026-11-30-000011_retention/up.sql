-- Retention deletes finished workloads by age: only terminal workloads have a
-- finished_at, so a partial index holds exactly the candidates, oldest first.
CREATE INDEX workloads_finished ON workloads (finished_at) WHERE finished_at IS NOT NULL;
