-- The coordinator processes serving this database, each heartbeating: a chore
-- claimed by one whose heartbeats stopped is pushed again by the others.
CREATE TABLE coordinators (
    id TEXT PRIMARY KEY NOT NULL,
    started_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
);

-- Farm-wide settings every coordinator reads (the webhook signing secret).
CREATE TABLE settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
