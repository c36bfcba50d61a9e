-- A job's tasks by outcome. With only (job_id), SQLite's planner preferred the
-- lease-order index on state for "this job's succeeded tasks" and scanned every
-- succeeded task in the farm: the job page's results and, for each recent job,
-- the overview's first finished transcode (305 ms at 1,000 jobs). This index
-- answers both from the job's own rows and serves every lookup by job_id, so it
-- replaces tasks_job.
CREATE INDEX tasks_job_outcome ON tasks (job_id, state, kind, finished_at);
DROP INDEX tasks_job;
