-- A completion's lease: the coordinator joining a complete upload's parts holds it
-- until this time (ms), renewing it while it works, so the reconciler does not join
-- the same gigabytes again; once it lapses (that coordinator died), anyone may.
ALTER TABLE uploads ADD COLUMN finishing_until BIGINT;
