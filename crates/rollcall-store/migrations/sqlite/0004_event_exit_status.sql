-- How a supervised process ended, for `exited` offlines an agent reported:
-- its exit code (0–255) or the signal that ended it (1–64); at most one.
ALTER TABLE events ADD COLUMN exit_code INTEGER;
ALTER TABLE events ADD COLUMN signal INTEGER;
