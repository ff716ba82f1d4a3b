-- A machine's status is derived from whether any of its workers is online or
-- draining, in every transaction that changes a worker. With this index that
-- question is one probe; without it, it reads every worker row of the
-- machine, which is what a burst of expiries on large machines paid.
CREATE INDEX workers_by_machine_status ON workers (machine_id, status);
