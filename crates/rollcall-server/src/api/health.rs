//! Health endpoints: availability, downtime and crashes of workers,
//! machines and the fleet over a window, from the health history
//! (`rollcall_store::history`) and the core's arithmetic
//! (`rollcall_core::health`).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use rollcall_core::health::{self as h, Observations, Span, Window};
use rollcall_core::{CrashKind, MachineId, Timestamp, TokenKind, WorkerId};
use rollcall_store::{FleetQuery, HealthSpan, SpansOf};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{Caller, PathId, Q};
use super::AppState;

/// What the health endpoints need of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthSettings {
    /// How far back a window may begin (`health_retention`).
    pub retention: Duration,
    /// `flapping_crashes_per_hour`.
    pub flapping_crashes_per_hour: u32,
}

/// Default window: the last 24 hours.
const DEFAULT_WINDOW: Duration = Duration::from_secs(86_400);
/// Default length of the fleet's rankings.
const DEFAULT_TOP: u32 = 10;

/// Crashes by kind.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
pub struct Crashes {
    pub total: u64,
    pub stale: u64,
    pub replaced: u64,
    pub exited: u64,
}

impl From<h::Crashes> for Crashes {
    fn from(c: h::Crashes) -> Self {
        Crashes {
            total: c.total(),
            stale: c.stale,
            replaced: c.replaced,
            exited: c.exited,
        }
    }
}

/// The latest crash in the window.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
pub struct LastCrash {
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    pub kind: CrashKind,
}

/// The figures of a worker or a machine over a window.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Figures {
    /// Time it existed while a server was observing (= live + down).
    pub observed_ms: u64,
    /// Time it existed while no server was observing: left out of every
    /// ratio, never counted as downtime.
    pub no_data_ms: u64,
    /// Observed time online or draining (a machine: with a live worker).
    pub live_ms: u64,
    /// Observed time offline.
    pub down_ms: u64,
    /// live ÷ observed; null when nothing was observed.
    pub availability: Option<f64>,
    /// Offlines that were crashes (`stale`, `replaced`, `exited` with a
    /// failure, a signal or no status); a machine's: its workers'.
    pub crashes: Crashes,
    /// Offlines it meant: `shutdown`, or `exited` with exit code 0.
    pub graceful: u64,
    /// Offlines an admin caused (`revoked`).
    pub administrative: u64,
    /// Mean time between failures: live ÷ crashes; null without a crash.
    pub mtbf_ms: Option<u64>,
    pub last_crash: Option<LastCrash>,
    /// At least `flapping_crashes_per_hour` crashes in the window's last
    /// hour.
    pub flapping: bool,
}

fn ms(v: i64) -> u64 {
    v.max(0) as u64
}

impl Figures {
    fn new(f: &h::Figures, flapping: u32) -> Self {
        Figures {
            observed_ms: ms(f.observed_ms()),
            no_data_ms: ms(f.no_data_ms),
            live_ms: ms(f.live_ms),
            down_ms: ms(f.down_ms),
            availability: f.availability(),
            crashes: f.crashes.into(),
            graceful: f.graceful,
            administrative: f.administrative,
            mtbf_ms: f.mtbf_ms(),
            last_crash: f.last_crash.map(|(at, kind)| LastCrash { at, kind }),
            flapping: f.flapping(flapping),
        }
    }
}

/// One part of a window, for charts.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct Bucket {
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    pub observed_ms: u64,
    pub no_data_ms: u64,
    pub live_ms: u64,
    pub down_ms: u64,
    /// live ÷ observed; null when nothing was observed (no data).
    pub availability: Option<f64>,
    pub crashes: u64,
}

impl Bucket {
    fn new(w: Window, f: &h::Figures) -> Self {
        Bucket {
            from: w.from,
            to: w.to,
            observed_ms: ms(f.observed_ms()),
            no_data_ms: ms(f.no_data_ms),
            live_ms: ms(f.live_ms),
            down_ms: ms(f.down_ms),
            availability: f.availability(),
            crashes: f.crashes.total(),
        }
    }
}

/// `GET /v1/workers/{id}/health`.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct WorkerHealth {
    pub worker_id: String,
    pub machine_id: String,
    /// Null for a worker deleted before the history recorded its name.
    pub name: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    #[serde(flatten)]
    pub figures: Figures,
    /// The window in `buckets` equal parts (empty unless asked for).
    pub buckets: Vec<Bucket>,
}

/// `GET /v1/machines/{id}/health`.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct MachineHealth {
    pub machine_id: String,
    /// Null for a machine no longer known.
    pub hostname: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    #[serde(flatten)]
    pub figures: Figures,
    pub buckets: Vec<Bucket>,
    /// Every worker the machine had within the window, by id.
    pub workers: Vec<WorkerHealth>,
}

/// A machine in one of the fleet's rankings.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct RankedMachine {
    pub machine_id: String,
    pub hostname: Option<String>,
    pub availability: Option<f64>,
    pub down_ms: u64,
    pub crashes: Crashes,
    pub mtbf_ms: Option<u64>,
    pub last_crash: Option<LastCrash>,
}

/// A worker in one of the fleet's rankings.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct RankedWorker {
    pub worker_id: String,
    pub machine_id: String,
    pub name: Option<String>,
    pub availability: Option<f64>,
    pub down_ms: u64,
    pub crashes: Crashes,
    pub mtbf_ms: Option<u64>,
    pub last_crash: Option<LastCrash>,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq)]
pub struct FleetHealth {
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    /// Workers that existed within the window.
    pub workers: u64,
    /// Machines of those workers.
    pub machines: u64,
    /// Worker time (summed over workers).
    pub observed_ms: u64,
    pub no_data_ms: u64,
    pub live_ms: u64,
    pub down_ms: u64,
    /// Worker live time ÷ worker observed time.
    pub availability: Option<f64>,
    /// Crashes by kind; `crashes.stale` is how often workers went stale.
    pub crashes: Crashes,
    pub graceful: u64,
    pub administrative: u64,
    /// The machines whose workers crashed most (only machines with a crash).
    pub top_machines_by_crashes: Vec<RankedMachine>,
    /// The machines down longest (without a live worker; only with downtime).
    pub top_machines_by_downtime: Vec<RankedMachine>,
    pub top_workers_by_crashes: Vec<RankedWorker>,
    pub top_workers_by_downtime: Vec<RankedWorker>,
}

/// Query parameters of the health endpoints (documentation; parsed from
/// the raw pairs, since `label` repeats).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct HealthParams {
    /// The last `<n>m`, `<n>h` or `<n>d` up to now (`1h`, `24h`, `7d`,
    /// `30d`); default `24h`. Not with `from`/`to`.
    #[param(pattern = r"^[1-9][0-9]{0,8}[mhd]$")]
    window: Option<String>,
    /// Start of the window (RFC 3339), within `health_retention`.
    #[param(value_type = Option<String>, format = DateTime)]
    from: Option<String>,
    /// End of the window (RFC 3339; default now; a later time is now).
    #[param(value_type = Option<String>, format = DateTime)]
    to: Option<String>,
    /// Worker and machine health: the window in this many equal buckets
    /// (1–1000, at most one per millisecond).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    buckets: Option<String>,
    /// Fleet health: length of each ranking (1–1000, default 10).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    top: Option<String>,
    /// Fleet health: `key=value`, repeatable; only workers whose labels
    /// hold every pair, and their machines.
    #[param(value_type = Option<Vec<String>>)]
    label: Option<Vec<String>>,
}

/// The parsed parameters.
#[derive(Debug)]
struct Params {
    window: Window,
    buckets: Option<Vec<Window>>,
    top: u32,
    labels: Vec<(String, String)>,
}

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Result<Option<&'a str>, ApiError> {
    let mut found = pairs.iter().filter(|(k, _)| k == key);
    let first = found.next().map(|(_, v)| v.as_str());
    if found.next().is_some() {
        return Err(ApiError::invalid(format!("{key} may be given once")));
    }
    Ok(first)
}

fn timestamp(key: &str, v: &str) -> Result<Timestamp, ApiError> {
    Timestamp::parse_rfc3339(v).ok_or_else(|| {
        ApiError::invalid(format!(
            "{key} must be an RFC 3339 time such as 2026-12-01T00:00:00Z, got {v:?}"
        ))
    })
}

fn number(key: &str, v: Option<&str>, default: Option<u32>) -> Result<Option<u32>, ApiError> {
    match v {
        None => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=h::MAX_BUCKETS).contains(n))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{key} must be an integer from 1 to 1000, got {v:?}"
                ))
            }),
    }
}

fn parse(
    pairs: &[(String, String)],
    now: Timestamp,
    settings: HealthSettings,
) -> Result<Params, ApiError> {
    let window = one(pairs, "window")?;
    let from = one(pairs, "from")?;
    let to = one(pairs, "to")?;
    let (from, to) = match (window, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(ApiError::invalid("give either window or from/to, not both"))
        }
        (Some(w), None, None) => {
            let d = h::parse_window(w).map_err(|e| ApiError::invalid(e.to_string()))?;
            (now.minus(d), now)
        }
        (None, None, Some(_)) => {
            return Err(ApiError::invalid("to needs from"));
        }
        (None, Some(f), to) => {
            let from = timestamp("from", f)?;
            let to = to.map(|t| timestamp("to", t)).transpose()?.unwrap_or(now);
            (from, to.min(now))
        }
        (None, None, None) => (now.minus(DEFAULT_WINDOW), now),
    };
    let window = Window::new(from, to).map_err(|_| {
        ApiError::invalid("the window must end after it begins, and not begin in the future")
    })?;
    let oldest = now.minus(settings.retention);
    if window.from < oldest {
        return Err(ApiError::invalid(format!(
            "the window begins before the health history's retention ({}): from must be at or after {oldest}",
            humantime::format_duration(settings.retention)
        )));
    }
    let buckets = number("buckets", one(pairs, "buckets")?, None)?
        .map(|n| {
            window
                .split(u64::from(n))
                .map_err(|e| ApiError::invalid(e.to_string()))
        })
        .transpose()?;
    let top = number("top", one(pairs, "top")?, Some(DEFAULT_TOP))?.unwrap_or(DEFAULT_TOP);
    let mut labels = Vec::new();
    for (k, v) in pairs.iter().filter(|(k, _)| k == "label") {
        let (key, value) = v
            .split_once('=')
            .ok_or_else(|| ApiError::invalid(format!("label must be key=value, got {v:?}")))?;
        let key_ok = !key.is_empty()
            && key.len() <= 64
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
        if !key_ok {
            return Err(ApiError::invalid(format!(
                "{k}: the key must be 1–64 characters of [A-Za-z0-9._/-], got {key:?}"
            )));
        }
        if value.chars().count() > rollcall_core::Labels::MAX_VALUE {
            return Err(ApiError::invalid(format!(
                "label: the value must be at most {} characters",
                rollcall_core::Labels::MAX_VALUE
            )));
        }
        labels.push((key.to_owned(), value.to_owned()));
    }
    Ok(Params {
        window,
        buckets,
        top,
        labels,
    })
}

/// The observations, with this server's (or the active replica's) current
/// one running until now.
async fn observations(s: &AppState, now: Timestamp) -> Result<Observations, ApiError> {
    Ok(Observations::new(s.store.observations().await?, Some(now)))
}

fn offlines(spans: &[&HealthSpan]) -> Vec<h::Offline> {
    spans.iter().filter_map(|s| s.span.offline()).collect()
}

fn own(spans: &[&HealthSpan]) -> Vec<Span> {
    spans.iter().map(|s| s.span).collect()
}

/// A worker's figures and buckets from its spans.
fn worker_health(
    id: &WorkerId,
    spans: &[&HealthSpan],
    obs: &Observations,
    p: &Params,
    settings: HealthSettings,
    fallback: Option<(&MachineId, Option<&str>)>,
) -> WorkerHealth {
    let time = own(spans);
    let offs = offlines(spans);
    let f = h::figures(&time, &offs, obs, p.window);
    let buckets = p
        .buckets
        .as_ref()
        .map(|bs| {
            h::buckets(&time, &offs, obs, bs)
                .iter()
                .zip(bs)
                .map(|(f, w)| Bucket::new(*w, f))
                .collect()
        })
        .unwrap_or_default();
    let latest = spans.last();
    WorkerHealth {
        worker_id: id.to_string(),
        machine_id: latest
            .map(|s| s.machine_id.to_string())
            .or_else(|| fallback.map(|(m, _)| m.to_string()))
            .unwrap_or_default(),
        name: spans
            .iter()
            .rev()
            .find_map(|s| s.name.as_ref().map(|n| n.to_string()))
            .or_else(|| fallback.and_then(|(_, n)| n.map(str::to_owned))),
        from: p.window.from,
        to: p.window.to,
        figures: Figures::new(&f, settings.flapping_crashes_per_hour),
        buckets,
    }
}

/// Whether the history knows an entity at all (within retention).
async fn known(
    s: &AppState,
    of: SpansOf<'_>,
    now: Timestamp,
    settings: HealthSettings,
) -> Result<bool, ApiError> {
    let all = Window {
        from: now.minus(settings.retention),
        to: Timestamp::from_millis(i64::MAX),
    };
    Ok(!s.store.health_spans(of, all).await?.is_empty())
}

/// A worker's availability, downtime and crashes over a window.
#[utoipa::path(
    get, path = "/v1/workers/{id}/health", tag = "health",
    params(("id" = String, Path, description = "Worker id"), HealthParams),
    responses(
        (status = 200, body = WorkerHealth),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn worker(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
    q: Q<Vec<(String, String)>>,
) -> Result<Json<WorkerHealth>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let pairs = q.get()?;
    let now = s.clock.now();
    let settings = s.health;
    let id = path.worker()?;
    let p = parse(&pairs, now, settings)?;
    let spans = s
        .store
        .health_spans(SpansOf::Workers(std::slice::from_ref(&id)), p.window)
        .await?;
    let record = s.store.get_worker(&id).await?;
    if spans.is_empty()
        && record.is_none()
        && !known(
            &s,
            SpansOf::Workers(std::slice::from_ref(&id)),
            now,
            settings,
        )
        .await?
    {
        return Err(ApiError::not_found("worker not found"));
    }
    let obs = observations(&s, now).await?;
    let refs: Vec<&HealthSpan> = spans.iter().collect();
    let fallback = record
        .as_ref()
        .map(|r| (&r.machine_id, Some(r.name.as_str())));
    Ok(Json(worker_health(
        &id, &refs, &obs, &p, settings, fallback,
    )))
}

/// A machine's own spans and its workers', split.
struct MachineSpans<'a> {
    own: Vec<&'a HealthSpan>,
    workers: BTreeMap<WorkerId, Vec<&'a HealthSpan>>,
}

fn split<'a>(spans: &'a [HealthSpan], machine: &MachineId) -> MachineSpans<'a> {
    let mut out = MachineSpans {
        own: Vec::new(),
        workers: BTreeMap::new(),
    };
    for sp in spans.iter().filter(|sp| &sp.machine_id == machine) {
        match &sp.worker_id {
            None => out.own.push(sp),
            Some(w) => out.workers.entry(w.clone()).or_default().push(sp),
        }
    }
    out
}

fn machine_figures(m: &MachineSpans<'_>, obs: &Observations, w: Window) -> h::Figures {
    let all: Vec<&HealthSpan> = m.workers.values().flatten().copied().collect();
    h::figures(&own(&m.own), &offlines(&all), obs, w)
}

/// A machine's availability (time with a live worker), downtime and its
/// workers' crashes over a window, with each worker's figures.
#[utoipa::path(
    get, path = "/v1/machines/{id}/health", tag = "health",
    params(("id" = String, Path, description = "Machine id"), HealthParams),
    responses(
        (status = 200, body = MachineHealth),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn machine(
    State(s): State<AppState>,
    caller: Caller,
    path: PathId,
    q: Q<Vec<(String, String)>>,
) -> Result<Json<MachineHealth>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let pairs = q.get()?;
    let now = s.clock.now();
    let settings = s.health;
    let not_found = || ApiError::not_found("machine not found");
    let id = path
        .0
        .as_deref()
        .and_then(|p| MachineId::parse(p).ok())
        .ok_or_else(not_found)?;
    let p = parse(&pairs, now, settings)?;
    let ids = std::slice::from_ref(&id);
    let spans = s
        .store
        .health_spans(SpansOf::Machines(ids), p.window)
        .await?;
    let record = s.store.get_machine(&id).await?;
    if spans.is_empty()
        && record.is_none()
        && !known(&s, SpansOf::Machines(ids), now, settings).await?
    {
        return Err(not_found());
    }
    let obs = observations(&s, now).await?;
    let m = split(&spans, &id);
    let f = machine_figures(&m, &obs, p.window);
    let buckets = p
        .buckets
        .as_ref()
        .map(|bs| {
            bs.iter()
                .map(|b| Bucket::new(*b, &machine_figures(&m, &obs, *b)))
                .collect()
        })
        .unwrap_or_default();
    let workers = m
        .workers
        .iter()
        .map(|(w, spans)| worker_health(w, spans, &obs, &p, settings, None))
        .collect();
    Ok(Json(MachineHealth {
        machine_id: id.to_string(),
        hostname: record.and_then(|r| r.hostname),
        from: p.window.from,
        to: p.window.to,
        figures: Figures::new(&f, settings.flapping_crashes_per_hour),
        buckets,
        workers,
    }))
}

/// The fleet over a window: totals, and the machines and workers that
/// crashed most and were down longest.
#[utoipa::path(
    get, path = "/v1/health", tag = "health",
    params(HealthParams),
    responses(
        (status = 200, body = FleetHealth),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn fleet(
    State(s): State<AppState>,
    caller: Caller,
    q: Q<Vec<(String, String)>>,
) -> Result<Json<FleetHealth>, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let pairs = q.get()?;
    let now = s.clock.now();
    let settings = s.health;
    let p = parse(&pairs, now, settings)?;
    let obs = observations(&s, now).await?;
    let summary = s
        .store
        .fleet_health(&FleetQuery {
            window: p.window,
            no_data_before_from: obs.no_data_before(p.window.from),
            no_data_before_to: obs.no_data_before(p.window.to),
            top: p.top,
            labels: p.labels.clone(),
        })
        .await?;
    let mut totals = h::Figures {
        existed_ms: summary.existed_ms,
        no_data_ms: summary.no_data_ms,
        live_ms: summary.live_ms,
        down_ms: summary.down_ms,
        ..Default::default()
    };
    for (class, kind, n) in &summary.offlines {
        match class {
            rollcall_core::OfflineClass::Graceful => totals.graceful += n,
            rollcall_core::OfflineClass::Administrative => totals.administrative += n,
            rollcall_core::OfflineClass::Crash => {
                totals.crashes.add(kind.unwrap_or(CrashKind::Exited), *n)
            }
        }
    }

    // The ranked machines' and workers' own figures.
    let mut machine_ids: Vec<MachineId> = summary.machines_by_crashes.clone();
    machine_ids.extend(summary.machines_by_downtime.iter().cloned());
    machine_ids.sort();
    machine_ids.dedup();
    let mspans = s
        .store
        .health_spans(SpansOf::Machines(&machine_ids), p.window)
        .await?;
    let mut machines: BTreeMap<MachineId, RankedMachine> = BTreeMap::new();
    for id in &machine_ids {
        let m = split(&mspans, id);
        let f = machine_figures(&m, &obs, p.window);
        let hostname = s.store.get_machine(id).await?.and_then(|r| r.hostname);
        machines.insert(
            id.clone(),
            RankedMachine {
                machine_id: id.to_string(),
                hostname,
                availability: f.availability(),
                down_ms: ms(f.down_ms),
                crashes: f.crashes.into(),
                mtbf_ms: f.mtbf_ms(),
                last_crash: f.last_crash.map(|(at, kind)| LastCrash { at, kind }),
            },
        );
    }
    let mut worker_ids: Vec<WorkerId> = summary.workers_by_crashes.clone();
    worker_ids.extend(summary.workers_by_downtime.iter().cloned());
    worker_ids.sort();
    worker_ids.dedup();
    let wspans = s
        .store
        .health_spans(SpansOf::Workers(&worker_ids), p.window)
        .await?;
    let mut by_worker: BTreeMap<&WorkerId, Vec<&HealthSpan>> = BTreeMap::new();
    for sp in &wspans {
        if let Some(w) = &sp.worker_id {
            by_worker.entry(w).or_default().push(sp);
        }
    }
    let mut workers: BTreeMap<WorkerId, RankedWorker> = BTreeMap::new();
    for id in &worker_ids {
        let spans = by_worker.get(id).cloned().unwrap_or_default();
        let wh = worker_health(id, &spans, &obs, &p, settings, None);
        workers.insert(
            id.clone(),
            RankedWorker {
                worker_id: wh.worker_id,
                machine_id: wh.machine_id,
                name: wh.name,
                availability: wh.figures.availability,
                down_ms: wh.figures.down_ms,
                crashes: wh.figures.crashes,
                mtbf_ms: wh.figures.mtbf_ms,
                last_crash: wh.figures.last_crash,
            },
        );
    }
    let pick_m = |ids: &[MachineId]| {
        ids.iter()
            .filter_map(|i| machines.get(i).cloned())
            .collect()
    };
    let pick_w = |ids: &[WorkerId]| ids.iter().filter_map(|i| workers.get(i).cloned()).collect();
    Ok(Json(FleetHealth {
        from: p.window.from,
        to: p.window.to,
        workers: summary.workers,
        machines: summary.machines,
        observed_ms: ms(totals.observed_ms()),
        no_data_ms: ms(totals.no_data_ms),
        live_ms: ms(totals.live_ms),
        down_ms: ms(totals.down_ms),
        availability: totals.availability(),
        crashes: totals.crashes.into(),
        graceful: totals.graceful,
        administrative: totals.administrative,
        top_machines_by_crashes: pick_m(&summary.machines_by_crashes),
        top_machines_by_downtime: pick_m(&summary.machines_by_downtime),
        top_workers_by_crashes: pick_w(&summary.workers_by_crashes),
        top_workers_by_downtime: pick_w(&summary.workers_by_downtime),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const S: HealthSettings = HealthSettings {
        retention: Duration::from_secs(400 * 86_400),
        flapping_crashes_per_hour: 3,
    };

    #[test]
    fn windows() {
        let now = Timestamp::from_millis(1_000 * 86_400_000);
        let p = parse(&pairs(&[("window", "7d"), ("buckets", "7")]), now, S).unwrap();
        assert_eq!(p.window.len_ms(), 7 * 86_400_000);
        assert_eq!(p.buckets.unwrap().len(), 7);
        assert_eq!(p.top, DEFAULT_TOP);
        let p = parse(&pairs(&[]), now, S).unwrap();
        assert_eq!(p.window.len_ms(), 86_400_000);
        let p = parse(
            &pairs(&[("from", "1970-01-01T00:00:00Z")]),
            Timestamp::from_millis(5_000),
            S,
        )
        .unwrap();
        assert_eq!(p.window.len_ms(), 5_000);
        for bad in [
            vec![("window", "7w")],
            vec![("window", "7d"), ("from", "1970-01-01T00:00:00Z")],
            vec![("to", "1970-01-01T00:00:00Z")],
            vec![("from", "yesterday")],
            vec![("window", "401d")],
            vec![("window", "1h"), ("window", "2h")],
            vec![("top", "0")],
            vec![("top", "1001")],
            vec![("buckets", "0")],
            vec![("buckets", "1001")],
            vec![("label", "novalue")],
            vec![("label", "bad key=1")],
        ] {
            assert!(parse(&pairs(&bad), now, S).is_err(), "{bad:?}");
        }
        // More buckets than milliseconds.
        let now = Timestamp::from_millis(1_000_000);
        assert!(parse(
            &pairs(&[("from", "1970-01-01T00:16:39.990Z"), ("buckets", "11")]),
            now,
            S
        )
        .is_err());
    }
}
