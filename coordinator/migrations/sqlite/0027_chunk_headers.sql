-- The codec headers (sha256 of the SPS/PPS) a rendition's chunks must have: those
-- of the first chunk that passed its checks, claimed at that check, on every chunk
-- task of the rendition (NULL: none yet). Two chunks checked at once with different
-- headers cannot both pass, as they could when only accepted chunks were compared
-- (`Queue::claim_chunk_headers`). Renditions with accepted chunks are claimed for
-- the first one's headers.
ALTER TABLE tasks ADD COLUMN chunk_headers TEXT;
UPDATE tasks SET chunk_headers = (
    SELECT json_extract(a.result, '$.report.extradata_sha256') FROM tasks a
     WHERE a.job_id = tasks.job_id AND a.kind = 'chunk' AND a.rendition = tasks.rendition
       AND a.state IN ('promoting', 'succeeded') AND json_valid(a.result)
     ORDER BY a.chunk LIMIT 1)
 WHERE kind = 'chunk';
