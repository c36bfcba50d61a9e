-- The farm's state on PostgreSQL: the same tables as the SQLite migrations 0001-0008
-- end with, in one step. Times are unix milliseconds (BIGINT) from the database's
-- clock; flags are 0/1 BIGINTs and JSON is TEXT, as on SQLite, so that one state
-- machine runs on both. See the SQLite migrations for what each column means.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL,
    profile TEXT NOT NULL,
    source TEXT NOT NULL,
    callback_url TEXT,
    priority BIGINT NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE,
    error TEXT,
    probe TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    outputs TEXT,
    due_at BIGINT,
    chore TEXT,
    chore_seq BIGINT NOT NULL DEFAULT 0,
    chore_attempts BIGINT NOT NULL DEFAULT 0,
    chore_error TEXT,
    chore_step TEXT,
    chore_due_at BIGINT,
    chore_claimed_by TEXT,
    run BIGINT NOT NULL DEFAULT 0,
    stored_source TEXT,
    pipeline TEXT,
    swept BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_state_created ON jobs (state, created_at);
CREATE INDEX jobs_created ON jobs (created_at);
CREATE INDEX jobs_chore_due ON jobs (chore_due_at) WHERE chore IS NOT NULL;
CREATE INDEX jobs_pipeline_created ON jobs (pipeline, created_at);
CREATE INDEX jobs_unswept ON jobs (updated_at) WHERE swept = 0;

CREATE TABLE tasks (
    id TEXT PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs(id),
    kind TEXT NOT NULL,
    rendition TEXT,
    seq BIGINT NOT NULL,
    state TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    max_attempts BIGINT NOT NULL,
    epoch BIGINT NOT NULL DEFAULT 0,
    worker_id TEXT,
    lease_expires_at BIGINT,
    run_after BIGINT NOT NULL DEFAULT 0,
    cancel BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    requires TEXT,
    log_tail TEXT,
    queued_at BIGINT,
    leased_at BIGINT,
    finished_at BIGINT,
    unrunnable_since BIGINT
);
CREATE INDEX tasks_runnable ON tasks (state, run_after);
CREATE INDEX tasks_job ON tasks (job_id);
CREATE INDEX tasks_finished ON tasks (finished_at);
CREATE INDEX tasks_leased ON tasks (leased_at);
CREATE INDEX tasks_unrunnable ON tasks (requires) WHERE state = 'queued' AND requires IS NOT NULL;

CREATE TABLE tokens (
    hash TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL,
    label TEXT,
    uses_left BIGINT,
    expires_at BIGINT,
    revoked BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE workers (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    draining BIGINT NOT NULL DEFAULT 0,
    removed BIGINT NOT NULL DEFAULT 0,
    slots BIGINT NOT NULL,
    free_slots BIGINT NOT NULL DEFAULT 0,
    capabilities TEXT NOT NULL,
    drake_version TEXT NOT NULL,
    last_seen BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    load DOUBLE PRECISION
);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at BIGINT,
    gave_up BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    run BIGINT,
    pushes BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhooks_due ON webhooks (delivered_at, gave_up, next_attempt_at);
CREATE UNIQUE INDEX webhooks_one_per_end ON webhooks (job_id, run);

CREATE TABLE sessions (
    hash TEXT PRIMARY KEY NOT NULL,
    csrf TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE login_links (
    hash TEXT PRIMARY KEY NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);

CREATE TABLE task_failures (
    task_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    error TEXT,
    at BIGINT NOT NULL
);
CREATE INDEX task_failures_at ON task_failures (at);

-- SQLite's instr(haystack, needle), which the encoder match uses.
CREATE FUNCTION instr(haystack TEXT, needle TEXT) RETURNS INTEGER
    LANGUAGE SQL IMMUTABLE STRICT PARALLEL SAFE
    RETURN strpos(haystack, needle);
