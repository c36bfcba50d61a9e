-- `tasks.failed_by` names every worker an attempt of the task failed or lapsed on
-- (",w1,w2,"), not only the last: a retry goes to a worker that has not failed it
-- first, so two bad machines cannot spend a task's attempts between them while a
-- good one is live. `drake_claim` (migration 0021) is the same claim with that
-- condition: `lease_claim!("FOR UPDATE SKIP LOCKED", "", "$5")` in queue.rs, word
-- for word (a unit test compares them).
UPDATE tasks SET failed_by = ',' || failed_by || ',' WHERE failed_by IS NOT NULL;
CREATE OR REPLACE FUNCTION drake_claim(TEXT, BIGINT, BIGINT, TEXT, TEXT)
RETURNS TABLE (id TEXT, job_id TEXT, epoch BIGINT, kind TEXT, rendition TEXT, lease_expires_at BIGINT, attempts BIGINT, name TEXT,
               chunk BIGINT, first_frame BIGINT, frames BIGINT, pixels BIGINT, profile TEXT, source TEXT, job_state TEXT,
               has_audio INTEGER)
LANGUAGE plpgsql
SET enable_sort = off
SET enable_bitmapscan = off
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY WITH claimed AS (
UPDATE tasks SET state = 'leased', worker_id = $1, epoch = epoch + 1, attempts = attempts + 1, leased_at = $2,
                 lease_expires_at = $2 + $3, progress = 0, updated_at = $2
             WHERE state = 'queued' AND id = (SELECT t.id FROM tasks t
                         WHERE t.state = 'queued' AND t.run_after <= $2 AND t.cancel = 0
                           AND (SELECT j.state FROM jobs j WHERE j.id = t.job_id) IN ('queued', 'running')
                           AND (t.requires IS NULL OR instr($4, ',' || t.requires || ',') > 0)
                           AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = $1 AND (w.draining <> 0 OR w.removed <> 0))
                           AND (t.failed_by IS NULL OR instr(t.failed_by, ',' || $1 || ',') = 0 OR t.run_after + 60000 <= $2
                                OR NOT EXISTS (SELECT 1 FROM workers w WHERE instr(t.failed_by, ',' || w.id || ',') = 0 AND w.removed = 0 AND w.draining = 0
                                     AND w.paused IS NULL AND w.last_seen >= $2 - $3))
                           AND (t.encoder_build IS NULL OR t.encoder_build = (SELECT w.encoder_build FROM workers w WHERE w.id = $1)
                                OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.encoder_build = t.encoder_build AND w.removed = 0
                                     AND w.draining = 0 AND w.paused IS NULL AND w.last_seen >= $2 - $3))
                           AND NOT EXISTS (SELECT 1 FROM job_tags jt WHERE jt.job_id = t.job_id AND instr($5, ',' || jt.tag || ',') = 0)
                           AND (t.kind NOT IN ('transcode', 'join', 'thumbnails') OR NOT EXISTS (SELECT 1 FROM tasks d
                                 WHERE d.job_id = t.job_id AND d.kind = 'audio' AND d.state <> 'succeeded' LIMIT 1 OFFSET 0))
                           AND (t.kind <> 'join' OR NOT EXISTS (SELECT 1 FROM tasks d
                                 WHERE d.job_id = t.job_id AND d.kind = 'chunk' AND d.rendition = t.rendition AND d.state <> 'succeeded'
                                 LIMIT 1 OFFSET 0))
                         ORDER BY t.priority DESC, t.due_at, t.job_created_at, t.seq LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING id, job_id, epoch, kind, rendition, lease_expires_at, attempts, name, chunk, first_frame, frames, pixels,
                 (SELECT j.profile FROM jobs j WHERE j.id = tasks.job_id) AS profile,
                 (SELECT COALESCE(j.stored_source, j.source) FROM jobs j WHERE j.id = tasks.job_id) AS source,
                 (SELECT j.state FROM jobs j WHERE j.id = tasks.job_id) AS job_state,
                 CASE WHEN EXISTS (SELECT 1 FROM tasks a WHERE a.job_id = tasks.job_id AND a.name = 'audio' AND a.kind = 'audio')
                      THEN 1 ELSE 0 END AS has_audio
    ), started AS (
        UPDATE jobs SET state = 'running', updated_at = $2 FROM claimed WHERE jobs.id = claimed.job_id AND jobs.state = 'queued'
    )
    SELECT claimed.id, claimed.job_id, claimed.epoch, claimed.kind, claimed.rendition, claimed.lease_expires_at, claimed.attempts,
           claimed.name, claimed.chunk, claimed.first_frame, claimed.frames, claimed.pixels, claimed.profile, claimed.source,
           CAST('running' AS TEXT), claimed.has_audio
    FROM claimed;
END
$$;
