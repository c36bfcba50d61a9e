-- As SQLite's 0009: coordinator heartbeats, and farm-wide settings.
CREATE TABLE coordinators (
    id TEXT PRIMARY KEY NOT NULL,
    started_at BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);

CREATE TABLE settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
