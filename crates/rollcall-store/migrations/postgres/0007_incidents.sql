-- Alerting: the alerter's cursor in the event log, the incidents it derives
-- from the log, and the outbox of notifications they owe the channels. A
-- step of the alerter writes all three in one transaction.
CREATE TABLE alert_cursor (
    id  BIGINT PRIMARY KEY CHECK (id = 1),
    -- The seq of the last event the alerter consumed.
    seq BIGINT NOT NULL
);
-- History before alerting existed pages nobody.
INSERT INTO alert_cursor (id, seq)
SELECT 1, (SELECT last FROM rollcall_event_seq WHERE id = 1);

CREATE TABLE incidents (
    id             TEXT PRIMARY KEY NOT NULL,
    rule           TEXT NOT NULL,
    kind           TEXT NOT NULL,
    severity       TEXT NOT NULL,
    -- A worker id, a machine id or the rule's name (fleet-wide).
    subject        TEXT NOT NULL,
    worker_id      TEXT,
    machine_id     TEXT,
    status         TEXT NOT NULL CHECK (status IN ('pending', 'open', 'resolved')),
    since_ms       BIGINT NOT NULL,
    opened_at_ms   BIGINT,
    resolved_at_ms BIGINT,
    acked_at_ms    BIGINT,
    acked_by       TEXT,
    inhibited_by   TEXT,
    summary        TEXT NOT NULL,
    details        TEXT NOT NULL,
    updated_at_ms  BIGINT NOT NULL
);
-- A rule has at most one current incident per subject.
CREATE UNIQUE INDEX incidents_current ON incidents (rule, subject) WHERE status <> 'resolved';
CREATE INDEX incidents_by_status ON incidents (status, id);

CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    incident_id     TEXT NOT NULL,
    channel         TEXT NOT NULL,
    transition      TEXT NOT NULL,
    idempotency_key TEXT NOT NULL UNIQUE,
    body            TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    not_before_ms   BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    state           TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'suppressed', 'given_up')),
    done_at_ms      BIGINT
);
CREATE INDEX outbox_pending ON outbox (not_before_ms, id) WHERE state = 'pending';
CREATE INDEX outbox_by_incident ON outbox (incident_id, channel, id);
