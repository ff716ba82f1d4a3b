-- The rollup of the health history, maintained in the transaction of the
-- spans it sums, so the fleet's figures over a window are read from a few
-- aggregate rows instead of every span of the window.

-- The fleet query no longer reads spans by end, nor every offline by
-- start: the rollup answers both. The daily prune scans the table instead.
DROP INDEX health_spans_by_end;
DROP INDEX health_spans_offlines;

-- Worker down spans by start, with what the rankings by crashes and by
-- downtime read (new down spans are appended at its end).
CREATE INDEX health_spans_down ON health_spans (start_ms, id, machine_id, class, end_ms, n_start, n_end)
    WHERE entity = 'worker' AND live = false;

-- Each worker's history: from its first span to the end of its last, NULL
-- while it exists. Written when a worker begins and when it is deleted.
CREATE TABLE health_lives (
    id         TEXT COLLATE "C" PRIMARY KEY NOT NULL,
    machine_id TEXT COLLATE "C" NOT NULL,
    start_ms   BIGINT NOT NULL,
    end_ms     BIGINT
);
CREATE INDEX health_lives_by_machine ON health_lives (machine_id, start_ms, end_ms);

-- Per instant and series, over worker spans: the number of span starts
-- ('start.live', 'start.down'), ends ('end.live', 'end.down') and offlines
-- ('off:<class>:<crash kind>') at that instant, the sum of the instants
-- and the sum of the observed clock (instant − no-data time before it).
CREATE TABLE health_rollup (
    at      BIGINT NOT NULL,
    series  TEXT NOT NULL,
    n       BIGINT NOT NULL,
    sum_ms  BIGINT NOT NULL,
    sum_obs BIGINT NOT NULL,
    PRIMARY KEY (at, series)
);

-- The same per hour (hour = at / 3600000).
CREATE TABLE health_rollup_hourly (
    hour    BIGINT NOT NULL,
    series  TEXT NOT NULL,
    n       BIGINT NOT NULL,
    sum_ms  BIGINT NOT NULL,
    sum_obs BIGINT NOT NULL,
    PRIMARY KEY (hour, series)
);

-- Crashes per machine per day (day = start / 86400000).
CREATE TABLE health_rollup_machines (
    day        BIGINT NOT NULL,
    machine_id TEXT COLLATE "C" NOT NULL,
    crashes    BIGINT NOT NULL,
    PRIMARY KEY (day, machine_id)
);

-- Backfill from the spans.
INSERT INTO health_lives (id, machine_id, start_ms, end_ms)
SELECT id, MIN(machine_id), MIN(start_ms),
       CASE WHEN COUNT(*) = COUNT(end_ms) THEN MAX(end_ms) END
FROM health_spans WHERE entity = 'worker' GROUP BY id;

INSERT INTO health_rollup (at, series, n, sum_ms, sum_obs)
SELECT at, series, COUNT(*), SUM(at), SUM(obs) FROM (
    SELECT start_ms AS at, CASE WHEN live THEN 'start.live' ELSE 'start.down' END AS series,
           start_ms - n_start AS obs
    FROM health_spans WHERE entity = 'worker'
    UNION ALL
    SELECT end_ms, CASE WHEN live THEN 'end.live' ELSE 'end.down' END, end_ms - n_end
    FROM health_spans WHERE entity = 'worker' AND end_ms IS NOT NULL
    UNION ALL
    SELECT start_ms, 'off:' || class || ':' || COALESCE(crash_kind, ''), 0
    FROM health_spans WHERE entity = 'worker' AND class IS NOT NULL
) AS spans
GROUP BY at, series;

INSERT INTO health_rollup_hourly (hour, series, n, sum_ms, sum_obs)
SELECT at / 3600000, series, SUM(n), SUM(sum_ms), SUM(sum_obs)
FROM health_rollup GROUP BY at / 3600000, series;

INSERT INTO health_rollup_machines (day, machine_id, crashes)
SELECT start_ms / 86400000, machine_id, COUNT(*)
FROM health_spans WHERE entity = 'worker' AND class = 'crash'
GROUP BY start_ms / 86400000, machine_id;
