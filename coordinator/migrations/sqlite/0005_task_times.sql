-- When a task last became runnable, was leased and ended (unix ms), for the
-- dashboard and the orchestration-overhead benchmark.
ALTER TABLE tasks ADD COLUMN queued_at INTEGER;
ALTER TABLE tasks ADD COLUMN leased_at INTEGER;
ALTER TABLE tasks ADD COLUMN finished_at INTEGER;
UPDATE tasks SET queued_at = created_at;
