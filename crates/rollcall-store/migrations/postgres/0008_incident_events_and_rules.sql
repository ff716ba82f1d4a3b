-- The event log records incidents opening and resolving (`incident.*`
-- events, written by the alerter in the transaction of its step).
ALTER TABLE events ADD COLUMN incident_id TEXT;

-- Alert rules made through the API (`PUT /v1/alert-rules/{name}`); the
-- config file's `[[alert]]` rules are not stored. `spec` is the rule's JSON
-- as the API takes it.
CREATE TABLE alert_rules (
    name          TEXT PRIMARY KEY NOT NULL,
    spec          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);
