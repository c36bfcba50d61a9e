-- Why a worker takes no task now, as it says in its lease polls (its scratch disk
-- is full); NULL when it takes work. Shown on the dashboard as the state "paused".
ALTER TABLE workers ADD COLUMN paused TEXT;
