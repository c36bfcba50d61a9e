-- The encoder build each worker registered with, and the one a rendition's chunks
-- must be made by (that of its first accepted chunk; NULL: any), since a
-- rendition's chunks are joined under one set of codec headers that only one
-- build writes (`lease_claim!` in queue.rs).
ALTER TABLE workers ADD COLUMN encoder_build TEXT;
ALTER TABLE tasks ADD COLUMN encoder_build TEXT;
