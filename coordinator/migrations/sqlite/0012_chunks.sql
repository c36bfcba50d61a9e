-- Time-chunked encoding. A task's name is where its outputs go (a rendition's name,
-- `thumbnails`, `audio`, or `RENDITION.cNNNN` for one chunk of a rendition); a chunk
-- task covers frames first_frame.. of the job's frame grid (frames NULL: to the
-- source's end).
ALTER TABLE tasks ADD COLUMN name TEXT NOT NULL DEFAULT '';
UPDATE tasks SET name = COALESCE(rendition, 'thumbnails');
ALTER TABLE tasks ADD COLUMN chunk INTEGER;
ALTER TABLE tasks ADD COLUMN first_frame INTEGER;
ALTER TABLE tasks ADD COLUMN frames INTEGER;
