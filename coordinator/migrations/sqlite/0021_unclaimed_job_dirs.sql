-- A job directory written on the store before its job exists (a multipart
-- upload's source and captions are stored first, so that no job owes a probe of
-- a file that is not there). The row is written before the first byte, and
-- removed once the job exists; otherwise the reconciler removes the directory
-- when it is due, or when the coordinator that wrote it is gone
-- (`Queue::unclaimed_dirs_due`).
CREATE TABLE unclaimed_job_dirs (
    job_id TEXT PRIMARY KEY NOT NULL,
    coordinator TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE INDEX unclaimed_job_dirs_due ON unclaimed_job_dirs (due_at);
