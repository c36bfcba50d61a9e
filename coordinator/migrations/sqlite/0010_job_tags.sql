-- Worker tags a job's tasks need (from its profile and its submit): only a worker
-- with all of them leases its tasks.
CREATE TABLE job_tags (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    tag TEXT NOT NULL,
    PRIMARY KEY (job_id, tag)
);
