-- Resumable uploads (tus 1.0). An upload's bytes arrive as parts, each a stored
-- object (`tus/ID/SEQ-...`) appended by one PATCH: a part is in the upload once its
-- row is here, so a PATCH cut short or refused (checksum) appends nothing. When the
-- offset reaches the length the completion is owed: it claims the upload by setting
-- job_id, joins the parts into the job's source, creates the job (the request was
-- validated at creation and kept here) and removes the parts.
CREATE TABLE uploads (
    id TEXT PRIMARY KEY,
    -- sha256 of the bearer token that created it: only that token reaches it.
    owner TEXT NOT NULL,
    -- The job request (coordinator::queue::NewJob as JSON, its source to be filled in).
    request TEXT NOT NULL,
    filename TEXT,
    -- NULL until the client says (creation-defer-length).
    length BIGINT,
    upload_offset BIGINT NOT NULL DEFAULT 0,
    parts BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    -- Set when the completion claims it: the job made (or being made) from it.
    job_id TEXT
);
CREATE INDEX uploads_expires ON uploads (expires_at);
CREATE INDEX uploads_owner ON uploads (owner, job_id);
CREATE TABLE upload_parts (
    upload_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    path TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (upload_id, seq)
);
