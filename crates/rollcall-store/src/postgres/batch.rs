//! The statements of [`PgStore::commit`](super::PgStore): a batch's writes
//! as a few statements over arrays (`UNNEST`), whatever the batch's size.
//!
//! Writes are grouped into *layers* (the k-th write of each worker; per-worker
//! order is all that matters), and each layer runs as one statement per kind:
//! machine upserts, deletes, updates, inserts, each `RETURNING` the rows it
//! changed. If some write's condition does not hold, the layers are rolled
//! back to a savepoint and the batch is replayed one write at a time, which
//! applies exactly the writes whose conditions hold.

use std::collections::{BTreeMap, HashMap};

use rollcall_core::{MachineId, MachineStatus, Timestamp, WorkerId};
use sqlx::{Acquire, Postgres, Transaction};

use crate::records::{EventRecord, Expect, WorkerRecord, WorkerWrite};
use crate::rows::{corrupt, labels_json, ms, WORKER_COLUMNS};
use crate::Result;

type Tx = Transaction<'static, Postgres>;

/// Applies the writes whose conditions hold; returns, per write, whether it
/// was applied.
pub(super) async fn apply_writes(tx: &mut Tx, writes: &[WorkerWrite]) -> Result<Vec<bool>> {
    // Layer k holds the k-th write of each worker.
    let mut seen: HashMap<&WorkerId, usize> = HashMap::new();
    let mut layers: Vec<Vec<&WorkerWrite>> = Vec::new();
    for w in writes {
        let id = match w {
            WorkerWrite::Put { record, .. } => &record.id,
            WorkerWrite::Delete { id, .. } => id,
        };
        let k = seen.entry(id).or_insert(0);
        if layers.len() <= *k {
            layers.push(Vec::new());
        }
        layers[*k].push(w);
        *k += 1;
    }

    let mut fast = tx.begin().await?;
    let mut all_applied = true;
    for layer in &layers {
        if !apply_layer(&mut fast, layer).await? {
            all_applied = false;
            break;
        }
    }
    if all_applied {
        fast.commit().await?;
        return Ok(vec![true; writes.len()]);
    }
    fast.rollback().await?;

    // One write at a time. A write that is not applied changes nothing: its
    // machine upsert (the machine row must exist before a worker refers to
    // it) runs in a savepoint, undone if the worker's condition fails.
    let mut applied = Vec::with_capacity(writes.len());
    for w in writes {
        let ok = match w {
            WorkerWrite::Put {
                machine: Some(_), ..
            } => {
                let mut sp = tx.begin().await?;
                let ok = apply_layer(&mut sp, &[w]).await?;
                if ok {
                    sp.commit().await?;
                } else {
                    sp.rollback().await?;
                }
                ok
            }
            _ => apply_layer(tx, &[w]).await?,
        };
        applied.push(ok);
    }
    Ok(applied)
}

/// Runs the writes of one layer (at most one per worker); whether all of
/// them were applied. When not, the caller rolls the layer back.
async fn apply_layer(tx: &mut Transaction<'_, Postgres>, layer: &[&WorkerWrite]) -> Result<bool> {
    let mut deletes: Vec<(&WorkerId, &Expect)> = Vec::new();
    let mut updates: Vec<(&WorkerRecord, &Expect)> = Vec::new();
    let mut inserts: Vec<&WorkerRecord> = Vec::new();
    // Per machine: hostname and labels if given (the last given wins), and
    // the latest time seen.
    let mut machines: BTreeMap<&MachineId, (Option<&str>, Option<String>, Timestamp)> =
        BTreeMap::new();
    for w in layer {
        match w {
            WorkerWrite::Delete { id, expect, .. } => deletes.push((id, expect)),
            WorkerWrite::Put {
                record,
                expect,
                machine,
                ..
            } => {
                if let Some(m) = machine {
                    let e = machines.entry(&m.id).or_insert((None, None, m.seen_at));
                    if let Some(h) = &m.hostname {
                        e.0 = Some(h.as_str());
                    }
                    if let Some(l) = &m.labels {
                        e.1 = Some(labels_json(l));
                    }
                    e.2 = e.2.max(m.seen_at);
                }
                match expect {
                    None => inserts.push(record),
                    Some(e) => updates.push((record, e)),
                }
            }
        }
    }

    if !machines.is_empty() {
        upsert_machines(tx, &machines).await?;
    }

    if !deletes.is_empty() {
        let ids: Vec<&str> = deletes.iter().map(|(id, _)| id.as_str()).collect();
        let statuses: Vec<&str> = deletes.iter().map(|(_, e)| e.status.as_str()).collect();
        let sessions: Vec<i64> = deletes.iter().map(|(_, e)| e.session as i64).collect();
        let done = sqlx::query(
            "DELETE FROM workers w USING UNNEST($1::text[], $2::text[], $3::bigint[]) \
               AS v (id, status, session) \
             WHERE w.id = v.id AND w.status = v.status AND w.session = v.session",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&sessions)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if done != deletes.len() as u64 {
            return Ok(false);
        }
    }

    if !updates.is_empty() {
        let rows = Columns::of(updates.iter().map(|(r, _)| *r));
        let exp_status: Vec<&str> = updates.iter().map(|(_, e)| e.status.as_str()).collect();
        let exp_session: Vec<i64> = updates.iter().map(|(_, e)| e.session as i64).collect();
        // Within a session the heartbeat time only moves forward: the flush
        // may have written a later one than the record carries.
        let done = rows
            .bind(sqlx::query(
                "UPDATE workers w SET name = v.name, machine_id = v.machine_id, status = v.status, \
                   offline_reason = v.offline_reason, \
                   last_heartbeat_at = CASE WHEN w.session = v.session \
                     THEN GREATEST(w.last_heartbeat_at, v.last_heartbeat_at) \
                     ELSE v.last_heartbeat_at END, \
                   session = v.session, labels = v.labels, \
                   heartbeat_interval_ms = v.heartbeat_interval_ms, \
                   stale_after_ms = v.stale_after_ms, registered_at = v.registered_at, \
                   status_changed_at = v.status_changed_at, token_hash = v.token_hash \
                 FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                   $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], \
                   $11::bigint[], $12::bigint[], $13::text[], $14::text[], $15::bigint[]) \
                   AS v (id, name, machine_id, status, offline_reason, session, labels, \
                   heartbeat_interval_ms, stale_after_ms, registered_at, last_heartbeat_at, \
                   status_changed_at, token_hash, exp_status, exp_session) \
                 WHERE w.id = v.id AND w.status = v.exp_status AND w.session = v.exp_session",
            ))
            .bind(&exp_status)
            .bind(&exp_session)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if done != updates.len() as u64 {
            return Ok(false);
        }
    }

    if !inserts.is_empty() {
        let rows = Columns::of(inserts.iter().copied());
        // ON CONFLICT DO NOTHING: an existing id, or another worker with the
        // same name on the machine, or a reused token hash, is "not applied".
        let done = rows
            .bind(sqlx::query(&format!(
                "INSERT INTO workers ({WORKER_COLUMNS}) \
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                   $6::bigint[], $7::text[], $8::bigint[], $9::bigint[], $10::bigint[], \
                   $11::bigint[], $12::bigint[], $13::text[]) \
                 ON CONFLICT DO NOTHING"
            )))
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if done != inserts.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Inserts the machines or merges the given details into them: hostname and
/// labels replace the stored ones when given, `last_seen_at` only moves
/// forward.
async fn upsert_machines(
    tx: &mut Transaction<'_, Postgres>,
    machines: &BTreeMap<&MachineId, (Option<&str>, Option<String>, Timestamp)>,
) -> Result<()> {
    let ids: Vec<&str> = machines.keys().map(|id| id.as_str()).collect();
    let hostnames: Vec<Option<&str>> = machines.values().map(|(h, _, _)| *h).collect();
    let labels: Vec<Option<&str>> = machines.values().map(|(_, l, _)| l.as_deref()).collect();
    let seen: Vec<i64> = machines.values().map(|(_, _, t)| t.as_millis()).collect();
    // NULL labels in the proposed row mean "none given": kept on conflict.
    sqlx::query(
        "INSERT INTO machines AS m (id, hostname, labels, status, first_seen_at, last_seen_at, \
           status_changed_at) \
         SELECT id, hostname, labels, 'offline', seen, seen, seen \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[]) AS v (id, hostname, labels, seen) \
         ON CONFLICT (id) DO UPDATE SET \
           hostname = COALESCE(EXCLUDED.hostname, m.hostname), \
           labels = COALESCE(EXCLUDED.labels, m.labels), \
           last_seen_at = GREATEST(m.last_seen_at, EXCLUDED.last_seen_at)",
    )
    .bind(&ids)
    .bind(&hostnames)
    .bind(&labels)
    .bind(&seen)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A worker row per array, in [`WORKER_COLUMNS`] order, for `UNNEST`.
struct Columns<'a> {
    id: Vec<&'a str>,
    name: Vec<&'a str>,
    machine_id: Vec<&'a str>,
    status: Vec<&'static str>,
    offline_reason: Vec<Option<&'static str>>,
    session: Vec<i64>,
    labels: Vec<String>,
    heartbeat_interval_ms: Vec<i64>,
    stale_after_ms: Vec<i64>,
    registered_at: Vec<i64>,
    last_heartbeat_at: Vec<Option<i64>>,
    status_changed_at: Vec<i64>,
    token_hash: Vec<String>,
}

impl<'a> Columns<'a> {
    fn of(records: impl Iterator<Item = &'a WorkerRecord>) -> Self {
        let mut c = Columns {
            id: Vec::new(),
            name: Vec::new(),
            machine_id: Vec::new(),
            status: Vec::new(),
            offline_reason: Vec::new(),
            session: Vec::new(),
            labels: Vec::new(),
            heartbeat_interval_ms: Vec::new(),
            stale_after_ms: Vec::new(),
            registered_at: Vec::new(),
            last_heartbeat_at: Vec::new(),
            status_changed_at: Vec::new(),
            token_hash: Vec::new(),
        };
        for r in records {
            c.id.push(r.id.as_str());
            c.name.push(r.name.as_str());
            c.machine_id.push(r.machine_id.as_str());
            c.status.push(r.status.as_str());
            c.offline_reason.push(r.offline_reason.map(|x| x.as_str()));
            c.session.push(r.session as i64);
            c.labels.push(labels_json(&r.labels));
            c.heartbeat_interval_ms.push(ms(r.heartbeat_interval));
            c.stale_after_ms.push(ms(r.stale_after));
            c.registered_at.push(r.registered_at.as_millis());
            c.last_heartbeat_at
                .push(r.last_heartbeat_at.map(|t| t.as_millis()));
            c.status_changed_at.push(r.status_changed_at.as_millis());
            c.token_hash.push(r.token_hash.to_hex());
        }
        c
    }

    /// Binds the arrays as `$1` to `$13`.
    fn bind<'q>(
        &'q self,
        q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
        q.bind(&self.id)
            .bind(&self.name)
            .bind(&self.machine_id)
            .bind(&self.status)
            .bind(&self.offline_reason)
            .bind(&self.session)
            .bind(&self.labels)
            .bind(&self.heartbeat_interval_ms)
            .bind(&self.stale_after_ms)
            .bind(&self.registered_at)
            .bind(&self.last_heartbeat_at)
            .bind(&self.status_changed_at)
            .bind(&self.token_hash)
    }
}

/// Sets each machine's status from its workers; returns the changes, in
/// machine-id order, each at the time given for its machine.
pub(super) async fn derive_machines(
    tx: &mut Tx,
    machines: &BTreeMap<MachineId, Timestamp>,
) -> Result<Vec<(MachineId, MachineStatus, Timestamp)>> {
    if machines.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = machines.keys().map(|id| id.as_str()).collect();
    // Live is "not offline" (online or draining): a condition no index
    // answers, so each machine is one probe of the (machine_id, name) index,
    // never a scan of every live worker's entry in the status index, which a
    // planner without statistics was seen to choose.
    let rows: Vec<(String, String, bool)> = sqlx::query_as(
        "SELECT m.id, m.status, EXISTS (SELECT 1 FROM workers w WHERE w.machine_id = m.id \
           AND w.status <> 'offline') \
         FROM machines m WHERE m.id = ANY($1::text[]) ORDER BY m.id",
    )
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut changes = Vec::new();
    for (id, stored, live) in rows {
        let derived = if live {
            MachineStatus::Online
        } else {
            MachineStatus::Offline
        };
        if stored == derived.as_str() {
            continue;
        }
        let id = MachineId::parse(&id).map_err(corrupt)?;
        let at = machines.get(&id).copied().unwrap_or(Timestamp::EPOCH);
        changes.push((id, derived, at));
    }
    if changes.is_empty() {
        return Ok(changes);
    }
    let ids: Vec<&str> = changes.iter().map(|(id, _, _)| id.as_str()).collect();
    let statuses: Vec<&str> = changes.iter().map(|(_, s, _)| s.as_str()).collect();
    let ats: Vec<i64> = changes.iter().map(|(_, _, at)| at.as_millis()).collect();
    sqlx::query(
        "UPDATE machines m SET status = v.status, status_changed_at = v.at \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS v (id, status, at) \
         WHERE m.id = v.id",
    )
    .bind(&ids)
    .bind(&statuses)
    .bind(&ats)
    .execute(&mut **tx)
    .await?;
    Ok(changes)
}

/// Appends numbered events in one statement.
pub(super) async fn insert_events(tx: &mut Tx, events: &[EventRecord]) -> Result<()> {
    let seq: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let at: Vec<i64> = events.iter().map(|e| e.at.as_millis()).collect();
    let kind: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let worker: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.worker_id.as_ref().map(|w| w.as_str()))
        .collect();
    let machine: Vec<&str> = events.iter().map(|e| e.machine_id.as_str()).collect();
    let reason: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.reason.map(|r| r.as_str()))
        .collect();
    let session: Vec<Option<i64>> = events.iter().map(|e| e.session.map(|s| s as i64)).collect();
    let lag: Vec<Option<i64>> = events.iter().map(|e| e.detection_lag_ms).collect();
    let code: Vec<Option<i64>> = events
        .iter()
        .map(|e| e.exit.and_then(|x| x.code()).map(i64::from))
        .collect();
    let signal: Vec<Option<i64>> = events
        .iter()
        .map(|e| e.exit.and_then(|x| x.signal()).map(i64::from))
        .collect();
    let incident: Vec<Option<&str>> = events
        .iter()
        .map(|e| e.incident_id.as_ref().map(|i| i.as_str()))
        .collect();
    sqlx::query(
        "INSERT INTO events (seq, at, type, worker_id, machine_id, reason, session, detection_lag_ms, \
           exit_code, signal, incident_id) \
         SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
           $6::text[], $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::text[])",
    )
    .bind(&seq)
    .bind(&at)
    .bind(&kind)
    .bind(&worker)
    .bind(&machine)
    .bind(&reason)
    .bind(&session)
    .bind(&lag)
    .bind(&code)
    .bind(&signal)
    .bind(&incident)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
