DROP TRIGGER workloads_enqueue_webhook;
DROP TABLE webhook_attempts;
DROP TABLE webhook_deliveries;
ALTER TABLE workloads DROP COLUMN callback_url;
