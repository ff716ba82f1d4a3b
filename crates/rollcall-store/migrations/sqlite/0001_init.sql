-- rollcall's schema. Timestamps are integer milliseconds since the Unix epoch.

CREATE TABLE machines (
    id                TEXT PRIMARY KEY NOT NULL,
    hostname          TEXT,
    labels            TEXT NOT NULL DEFAULT '{}',
    -- Derived from the workers in the same transaction that changes them.
    status            TEXT NOT NULL CHECK (status IN ('online', 'offline')),
    first_seen_at     INTEGER NOT NULL,
    last_seen_at      INTEGER NOT NULL,
    status_changed_at INTEGER NOT NULL
);

CREATE TABLE workers (
    id                    TEXT PRIMARY KEY NOT NULL,
    name                  TEXT NOT NULL,
    machine_id            TEXT NOT NULL REFERENCES machines (id),
    status                TEXT NOT NULL CHECK (status IN ('online', 'draining', 'offline')),
    offline_reason        TEXT,
    session               INTEGER NOT NULL,
    labels                TEXT NOT NULL DEFAULT '{}',
    heartbeat_interval_ms INTEGER NOT NULL,
    stale_after_ms        INTEGER NOT NULL,
    registered_at         INTEGER NOT NULL,
    -- Written behind, in batches; never indexed, so updating it stays cheap.
    last_heartbeat_at     INTEGER,
    status_changed_at     INTEGER NOT NULL,
    token_hash            TEXT NOT NULL UNIQUE,
    UNIQUE (machine_id, name)
);

CREATE INDEX workers_by_status ON workers (status, id);

CREATE TABLE events (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    at               INTEGER NOT NULL,
    type             TEXT NOT NULL,
    worker_id        TEXT,
    machine_id       TEXT NOT NULL,
    reason           TEXT,
    session          INTEGER,
    detection_lag_ms INTEGER
);

CREATE INDEX events_by_at ON events (at);
CREATE INDEX events_by_worker ON events (worker_id, seq);
CREATE INDEX events_by_machine ON events (machine_id, seq);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('admin', 'enroll', 'read')),
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER,
    last_used_at INTEGER
);
