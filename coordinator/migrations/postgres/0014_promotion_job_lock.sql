-- `drake_promoted` (0012) settles the job holding that job's row lock, not the
-- writer's advisory lock of the whole farm (`p_lock` is no longer used).
-- - Only a promotion moves a task to `succeeded`, so the race to guard is two
--   promotions of one job each taking the other's task for unfinished, which
--   would leave the job running with every task done. Both lock the job's row
--   first, so they take turns, and each statement after the lock reads what the
--   other committed (Read Committed).
-- - The row is locked before the task's, the order a cancel takes them in (its
--   job, then its tasks), so the two cannot deadlock; and a transaction under
--   the writer's lock that changes the job (a cancel, a failure) waits for the
--   promotion, or the promotion reads its end.
-- - The writer's lock had promotions wait 0.4-12 ms on average behind each other
--   and behind the reconciler (bench/queue.sh with pg_stat_statements).
CREATE OR REPLACE FUNCTION drake_promoted(p_task TEXT, p_now BIGINT, p_lock BIGINT) RETURNS TABLE (job_id TEXT, settled INTEGER)
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
