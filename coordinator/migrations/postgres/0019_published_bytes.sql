-- The bytes a task's attempt reported (the sizes of its result's files), written
-- with its result. `/metrics` sums this column: it summed every succeeded task's
-- list of files on every scrape, a cost that grew with history times the files of
-- each rendition (a segment every 6 s).
ALTER TABLE tasks ADD COLUMN published_bytes BIGINT;
UPDATE tasks SET published_bytes = (SELECT SUM((f.value ->> 'size')::BIGINT) FROM jsonb_array_elements(tasks.result::jsonb -> 'files') f(value))
 WHERE result IS NOT NULL AND jsonb_typeof(tasks.result::jsonb -> 'files') = 'array';
