-- What a task waits for (its job's audio; a join's chunks), looked up on every
-- lease for every candidate: a job's unfinished tasks by kind. Through
-- tasks_job_outcome the check read all of the job's tasks (a hundred, in
-- bench/queue.sh) for each candidate. Partial: a task leaves it when it succeeds.
-- Covering, or SQLite prefers tasks_job_outcome, which is.
CREATE INDEX tasks_pending_by_kind ON tasks (job_id, kind, rendition, state) WHERE state <> 'succeeded';
