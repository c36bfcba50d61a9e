-- `drake_promoted` (0014) also says whether the promotion changed its job, as
-- SQLite's `settle_job` does: a promotion that leaves its job as it was owes no
-- follow-up read of the job (no chore, webhook or job event can be owed by it),
-- one round trip fewer for every task but a job's last.
-- The return type changes, so the function is dropped first; a coordinator of the
-- previous version reads the columns it knows by name.
DROP FUNCTION drake_promoted(TEXT, BIGINT, BIGINT);
CREATE FUNCTION drake_promoted(p_task TEXT, p_now BIGINT, p_lock BIGINT) RETURNS TABLE (job_id TEXT, settled INTEGER, changed INTEGER)
LANGUAGE plpgsql AS $$
DECLARE
    v_job TEXT;
    v_state TEXT;
    v_failed BOOLEAN;
    v_unfinished BOOLEAN;
    v_started BOOLEAN;
    v_next TEXT;
BEGIN
    SELECT t.job_id INTO v_job FROM tasks t WHERE t.id = p_task AND t.state = 'promoting';
    IF v_job IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM jobs j WHERE j.id = v_job FOR UPDATE;
    UPDATE tasks SET state = 'succeeded', lease_expires_at = NULL, updated_at = p_now, finished_at = p_now
        WHERE id = p_task AND state = 'promoting';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT j.state,
           EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state = 'failed'),
           EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state <> 'succeeded'),
           EXISTS (SELECT 1 FROM tasks t WHERE t.job_id = j.id AND t.state <> 'queued')
        INTO v_state, v_failed, v_unfinished, v_started
        FROM jobs j WHERE j.id = v_job;
    IF v_state IN ('succeeded', 'failed', 'canceled') THEN
        RETURN QUERY SELECT v_job, 1, 0;
        RETURN;
    END IF;
    IF v_failed THEN
        RETURN QUERY SELECT v_job, 0, 0;
        RETURN;
    END IF;
    IF NOT v_unfinished THEN
        IF v_state = 'finalizing' THEN
            RETURN QUERY SELECT v_job, 1, 0;
            RETURN;
        END IF;
        UPDATE jobs SET state = 'finalizing', chore = 'finalize', chore_attempts = 0, chore_error = NULL, chore_claimed_by = NULL,
            chore_due_at = p_now, updated_at = p_now WHERE id = v_job;
        RETURN QUERY SELECT v_job, 1, 1;
        RETURN;
    END IF;
    v_next := CASE WHEN v_started THEN 'running' ELSE 'queued' END;
    IF v_next = v_state THEN
        RETURN QUERY SELECT v_job, 1, 0;
        RETURN;
    END IF;
    UPDATE jobs SET state = v_next, updated_at = p_now WHERE id = v_job;
    RETURN QUERY SELECT v_job, 1, 1;
END
$$;
