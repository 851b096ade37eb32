DROP TABLE webhook_attempts;
DROP INDEX workloads_delivery_due;
ALTER TABLE workloads DROP COLUMN delivery_due_at;
ALTER TABLE workloads DROP COLUMN delivery_id;
ALTER TABLE workloads DROP COLUMN callback_url;
