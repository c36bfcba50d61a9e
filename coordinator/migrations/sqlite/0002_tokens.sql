-- Bearer tokens, stored as sha256 hex digests only. Roles: admin, submit, worker, join.
-- A join token has uses and an expiry; exchanging it yields a worker token.
CREATE TABLE tokens (
    hash TEXT PRIMARY KEY NOT NULL,
    role TEXT NOT NULL,
    label TEXT,
    uses_left INTEGER,
    expires_at INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
