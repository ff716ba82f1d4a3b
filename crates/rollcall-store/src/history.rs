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

use std::collections::{BTreeMap, HashMap, HashSet};

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
    /// Workers deleted by the batch: their history ends.
    pub gone: Vec<String>,
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
        if entity == WORKER && list.iter().any(|(_, c)| matches!(c, Change::Gone)) {
            plan.gone.push(id.clone());
        }
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

/// The statements of the fleet query (numbers are inlined: they are
/// integers this module computed).
///
/// Without label filters the totals come from the rollup
/// (`health_rollup`, `health_rollup_hourly`): the window's sums are sums of
/// span ends and starts, so they are read from a few aggregate rows rather
/// than from every span of the window (see [`rollup_totals`]). Label
/// filters select workers by their current labels, which no aggregate can
/// know in advance: then the totals are summed over the spans.
pub(crate) struct FleetSql {
    /// `machines, workers`, from `health_lives`.
    pub counts: String,
    /// Without label filters: rows `part, series, n, Σ(at − from), Σ(clock − from)`.
    pub rollup: Option<String>,
    /// With label filters: `existed, live, down` over the spans.
    pub time: Option<String>,
    /// With label filters: `class, crash_kind, count` over the spans.
    pub offlines: Option<String>,
    pub machines_by_crashes: String,
    pub machines_by_downtime: String,
    pub workers_by_crashes: String,
    pub workers_by_downtime: String,
    /// The same two rankings' raw material for SQLite, which groups by
    /// sorting: one text of the ids of the window's crashes
    /// (`id,id,…`), and one of each down span's observed time
    /// (`id value,…`), counted and summed in [`rank_text`].
    pub worker_crash_ids: String,
    pub worker_down_times: String,
}

/// One hour and one day, in milliseconds: the grains of the rollup.
pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The rows of `[lo, hi)`: whole units of `grain` ms from `select_coarse`
/// (whose condition is completed on `{unit}`), the partial units at each
/// end from `select_fine` (completed on `{at}`, an instant). The caller
/// replaces the two placeholders with its column names.
fn range_rows(select_coarse: &str, select_fine: &str, grain: i64, lo: i64, hi: i64) -> String {
    let first = lo.div_euclid(grain) + i64::from(lo.rem_euclid(grain) != 0);
    let last = hi.div_euclid(grain);
    if first < last {
        format!(
            "{select_coarse} >= {first} AND {{unit}} < {last} \
             UNION ALL {select_fine} >= {lo} AND {{at}} < {a} \
             UNION ALL {select_fine} >= {b} AND {{at}} < {hi}",
            a = first * grain,
            b = last * grain,
        )
    } else {
        format!("{select_fine} >= {lo} AND {{at}} < {hi}")
    }
}

pub(crate) fn fleet_sql(d: Dialect, q: &FleetQuery) -> FleetSql {
    let (f, t) = (q.window.from.as_millis(), q.window.to.as_millis());
    let (nf, nt) = (q.no_data_before_from, q.no_data_before_to);
    let (g, l) = (d.greatest(), d.least());
    let labelled = !q.labels.is_empty();
    let label_conds = || {
        q.labels
            .iter()
            .map(|(k, v)| d.label(k, v))
            .collect::<Vec<_>>()
            .join(" AND ")
    };
    let workers_filter = if labelled {
        format!(
            " AND s.id IN (SELECT w.id FROM workers w WHERE {})",
            label_conds()
        )
    } else {
        String::new()
    };
    let machines_filter = if labelled {
        format!(
            " AND s.id IN (SELECT w.machine_id FROM workers w WHERE {})",
            label_conds()
        )
    } else {
        String::new()
    };
    let lives_filter = if labelled {
        format!(
            " AND l.id IN (SELECT w.id FROM workers w WHERE {})",
            label_conds()
        )
    } else {
        String::new()
    };
    let fals = d.false_();
    // Worker down spans are read through `health_spans_down`; without
    // statistics SQLite would take `health_spans_by_id (entity=?)` and
    // visit every worker span.
    let down = d.down_index();
    let overlapping = |entity: &str, filter: &str| {
        let hint = if entity == WORKER { down } else { "" };
        format!(
            "FROM health_spans s{hint} WHERE s.entity = '{entity}' AND s.start_ms < {t} \
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
    // A worker's history is one unbroken run of spans from its first to its
    // deletion, so it has a span in the window exactly when that run
    // overlaps it.
    let counts = format!(
        "SELECT COUNT(*), CAST(COALESCE(SUM(c), 0) AS BIGINT) FROM (SELECT l.machine_id, COUNT(*) AS c \
         FROM health_lives l WHERE l.start_ms < {t} AND (l.end_ms IS NULL OR l.end_ms >= {f}){lives_filter} \
         GROUP BY l.machine_id) AS m"
    );
    let (rollup, time, offlines) = if labelled {
        let time = format!(
            "SELECT CAST(COALESCE(SUM({existed}), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN s.live THEN {observed} ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(CASE WHEN s.live THEN 0 ELSE {observed} END), 0) AS BIGINT) \
             FROM health_spans s WHERE s.entity = '{WORKER}' AND s.start_ms < {t} \
             AND (s.end_ms IS NULL OR s.end_ms >= {f}){wf}"
        );
        let offlines = format!(
            "SELECT s.class, s.crash_kind, COUNT(*) FROM health_spans s{down} \
             WHERE s.entity = '{WORKER}' AND s.live = {fals} AND s.class IS NOT NULL \
             AND s.start_ms >= {f} AND s.start_ms < {t}{wf} GROUP BY s.class, s.crash_kind"
        );
        (None, Some(time), Some(offlines))
    } else {
        let hf = f.div_euclid(HOUR_MS);
        let prefix = format!(
            "SELECT 'p' AS part, series, CAST(SUM(n) AS BIGINT) AS n, CAST(0 AS BIGINT) AS rel, \
               CAST(0 AS BIGINT) AS relo FROM ( \
               SELECT series, n FROM health_rollup_hourly WHERE hour < {hf} \
               UNION ALL SELECT series, n FROM health_rollup WHERE at >= {a} AND at < {f}) AS p \
             WHERE series IN ('start.live', 'start.down', 'end.live', 'end.down') GROUP BY series",
            a = hf * HOUR_MS
        );
        let rows = range_rows(
            "SELECT series, n, sum_ms, sum_obs FROM health_rollup_hourly WHERE hour",
            "SELECT series, n, sum_ms, sum_obs FROM health_rollup WHERE at",
            HOUR_MS,
            f,
            t,
        )
        .replace("{unit}", "hour")
        .replace("{at}", "at");
        let range = format!(
            "SELECT 'r' AS part, series, CAST(SUM(n) AS BIGINT), CAST(SUM(sum_ms - {f} * n) AS BIGINT), \
             CAST(SUM(sum_obs - {f} * n) AS BIGINT) FROM ({rows}) AS r GROUP BY series"
        );
        let at_from = format!(
            "SELECT 'a' AS part, series, n, CAST(0 AS BIGINT), sum_obs - {f} * n FROM health_rollup \
             WHERE at = {f} AND series IN ('start.live', 'start.down')"
        );
        (
            Some(format!("{prefix} UNION ALL {range} UNION ALL {at_from}")),
            None,
            None,
        )
    };
    let offlines_in = format!(
        "FROM health_spans s{down} WHERE s.entity = '{WORKER}' AND s.live = {fals} AND s.class IS NOT NULL \
         AND s.start_ms >= {f} AND s.start_ms < {t}{wf}"
    );
    let top = q.top;
    let machines_by_crashes = if labelled {
        format!(
            "SELECT s.machine_id, COUNT(*) AS n {offlines_in} AND s.class = 'crash' \
             GROUP BY s.machine_id ORDER BY n DESC, s.machine_id LIMIT {top}"
        )
    } else {
        // Whole days from the rollup, the partial days at the ends from
        // the spans.
        let rows = range_rows(
            "SELECT machine_id, crashes AS n FROM health_rollup_machines WHERE day",
            &format!(
                "SELECT s.machine_id, 1 AS n FROM health_spans s{down} WHERE s.entity = '{WORKER}' \
                 AND s.live = {fals} AND s.class = 'crash' AND s.start_ms"
            ),
            DAY_MS,
            f,
            t,
        )
        .replace("{unit}", "day")
        .replace("{at}", "s.start_ms");
        format!(
            "SELECT machine_id, CAST(SUM(n) AS BIGINT) AS c FROM ({rows}) AS x \
             GROUP BY machine_id ORDER BY c DESC, machine_id LIMIT {top}"
        )
    };
    let workers_by_crashes = format!(
        "SELECT s.id, COUNT(*) AS n {offlines_in} AND s.class = 'crash' \
         GROUP BY s.id ORDER BY n DESC, s.id LIMIT {top}"
    );
    let by_downtime = |entity: &str, filter: &str| {
        format!(
            "SELECT s.id, CAST(SUM({observed}) AS BIGINT) AS down {} AND s.live = {fals} \
             GROUP BY s.id HAVING SUM({observed}) > 0 ORDER BY down DESC, s.id LIMIT {top}",
            overlapping(entity, filter),
        )
    };
    let worker_crash_ids =
        format!("SELECT COALESCE(group_concat(s.id, ','), '') {offlines_in} AND s.class = 'crash'");
    let worker_down_times = format!(
        "SELECT COALESCE(group_concat(s.id || ' ' || ({observed}), ','), '') {} AND s.live = {fals}",
        overlapping(WORKER, wf),
    );
    FleetSql {
        worker_crash_ids,
        worker_down_times,
        counts,
        rollup,
        time,
        offlines,
        machines_by_crashes,
        machines_by_downtime: by_downtime(MACHINE, &machines_filter),
        workers_by_crashes,
        workers_by_downtime: by_downtime(WORKER, wf),
    }
}

/// The `top` ids with the largest totals (ties by id), only positive
/// ones, from the text of a `worker_crash_ids` (`valued` false: each id
/// counts 1) or `worker_down_times` (`valued`: `id value` items) statement:
/// the same ranking as the `GROUP BY` statements.
pub(crate) fn rank_text(text: &str, valued: bool, top: u32) -> Result<Vec<String>> {
    let mut totals: HashMap<&str, i64> = HashMap::new();
    for item in text.split(',').filter(|i| !i.is_empty()) {
        let (id, v) = if valued {
            let (id, v) = item
                .split_once(' ')
                .ok_or_else(|| crate::StoreError::Corrupt(format!("ranking item {item:?}")))?;
            let v: i64 = v
                .parse()
                .map_err(|_| crate::StoreError::Corrupt(format!("ranking item {item:?}")))?;
            (id, v)
        } else {
            (item, 1)
        };
        *totals.entry(id).or_insert(0) += v;
    }
    let mut v: Vec<(&str, i64)> = totals.into_iter().filter(|(_, n)| *n > 0).collect();
    let top = top as usize;
    let by = |a: &(&str, i64), b: &(&str, i64)| b.1.cmp(&a.1).then(a.0.cmp(b.0));
    if v.len() > top {
        v.select_nth_unstable_by(top, by);
        v.truncate(top);
    }
    v.sort_by(by);
    Ok(v.into_iter().map(|(id, _)| id.to_owned()).collect())
}

/// A rollup row of the fleet query: `part` is `p` (the counts before
/// `from`), `r` (the sums within `[from, to)`) or `a` (the starts at
/// `from` exactly); sums are relative to `from`.
pub(crate) type RollupRow = (String, String, i64, i64, i64);

/// The window's worker time (`existed, live, down`) and offlines from the
/// rollup rows.
///
/// Over the spans `S` that overlap `[f, t)` (start `a < t`, end `b >= f` or
/// open), `Σ (min(b, t) − max(a, f))` splits into sums of ends and starts:
/// `Σ_{f ≤ b < t} b + t · C(t) − Σ_{f < a < t} a − f · C(f)`, where `C(t)`
/// counts the spans still open at `t` (started before it, not ended before
/// it) and `C(f)` the spans started by `f` and not ended before it. The
/// observed time is the same sum on the observed clock `x − N(x)`, which
/// each span end carries (`sum_obs`). Every term is a count or a sum of a
/// series over a range of instants: exactly the old per-span sums.
pub(crate) fn rollup_totals(q: &FleetQuery, rows: Vec<RollupRow>) -> Result<Totals> {
    let (f, t) = (
        i128::from(q.window.from.as_millis()),
        i128::from(q.window.to.as_millis()),
    );
    let (nf, nt) = (
        i128::from(q.no_data_before_from),
        i128::from(q.no_data_before_to),
    );
    let mut parts: HashMap<(String, String), (i128, i128, i128)> = HashMap::new();
    let mut offlines = Vec::new();
    for (part, series, n, rel, relo) in rows {
        if part == "r" {
            if let Some(rest) = series.strip_prefix("off:") {
                let (class, kind) = rest.split_once(':').ok_or_else(|| {
                    crate::StoreError::Corrupt(format!("rollup series {series:?}"))
                })?;
                let kind = (!kind.is_empty()).then(|| kind.to_owned());
                if n > 0 {
                    offlines.push(offline_from(class.to_owned(), kind, n)?);
                }
                continue;
            }
        }
        let e = parts.entry((part, series)).or_insert((0, 0, 0));
        e.0 += i128::from(n);
        e.1 += i128::from(rel);
        e.2 += i128::from(relo);
    }
    let get = |part: &str, series: &str| {
        parts
            .get(&(part.to_owned(), series.to_owned()))
            .copied()
            .unwrap_or((0, 0, 0))
    };
    let (mut existed, mut live, mut down) = (0i128, 0i128, 0i128);
    for (is_live, s_series, e_series) in [
        (true, "start.live", "end.live"),
        (false, "start.down", "end.down"),
    ] {
        let p_s = get("p", s_series).0;
        let p_e = get("p", e_series).0;
        let r_s = get("r", s_series);
        let r_e = get("r", e_series);
        let a_s = get("a", s_series);
        let c_t = p_s + r_s.0 - p_e - r_e.0;
        let c_f = p_s + a_s.0 - p_e;
        let ends = r_e.1 + f * r_e.0;
        let starts = r_s.1 + f * (r_s.0 - a_s.0);
        existed += ends + t * c_t - starts - f * c_f;
        let ends_o = r_e.2 + f * r_e.0;
        let starts_o = (r_s.2 - a_s.2) + f * (r_s.0 - a_s.0);
        let obs = ends_o + (t - nt) * c_t - starts_o - (f - nf) * c_f;
        if is_live {
            live += obs;
        } else {
            down += obs;
        }
    }
    let narrow = |v: i128| {
        i64::try_from(v).map_err(|_| crate::StoreError::Corrupt(format!("rollup sum {v}")))
    };
    sort_offlines(&mut offlines);
    Ok((narrow(existed)?, narrow(live)?, narrow(down)?, offlines))
}

/// A span a batch ended, as its `UPDATE` returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closed {
    pub entity: String,
    pub id: String,
    pub live: bool,
    pub end: i64,
    pub n_end: i64,
}

/// Sums of a rollup series at one instant or in one hour: the number of
/// span starts or ends (or offlines), the sum of their instants and the sum
/// of their observed clocks `x − N(x)`.
pub(crate) type Sums = (i64, i64, i64);

/// What a batch adds to the rollup.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rollup {
    /// (instant, series) → sums.
    pub at: BTreeMap<(i64, String), Sums>,
    /// (day, machine) → crashes that began then.
    pub machine_days: BTreeMap<(i64, String), i64>,
    /// Workers whose history begins: (id, machine, start).
    pub lives: Vec<(String, String, i64)>,
}

impl Rollup {
    /// The sums per hour.
    pub fn hourly(&self) -> BTreeMap<(i64, String), Sums> {
        let mut out: BTreeMap<(i64, String), Sums> = BTreeMap::new();
        for ((at, series), (n, ms, obs)) in &self.at {
            let e = out
                .entry((at.div_euclid(HOUR_MS), series.clone()))
                .or_insert((0, 0, 0));
            e.0 += n;
            e.1 += ms;
            e.2 += obs;
        }
        out
    }

    fn add(&mut self, at: i64, series: String, obs: i64) {
        let e = self.at.entry((at, series)).or_insert((0, 0, 0));
        e.0 += 1;
        e.1 += at;
        e.2 += obs;
    }
}

fn start_series(live: bool) -> &'static str {
    if live {
        "start.live"
    } else {
        "start.down"
    }
}

fn end_series(live: bool) -> &'static str {
    if live {
        "end.live"
    } else {
        "end.down"
    }
}

/// The rollup of a batch: its closed spans (`closed`, as the `UPDATE`
/// returned them), its new spans, `n` the no-data time the batch wrote.
/// Only worker spans are rolled up (the fleet's figures are its workers').
pub(crate) fn rollup(plan: &Plan, closed: &[Closed], n: i64) -> Rollup {
    let mut r = Rollup::default();
    let mut had_open: HashSet<&str> = HashSet::new();
    for c in closed.iter().filter(|c| c.entity == WORKER) {
        r.add(c.end, end_series(c.live).to_owned(), c.end - c.n_end);
        had_open.insert(c.id.as_str());
    }
    let mut begun: HashSet<&str> = HashSet::new();
    for s in plan.inserts.iter().filter(|s| s.entity == WORKER) {
        r.add(s.start, start_series(s.live).to_owned(), s.start - n);
        if let Some(b) = s.end {
            r.add(b, end_series(s.live).to_owned(), b - n);
        }
        if let Some(class) = s.class {
            r.add(s.start, format!("off:{class}:{}", s.kind.unwrap_or("")), 0);
            if class == OfflineClass::Crash.as_str() {
                *r.machine_days
                    .entry((s.start.div_euclid(DAY_MS), s.machine_id.clone()))
                    .or_insert(0) += 1;
            }
        }
        if !had_open.contains(s.id.as_str()) && begun.insert(s.id.as_str()) {
            r.lives.push((s.id.clone(), s.machine_id.clone(), s.start));
        }
    }
    r
}

impl Dialect {
    /// The hint that makes a statement read worker down spans through
    /// `health_spans_down` (PostgreSQL's planner has statistics).
    fn down_index(self) -> &'static str {
        match self {
            Dialect::Sqlite => " INDEXED BY health_spans_down",
            Dialect::Postgres => "",
        }
    }

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

/// The fleet's totals: `existed, live, down` and the offlines.
pub(crate) type Totals = (i64, i64, i64, Vec<(OfflineClass, Option<CrashKind>, u64)>);

/// The offlines in the order of their class and kind names.
fn sort_offlines(v: &mut [(OfflineClass, Option<CrashKind>, u64)]) {
    v.sort_by_key(|(c, k, _)| (c.as_str(), k.map(CrashKind::as_str)));
}

/// The totals of a labelled fleet query from its span statements' rows.
pub(crate) fn span_totals(
    time: (i64, i64, i64),
    offlines: Vec<(String, Option<String>, i64)>,
) -> Result<Totals> {
    let mut offlines = offlines
        .into_iter()
        .map(|(c, k, n)| offline_from(c, k, n))
        .collect::<Result<Vec<_>>>()?;
    sort_offlines(&mut offlines);
    Ok((time.0, time.1, time.2, offlines))
}

/// The fleet summary from the rows of the fleet statements.
pub(crate) fn summary(
    counts: (i64, i64),
    totals: Totals,
    ranked: [Vec<String>; 4],
) -> Result<FleetSummary> {
    let (machines, workers) = counts;
    let (existed, live, down, offlines) = totals;
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
        offlines,
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
            incident_id: None,
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
