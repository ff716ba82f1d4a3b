//! Incidents and the notification outbox, as stored.
//!
//! The alerter (in the server) reads the event log from a cursor and turns
//! it into incident changes; [`AlertCommit`] applies a step of that — the
//! incidents it opened, changed or resolved, the notifications they owe each
//! channel and the new cursor — in **one transaction**, and only if the
//! cursor is still where the alerter read it from. So incidents are a
//! function of the event log: a crash between a commit of transitions and
//! the alerter's step loses nothing (the step is taken again from the
//! cursor), and no step is applied twice.
//!
//! The outbox holds each notification until a deliverer has handed it to
//! its channel (`delivered`), gave up on it (`given_up`), or an incident
//! that covers it made it unnecessary (`suppressed`).

use rollcall_core::{EventType, IncidentId, MachineId, Timestamp, WorkerId};

/// Where an incident is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IncidentStatus {
    /// Its condition holds but not yet for the rule's `for`: nobody is told.
    Pending,
    /// Firing: notified.
    Open,
    /// Over (or, if it never opened, withdrawn).
    Resolved,
}

impl IncidentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Pending => "pending",
            IncidentStatus::Open => "open",
            IncidentStatus::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => IncidentStatus::Pending,
            "open" => IncidentStatus::Open,
            "resolved" => IncidentStatus::Resolved,
            _ => return None,
        })
    }
}

/// An incident as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct IncidentRecord {
    /// Sorts by creation.
    pub id: IncidentId,
    /// The name of the rule that opened it.
    pub rule: String,
    /// The rule's kind (`worker_offline`, `worker_crashes`, `machine_offline`,
    /// `mass_failure`).
    pub kind: String,
    pub severity: String,
    /// What it is about, unique among a rule's current incidents: a worker
    /// id, a machine id, or the rule's name for a fleet-wide incident.
    pub subject: String,
    pub worker_id: Option<WorkerId>,
    pub machine_id: Option<MachineId>,
    pub status: IncidentStatus,
    /// When its condition began to hold.
    pub since: Timestamp,
    pub opened_at: Option<Timestamp>,
    pub resolved_at: Option<Timestamp>,
    pub acked_at: Option<Timestamp>,
    pub acked_by: Option<String>,
    /// The open fleet-wide incident that covers this one (no notification
    /// of its own while covered; resolved with it).
    pub inhibited_by: Option<IncidentId>,
    /// One line for people.
    pub summary: String,
    /// What the rule knows about it (JSON object): counts, the workers and
    /// machines it covers, the last crash.
    pub details: serde_json::Value,
    pub updated_at: Timestamp,
}

/// A notification to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewNotification {
    pub incident_id: IncidentId,
    pub channel: String,
    /// `opened`, `resolved` or `test`.
    pub transition: String,
    /// Stable across retries and redeliveries: `incident id:transition:channel`.
    pub idempotency_key: String,
    /// The incident as it was at this transition (JSON).
    pub body: String,
    pub created_at: Timestamp,
    /// Not sent before (an opening waits the channel's `group_wait`).
    pub not_before: Timestamp,
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: i64,
    pub incident_id: IncidentId,
    pub channel: String,
    pub transition: String,
    pub idempotency_key: String,
    pub body: String,
    pub created_at: Timestamp,
    pub not_before: Timestamp,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Whether the incident's `opened` notification to this channel was
    /// delivered (a `resolved` is sent only to channels that heard of the
    /// opening).
    pub opened_delivered: bool,
}

/// One step of the alerter, applied in one transaction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertCommit {
    /// The cursor moves from `.0` to `.1` (the `seq` of the last event the
    /// step consumed); the commit is refused if it is no longer at `.0`.
    /// `None` for a step driven by the clock alone.
    pub cursor: Option<(i64, i64)>,
    /// Incidents inserted or replaced whole.
    pub incidents: Vec<IncidentRecord>,
    pub notifications: Vec<NewNotification>,
    /// Incidents whose undelivered notifications are no longer wanted.
    pub suppress: Vec<IncidentId>,
    /// Pending incidents whose condition ended before they opened: deleted
    /// (applied first, so a subject can have a new one in the same step).
    pub withdraw: Vec<IncidentId>,
    /// `incident.opened` / `incident.resolved` events to append to the log,
    /// in the step's transaction (the store numbers them).
    pub events: Vec<IncidentEvent>,
}

/// An incident's opening or resolve, as an event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncidentEvent {
    pub at: Timestamp,
    /// [`EventType::IncidentOpened`] or [`EventType::IncidentResolved`].
    pub kind: EventType,
    pub incident_id: IncidentId,
    pub worker_id: Option<WorkerId>,
    /// The incident's machine, or [`MachineId::fleet`] for a fleet-wide one.
    pub machine_id: MachineId,
}

impl IncidentEvent {
    /// The event's record once it has its `seq`.
    pub fn numbered(&self, seq: i64) -> crate::EventRecord {
        crate::EventRecord {
            seq,
            at: self.at,
            kind: self.kind,
            worker_id: self.worker_id.clone(),
            machine_id: self.machine_id.clone(),
            reason: None,
            session: None,
            detection_lag_ms: None,
            exit: None,
            incident_id: Some(self.incident_id.clone()),
        }
    }
}

/// An alert rule made through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRule {
    pub name: String,
    /// The rule as the API takes it (JSON); the server checks it.
    pub spec: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

pub(crate) const LIST_RULES: &str =
    "SELECT name, spec, created_at_ms, updated_at_ms FROM alert_rules ORDER BY name";

pub(crate) const RULE_EXISTS: &str =
    "SELECT CAST(COUNT(*) AS BIGINT) FROM alert_rules WHERE name = $1";

/// `$1` name, `$2` spec, `$3` created, `$4` updated (a replace keeps the
/// creation time).
pub(crate) const PUT_RULE: &str =
    "INSERT INTO alert_rules (name, spec, created_at_ms, updated_at_ms) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, \
     updated_at_ms = excluded.updated_at_ms";

pub(crate) const DELETE_RULE: &str = "DELETE FROM alert_rules WHERE name = $1";

/// The body of [`crate::Store::put_alert_rule`] on an open transaction of
/// any backend: whether the rule was created.
macro_rules! put_rule {
    ($tx:expr, $rule:expr) => {{
        use $crate::alerts::*;
        let rule: &StoredRule = $rule;
        let n: i64 = sqlx::query_scalar(RULE_EXISTS)
            .bind(&rule.name)
            .fetch_one(&mut *$tx)
            .await?;
        sqlx::query(PUT_RULE)
            .bind(&rule.name)
            .bind(&rule.spec)
            .bind(rule.created_at.as_millis())
            .bind(rule.updated_at.as_millis())
            .execute(&mut *$tx)
            .await?;
        n == 0
    }};
}
pub(crate) use put_rule;

pub(crate) fn rule_from(r: &impl crate::rows::Columns) -> crate::Result<StoredRule> {
    Ok(StoredRule {
        name: r.text("name")?,
        spec: r.text("spec")?,
        created_at: Timestamp::from_millis(r.int("created_at_ms")?),
        updated_at: Timestamp::from_millis(r.int("updated_at_ms")?),
    })
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Failed; tried again at `retry_at`.
    Failed {
        error: String,
        retry_at: Timestamp,
    },
    /// Failed for the last time.
    GaveUp {
        error: String,
    },
    /// Not sent: not wanted any more (a resolve whose opening was never
    /// delivered).
    Suppressed,
}

/// The outbox at a glance (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Notifications not yet delivered, given up or suppressed.
    pub pending: u64,
    /// When the oldest of them was created.
    pub oldest: Option<Timestamp>,
}

// The SQL both backends run. Parameters are numbered in order of first use,
// which SQLite binds by position as PostgreSQL does.

pub(crate) const INCIDENT_COLUMNS: &str = "id, rule, kind, severity, subject, worker_id, machine_id, status, \
     since_ms, opened_at_ms, resolved_at_ms, acked_at_ms, acked_by, inhibited_by, summary, details, updated_at_ms";

pub(crate) const MOVE_CURSOR: &str = "UPDATE alert_cursor SET seq = $2 WHERE id = 1 AND seq = $1";

/// Inserts an incident or replaces what the alerter owns of it (never its
/// acknowledgement, which the API writes).
pub(crate) const UPSERT_INCIDENT: &str = "INSERT INTO incidents (id, rule, kind, severity, subject, \
     worker_id, machine_id, status, since_ms, opened_at_ms, resolved_at_ms, inhibited_by, summary, \
     details, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
     ON CONFLICT (id) DO UPDATE SET status = excluded.status, opened_at_ms = excluded.opened_at_ms, \
     resolved_at_ms = excluded.resolved_at_ms, inhibited_by = excluded.inhibited_by, \
     summary = excluded.summary, details = excluded.details, updated_at_ms = excluded.updated_at_ms";

pub(crate) const SUPPRESS: &str = "UPDATE outbox SET state = 'suppressed', done_at_ms = $2 \
     WHERE incident_id = $1 AND state = 'pending'";

pub(crate) const ENQUEUE: &str =
    "INSERT INTO outbox (incident_id, channel, transition, idempotency_key, \
     body, created_at_ms, not_before_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (idempotency_key) DO NOTHING";

pub(crate) const WITHDRAW: &str = "DELETE FROM incidents WHERE id = $1 AND status = 'pending'";

pub(crate) const SUPPRESSED: &str = "UPDATE outbox SET state = 'suppressed', \
     done_at_ms = $2 WHERE id = $1 AND state = 'pending'";

pub(crate) const DUE: &str = "SELECT id, incident_id, channel, transition, idempotency_key, body, \
     created_at_ms, not_before_ms, attempts, last_error, \
     CAST(CASE WHEN EXISTS (SELECT 1 FROM outbox d WHERE d.incident_id = o.incident_id \
     AND d.channel = o.channel AND d.transition = 'opened' AND d.state = 'delivered') \
     THEN 1 ELSE 0 END AS BIGINT) AS opened_delivered FROM outbox o \
     WHERE o.state = 'pending' AND o.not_before_ms <= $1 AND NOT EXISTS (SELECT 1 FROM outbox p \
     WHERE p.incident_id = o.incident_id AND p.channel = o.channel AND p.state = 'pending' AND p.id < o.id) \
     ORDER BY o.id LIMIT $2";

/// A notification suppressed while its delivery was under way was
/// delivered all the same: the record says so.
pub(crate) const DELIVERED: &str =
    "UPDATE outbox SET state = 'delivered', attempts = attempts + 1, \
     done_at_ms = $2, last_error = NULL WHERE id = $1 AND state IN ('pending', 'suppressed')";

pub(crate) const FAILED: &str = "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
     not_before_ms = $3 WHERE id = $1 AND state = 'pending'";

pub(crate) const GAVE_UP: &str = "UPDATE outbox SET state = 'given_up', attempts = attempts + 1, \
     last_error = $2, done_at_ms = $3 WHERE id = $1 AND state = 'pending'";

pub(crate) const STATS: &str =
    "SELECT COUNT(*) AS pending, MIN(created_at_ms) AS oldest FROM outbox WHERE state = 'pending'";

pub(crate) const ACK: &str = "UPDATE incidents SET acked_at_ms = COALESCE(acked_at_ms, $2), \
     acked_by = COALESCE(acked_by, $3) WHERE id = $1";

pub(crate) fn current_incidents_sql() -> String {
    format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE status <> 'resolved' ORDER BY id")
}

pub(crate) fn get_incident_sql() -> String {
    format!("SELECT {INCIDENT_COLUMNS} FROM incidents WHERE id = $1")
}

/// Newest first; `$1` a status or '', `$2` an id to list before or ''.
pub(crate) fn list_incidents_sql() -> String {
    format!(
        "SELECT {INCIDENT_COLUMNS} FROM incidents WHERE ($1 = '' OR status = $1) \
         AND ($2 = '' OR id < $2) ORDER BY id DESC LIMIT $3"
    )
}

/// The parameters of [`UPSERT_INCIDENT`], in order.
pub(crate) struct IncidentParams {
    pub id: String,
    pub rule: String,
    pub kind: String,
    pub severity: String,
    pub subject: String,
    pub worker_id: Option<String>,
    pub machine_id: Option<String>,
    pub status: &'static str,
    pub since: i64,
    pub opened_at: Option<i64>,
    pub resolved_at: Option<i64>,
    pub inhibited_by: Option<String>,
    pub summary: String,
    pub details: String,
    pub updated_at: i64,
}

pub(crate) fn incident_params(i: &IncidentRecord) -> IncidentParams {
    IncidentParams {
        id: i.id.as_str().to_owned(),
        rule: i.rule.clone(),
        kind: i.kind.clone(),
        severity: i.severity.clone(),
        subject: i.subject.clone(),
        worker_id: i.worker_id.as_ref().map(|w| w.as_str().to_owned()),
        machine_id: i.machine_id.as_ref().map(|m| m.as_str().to_owned()),
        status: i.status.as_str(),
        since: i.since.as_millis(),
        opened_at: i.opened_at.map(Timestamp::as_millis),
        resolved_at: i.resolved_at.map(Timestamp::as_millis),
        inhibited_by: i.inhibited_by.as_ref().map(|x| x.as_str().to_owned()),
        summary: i.summary.clone(),
        details: i.details.to_string(),
        updated_at: i.updated_at.as_millis(),
    }
}

pub(crate) fn incident_from(r: &impl crate::rows::Columns) -> crate::Result<IncidentRecord> {
    use crate::rows::corrupt;
    let opt_time = |c: &str| -> crate::Result<Option<Timestamp>> {
        Ok(r.opt_int(c)?.map(Timestamp::from_millis))
    };
    Ok(IncidentRecord {
        id: IncidentId::parse(&r.text("id")?).map_err(corrupt)?,
        rule: r.text("rule")?,
        kind: r.text("kind")?,
        severity: r.text("severity")?,
        subject: r.text("subject")?,
        worker_id: r
            .opt_text("worker_id")?
            .map(|w| WorkerId::parse(&w).map_err(corrupt))
            .transpose()?,
        machine_id: r
            .opt_text("machine_id")?
            .map(|m| MachineId::parse(&m).map_err(corrupt))
            .transpose()?,
        status: IncidentStatus::parse(&r.text("status")?)
            .ok_or_else(|| corrupt("incident status"))?,
        since: Timestamp::from_millis(r.int("since_ms")?),
        opened_at: opt_time("opened_at_ms")?,
        resolved_at: opt_time("resolved_at_ms")?,
        acked_at: opt_time("acked_at_ms")?,
        acked_by: r.opt_text("acked_by")?,
        inhibited_by: r
            .opt_text("inhibited_by")?
            .map(|x| IncidentId::parse(&x).map_err(corrupt))
            .transpose()?,
        summary: r.text("summary")?,
        details: serde_json::from_str(&r.text("details")?)
            .map_err(|e| corrupt(format!("incident details: {e}")))?,
        updated_at: Timestamp::from_millis(r.int("updated_at_ms")?),
    })
}

pub(crate) fn notification_from(r: &impl crate::rows::Columns) -> crate::Result<Notification> {
    use crate::rows::corrupt;
    Ok(Notification {
        id: r.int("id")?,
        incident_id: IncidentId::parse(&r.text("incident_id")?).map_err(corrupt)?,
        channel: r.text("channel")?,
        transition: r.text("transition")?,
        idempotency_key: r.text("idempotency_key")?,
        body: r.text("body")?,
        created_at: Timestamp::from_millis(r.int("created_at_ms")?),
        not_before: Timestamp::from_millis(r.int("not_before_ms")?),
        attempts: u32::try_from(r.int("attempts")?).map_err(corrupt)?,
        last_error: r.opt_text("last_error")?,
        opened_delivered: r.int("opened_delivered")? != 0,
    })
}

/// Binds [`IncidentParams`] to [`UPSERT_INCIDENT`] for any backend.
macro_rules! bind_incident {
    ($q:expr, $p:expr) => {{
        let p = $p;
        $q.bind(p.id)
            .bind(p.rule)
            .bind(p.kind)
            .bind(p.severity)
            .bind(p.subject)
            .bind(p.worker_id)
            .bind(p.machine_id)
            .bind(p.status)
            .bind(p.since)
            .bind(p.opened_at)
            .bind(p.resolved_at)
            .bind(p.inhibited_by)
            .bind(p.summary)
            .bind(p.details)
            .bind(p.updated_at)
    }};
}
pub(crate) use bind_incident;

/// The body of [`crate::Store::commit_alerts`] on an open transaction of any
/// backend: `Ok(false)` if the cursor had moved (roll back).
macro_rules! apply_step {
    ($tx:expr, $step:expr) => {{
        use $crate::alerts::*;
        let step: &AlertCommit = $step;
        let mut moved = true;
        if let Some((from, to)) = step.cursor {
            let n = sqlx::query(MOVE_CURSOR)
                .bind(from)
                .bind(to)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
            moved = n == 1;
        }
        if moved {
            for id in &step.withdraw {
                sqlx::query(WITHDRAW)
                    .bind(id.as_str())
                    .execute(&mut *$tx)
                    .await?;
            }
            for i in &step.incidents {
                bind_incident!(sqlx::query(UPSERT_INCIDENT), incident_params(i))
                    .execute(&mut *$tx)
                    .await?;
            }
            let now = step
                .incidents
                .iter()
                .map(|i| i.updated_at.as_millis())
                .max()
                .unwrap_or(0);
            for id in &step.suppress {
                sqlx::query(SUPPRESS)
                    .bind(id.as_str())
                    .bind(now)
                    .execute(&mut *$tx)
                    .await?;
            }
            for n in &step.notifications {
                sqlx::query(ENQUEUE)
                    .bind(n.incident_id.as_str())
                    .bind(&n.channel)
                    .bind(&n.transition)
                    .bind(&n.idempotency_key)
                    .bind(&n.body)
                    .bind(n.created_at.as_millis())
                    .bind(n.not_before.as_millis())
                    .execute(&mut *$tx)
                    .await?;
            }
        }
        moved
    }};
}
pub(crate) use apply_step;

/// The body of [`crate::Store::record_attempt`] for any executor.
macro_rules! record_attempt {
    ($ex:expr, $id:expr, $at:expr, $attempt:expr) => {{
        use $crate::alerts::*;
        let (id, at): (i64, Timestamp) = ($id, $at);
        match $attempt {
            Attempt::Delivered => {
                sqlx::query(DELIVERED)
                    .bind(id)
                    .bind(at.as_millis())
                    .execute($ex)
                    .await?
            }
            Attempt::Failed { error, retry_at } => {
                sqlx::query(FAILED)
                    .bind(id)
                    .bind(error)
                    .bind(retry_at.as_millis())
                    .execute($ex)
                    .await?
            }
            Attempt::Suppressed => {
                sqlx::query(SUPPRESSED)
                    .bind(id)
                    .bind(at.as_millis())
                    .execute($ex)
                    .await?
            }
            Attempt::GaveUp { error } => {
                sqlx::query(GAVE_UP)
                    .bind(id)
                    .bind(error)
                    .bind(at.as_millis())
                    .execute($ex)
                    .await?
            }
        };
    }};
}
pub(crate) use record_attempt;
