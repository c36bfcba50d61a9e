-- Jobs, their tasks (one per rendition, plus thumbnails), and the leases on tasks.
-- Times are unix milliseconds. A lease is the (worker_id, epoch, lease_expires_at)
-- triple on a task row: the epoch grows with every lease, so a late completion from
-- a worker whose lease lapsed and was re-granted matches no row and is rejected.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    profile TEXT NOT NULL,
    source TEXT NOT NULL,
    callback_url TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    error TEXT,
    probe TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,
    rendition TEXT,
    -- Lower runs first within a job: low rungs first, so a job is playable early.
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    worker_id TEXT,
    lease_expires_at INTEGER,
    run_after INTEGER NOT NULL DEFAULT 0,
    cancel INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX tasks_runnable ON tasks (state, run_after);
CREATE INDEX tasks_job ON tasks (job_id);
