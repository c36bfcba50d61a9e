-- The bytes a task's attempt reported (the sizes of its result's files), written
-- with its result. `/metrics` sums this column: it summed every succeeded task's
-- list of files on every scrape, a cost that grew with history times the files of
-- each rendition (a segment every 6 s).
ALTER TABLE tasks ADD COLUMN published_bytes BIGINT;
UPDATE tasks SET published_bytes = (SELECT SUM(json_extract(f.value, '$.size')) FROM json_each(tasks.result, '$.files') f)
 WHERE result IS NOT NULL AND json_type(result, '$.files') = 'array';
