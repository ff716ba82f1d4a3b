//! Rows to records, shared by both backends: both store the same columns
//! with the same types (text, and 64-bit integers for numbers and times).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use rollcall_core::{
    EventReason, EventType, ExitStatus, IncidentId, Labels, MachineId, MachineStatus,
    OfflineReason, Status, Timestamp, TokenHash, TokenId, TokenKind, TokenScope, WorkerId,
    WorkerName,
};
use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::records::*;
use crate::{Result, StoreError};

/// Fields of a worker row, in the order the `SELECT`s and `INSERT`s list them.
pub(crate) const WORKER_COLUMNS: &str = "id, name, machine_id, status, offline_reason, session, labels, \
     heartbeat_interval_ms, stale_after_ms, registered_at, last_heartbeat_at, status_changed_at, token_hash";

/// Fields of an event row.
pub(crate) const EVENT_COLUMNS: &str =
    "seq, at, type, worker_id, machine_id, reason, session, detection_lag_ms, exit_code, signal, incident_id";

/// Fields of a token row.
pub(crate) const TOKEN_COLUMNS: &str =
    "id, kind, name, hash, created_at, expires_at, last_used_at, scope";

/// A machine with its worker counts; both backends accept this SQL. (The
/// PostgreSQL schema stores no labels as NULL.) A live worker is one that is
/// not offline, written `<> 'offline'` so that no planner is tempted to read
/// the index of every live worker's status for each machine.
pub(crate) const MACHINE_SELECT: &str = "SELECT m.id, m.hostname, COALESCE(m.labels, '{}') AS labels, m.status, m.first_seen_at, \
     m.last_seen_at, m.status_changed_at, \
     (SELECT COUNT(*) FROM workers w WHERE w.machine_id = m.id AND w.status <> 'offline') AS workers_online, \
     (SELECT COUNT(*) FROM workers w WHERE w.machine_id = m.id) AS workers_total \
     FROM machines m";

/// Typed column access for any backend's rows.
pub(crate) trait Columns {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
}

impl<R> Columns for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, col: &str) -> Result<String> {
        Ok(self.try_get(col)?)
    }
    fn opt_text(&self, col: &str) -> Result<Option<String>> {
        Ok(self.try_get(col)?)
    }
    fn int(&self, col: &str) -> Result<i64> {
        Ok(self.try_get(col)?)
    }
    fn opt_int(&self, col: &str) -> Result<Option<i64>> {
        Ok(self.try_get(col)?)
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

pub(crate) fn parse<T: FromStr>(s: &str, what: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| corrupt(format!("{what}: {e}")))
}

pub(crate) fn labels_from(json: &str) -> Result<Labels> {
    let map: BTreeMap<String, String> =
        serde_json::from_str(json).map_err(|e| corrupt(format!("labels: {e}")))?;
    Labels::parse(map).map_err(|e| corrupt(format!("labels: {e}")))
}

pub(crate) fn labels_json(l: &Labels) -> String {
    serde_json::to_string(l.as_map()).expect("a string map always serialises")
}

/// A duration as stored: whole milliseconds.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn worker_from(row: &impl Columns) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: WorkerId::parse(&row.text("id")?).map_err(corrupt)?,
        name: WorkerName::parse(&row.text("name")?).map_err(corrupt)?,
        machine_id: MachineId::parse(&row.text("machine_id")?).map_err(corrupt)?,
        status: parse::<Status>(&row.text("status")?, "status")?,
        offline_reason: row
            .opt_text("offline_reason")?
            .map(|r| parse::<OfflineReason>(&r, "offline_reason"))
            .transpose()?,
        session: row.int("session")? as u64,
        labels: labels_from(&row.text("labels")?)?,
        heartbeat_interval: Duration::from_millis(row.int("heartbeat_interval_ms")? as u64),
        stale_after: Duration::from_millis(row.int("stale_after_ms")? as u64),
        registered_at: Timestamp::from_millis(row.int("registered_at")?),
        last_heartbeat_at: row
            .opt_int("last_heartbeat_at")?
            .map(Timestamp::from_millis),
        status_changed_at: Timestamp::from_millis(row.int("status_changed_at")?),
        token_hash: TokenHash::from_hex(&row.text("token_hash")?)
            .ok_or_else(|| corrupt("token_hash"))?,
    })
}

pub(crate) fn machine_from(row: &impl Columns) -> Result<MachineRecord> {
    Ok(MachineRecord {
        id: MachineId::parse(&row.text("id")?).map_err(corrupt)?,
        hostname: row.opt_text("hostname")?,
        labels: labels_from(&row.text("labels")?)?,
        status: parse::<MachineStatus>(&row.text("status")?, "machine status")?,
        workers_online: row.int("workers_online")? as u64,
        workers_total: row.int("workers_total")? as u64,
        first_seen_at: Timestamp::from_millis(row.int("first_seen_at")?),
        last_seen_at: Timestamp::from_millis(row.int("last_seen_at")?),
        status_changed_at: Timestamp::from_millis(row.int("status_changed_at")?),
    })
}

pub(crate) fn event_from(row: &impl Columns) -> Result<EventRecord> {
    Ok(EventRecord {
        seq: row.int("seq")?,
        at: Timestamp::from_millis(row.int("at")?),
        kind: parse::<EventType>(&row.text("type")?, "event type")?,
        worker_id: row
            .opt_text("worker_id")?
            .map(|w| WorkerId::parse(&w).map_err(corrupt))
            .transpose()?,
        machine_id: MachineId::parse_in_event(&row.text("machine_id")?).map_err(corrupt)?,
        reason: row
            .opt_text("reason")?
            .map(|r| parse::<EventReason>(&r, "event reason"))
            .transpose()?,
        session: row.opt_int("session")?.map(|s| s as u64),
        detection_lag_ms: row.opt_int("detection_lag_ms")?,
        exit: exit_from(row.opt_int("exit_code")?, row.opt_int("signal")?)?,
        incident_id: row
            .opt_text("incident_id")?
            .map(|i| IncidentId::parse(&i).map_err(corrupt))
            .transpose()?,
    })
}

pub(crate) fn token_from(row: &impl Columns) -> Result<TokenRecord> {
    Ok(TokenRecord {
        id: TokenId::parse(&row.text("id")?).map_err(corrupt)?,
        kind: TokenKind::parse(&row.text("kind")?).ok_or_else(|| corrupt("token kind"))?,
        name: row.text("name")?,
        hash: TokenHash::from_hex(&row.text("hash")?).ok_or_else(|| corrupt("token hash"))?,
        created_at: Timestamp::from_millis(row.int("created_at")?),
        expires_at: row.opt_int("expires_at")?.map(Timestamp::from_millis),
        last_used_at: row.opt_int("last_used_at")?.map(Timestamp::from_millis),
        scope: row
            .opt_text("scope")?
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt(format!("token scope: {e}"))))
            .transpose()?,
    })
}

/// A token's scope as stored: JSON, or NULL for an unscoped token.
pub(crate) fn scope_json(scope: Option<&TokenScope>) -> Option<String> {
    scope.map(|s| serde_json::to_string(s).expect("a scope serialises"))
}

/// The SQL `LIMIT` that fetches one row more than `limit` (to tell whether
/// more follow), without overflowing for huge limits.
pub(crate) fn fetch_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1)
}

pub(crate) fn page<T>(mut items: Vec<T>, limit: usize) -> Page<T> {
    let more = items.len() > limit;
    items.truncate(limit);
    Page { items, more }
}

/// The event a machine's status change records.
pub(crate) fn machine_event(
    seq: i64,
    machine_id: MachineId,
    status: MachineStatus,
    at: Timestamp,
) -> EventRecord {
    EventRecord {
        seq,
        at,
        kind: match status {
            MachineStatus::Online => EventType::MachineOnline,
            MachineStatus::Offline => EventType::MachineOffline,
        },
        worker_id: None,
        machine_id,
        reason: None,
        session: None,
        detection_lag_ms: None,
        exit: None,
        incident_id: None,
    }
}

/// The record of an event a write carries, once it has its `seq`.
pub(crate) fn worker_event(
    seq: i64,
    worker_id: &WorkerId,
    machine_id: &MachineId,
    e: &NewEvent,
) -> EventRecord {
    EventRecord {
        seq,
        at: e.at,
        kind: e.kind,
        worker_id: Some(worker_id.clone()),
        machine_id: machine_id.clone(),
        reason: e.reason,
        session: e.session,
        detection_lag_ms: e.detection_lag_ms,
        exit: e.exit,
        incident_id: None,
    }
}

/// The exit status stored in an event's `exit_code` and `signal` columns.
pub(crate) fn exit_from(code: Option<i64>, signal: Option<i64>) -> Result<Option<ExitStatus>> {
    ExitStatus::from_parts(code, signal).map_err(|e| corrupt(format!("event exit status: {e}")))
}
