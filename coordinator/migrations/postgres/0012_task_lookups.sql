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

-- A task's promotion recorded in one round trip (`Queue::promoted`): the task
-- succeeds, and its job settles under the writer's advisory lock (`p_lock`), as
-- `settle_job` would: queued or running as its tasks are, or finalizing once all
-- have succeeded. Each statement here sees what committed before the lock was
-- taken (Read Committed, a fresh snapshot per statement). Held across a
-- coordinator's round trips, the lock took 2-3 ms a promotion, and every
-- promotion of the farm waited for it. Returns no row when the task was not
-- promoting, and `settled = 0` when a task of the job failed: the caller then
-- settles the job itself (`settle_job` ends it), which only a race can need.
-- Keep it in step with `settle_job` in coordinator/src/queue.rs.
CREATE FUNCTION drake_promoted(p_task TEXT, p_now BIGINT, p_lock BIGINT) RETURNS TABLE (job_id TEXT, settled INTEGER)
LANGUAGE plpgsql AS $$
DECLARE
    v_job TEXT;
    v_state TEXT;
    v_failed BOOLEAN;
    v_unfinished BOOLEAN;
    v_started BOOLEAN;
    v_next TEXT;
BEGIN
    PERFORM pg_advisory_xact_lock(p_lock);
    UPDATE tasks SET state = 'succeeded', lease_expires_at = NULL, updated_at = p_now, finished_at = p_now
        WHERE id = p_task AND state = 'promoting' RETURNING tasks.job_id INTO v_job;
    IF v_job IS NULL THEN
        RETURN;
    END IF;
    SELECT j.state,
           EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = 'failed'),
           EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state <> 'succeeded'),
           EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state <> 'queued')
        INTO v_state, v_failed, v_unfinished, v_started
        FROM jobs j WHERE j.id = v_job;
    IF v_state IN ('succeeded', 'failed', 'canceled') THEN
        RETURN QUERY SELECT v_job, 1;
        RETURN;
    END IF;
    IF v_failed THEN
        RETURN QUERY SELECT v_job, 0;
        RETURN;
    END IF;
    IF NOT v_unfinished THEN
        IF v_state <> 'finalizing' THEN
            UPDATE jobs SET state = 'finalizing', chore = 'finalize', chore_attempts = 0, chore_error = NULL, chore_claimed_by = NULL,
                chore_due_at = p_now, updated_at = p_now WHERE id = v_job;
        END IF;
    ELSE
        v_next := CASE WHEN v_started THEN 'running' ELSE 'queued' END;
        IF v_next <> v_state THEN
            UPDATE jobs SET state = v_next, updated_at = p_now WHERE id = v_job;
        END IF;
    END IF;
    RETURN QUERY SELECT v_job, 1;
END
$$;
