-- rollcall's schema for PostgreSQL. Timestamps are integer milliseconds since
-- the Unix epoch, as in the SQLite schema.
--
-- Identifiers use the "C" collation: pages are ordered by id, and that order
-- must be the byte order every other part of rollcall uses, whatever the
-- database's default collation is.

CREATE TABLE machines (
    id                TEXT COLLATE "C" PRIMARY KEY,
    hostname          TEXT,
    -- NULL until labels are given; read as no labels. (A registration that
    -- gives none keeps the stored ones, and one statement upserts many
    -- machines, some with labels and some without.)
    labels            TEXT,
    -- Derived from the workers in the same transaction that changes them.
    status            TEXT NOT NULL CHECK (status IN ('online', 'offline')),
    first_seen_at     BIGINT NOT NULL,
    -- Moved by every heartbeat flush: never indexed (see workers).
    last_seen_at      BIGINT NOT NULL,
    status_changed_at BIGINT NOT NULL
) WITH (fillfactor = 50);

-- `last_heartbeat_at` is written behind for every live worker at every flush.
-- It carries no index, so those updates are HOT (heap-only: no index entry is
-- written) as long as the new row version fits on the page of the old one.
-- A flush may update every row of a page in one transaction, and the old
-- versions stay until it commits, so a page must have room for each of its
-- rows twice: fillfactor 50. With 85, a flush of every worker was measured at
-- 76% HOT, and the table grew to three times the size it keeps at 50.
CREATE TABLE workers (
    id                    TEXT COLLATE "C" PRIMARY KEY,
    name                  TEXT COLLATE "C" NOT NULL,
    machine_id            TEXT COLLATE "C" NOT NULL REFERENCES machines (id),
    status                TEXT NOT NULL CHECK (status IN ('online', 'draining', 'offline')),
    offline_reason        TEXT,
    session               BIGINT NOT NULL,
    labels                TEXT NOT NULL DEFAULT '{}',
    heartbeat_interval_ms BIGINT NOT NULL,
    stale_after_ms        BIGINT NOT NULL,
    registered_at         BIGINT NOT NULL,
    last_heartbeat_at     BIGINT,
    status_changed_at     BIGINT NOT NULL,
    token_hash            TEXT NOT NULL UNIQUE,
    UNIQUE (machine_id, name)
) WITH (fillfactor = 50);

CREATE INDEX workers_by_status ON workers (status, id);

CREATE TABLE events (
    -- Assigned from rollcall_event_seq under a transaction-level advisory
    -- lock: strictly increasing in commit order, never reused.
    seq              BIGINT PRIMARY KEY,
    at               BIGINT NOT NULL,
    type             TEXT NOT NULL,
    worker_id        TEXT COLLATE "C",
    machine_id       TEXT COLLATE "C" NOT NULL,
    reason           TEXT,
    session          BIGINT,
    detection_lag_ms BIGINT
);

CREATE INDEX events_by_at ON events (at);
CREATE INDEX events_by_worker ON events (worker_id, seq);
CREATE INDEX events_by_machine ON events (machine_id, seq);

-- The largest seq ever assigned: unlike MAX(seq), it survives pruning.
CREATE TABLE rollcall_event_seq (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    last BIGINT NOT NULL
);
INSERT INTO rollcall_event_seq (id, last) VALUES (1, 0);

CREATE TABLE tokens (
    id           TEXT COLLATE "C" PRIMARY KEY,
    kind         TEXT NOT NULL CHECK (kind IN ('admin', 'enroll', 'read')),
    name         TEXT NOT NULL,
    hash         TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    last_used_at BIGINT
);

-- The active replica. `epoch` grows by one each time a replica takes the
-- leader lock; every fenced write first reads it FOR SHARE and refuses to
-- run unless it is the epoch its replica leads with. `replica` is NULL when
-- the last leader stepped down.
CREATE TABLE rollcall_leader (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    epoch         BIGINT NOT NULL,
    replica       TEXT,
    advertise_url TEXT,
    since         BIGINT
);
INSERT INTO rollcall_leader (id, epoch) VALUES (1, 0);

-- Standbys learn of new events and changed tokens by LISTEN. A notification
-- is delivered when its transaction commits, and only if it changed rows.
CREATE FUNCTION rollcall_notify_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed) THEN
        PERFORM pg_notify('rollcall_events', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION rollcall_notify_tokens() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed) THEN
        PERFORM pg_notify('rollcall_tokens', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION rollcall_notify_events();

-- A trigger with transition tables fires on one kind of statement only.
CREATE TRIGGER tokens_notify_insert AFTER INSERT ON tokens
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION rollcall_notify_tokens();
CREATE TRIGGER tokens_notify_delete AFTER DELETE ON tokens
    REFERENCING OLD TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION rollcall_notify_tokens();
