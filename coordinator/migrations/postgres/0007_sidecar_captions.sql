-- Caption files sent with a job (JSON array of proto::captions::Sidecar; NULL for
-- none). Uploaded ones are stored under the job at submit; URL ones are fetched
-- when the job is probed. The finalize publishes them as WebVTT renditions.
ALTER TABLE jobs ADD COLUMN captions TEXT;
