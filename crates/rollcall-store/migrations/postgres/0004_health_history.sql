-- Health history: the spans of time each worker and machine was live or
-- down, written in the transaction of the events that change them, and
-- kept far longer than the event log (`health_retention`).
CREATE TABLE health_spans (
    -- 'worker' (id is the worker's id) or 'machine' (id is machine_id).
    entity     TEXT NOT NULL CHECK (entity IN ('worker', 'machine')),
    id         TEXT COLLATE "C" NOT NULL,
    machine_id TEXT COLLATE "C" NOT NULL,
    -- A worker's name (NULL for machines, and for workers deleted before
    -- the history existed).
    name       TEXT,
    start_ms   BIGINT NOT NULL,
    -- NULL while the span is open (the entity's current state).
    end_ms     BIGINT,
    live       BOOLEAN NOT NULL,
    -- For a worker's down span: the class of the offline that began it
    -- ('graceful', 'crash', 'administrative') and the kind of a crash.
    class      TEXT,
    crash_kind TEXT,
    -- Total no-data time before start_ms and before end_ms.
    n_start    BIGINT NOT NULL,
    n_end      BIGINT
);

CREATE UNIQUE INDEX health_spans_open ON health_spans (entity, id) WHERE end_ms IS NULL;
CREATE INDEX health_spans_by_id ON health_spans (entity, id, start_ms);
CREATE INDEX health_spans_by_machine ON health_spans (machine_id, start_ms);
CREATE INDEX health_spans_by_end ON health_spans (end_ms);
CREATE INDEX health_spans_offlines ON health_spans (start_ms) WHERE class IS NOT NULL;

-- The spans of time a rollcall server was observing (from its start or its
-- takeover of the active role, extended every second while it runs).
CREATE TABLE health_observations (
    start_ms          BIGINT PRIMARY KEY,
    end_ms            BIGINT NOT NULL,
    -- Total no-data time (gaps between observations) before start_ms.
    no_data_before_ms BIGINT NOT NULL
);

-- Backfill from the event log: each worker's and machine's span-changing
-- events, each span ending at the next one.
INSERT INTO health_spans (entity, id, machine_id, name, start_ms, end_ms, live, class, crash_kind, n_start, n_end)
SELECT CASE WHEN worker_id IS NULL THEN 'machine' ELSE 'worker' END,
       COALESCE(worker_id, machine_id), machine_id, NULL, at, next_at,
       type IN ('worker.online', 'machine.online'),
       CASE WHEN type <> 'worker.offline' THEN NULL
            WHEN reason = 'shutdown' THEN 'graceful'
            WHEN reason = 'exited' AND exit_code = 0 THEN 'graceful'
            WHEN reason = 'revoked' THEN 'administrative'
            ELSE 'crash' END,
       CASE WHEN type <> 'worker.offline' THEN NULL
            WHEN reason IN ('stale', 'replaced') THEN reason
            WHEN reason = 'exited' AND exit_code IS DISTINCT FROM 0 THEN 'exited'
            ELSE NULL END,
       0, CASE WHEN next_at IS NULL THEN NULL ELSE 0 END
FROM (
    SELECT e.*, LEAD(e.at) OVER (PARTITION BY COALESCE(worker_id, 'm:' || machine_id) ORDER BY seq) AS next_at
    FROM events e
    WHERE type IN ('worker.online', 'worker.offline', 'worker.deleted', 'machine.online', 'machine.offline')
) AS changes
WHERE type <> 'worker.deleted';

-- Open spans of workers and machines that no longer exist end where they began.
UPDATE health_spans SET end_ms = start_ms, n_end = 0
WHERE end_ms IS NULL AND entity = 'worker' AND id NOT IN (SELECT id FROM workers);
UPDATE health_spans SET end_ms = start_ms, n_end = 0
WHERE end_ms IS NULL AND entity = 'machine' AND id NOT IN (SELECT id FROM machines);

-- Workers and machines whose events were already pruned: their current state.
INSERT INTO health_spans (entity, id, machine_id, name, start_ms, end_ms, live, class, crash_kind, n_start, n_end)
SELECT 'worker', w.id, w.machine_id, w.name, w.status_changed_at, NULL,
       w.status IN ('online', 'draining'), NULL, NULL, 0, NULL
FROM workers w
WHERE NOT EXISTS (SELECT 1 FROM health_spans s WHERE s.entity = 'worker' AND s.id = w.id AND s.end_ms IS NULL);
INSERT INTO health_spans (entity, id, machine_id, name, start_ms, end_ms, live, class, crash_kind, n_start, n_end)
SELECT 'machine', m.id, m.id, NULL, m.status_changed_at, NULL,
       m.status = 'online', NULL, NULL, 0, NULL
FROM machines m
WHERE NOT EXISTS (SELECT 1 FROM health_spans s WHERE s.entity = 'machine' AND s.id = m.id AND s.end_ms IS NULL);

UPDATE health_spans SET name = (SELECT w.name FROM workers w WHERE w.id = health_spans.id)
WHERE entity = 'worker';

-- The time the event log covers counts as observed: it holds no record of
-- when servers ran.
INSERT INTO health_observations (start_ms, end_ms, no_data_before_ms)
SELECT (SELECT MIN(start_ms) FROM health_spans),
       FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT, 0
WHERE EXISTS (SELECT 1 FROM health_spans);
