-- Fair order between jobs of one priority: a job is due at its upload time plus its
-- media duration, so a short clip is not queued behind a long film uploaded just
-- before it, and the film still goes first over clips uploaded long after it.
-- Set when the job is planned; NULL (not yet probed) counts as created_at.
ALTER TABLE jobs ADD COLUMN due_at INTEGER;
