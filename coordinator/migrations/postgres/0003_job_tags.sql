-- As SQLite's 0010: the worker tags a job's tasks need.
CREATE TABLE job_tags (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    tag TEXT NOT NULL,
    PRIMARY KEY (job_id, tag)
);
