//! `GET /v1/summary`: the fleet at a glance, problems first, computed from
//! the liveness engine's memory (no table scan), for the dashboard and for
//! anyone who wants counts without paging through every worker.
//!
//! One walk over the engine's workers gives the fleet's counts, each
//! machine's counts (derived the same way as a machine's status: online
//! while a worker is online or draining), and the matching machines and
//! workers in *problem order*:
//!
//! - machines: `offline` first, then `degraded` (online, with a failed or
//!   draining worker), most recent change first; then the rest by id;
//! - workers: `failed` first (offline with reason `stale`, `replaced` or
//!   `exited`), then draining, then offline otherwise (`shutdown`,
//!   `revoked`), most recent change first; then online workers by machine
//!   and name.
//!
//! Both lists are paged with opaque cursors (the sort key of the last
//! item). The order follows the live fleet, so an item whose rank changes
//! between two pages may be skipped or shown twice; the counts are exact
//! for the moment of the walk.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use axum::extract::{Query, State};
use axum::http::Uri;
use axum::Json;
use rollcall_core::{
    MachineId, MachineStatus, OfflineReason, Status, Timestamp, TokenKind, WorkerId,
};
use rollcall_store::WorkerRecord;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::dto::Worker;
use super::error::{ApiError, ErrorBody};
use super::extract::Caller;
use super::AppState;
use crate::engine::{Engine, MachineInfo};

/// Query parameters of `GET /v1/summary` (documentation; they are read
/// from the raw query so that `label` may repeat).
#[allow(dead_code)]
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SummaryQuery {
    /// Only workers with this status (`online`, `draining`, `offline`).
    #[param(pattern = r"^(online|draining|offline)$")]
    status: Option<String>,
    /// Search terms separated by spaces, each of which must occur
    /// (case-insensitively) in the worker's name or labels (`k=v`), or its
    /// machine's id, hostname or labels, or must begin the worker's id. At
    /// most 256 characters.
    q: Option<String>,
    /// `key=value`: only workers whose own labels or whose machine's labels
    /// hold this pair. May repeat (all must hold).
    label: Option<Vec<String>>,
    /// Only this machine and its workers.
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    machine_id: Option<String>,
    /// Machines per page, 1–1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
    /// The machine page's `next_cursor`.
    cursor: Option<String>,
    /// Workers per page, 0–1000, default 100.
    #[param(value_type = Option<u32>, minimum = 0, maximum = 1000)]
    workers_limit: Option<String>,
    /// The worker page's `next_cursor`.
    workers_cursor: Option<String>,
    /// Up to this many of each listed machine's matching workers in its
    /// `workers` (problems first), 0–1000, default 0.
    #[param(value_type = Option<u32>, minimum = 0, maximum = 1000)]
    machine_workers: Option<String>,
}

/// Workers by status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct WorkerCounts {
    pub total: u64,
    pub online: u64,
    pub draining: u64,
    pub offline: u64,
    /// Offline with reason `stale`, `replaced` or `exited`: it did not say
    /// goodbye, or its supervised process ended.
    pub failed: u64,
}

/// Machines by derived status.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct MachineCounts {
    /// Machines with at least one worker.
    pub total: u64,
    pub online: u64,
    pub offline: u64,
    /// Online machines with a failed or draining worker.
    pub degraded: u64,
}

/// Counts over the whole fleet (filters do not apply).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct FleetCounts {
    pub workers: WorkerCounts,
    /// Offline workers by reason (every reason is present).
    pub offline_reasons: BTreeMap<String, u64>,
    pub machines: MachineCounts,
}

/// How many workers and machines the filters match.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct Matching {
    pub workers: u64,
    /// Machines with at least one matching worker.
    pub machines: u64,
}

/// A machine of the summary: its counts and what needs attention.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MachineSummary {
    pub id: String,
    pub hostname: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub status: MachineStatus,
    /// `offline`, `degraded` (online, with a failed or draining worker) or
    /// `ok`.
    #[schema(pattern = r"^(offline|degraded|ok)$")]
    pub condition: String,
    pub workers_total: u64,
    pub workers_online: u64,
    pub workers_draining: u64,
    pub workers_offline: u64,
    pub workers_failed: u64,
    /// Its workers that the filters match.
    pub workers_matching: u64,
    /// The latest status change of any of its workers.
    #[schema(value_type = String, format = DateTime)]
    pub last_change_at: Timestamp,
    /// Its first matching workers, problems first (`machine_workers`).
    pub workers: Vec<Worker>,
    /// Whether it has more matching workers than `workers` holds.
    pub workers_more: bool,
}

/// A page of a summary list.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SummaryPage<T> {
    pub items: Vec<T>,
    /// Pass back as the page's cursor for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// `GET /v1/summary`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Summary {
    /// The last event published when the summary was taken: it reflects
    /// every event up to this `seq` (and possibly some just after).
    pub seq: i64,
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub counts: FleetCounts,
    pub matching: Matching,
    pub machines: SummaryPage<MachineSummary>,
    pub workers: SummaryPage<Worker>,
}

/// The fleet at a glance, problems first.
#[utoipa::path(
    get, path = "/v1/summary", tag = "summary",
    params(SummaryQuery),
    responses(
        (status = 200, body = Summary),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    uri: Uri,
) -> Result<Json<Summary>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let params = Params::parse(&uri)?;
    // Taken before the walk: the engine installs a change before its event
    // is published, so the walk reflects every event up to `seq`.
    let seq = s.hub.last_seq();
    let at = s.clock.now();
    let engine = s.engine.clone();
    // A walk over every worker: off the async threads.
    let summary = tokio::task::spawn_blocking(move || compute(&engine, &params, seq, at))
        .await
        .map_err(|_| ApiError::Internal)?;
    Ok(Json(summary))
}

/// Parsed and validated query parameters.
#[derive(Debug, Clone, Default)]
pub struct Params {
    pub status: Option<Status>,
    /// Lower-cased search terms.
    pub terms: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub machine_id: Option<MachineId>,
    pub limit: usize,
    pub cursor: Option<MachineKey>,
    pub workers_limit: usize,
    pub workers_cursor: Option<WorkerKey>,
    pub machine_workers: usize,
}

const MAX_Q: usize = 256;

fn count(name: &str, v: &str, min: usize, max: usize) -> Result<usize, ApiError> {
    v.parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{name} must be an integer from {min} to {max}, got {v:?}"
            ))
        })
}

impl Params {
    /// Reads the query string; unknown parameters are ignored, a repeated
    /// one (but `label`) is a 400.
    pub fn parse(uri: &Uri) -> Result<Params, ApiError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map_err(|e| ApiError::invalid(format!("invalid query: {}", e.body_text())))?;
        let mut p = Params {
            limit: 100,
            workers_limit: 100,
            ..Params::default()
        };
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in &pairs {
            if k != "label" {
                if seen.contains(&k.as_str()) {
                    return Err(ApiError::invalid(format!("{k} is given more than once")));
                }
                seen.push(k);
            }
            match k.as_str() {
                "status" => {
                    p.status = Some(v.parse::<Status>().map_err(|_| {
                        ApiError::invalid(format!(
                            "status must be online, draining or offline, got {v:?}"
                        ))
                    })?)
                }
                "q" => {
                    if v.chars().count() > MAX_Q {
                        return Err(ApiError::invalid(format!(
                            "q must be at most {MAX_Q} characters"
                        )));
                    }
                    p.terms = v.split_whitespace().map(str::to_lowercase).collect();
                }
                "label" => match v.split_once('=') {
                    Some((key, value)) if !key.is_empty() => {
                        p.labels.push((key.to_owned(), value.to_owned()))
                    }
                    _ => {
                        return Err(ApiError::invalid(format!(
                            "label must be key=value, got {v:?}"
                        )))
                    }
                },
                "machine_id" => {
                    p.machine_id = Some(MachineId::parse(v).map_err(|_| {
                        ApiError::invalid(format!(
                            "machine_id must be 1-128 characters of [A-Za-z0-9._:-], got {v:?}"
                        ))
                    })?)
                }
                "limit" => p.limit = count("limit", v, 1, 1000)?,
                "workers_limit" => p.workers_limit = count("workers_limit", v, 0, 1000)?,
                "machine_workers" => p.machine_workers = count("machine_workers", v, 0, 1000)?,
                "cursor" => p.cursor = Some(MachineKey::parse(v)?),
                "workers_cursor" => p.workers_cursor = Some(WorkerKey::parse(v)?),
                _ => {}
            }
        }
        Ok(p)
    }

    fn filters_workers(&self) -> bool {
        self.status.is_some()
            || !self.terms.is_empty()
            || !self.labels.is_empty()
            || self.machine_id.is_some()
    }

    /// Whether a worker (on a machine known as `info`) matches.
    fn matches(&self, r: &WorkerRecord, info: Option<&MachineInfo>) -> bool {
        if self.status.is_some_and(|s| s != r.status) {
            return false;
        }
        if self.machine_id.as_ref().is_some_and(|m| *m != r.machine_id) {
            return false;
        }
        for (k, v) in &self.labels {
            let own = r.labels.as_map().get(k) == Some(v);
            let machine = info.is_some_and(|i| i.labels.as_map().get(k) == Some(v));
            if !own && !machine {
                return false;
            }
        }
        if self.terms.is_empty() {
            return true;
        }
        let mut hay = format!("{} {}", r.name, r.machine_id);
        for (k, v) in r.labels.as_map() {
            hay.push_str(&format!(" {k}={v}"));
        }
        if let Some(i) = info {
            if let Some(h) = &i.hostname {
                hay.push(' ');
                hay.push_str(h);
            }
            for (k, v) in i.labels.as_map() {
                hay.push_str(&format!(" {k}={v}"));
            }
        }
        let hay = hay.to_lowercase();
        // An id matches from its start only (`wkr_01j…`): a short term such
        // as `c2` is not meant to find every id that happens to hold it.
        let id = r.id.as_str().to_lowercase();
        self.terms
            .iter()
            .all(|t| hay.contains(t.as_str()) || id.starts_with(t.as_str()))
    }
}

fn bad_cursor() -> ApiError {
    ApiError::invalid("cursor is not one this server issued")
}

/// A machine's place in problem order: (rank, key, id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MachineKey(u8, i64, String);

impl MachineKey {
    fn parse(s: &str) -> Result<MachineKey, ApiError> {
        let mut it = s.splitn(3, ':');
        let (Some(r), Some(k), Some(id)) = (it.next(), it.next(), it.next()) else {
            return Err(bad_cursor());
        };
        let rank = r
            .parse::<u8>()
            .ok()
            .filter(|r| *r <= 2)
            .ok_or_else(bad_cursor)?;
        let key = k.parse::<i64>().map_err(|_| bad_cursor())?;
        MachineId::parse(id).map_err(|_| bad_cursor())?;
        Ok(MachineKey(rank, key, id.to_owned()))
    }

    fn cursor(&self) -> String {
        format!("{}:{}:{}", self.0, self.1, self.2)
    }
}

/// A worker's place in problem order: (rank, key, machine, name, id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WorkerKey(u8, i64, String, String, String);

impl WorkerKey {
    fn of(r: &WorkerRecord) -> WorkerKey {
        let (rank, key) = worker_rank(r);
        WorkerKey(
            rank,
            key,
            r.machine_id.to_string(),
            r.name.to_string(),
            r.id.to_string(),
        )
    }

    fn parse(s: &str) -> Result<WorkerKey, ApiError> {
        let mut it = s.splitn(3, ':');
        let (Some(r), Some(k), Some(rest)) = (it.next(), it.next(), it.next()) else {
            return Err(bad_cursor());
        };
        let rank = r
            .parse::<u8>()
            .ok()
            .filter(|r| *r <= 3)
            .ok_or_else(bad_cursor)?;
        let key = k.parse::<i64>().map_err(|_| bad_cursor())?;
        let mut parts = rest.split('/');
        let (Some(m), Some(n), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad_cursor());
        };
        Ok(WorkerKey(rank, key, m.into(), n.into(), id.into()))
    }

    fn cursor(&self) -> String {
        format!("{}:{}:{}/{}/{}", self.0, self.1, self.2, self.3, self.4)
    }

    /// Compares with a worker without building its key.
    fn cmp_record(&self, rank: (u8, i64), r: &WorkerRecord) -> Ordering {
        (
            self.0,
            self.1,
            self.2.as_str(),
            self.3.as_str(),
            self.4.as_str(),
        )
            .cmp(&(
                rank.0,
                rank.1,
                r.machine_id.as_str(),
                r.name.as_str(),
                r.id.as_str(),
            ))
    }
}

/// Whether an offline reason means the worker failed rather than stopped.
pub fn failed(reason: Option<OfflineReason>) -> bool {
    matches!(
        reason,
        Some(OfflineReason::Stale | OfflineReason::Replaced | OfflineReason::Exited)
    )
}

fn worker_rank(r: &WorkerRecord) -> (u8, i64) {
    let recent = -r.status_changed_at.as_millis();
    match r.status {
        Status::Offline if failed(r.offline_reason) => (0, recent),
        Status::Draining => (1, recent),
        Status::Offline => (2, recent),
        Status::Online => (3, 0),
    }
}

#[derive(Debug)]
struct Agg {
    total: u64,
    online: u64,
    draining: u64,
    offline: u64,
    failed: u64,
    matching: u64,
    last_change: Timestamp,
}

impl Agg {
    fn status(&self) -> MachineStatus {
        if self.online + self.draining > 0 {
            MachineStatus::Online
        } else {
            MachineStatus::Offline
        }
    }

    fn condition(&self) -> &'static str {
        if self.status() == MachineStatus::Offline {
            "offline"
        } else if self.failed + self.draining > 0 {
            "degraded"
        } else {
            "ok"
        }
    }

    fn key(&self, id: &MachineId) -> MachineKey {
        let recent = -self.last_change.as_millis();
        match self.condition() {
            "offline" => MachineKey(0, recent, id.to_string()),
            "degraded" => MachineKey(1, recent, id.to_string()),
            _ => MachineKey(2, 0, id.to_string()),
        }
    }
}

/// The smallest `cap` keys above a cursor.
struct Smallest<K: Ord> {
    cap: usize,
    heap: BinaryHeap<K>,
}

impl<K: Ord> Smallest<K> {
    fn new(cap: usize) -> Self {
        Smallest {
            cap,
            heap: BinaryHeap::new(),
        }
    }

    /// Whether a key that compares to the largest kept as `vs_top` (the
    /// largest kept compared with the candidate) would be kept.
    fn wants(&self, top_vs_candidate: impl FnOnce(&K) -> Ordering) -> bool {
        if self.cap == 0 {
            return false;
        }
        if self.heap.len() < self.cap {
            return true;
        }
        self.heap
            .peek()
            .is_some_and(|top| top_vs_candidate(top) == Ordering::Greater)
    }

    fn push(&mut self, k: K) {
        self.heap.push(k);
        if self.heap.len() > self.cap {
            self.heap.pop();
        }
    }

    fn sorted(self) -> Vec<K> {
        self.heap.into_sorted_vec()
    }
}

/// The summary of the engine's workers under `p`.
pub fn compute(engine: &Engine, p: &Params, seq: i64, at: Timestamp) -> Summary {
    let infos = engine.machine_infos();
    let mut counts = FleetCounts::default();
    for r in OfflineReason::ALL {
        counts.offline_reasons.insert(r.as_str().to_owned(), 0);
    }
    let mut machines: HashMap<MachineId, Agg> = HashMap::new();
    let mut matching = Matching::default();
    // One more than a page, to know whether another follows.
    let mut page = Smallest::<WorkerKey>::new(if p.workers_limit == 0 {
        0
    } else {
        p.workers_limit + 1
    });
    let mut per_machine: Vec<WorkerKey> = Vec::new();

    engine.visit(|r, _deadline| {
        let w = &mut counts.workers;
        w.total += 1;
        let is_failed = r.status == Status::Offline && failed(r.offline_reason);
        match r.status {
            Status::Online => w.online += 1,
            Status::Draining => w.draining += 1,
            Status::Offline => {
                w.offline += 1;
                if is_failed {
                    w.failed += 1;
                }
                if let Some(reason) = r.offline_reason {
                    *counts
                        .offline_reasons
                        .entry(reason.as_str().to_owned())
                        .or_default() += 1;
                }
            }
        }
        let agg = match machines.get_mut(&r.machine_id) {
            Some(a) => a,
            None => machines.entry(r.machine_id.clone()).or_insert(Agg {
                total: 0,
                online: 0,
                draining: 0,
                offline: 0,
                failed: 0,
                matching: 0,
                last_change: r.status_changed_at,
            }),
        };
        agg.total += 1;
        match r.status {
            Status::Online => agg.online += 1,
            Status::Draining => agg.draining += 1,
            Status::Offline => agg.offline += 1,
        }
        if is_failed {
            agg.failed += 1;
        }
        agg.last_change = agg.last_change.max(r.status_changed_at);
        if !p.matches(r, infos.get(&r.machine_id)) {
            return;
        }
        matching.workers += 1;
        agg.matching += 1;
        let rank = worker_rank(r);
        let after_cursor = p
            .workers_cursor
            .as_ref()
            .is_none_or(|c| c.cmp_record(rank, r) == Ordering::Less);
        if after_cursor && page.wants(|top| top.cmp_record(rank, r)) {
            page.push(WorkerKey::of(r));
        }
        if p.machine_workers > 0 {
            per_machine.push(WorkerKey::of(r));
        }
    });

    for agg in machines.values() {
        let m = &mut counts.machines;
        m.total += 1;
        match agg.condition() {
            "offline" => m.offline += 1,
            "degraded" => {
                m.online += 1;
                m.degraded += 1
            }
            _ => m.online += 1,
        }
    }

    // Machines: those with a matching worker (every machine, unfiltered).
    let filtered = p.filters_workers();
    let mut listed: Vec<(MachineKey, &MachineId, &Agg)> = machines
        .iter()
        .filter(|(_, a)| !filtered || a.matching > 0)
        .map(|(id, a)| (a.key(id), id, a))
        .collect();
    matching.machines = listed.len() as u64;
    if let Some(c) = &p.cursor {
        listed.retain(|(k, _, _)| k > c);
    }
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let more_machines = listed.len() > p.limit;
    listed.truncate(p.limit);
    let machine_next = more_machines
        .then(|| listed.last().map(|(k, _, _)| k.cursor()))
        .flatten();

    // Each listed machine's first matching workers.
    let mut theirs: HashMap<&str, Vec<WorkerKey>> = HashMap::new();
    if p.machine_workers > 0 {
        let wanted: std::collections::HashSet<&str> =
            listed.iter().map(|(_, id, _)| id.as_str()).collect();
        per_machine.sort();
        for k in per_machine {
            if let Some(id) = wanted.get(k.2.as_str()) {
                let v = theirs.entry(id).or_default();
                if v.len() < p.machine_workers {
                    v.push(k);
                }
            }
        }
    }
    let worker_of = |k: &WorkerKey| -> Option<Worker> {
        let id = WorkerId::parse(&k.4).ok()?;
        let live = engine.get(&id)?;
        Some(Worker::new(&live.record, Some(live.deadline)))
    };
    let machine_items = listed
        .iter()
        .map(|(_, id, a)| {
            let info = infos.get(*id);
            let mut keys = theirs.remove(id.as_str()).unwrap_or_default();
            keys.truncate(p.machine_workers);
            let workers: Vec<Worker> = keys.iter().filter_map(worker_of).collect();
            MachineSummary {
                id: id.to_string(),
                hostname: info.and_then(|i| i.hostname.clone()),
                labels: info.map(|i| i.labels.as_map().clone()).unwrap_or_default(),
                status: a.status(),
                condition: a.condition().to_owned(),
                workers_total: a.total,
                workers_online: a.online,
                workers_draining: a.draining,
                workers_offline: a.offline,
                workers_failed: a.failed,
                workers_matching: a.matching,
                last_change_at: a.last_change,
                workers_more: a.matching > workers.len() as u64,
                workers,
            }
        })
        .collect();

    let mut keys = page.sorted();
    let more_workers = keys.len() > p.workers_limit;
    keys.truncate(p.workers_limit);
    let worker_next = more_workers
        .then(|| keys.last().map(WorkerKey::cursor))
        .flatten();
    let worker_items = keys.iter().filter_map(worker_of).collect();

    Summary {
        seq,
        at,
        counts,
        matching,
        machines: SummaryPage {
            items: machine_items,
            next_cursor: machine_next,
        },
        workers: SummaryPage {
            items: worker_items,
            next_cursor: worker_next,
        },
    }
}
