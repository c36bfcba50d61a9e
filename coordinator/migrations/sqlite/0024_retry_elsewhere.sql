-- The worker whose attempt at a task last failed (or whose lease of it lapsed): a
-- retry waits up to a minute for another live worker to take it
-- (`lease_claim!` in queue.rs), so a worker that fails everything it takes (a
-- broken disk or libav) does not spend one task's attempts alone.
ALTER TABLE tasks ADD COLUMN failed_by TEXT;
