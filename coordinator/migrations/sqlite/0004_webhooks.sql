-- Webhook deliveries: at least once, retried with backoff until delivered or given up.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at INTEGER,
    gave_up INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX webhooks_due ON webhooks (delivered_at, gave_up, next_attempt_at);
