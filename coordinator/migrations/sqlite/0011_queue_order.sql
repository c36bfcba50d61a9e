-- The lease order (job priority, the job due first, its upload time, the task's place
-- in its job), copied from the job onto each task when it is planned, so the next
-- task to lease is the first row of one index rather than a sort of every queued task.
ALTER TABLE tasks ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN due_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN job_created_at INTEGER NOT NULL DEFAULT 0;
UPDATE tasks SET
    priority = (SELECT j.priority FROM jobs j WHERE j.id = tasks.job_id),
    due_at = (SELECT COALESCE(j.due_at, j.created_at) FROM jobs j WHERE j.id = tasks.job_id),
    job_created_at = (SELECT j.created_at FROM jobs j WHERE j.id = tasks.job_id);
CREATE INDEX tasks_lease_order ON tasks (state, priority DESC, due_at, job_created_at, seq);

-- It replaces the (state, run_after) index, which the planner preferred: then every
-- lease sorted all the runnable tasks.
DROP INDEX tasks_runnable;
