//! Health history: the spans of time each worker and machine was live or
//! down, written in the same transaction as the events that change them
//! (never derived from the event log at query time, which is pruned long
//! before the history), and the observations of the servers that recorded
//! them.
//!
//! `health_spans` holds one row per span; the open span of an entity has
//! `end_ms` NULL. Each row carries `N(start)` and `N(end)`, the total
//! no-data time before its ends (see [`rollcall_core::health`]), so the
//! observed time of any part of it within a window is plain arithmetic:
//! the fleet's figures are SQL sums over the rows that overlap the window,
//! with no join and no walk of transitions in Rust.
//!
//! This module plans the rows a batch of events opens and closes, and
//! writes the SQL both backends share (they differ in `MAX`/`GREATEST`
//! and in JSON access).

use std::collections::HashMap;

use rollcall_core::health::{Span, Window};
use rollcall_core::{
    CrashKind, EventReason, EventType, MachineId, OfflineClass, WorkerId, WorkerName,
};

use crate::records::EventRecord;
use crate::rows::{corrupt, parse};
use crate::Result;

/// `health_spans.entity` of a worker's span.
pub(crate) const WORKER: &str = "worker";
/// `health_spans.entity` of a machine's span.
pub(crate) const MACHINE: &str = "machine";

/// A span of a worker's or a machine's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpan {
    /// The worker, or `None` for a span of the machine itself.
    pub worker_id: Option<WorkerId>,
    pub machine_id: MachineId,
    /// A worker's name, when the history has it (workers deleted before
    /// the history existed have none).
    pub name: Option<WorkerName>,
    pub span: Span,
}

/// What the fleet query sums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetQuery {
    pub window: Window,
    /// `N(from)` and `N(to)`: no-data time before the window's ends.
    pub no_data_before_from: i64,
    pub no_data_before_to: i64,
    /// Length of each ranking.
    pub top: u32,
    /// Only workers whose current labels hold every pair (and their
    /// machines).
    pub labels: Vec<(String, String)>,
}

/// The fleet's sums and rankings over a window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetSummary {
    /// Workers with a span in the window.
    pub workers: u64,
    /// Machines of those workers.
    pub machines: u64,
    /// Worker time within the window.
    pub existed_ms: i64,
    pub no_data_ms: i64,
    pub live_ms: i64,
    pub down_ms: i64,
    /// Offlines that began within the window: (class, crash kind, count).
    pub offlines: Vec<(OfflineClass, Option<CrashKind>, u64)>,
    /// Ids, best first; only entries with at least one crash, or some
    /// downtime.
    pub machines_by_crashes: Vec<MachineId>,
    pub machines_by_downtime: Vec<MachineId>,
    pub workers_by_crashes: Vec<WorkerId>,
    pub workers_by_downtime: Vec<WorkerId>,
}

/// One row to insert into `health_spans`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewSpan {
    pub entity: &'static str,
    pub id: String,
    pub machine_id: String,
    pub name: Option<String>,
    pub start: i64,
    pub end: Option<i64>,
    pub live: bool,
    pub class: Option<&'static str>,
    pub kind: Option<&'static str>,
}

/// What a batch of events does to the history.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Open spans to end: (entity, id, at).
    pub closes: Vec<(&'static str, String, i64)>,
    pub inserts: Vec<NewSpan>,
}

/// How an event changes its entity's span, if it does.
enum Change {
    Live,
    Down(Option<(OfflineClass, Option<CrashKind>)>),
    Gone,
}

fn change(e: &EventRecord) -> Option<Change> {
    match e.kind {
        EventType::WorkerOnline | EventType::MachineOnline => Some(Change::Live),
        EventType::MachineOffline => Some(Change::Down(None)),
        EventType::WorkerOffline => {
            let cause = match e.reason {
                Some(EventReason::Shutdown) => Some(rollcall_core::OfflineReason::Shutdown),
                Some(EventReason::Stale) => Some(rollcall_core::OfflineReason::Stale),
                Some(EventReason::Exited) => Some(rollcall_core::OfflineReason::Exited),
                Some(EventReason::Replaced) => Some(rollcall_core::OfflineReason::Replaced),
                Some(EventReason::Revoked) => Some(rollcall_core::OfflineReason::Revoked),
                _ => None,
            };
            Some(Change::Down(cause.map(|r| r.classify(e.exit))))
        }
        EventType::WorkerDeleted => Some(Change::Gone),
        _ => None,
    }
}

/// An entity's machine, name and changes, in event order.
type Planned = (String, Option<String>, Vec<(i64, Change)>);

/// The spans a batch of committed events ends and begins, in event order.
/// `names` gives the names of the batch's workers.
pub(crate) fn plan(events: &[EventRecord], names: &HashMap<WorkerId, WorkerName>) -> Plan {
    // Per entity, in order of first appearance: its changes.
    let mut order: Vec<(&'static str, String)> = Vec::new();
    let mut changes: HashMap<(&'static str, String), Planned> = HashMap::new();
    for e in events {
        let Some(c) = change(e) else { continue };
        let (entity, id, name) = match &e.worker_id {
            Some(w) => (
                WORKER,
                w.as_str().to_owned(),
                names.get(w).map(|n| n.as_str().to_owned()),
            ),
            None => (MACHINE, e.machine_id.as_str().to_owned(), None),
        };
        let key = (entity, id);
        let entry = changes.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            (e.machine_id.as_str().to_owned(), name, Vec::new())
        });
        entry.2.push((e.at.as_millis(), c));
    }
    let mut plan = Plan::default();
    for key in order {
        let (machine_id, name, list) = changes.remove(&key).expect("planned entity");
        let (entity, id) = key;
        plan.closes.push((entity, id.clone(), list[0].0));
        for (i, (at, c)) in list.iter().enumerate() {
            let end = list.get(i + 1).map(|(next, _)| *next);
            let (live, cause) = match c {
                Change::Gone => continue,
                Change::Live => (true, None),
                Change::Down(cause) => (false, *cause),
            };
            plan.inserts.push(NewSpan {
                entity,
                id: id.clone(),
                machine_id: machine_id.clone(),
                name: name.clone(),
                start: *at,
                end,
                live,
                class: cause.map(|(c, _)| c.as_str()),
                kind: cause.and_then(|(_, k)| k).map(CrashKind::as_str),
            });
        }
    }
    plan
}

/// The SQL dialect of a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    fn greatest(self) -> &'static str {
        match self {
            Dialect::Sqlite => "MAX",
            Dialect::Postgres => "GREATEST",
        }
    }

    fn least(self) -> &'static str {
        match self {
            Dialect::Sqlite => "MIN",
            Dialect::Postgres => "LEAST",
        }
    }

    /// A condition on a worker row `w` that holds when its label `key` is
    /// `value`. Keys are limited to `[A-Za-z0-9._/-]` by the caller; values
    /// are quoted.
    fn label(self, key: &str, value: &str) -> String {
        let key: String = key
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
            .collect();
        let value = value.replace('\'', "''");
        match self {
            Dialect::Sqlite => format!("json_extract(w.labels, '$.\"{key}\"') = '{value}'"),
            Dialect::Postgres => format!("(w.labels::jsonb ->> '{key}') = '{value}'"),
        }
    }
}

/// The statements of the fleet query, all over `health_spans` (numbers are
/// inlined: they are integers this module computed).
pub(crate) struct FleetSql {
    /// `workers, machines, existed, live, down`.
    pub time: String,
    /// `class, crash_kind, count`.
    pub offlines: String,
    pub machines_by_crashes: String,
    pub machines_by_downtime: String,
    pub workers_by_crashes: String,
    pub workers_by_downtime: String,
}

pub(crate) fn fleet_sql(d: Dialect, q: &FleetQuery) -> FleetSql {
    let (f, t) = (q.window.from.as_millis(), q.window.to.as_millis());
    let (nf, nt) = (q.no_data_before_from, q.no_data_before_to);
    let (g, l) = (d.greatest(), d.least());
    let workers_filter = if q.labels.is_empty() {
        String::new()
    } else {
        let conds: Vec<String> = q.labels.iter().map(|(k, v)| d.label(k, v)).collect();
        format!(
            " AND s.id IN (SELECT w.id FROM workers w WHERE {})",
            conds.join(" AND ")
        )
    };
    let machines_filter = if q.labels.is_empty() {
        String::new()
    } else {
        let conds: Vec<String> = q.labels.iter().map(|(k, v)| d.label(k, v)).collect();
        format!(
            " AND s.id IN (SELECT w.machine_id FROM workers w WHERE {})",
            conds.join(" AND ")
        )
    };
    let overlapping = |entity: &str, filter: &str| {
        format!(
            "FROM health_spans s WHERE s.entity = '{entity}' AND s.start_ms < {t} \
             AND (s.end_ms IS NULL OR s.end_ms >= {f}){filter}"
        )
    };
    // Observed time of the part of a span within the window:
    // (b − a) − (N(b) − N(a)).
    let observed = format!(
        "({l}(COALESCE(s.end_ms, {t}), {t}) - {g}(s.start_ms, {f})) \
         - (CASE WHEN s.end_ms IS NULL OR s.end_ms >= {t} THEN {nt} ELSE s.n_end END \
            - CASE WHEN s.start_ms <= {f} THEN {nf} ELSE s.n_start END)"
    );
    let existed = format!("({l}(COALESCE(s.end_ms, {t}), {t}) - {g}(s.start_ms, {f}))");
    let wf = &workers_filter;
    let time = format!(
        "SELECT COUNT(DISTINCT s.id), COUNT(DISTINCT s.machine_id), \
         CAST(COALESCE(SUM({existed}), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN s.live THEN {observed} ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN s.live THEN 0 ELSE {observed} END), 0) AS BIGINT) {}",
        overlapping(WORKER, wf)
    );
    let offlines_in = format!(
        "FROM health_spans s WHERE s.entity = '{WORKER}' AND s.class IS NOT NULL \
         AND s.start_ms >= {f} AND s.start_ms < {t}{wf}"
    );
    let offlines = format!(
        "SELECT s.class, s.crash_kind, COUNT(*) {offlines_in} GROUP BY s.class, s.crash_kind"
    );
    let top = q.top;
    let machines_by_crashes = format!(
        "SELECT s.machine_id, COUNT(*) AS n {offlines_in} AND s.class = 'crash' \
         GROUP BY s.machine_id ORDER BY n DESC, s.machine_id LIMIT {top}"
    );
    let workers_by_crashes = format!(
        "SELECT s.id, COUNT(*) AS n {offlines_in} AND s.class = 'crash' \
         GROUP BY s.id ORDER BY n DESC, s.id LIMIT {top}"
    );
    let by_downtime = |entity: &str, filter: &str| {
        format!(
            "SELECT s.id, CAST(SUM({observed}) AS BIGINT) AS down {} AND s.live = {} \
             GROUP BY s.id HAVING SUM({observed}) > 0 ORDER BY down DESC, s.id LIMIT {top}",
            overlapping(entity, filter),
            d.false_()
        )
    };
    FleetSql {
        time,
        offlines,
        machines_by_crashes,
        machines_by_downtime: by_downtime(MACHINE, &machines_filter),
        workers_by_crashes,
        workers_by_downtime: by_downtime(WORKER, wf),
    }
}

impl Dialect {
    fn false_(self) -> &'static str {
        match self {
            Dialect::Sqlite => "0",
            Dialect::Postgres => "false",
        }
    }
}

/// The names of the workers a batch writes.
pub(crate) fn names(writes: &[crate::WorkerWrite]) -> HashMap<WorkerId, WorkerName> {
    writes
        .iter()
        .filter_map(|w| match w {
            crate::WorkerWrite::Put { record, .. } => {
                Some((record.id.clone(), record.name.clone()))
            }
            crate::WorkerWrite::Delete { .. } => None,
        })
        .collect()
}

/// The columns of a span row, in the order [`span_from`] reads them.
pub(crate) const SPAN_COLUMNS: &str =
    "entity, id, machine_id, name, start_ms, end_ms, live, class, crash_kind";

/// A span row, read as plain values by either backend.
pub(crate) type SpanRow = (
    String,
    String,
    String,
    Option<String>,
    i64,
    Option<i64>,
    bool,
    Option<String>,
    Option<String>,
);

pub(crate) fn span_from(row: SpanRow) -> Result<HealthSpan> {
    let (entity, id, machine_id, name, start, end, live, class, kind) = row;
    let worker_id = if entity == WORKER {
        Some(WorkerId::parse(&id).map_err(corrupt)?)
    } else {
        None
    };
    let class: Option<OfflineClass> = class.map(|c| parse(&c, "offline class")).transpose()?;
    let kind: Option<CrashKind> = kind.map(|k| parse(&k, "crash kind")).transpose()?;
    Ok(HealthSpan {
        worker_id,
        machine_id: MachineId::parse(&machine_id).map_err(corrupt)?,
        name: name.and_then(|n| WorkerName::parse(&n).ok()),
        span: Span {
            start: rollcall_core::Timestamp::from_millis(start),
            end: end.map(rollcall_core::Timestamp::from_millis),
            live,
            cause: class.map(|c| (c, kind)),
        },
    })
}

/// The fleet summary from the rows of the fleet statements.
pub(crate) fn summary(
    time: (i64, i64, i64, i64, i64),
    offlines: Vec<(String, Option<String>, i64)>,
    ranked: [Vec<String>; 4],
) -> Result<FleetSummary> {
    let (workers, machines, existed, live, down) = time;
    let [mbc, mbd, wbc, wbd] = ranked;
    let machine_ids = |v: Vec<String>| {
        v.iter()
            .map(|id| MachineId::parse(id).map_err(corrupt))
            .collect::<Result<Vec<_>>>()
    };
    let worker_ids = |v: Vec<String>| {
        v.iter()
            .map(|id| WorkerId::parse(id).map_err(corrupt))
            .collect::<Result<Vec<_>>>()
    };
    Ok(FleetSummary {
        workers: workers.max(0) as u64,
        machines: machines.max(0) as u64,
        existed_ms: existed,
        no_data_ms: existed - live - down,
        live_ms: live,
        down_ms: down,
        offlines: offlines
            .into_iter()
            .map(|(c, k, n)| offline_from(c, k, n))
            .collect::<Result<_>>()?,
        machines_by_crashes: machine_ids(mbc)?,
        machines_by_downtime: machine_ids(mbd)?,
        workers_by_crashes: worker_ids(wbc)?,
        workers_by_downtime: worker_ids(wbd)?,
    })
}

/// Parses the rows of the fleet statements.
pub(crate) fn offline_from(
    class: String,
    kind: Option<String>,
    n: i64,
) -> Result<(OfflineClass, Option<CrashKind>, u64)> {
    Ok((
        parse(&class, "offline class")?,
        kind.map(|k| parse(&k, "crash kind")).transpose()?,
        n.max(0) as u64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rollcall_core::{ExitStatus, Timestamp};

    fn ev(
        kind: EventType,
        worker: Option<&WorkerId>,
        reason: Option<EventReason>,
        at: i64,
    ) -> EventRecord {
        EventRecord {
            seq: 0,
            at: Timestamp::from_millis(at),
            kind,
            worker_id: worker.cloned(),
            machine_id: MachineId::parse("m").unwrap(),
            reason,
            session: None,
            detection_lag_ms: None,
            exit: None,
        }
    }

    #[test]
    fn a_batch_closes_once_and_opens_the_last() {
        let w = WorkerId::generate(Timestamp::from_millis(1), [1; 10]);
        let name = WorkerName::parse("a").unwrap();
        let names = HashMap::from([(w.clone(), name)]);
        let mut exited = ev(
            EventType::WorkerOffline,
            Some(&w),
            Some(EventReason::Exited),
            20,
        );
        exited.exit = Some(ExitStatus::Code(0));
        let events = [
            ev(
                EventType::WorkerOffline,
                Some(&w),
                Some(EventReason::Replaced),
                10,
            ),
            ev(
                EventType::WorkerRegistered,
                Some(&w),
                Some(EventReason::Registered),
                10,
            ),
            ev(
                EventType::WorkerOnline,
                Some(&w),
                Some(EventReason::Registered),
                10,
            ),
            ev(EventType::MachineOnline, None, None, 10),
            exited,
        ];
        let p = plan(&events, &names);
        assert_eq!(
            p.closes,
            vec![
                (WORKER, w.as_str().to_owned(), 10),
                (MACHINE, "m".to_owned(), 10)
            ]
        );
        let spans: Vec<_> = p
            .inserts
            .iter()
            .map(|s| (s.entity, s.start, s.end, s.live, s.class, s.kind))
            .collect();
        assert_eq!(
            spans,
            vec![
                (WORKER, 10, Some(10), false, Some("crash"), Some("replaced")),
                (WORKER, 10, Some(20), true, None, None),
                (WORKER, 20, None, false, Some("graceful"), None),
                (MACHINE, 10, None, true, None, None),
            ]
        );
        assert_eq!(p.inserts[0].name.as_deref(), Some("a"));
    }
}
