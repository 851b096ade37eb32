CREATE INDEX workloads_backend_duration ON workloads (backend, duration_ms);
