-- A video task's output frame size (width x height), set when the job is planned:
-- what a lease weighs when it bundles the same chunk of several rungs (a chunk
-- bundle stays within the job's largest rung). NULL: not weighed, never bundled
-- by weight.
ALTER TABLE tasks ADD COLUMN pixels BIGINT;
