-- As SQLite's 0011: the lease order on each task, walked by one index.
ALTER TABLE tasks ADD COLUMN priority BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN due_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN job_created_at BIGINT NOT NULL DEFAULT 0;
UPDATE tasks SET priority = j.priority, due_at = COALESCE(j.due_at, j.created_at), job_created_at = j.created_at
  FROM jobs j WHERE j.id = tasks.job_id;
CREATE INDEX tasks_lease_order ON tasks (state, priority DESC, due_at, job_created_at, seq);
DROP INDEX tasks_runnable;
