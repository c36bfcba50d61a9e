-- Since when a job's owed chore has waited for a full disk (`Queue::chore_waits_for_space`):
-- such attempts are given back until the wait reaches its limit. NULL when not waiting.
ALTER TABLE jobs ADD COLUMN chore_waiting_since BIGINT;
