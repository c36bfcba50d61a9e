-- As SQLite's 0012: task names, and the frames a chunk task covers.
ALTER TABLE tasks ADD COLUMN name TEXT NOT NULL DEFAULT '';
UPDATE tasks SET name = COALESCE(rendition, 'thumbnails');
ALTER TABLE tasks ADD COLUMN chunk BIGINT;
ALTER TABLE tasks ADD COLUMN first_frame BIGINT;
ALTER TABLE tasks ADD COLUMN frames BIGINT;
