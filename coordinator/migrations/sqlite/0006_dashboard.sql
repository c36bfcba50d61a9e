-- The ops dashboard: browser sessions, one-time login links, worker load, and a
-- log of failed task attempts (for failure rates and metrics).
CREATE TABLE sessions (
    -- sha256 of the cookie value
    hash TEXT PRIMARY KEY NOT NULL,
    -- the session's CSRF token, echoed by every form and fetch
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);

-- `/login?token=...` links printed at start; each works once.
CREATE TABLE login_links (
    hash TEXT PRIMARY KEY NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER
);

-- 1-minute load average the worker last reported.
ALTER TABLE workers ADD COLUMN load REAL;

CREATE TABLE task_failures (
    task_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    -- failed (reported by the worker) or expired (lease reaped)
    kind TEXT NOT NULL,
    error TEXT,
    at INTEGER NOT NULL
);
CREATE INDEX task_failures_at ON task_failures (at);
CREATE INDEX tasks_finished ON tasks (finished_at);
CREATE INDEX tasks_leased ON tasks (leased_at);
CREATE INDEX jobs_state_created ON jobs (state, created_at);
CREATE INDEX jobs_created ON jobs (created_at);
