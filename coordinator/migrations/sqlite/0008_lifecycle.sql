-- The job lifecycle as one durable state machine. The chore a job is owed (its
-- probe, or its finalize) is recorded on the job row by the same transaction that
-- makes it owed; apalis only runs it. A reconciler pushes every owed chore whose
-- `chore_due_at` has passed; each push takes a fresh `chore_seq`, and only the chore
-- holding the latest seq can claim it, so duplicates and stale chores change nothing.
ALTER TABLE jobs ADD COLUMN chore TEXT;
ALTER TABLE jobs ADD COLUMN chore_seq INTEGER NOT NULL DEFAULT 0;
-- Attempts at the owed chore (claims), and the last attempt's error.
ALTER TABLE jobs ADD COLUMN chore_attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN chore_error TEXT;
-- What the last failed attempt was doing ("fetching URL", "probing URL", "finalizing").
ALTER TABLE jobs ADD COLUMN chore_step TEXT;
-- When the reconciler should (re)push it: now when it became owed, after a backoff
-- when an attempt failed, after a grace when pushed or claimed (so a chore lost in a
-- crash is pushed again).
ALTER TABLE jobs ADD COLUMN chore_due_at INTEGER;
-- The coordinator process (run id) whose chore claimed it; a claim by a process
-- that is gone is pushed again when the next one starts.
ALTER TABLE jobs ADD COLUMN chore_claimed_by TEXT;
-- Grows with every retry of the job: each run ends at most once, with one webhook.
ALTER TABLE jobs ADD COLUMN run INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhooks ADD COLUMN run INTEGER;
-- How often the reconciler pushed a delivery again (a lost or stuck chore).
ALTER TABLE webhooks ADD COLUMN pushes INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX webhooks_one_per_end ON webhooks (job_id, run);
CREATE INDEX jobs_chore_due ON jobs (chore_due_at) WHERE chore IS NOT NULL;

-- Where an ingested URL source was copied to in storage; tasks read that copy.
ALTER TABLE jobs ADD COLUMN stored_source TEXT;

-- Since when no live worker has the encoder a queued task requires (NULL: one has).
ALTER TABLE tasks ADD COLUMN unrunnable_since INTEGER;

-- Jobs already waiting for their chores when this migration runs.
UPDATE jobs SET chore = 'probe', chore_due_at = 0
 WHERE state = 'queued' AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = jobs.id);
UPDATE jobs SET chore = 'finalize', chore_due_at = 0 WHERE state = 'finalizing';

-- The pipeline (submit token label) that submitted a job; NULL for an admin's.
-- A submit token sees, cancels and retries only its pipeline's jobs.
ALTER TABLE jobs ADD COLUMN pipeline TEXT;
CREATE INDEX jobs_pipeline_created ON jobs (pipeline, created_at);

-- An ended job owes a sweep of its staging area once no lease of it can still be
-- publishing (two lease TTLs after the end); 1 once done.
ALTER TABLE jobs ADD COLUMN swept INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET swept = 1 WHERE state IN ('succeeded', 'failed', 'canceled');
CREATE INDEX jobs_unswept ON jobs (updated_at) WHERE swept = 0;
CREATE INDEX tasks_unrunnable ON tasks (requires) WHERE state = 'queued' AND requires IS NOT NULL;
