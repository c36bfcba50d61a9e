-- Worker machines, what they can encode, and what the farm needs to route tasks.
CREATE TABLE workers (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    -- idle, busy, draining, offline (derived for display from last_seen and tasks)
    draining INTEGER NOT NULL DEFAULT 0,
    removed INTEGER NOT NULL DEFAULT 0,
    slots INTEGER NOT NULL,
    free_slots INTEGER NOT NULL DEFAULT 0,
    capabilities TEXT NOT NULL,
    drake_version TEXT NOT NULL,
    last_seen INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

-- The libav encoder a task needs (NULL: any worker).
ALTER TABLE tasks ADD COLUMN requires TEXT;
-- The end of a failed child's stderr.
ALTER TABLE tasks ADD COLUMN log_tail TEXT;
-- Output URLs once finalize has written them.
ALTER TABLE jobs ADD COLUMN outputs TEXT;
