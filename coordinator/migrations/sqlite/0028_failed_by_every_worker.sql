-- `tasks.failed_by` names every worker an attempt of the task failed or lapsed on
-- (",w1,w2,"), not only the last: a retry goes to a worker that has not failed it
-- first (`lease_claim!` in queue.rs), so two bad machines cannot spend a task's
-- attempts between them while a good one is live.
UPDATE tasks SET failed_by = ',' || failed_by || ',' WHERE failed_by IS NOT NULL;
