-- A task by its job and name (unique by construction: a rendition, `audio`,
-- `thumbnails`, `RENDITION.cNNNN`). A worker's every WebDAV write is checked
-- against the lease of its staging directory's task, and a lease asks whether
-- its job has an audio task. Through tasks_job_outcome both read every leased
-- task of the job (a hundred, in bench/queue.sh). Its entries never move: a
-- task's name and job never change.
CREATE INDEX tasks_job_name ON tasks (job_id, name);

-- The queued tasks that wait for a capable worker (usually none): the
-- reconciler's check clears and fails them every tenth second. Without it both
-- statements read every queued task: 100 ms at 100,000 queued, while the held
-- connection waited.
CREATE INDEX tasks_waiting_for_worker ON tasks (unrunnable_since) WHERE state = 'queued' AND unrunnable_since IS NOT NULL;
