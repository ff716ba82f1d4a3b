//! The fast path of [`SqliteStore::commit`](super::sqlite::SqliteStore):
//! a batch's writes as a few multi-row statements instead of one statement
//! per write.
//!
//! SQLite itself is fast; what costs is the round trip of every statement to
//! the connection's thread, which on a busy machine can take longer than the
//! statement. So writes are grouped into *layers* (the k-th write of each
//! worker; per-worker order is all that matters), and each layer runs as one
//! statement per kind: deletes, updates, inserts, each `RETURNING` the rows
//! it changed. If any write's condition does not hold, the fast path gives up
//! ([`Outcome::Fallback`]) and the caller rolls back and replays the batch one
//! write at a time, which has the exact per-write semantics.

use std::collections::{BTreeMap, HashMap, HashSet};

use rollcall_core::{MachineId, MachineStatus, Timestamp, WorkerId};
use sqlx::{QueryBuilder, Sqlite, Transaction};

use crate::records::{EventRecord, Expect, WorkerRecord, WorkerWrite};
use crate::rows::ms;
use crate::Result;

/// Rows per multi-row statement (15 parameters each, well under SQLite's
/// limit of 32,766).
const ROWS: usize = 500;

/// What the fast path did.
pub(crate) enum Outcome {
    /// Every write was applied.
    Applied,
    /// Some write's condition did not hold; roll back and replay slowly.
    Fallback,
}

/// Applies every write of the batch, or reports that one would not apply.
pub(crate) async fn apply_writes(
    tx: &mut Transaction<'_, Sqlite>,
    writes: &[WorkerWrite],
) -> Result<Outcome> {
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
    for layer in layers {
        if !apply_layer(tx, &layer).await? {
            return Ok(Outcome::Fallback);
        }
    }
    Ok(Outcome::Applied)
}

async fn apply_layer(tx: &mut Transaction<'_, Sqlite>, layer: &[&WorkerWrite]) -> Result<bool> {
    let mut deletes = Vec::new();
    let mut updates = Vec::new();
    let mut inserts = Vec::new();
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
                        e.1 = Some(crate::rows::labels_json(l));
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

    let machines: Vec<_> = machines.into_iter().collect();
    for chunk in machines.chunks(ROWS) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("WITH v (id, hostname, labels, has_labels, seen) AS (");
        qb.push_values(chunk, |mut b, (id, (hostname, labels, seen))| {
            b.push_bind(id.as_str().to_owned())
                .push_bind(hostname.map(str::to_owned))
                .push_bind(labels.clone().unwrap_or_else(|| "{}".to_owned()))
                .push_bind(labels.is_some())
                .push_bind(seen.as_millis());
        });
        qb.push(
            ") INSERT INTO machines (id, hostname, labels, status, first_seen_at, last_seen_at, \
             status_changed_at) \
             SELECT id, hostname, labels, 'offline', seen, seen, seen FROM v WHERE true \
             ON CONFLICT (id) DO UPDATE SET \
               hostname = COALESCE(excluded.hostname, machines.hostname), \
               labels = CASE WHEN (SELECT has_labels FROM v WHERE v.id = excluded.id) \
                        THEN excluded.labels ELSE machines.labels END, \
               last_seen_at = MAX(machines.last_seen_at, excluded.last_seen_at)",
        );
        qb.build().execute(&mut **tx).await?;
    }

    for chunk in deletes.chunks(ROWS) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("DELETE FROM workers WHERE (id, status, session) IN (VALUES ");
        let mut sep = qb.separated(", ");
        for (id, e) in chunk {
            sep.push("(")
                .push_bind_unseparated(id.as_str().to_owned())
                .push_unseparated(", ")
                .push_bind_unseparated(e.status.as_str())
                .push_unseparated(", ")
                .push_bind_unseparated(e.session as i64)
                .push_unseparated(")");
        }
        qb.push(") RETURNING id");
        let done: Vec<(String,)> = qb.build_query_as().fetch_all(&mut **tx).await?;
        if done.len() != chunk.len() {
            return Ok(false);
        }
    }

    for chunk in updates.chunks(ROWS) {
        // Most transitions change only the lifecycle columns (an expiry, a
        // resume, a drain, an offline). Writing just those leaves the
        // unique indexes on the token hash and on (machine, name) alone,
        // which is most of the cost of a burst of expiries. The narrow
        // statement applies only where every other column already holds
        // the value being written, so it is the full write; the rest (a
        // registration again: new token, labels, intervals) take the full
        // statement below.
        let narrow: HashSet<String> = update_rows(tx, chunk, NARROW_UPDATE)
            .await?
            .into_iter()
            .collect();
        let rest: Vec<_> = chunk
            .iter()
            .filter(|(r, _)| !narrow.contains(r.id.as_str()))
            .copied()
            .collect();
        if rest.is_empty() {
            continue;
        }
        if update_rows(tx, &rest, FULL_UPDATE).await?.len() != rest.len() {
            return Ok(false);
        }
    }

    for chunk in inserts.chunks(ROWS) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
            "INSERT INTO workers ({}) ",
            crate::rows::WORKER_COLUMNS
        ));
        qb.push_values(chunk, |mut b, r| {
            b.push_bind(r.id.as_str().to_owned())
                .push_bind(r.name.as_str().to_owned())
                .push_bind(r.machine_id.as_str().to_owned())
                .push_bind(r.status.as_str())
                .push_bind(r.offline_reason.map(|x| x.as_str()))
                .push_bind(r.session as i64)
                .push_bind(crate::rows::labels_json(&r.labels))
                .push_bind(ms(r.heartbeat_interval))
                .push_bind(ms(r.stale_after))
                .push_bind(r.registered_at.as_millis())
                .push_bind(r.last_heartbeat_at.map(|t| t.as_millis()))
                .push_bind(r.status_changed_at.as_millis())
                .push_bind(r.token_hash.to_hex());
        });
        qb.push(" ON CONFLICT DO NOTHING RETURNING id");
        let done: Vec<(String,)> = qb.build_query_as().fetch_all(&mut **tx).await?;
        if done.len() != chunk.len() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The values of an update, named for [`NARROW_UPDATE`] and [`FULL_UPDATE`].
const UPDATE_VALUES: &str = "WITH v (id, name, machine_id, status, offline_reason, session, \
     labels, hb, stale, registered_at, last_hb, status_changed_at, token_hash, exp_status, \
     exp_session) AS (";

/// Within a session the heartbeat time only moves forward, as in the
/// one-write path.
const LAST_HEARTBEAT: &str = "last_heartbeat_at = CASE WHEN workers.session = v.session \
     THEN MAX(COALESCE(workers.last_heartbeat_at, v.last_hb), COALESCE(v.last_hb, workers.last_heartbeat_at)) \
     ELSE v.last_hb END";

/// Only the lifecycle columns, where the others already hold the new values.
const NARROW_UPDATE: &str = "UPDATE workers SET status = v.status, \
     offline_reason = v.offline_reason, session = v.session, \
     status_changed_at = v.status_changed_at, {LAST_HEARTBEAT} \
     FROM v WHERE workers.id = v.id AND workers.status = v.exp_status \
     AND workers.session = v.exp_session \
     AND workers.name = v.name AND workers.machine_id = v.machine_id \
     AND workers.labels = v.labels AND workers.heartbeat_interval_ms = v.hb \
     AND workers.stale_after_ms = v.stale AND workers.registered_at = v.registered_at \
     AND workers.token_hash = v.token_hash RETURNING workers.id";

/// Every column.
const FULL_UPDATE: &str = "UPDATE workers SET name = v.name, machine_id = v.machine_id, \
     status = v.status, offline_reason = v.offline_reason, {LAST_HEARTBEAT}, \
     session = v.session, labels = v.labels, heartbeat_interval_ms = v.hb, \
     stale_after_ms = v.stale, registered_at = v.registered_at, \
     status_changed_at = v.status_changed_at, token_hash = v.token_hash \
     FROM v WHERE workers.id = v.id AND workers.status = v.exp_status \
     AND workers.session = v.exp_session RETURNING workers.id";

/// Runs one of the conditional updates over `rows`; returns the ids it
/// changed.
async fn update_rows(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[(&WorkerRecord, &Expect)],
    statement: &str,
) -> Result<Vec<String>> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(UPDATE_VALUES);
    qb.push_values(rows, |mut b, (r, e)| {
        b.push_bind(r.id.as_str().to_owned())
            .push_bind(r.name.as_str().to_owned())
            .push_bind(r.machine_id.as_str().to_owned())
            .push_bind(r.status.as_str())
            .push_bind(r.offline_reason.map(|x| x.as_str()))
            .push_bind(r.session as i64)
            .push_bind(crate::rows::labels_json(&r.labels))
            .push_bind(ms(r.heartbeat_interval))
            .push_bind(ms(r.stale_after))
            .push_bind(r.registered_at.as_millis())
            .push_bind(r.last_heartbeat_at.map(|t| t.as_millis()))
            .push_bind(r.status_changed_at.as_millis())
            .push_bind(r.token_hash.to_hex())
            .push_bind(e.status.as_str())
            .push_bind(e.session as i64);
    });
    qb.push(") ");
    qb.push(statement.replace("{LAST_HEARTBEAT}", LAST_HEARTBEAT));
    let done: Vec<(String,)> = qb.build_query_as().fetch_all(&mut **tx).await?;
    Ok(done.into_iter().map(|(id,)| id).collect())
}

/// Derives the status of the given machines in a few statements, returning
/// the machine events (numbered from `seq`).
pub(crate) async fn derive_machines(
    tx: &mut Transaction<'_, Sqlite>,
    machines: &BTreeMap<MachineId, Timestamp>,
    seq: &mut i64,
) -> Result<Vec<EventRecord>> {
    let ids: Vec<_> = machines.keys().collect();
    let mut changes = Vec::new();
    for chunk in ids.chunks(ROWS) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "SELECT m.id, m.status, EXISTS (SELECT 1 FROM workers w WHERE w.machine_id = m.id \
             AND w.status IN ('online', 'draining')) FROM machines m WHERE m.id IN (",
        );
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.as_str().to_owned());
        }
        qb.push(")");
        let rows: Vec<(String, String, bool)> = qb.build_query_as().fetch_all(&mut **tx).await?;
        for (id, stored, live) in rows {
            let derived = if live {
                MachineStatus::Online
            } else {
                MachineStatus::Offline
            };
            if stored != derived.as_str() {
                changes.push((id, derived));
            }
        }
    }
    // Report in machine-id order, as the one-write path does.
    changes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut events = Vec::new();
    let mut seen = HashSet::new();
    for (id, derived) in changes {
        if !seen.insert(id.clone()) {
            continue;
        }
        let machine_id =
            MachineId::parse(&id).map_err(|e| crate::StoreError::Corrupt(e.to_string()))?;
        let at = machines
            .get(&machine_id)
            .copied()
            .unwrap_or(Timestamp::EPOCH);
        sqlx::query("UPDATE machines SET status = ?, status_changed_at = ? WHERE id = ?")
            .bind(derived.as_str())
            .bind(at.as_millis())
            .bind(&id)
            .execute(&mut **tx)
            .await?;
        *seq += 1;
        events.push(crate::rows::machine_event(*seq, machine_id, derived, at));
    }
    Ok(events)
}
