-- The worker whose attempt at a task last failed (or whose lease of it lapsed): a
-- retry goes to another worker while one has a free slot, for up to a minute
-- (`lease_claim!` in queue.rs), so a worker that fails everything it takes (a
-- broken disk or libav) does not spend one task's attempts alone.
ALTER TABLE tasks ADD COLUMN failed_by TEXT;
-- The tasks each worker holds, which that check counts per live worker.
CREATE INDEX tasks_held ON tasks (worker_id) WHERE state IN ('leased', 'running');
