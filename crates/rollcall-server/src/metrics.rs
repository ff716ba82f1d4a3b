//! Prometheus metrics: what rollcall counts, and the text of `GET /metrics`.
//!
//! Counters and histograms are recorded where their facts happen, and only
//! once those facts are durable (ARCHITECTURE.md, invariant 5): transitions
//! and registrations from the events the writer has committed, the commit's
//! size and time after it succeeded, heartbeats after they were taken.
//! Gauges of workers and machines are computed at scrape time from the
//! engine's census.
//!
//! A heartbeat is the hot path. Every labelled series is resolved once, at
//! start, into a handle kept in an array, so recording a heartbeat is a
//! relaxed atomic add plus one lock-free histogram observation: no lookup,
//! no lock, no allocation. A batch is tallied locally and added once.

use std::fmt;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use rollcall_core::{EventReason, EventType, OfflineClass, OfflineReason};
use rollcall_store::EventRecord;

use crate::cleanup::{CleanupReport, StaleReport};
use crate::engine::Census;

/// How a heartbeat arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatMode {
    /// `POST /v1/workers/{id}/heartbeat`.
    Single = 0,
    /// An entry of `POST /v1/heartbeats`.
    Batch = 1,
}

const MODES: [&str; 2] = ["single", "batch"];

/// Why a heartbeat was refused: the contract's error codes.
const REJECT_REASONS: [&str; 8] = [
    "invalid_request",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "payload_too_large",
    "unavailable",
    "internal",
];

/// Which of the cleanup tasks ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CleanupTask {
    /// `detect_stale_workers`, the sweep.
    Sweep = 0,
    /// `run_all_cleanup_tasks`.
    All = 1,
}

const TASKS: [&str; 2] = ["detect_stale_workers", "run_all_cleanup_tasks"];

/// The worker transitions that exist (target status, reason on the event).
const WORKER_TRANSITIONS: [(EventType, Option<EventReason>); 8] = [
    (EventType::WorkerOnline, Some(EventReason::Registered)),
    (EventType::WorkerOnline, Some(EventReason::Heartbeat)),
    (EventType::WorkerDraining, None),
    (EventType::WorkerOffline, Some(EventReason::Shutdown)),
    (EventType::WorkerOffline, Some(EventReason::Stale)),
    (EventType::WorkerOffline, Some(EventReason::Exited)),
    (EventType::WorkerOffline, Some(EventReason::Replaced)),
    (EventType::WorkerOffline, Some(EventReason::Revoked)),
];

/// Every (class, reason) an offline can have: the series of
/// `rollcall_worker_offlines_total`. For a crash the reason is its kind.
const OFFLINES: [(OfflineClass, OfflineReason); 6] = [
    (OfflineClass::Graceful, OfflineReason::Shutdown),
    (OfflineClass::Graceful, OfflineReason::Exited),
    (OfflineClass::Crash, OfflineReason::Stale),
    (OfflineClass::Crash, OfflineReason::Replaced),
    (OfflineClass::Crash, OfflineReason::Exited),
    (OfflineClass::Administrative, OfflineReason::Revoked),
];

/// The offline reason a `worker.offline` event records.
fn offline_reason(reason: EventReason) -> Option<OfflineReason> {
    match reason {
        EventReason::Shutdown => Some(OfflineReason::Shutdown),
        EventReason::Stale => Some(OfflineReason::Stale),
        EventReason::Exited => Some(OfflineReason::Exited),
        EventReason::Replaced => Some(OfflineReason::Replaced),
        EventReason::Revoked => Some(OfflineReason::Revoked),
        EventReason::Registered | EventReason::Heartbeat => None,
    }
}

/// Heartbeat handling: from a few microseconds in memory to a store commit.
const HEARTBEAT_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Store and detection times: the aim is milliseconds; the sweep's
/// catches can be minutes late.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];
/// Writes per transaction, up to the writer's batch limit.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
];

/// The last run of a cleanup task, as gauges.
struct LastRun {
    timestamp: IntGauge,
    marked_offline: IntGauge,
    affected_machines: IntGauge,
}

/// Every metric of one server. Each server has its own registry, so that
/// several servers in one process (tests) do not mix their numbers.
pub struct Metrics {
    registry: Registry,
    workers: IntGaugeVec,
    machines: IntGaugeVec,
    heartbeats_accepted: [IntCounter; 2],
    heartbeats_rejected: [[IntCounter; REJECT_REASONS.len()]; 2],
    heartbeat_duration: [Histogram; 2],
    worker_transitions: [IntCounter; WORKER_TRANSITIONS.len()],
    offlines: [IntCounter; OFFLINES.len()],
    machine_transitions: [IntCounter; 2],
    registrations: [IntCounter; 2],
    detection_lag: Histogram,
    batch_size: Histogram,
    commit_duration: Histogram,
    commit_failures: IntCounter,
    flush_duration: Histogram,
    flushed_heartbeats: IntCounter,
    flush_failures: IntCounter,
    cleanup_duration: [Histogram; 2],
    cleanup_runs: [[IntCounter; 2]; 2],
    last_run: [LastRun; 2],
    last_forgotten_workers: IntGauge,
    last_forgotten_machines: IntGauge,
    last_pruned_events: IntGauge,
    last_expired_tokens: IntGauge,
    active: IntGauge,
    store_writable: IntGauge,
    store_write_failures: IntCounter,
    store_incidents: IntCounter,
    pauses: IntCounter,
    divergences: IntCounter,
    sweep_suspects: IntCounter,
    paused_seconds: prometheus::Counter,
    notifications: IntCounterVec,
    incidents: IntCounterVec,
    outbox_pending: IntGauge,
    outbox_oldest_age: prometheus::Gauge,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Registers a collector; every name here is a constant, so a failure is a
/// programming error.
fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge"),
    )
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    reg(r, IntCounter::new(name, help).expect("valid counter"))
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    reg(r, IntGauge::new(name, help).expect("valid gauge"))
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    reg(r, HistogramVec::new(opts, labels).expect("valid histogram"))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    reg(r, Histogram::with_opts(opts).expect("valid histogram"))
}

impl Metrics {
    /// Every series, registered and at zero.
    pub fn new() -> Self {
        let r = Registry::new();

        let build = gauge_vec(
            &r,
            "rollcall_build_info",
            "The running rollcall's version; always 1.",
            &["version"],
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);

        let active = gauge(
            &r,
            "rollcall_active",
            "1 while this server changes state (always, with SQLite; the active replica, with PostgreSQL), 0 on a standby, whose worker and machine gauges are 0.",
        );
        active.set(1);

        let workers = gauge_vec(
            &r,
            "rollcall_workers",
            "Workers known to the server, by status.",
            &["status"],
        );
        let machines = gauge_vec(
            &r,
            "rollcall_machines",
            "Machines with at least one worker, by derived status.",
            &["status"],
        );

        let accepted = counter_vec(
            &r,
            "rollcall_heartbeats_accepted_total",
            "Heartbeats accepted, by mode (single request or batch entry).",
            &["mode"],
        );
        let rejected = counter_vec(
            &r,
            "rollcall_heartbeats_rejected_total",
            "Heartbeats refused, by mode and error code. A batch refused as a whole counts once.",
            &["mode", "reason"],
        );
        let hb_duration = histogram_vec(
            &r,
            "rollcall_heartbeat_duration_seconds",
            "Time to handle a heartbeat request (single) or a whole batch request (batch).",
            &["mode"],
            HEARTBEAT_BUCKETS,
        );

        let worker_transitions = counter_vec(
            &r,
            "rollcall_worker_transitions_total",
            "Committed worker status transitions, by target status and reason.",
            &["status", "reason"],
        );
        let offlines = counter_vec(
            &r,
            "rollcall_worker_offlines_total",
            "Committed worker offlines, by class (graceful, crash, administrative) and kind: the crash kind (stale, replaced, exited) for a crash, else the offline reason (shutdown, exited with code 0, revoked).",
            &["class", "kind"],
        );
        let machine_transitions = counter_vec(
            &r,
            "rollcall_machine_transitions_total",
            "Committed machine status transitions, by target status.",
            &["status"],
        );
        let registrations = counter_vec(
            &r,
            "rollcall_registrations_total",
            "Committed registrations: of a new worker, or of an existing one again.",
            &["kind"],
        );
        let detection_lag = histogram(
            &r,
            "rollcall_detection_lag_seconds",
            "Time from a worker's deadline to its committed stale transition.",
            LATENCY_BUCKETS,
        );
        let batch_size = histogram(
            &r,
            "rollcall_transition_batch_size",
            "Conditional writes (transitions, registrations, deletions) per committed store transaction.",
            BATCH_BUCKETS,
        );
        let commit_duration = histogram(
            &r,
            "rollcall_transition_commit_duration_seconds",
            "Time to commit one batch of transitions to the store.",
            LATENCY_BUCKETS,
        );
        let commit_failures = counter(
            &r,
            "rollcall_transition_commit_failures_total",
            "Batches of transitions whose commit failed (nothing of them was applied).",
        );

        let flush_duration = histogram(
            &r,
            "rollcall_flush_duration_seconds",
            "Time to write heartbeat and token-use times behind.",
            LATENCY_BUCKETS,
        );
        let flushed_heartbeats = counter(
            &r,
            "rollcall_flushed_heartbeats_total",
            "Heartbeat times written behind to the store.",
        );
        let flush_failures = counter(
            &r,
            "rollcall_flush_failures_total",
            "Write-behind runs that failed.",
        );

        let cleanup_duration = histogram_vec(
            &r,
            "rollcall_cleanup_duration_seconds",
            "Time a cleanup task took, by task.",
            &["task"],
            LATENCY_BUCKETS,
        );
        let cleanup_runs = counter_vec(
            &r,
            "rollcall_cleanup_runs_total",
            "Cleanup task runs (scheduled or on demand), by task and result.",
            &["task", "result"],
        );
        let last_timestamp = gauge_vec(
            &r,
            "rollcall_cleanup_last_success_timestamp_seconds",
            "When a cleanup task last succeeded (Unix time).",
            &["task"],
        );
        let last_marked = gauge_vec(
            &r,
            "rollcall_cleanup_last_marked_offline",
            "Workers the last successful run of a task marked offline.",
            &["task"],
        );
        let last_machines = gauge_vec(
            &r,
            "rollcall_cleanup_last_affected_machines",
            "Machines the last successful run of a task affected.",
            &["task"],
        );
        let last_forgotten_workers = gauge(
            &r,
            "rollcall_cleanup_last_forgotten_workers",
            "Workers the last full cleanup forgot.",
        );
        let last_forgotten_machines = gauge(
            &r,
            "rollcall_cleanup_last_forgotten_machines",
            "Machines the last full cleanup forgot.",
        );
        let last_pruned_events = gauge(
            &r,
            "rollcall_cleanup_last_pruned_events",
            "Events the last full cleanup pruned.",
        );
        let last_expired_tokens = gauge(
            &r,
            "rollcall_cleanup_last_expired_tokens",
            "Expired tokens the last full cleanup deleted.",
        );

        for s in ["online", "draining", "offline"] {
            workers.with_label_values(&[s]);
        }
        for s in ["online", "offline"] {
            machines.with_label_values(&[s]);
        }
        let store_writable = gauge(
            &r,
            "rollcall_store_writable",
            "1 while the store's last write (a commit, a flush, a token change, a readiness probe) succeeded; 0 while it fails (a full disk, an I/O error, a lost database).",
        );
        store_writable.set(1);
        let store_write_failures = counter(
            &r,
            "rollcall_store_write_failures_total",
            "Writes to the store that failed; nothing they carried was acknowledged.",
        );
        let store_incidents = counter(
            &r,
            "rollcall_store_incidents_total",
            "Times the store went from writable to failing.",
        );

        let pauses = counter(
            &r,
            "rollcall_pauses_total",
            "Times this server noticed it had not been running (it woke much later than planned, or its wall clock jumped ahead of its monotonic clock): a stopped process, a paused VM, a sleeping host. Every live worker got the restart grace.",
        );
        let paused_seconds = reg(
            &r,
            prometheus::Counter::new(
                "rollcall_paused_seconds_total",
                "Seconds this server was not running, summed over the pauses it noticed.",
            )
            .expect("valid counter"),
        );

        let divergences = counter(
            &r,
            "rollcall_sweep_divergences_total",
            "Workers the sweep found different in the store and in the engine (a row changed from outside rollcall) and reloaded from the store. Changes in flight while the sweep reads are confirmed by the writer and not counted.",
        );

        let sweep_suspects = counter(
            &r,
            "rollcall_sweep_suspects_total",
            "Workers the sweep read differently in the engine and in the store; the writer checked each (most changed in between: transitions in flight).",
        );

        let notifications = counter_vec(
            &r,
            "rollcall_notifications_total",
            "Notifications handed to a channel (result \"sent\"), failed attempts (\"failed\", retried later) and notifications given up on (\"given_up\"), by channel, channel kind and incident transition.",
            &["channel", "kind", "transition", "result"],
        );
        let incidents = counter_vec(
            &r,
            "rollcall_incidents_total",
            "Incidents opened and resolved by this server, by rule kind.",
            &["kind", "transition"],
        );
        let outbox_pending = gauge(
            &r,
            "rollcall_outbox_pending",
            "Notifications in the outbox not yet delivered, given up or suppressed (as of the deliverer's last look).",
        );
        let outbox_oldest_age = reg(
            &r,
            prometheus::Gauge::new(
                "rollcall_outbox_oldest_age_seconds",
                "Age of the oldest undelivered notification (0 when none waits).",
            )
            .expect("valid gauge"),
        );

        Metrics {
            notifications,
            incidents,
            outbox_pending,
            outbox_oldest_age,
            divergences,
            sweep_suspects,
            pauses,
            paused_seconds,
            workers,
            machines,
            heartbeats_accepted: MODES.map(|m| accepted.with_label_values(&[m])),
            heartbeats_rejected: MODES
                .map(|m| REJECT_REASONS.map(|reason| rejected.with_label_values(&[m, reason]))),
            heartbeat_duration: MODES.map(|m| hb_duration.with_label_values(&[m])),
            worker_transitions: WORKER_TRANSITIONS.map(|(kind, reason)| {
                let status = match kind {
                    EventType::WorkerOnline => "online",
                    EventType::WorkerDraining => "draining",
                    _ => "offline",
                };
                worker_transitions
                    .with_label_values(&[status, reason.map_or("", EventReason::as_str)])
            }),
            offlines: OFFLINES
                .map(|(class, kind)| offlines.with_label_values(&[class.as_str(), kind.as_str()])),
            machine_transitions: ["online", "offline"]
                .map(|s| machine_transitions.with_label_values(&[s])),
            registrations: ["new", "again"].map(|k| registrations.with_label_values(&[k])),
            detection_lag,
            batch_size,
            commit_duration,
            commit_failures,
            flush_duration,
            flushed_heartbeats,
            flush_failures,
            cleanup_duration: TASKS.map(|t| cleanup_duration.with_label_values(&[t])),
            cleanup_runs: TASKS.map(|t| {
                ["success", "failure"].map(|res| cleanup_runs.with_label_values(&[t, res]))
            }),
            last_run: TASKS.map(|t| LastRun {
                timestamp: last_timestamp.with_label_values(&[t]),
                marked_offline: last_marked.with_label_values(&[t]),
                affected_machines: last_machines.with_label_values(&[t]),
            }),
            last_forgotten_workers,
            last_forgotten_machines,
            last_pruned_events,
            last_expired_tokens,
            active,
            store_writable,
            store_write_failures,
            store_incidents,
            registry: r,
        }
    }

    /// `n` heartbeats were taken.
    pub fn heartbeats_accepted(&self, mode: HeartbeatMode, n: u64) {
        if n > 0 {
            self.heartbeats_accepted[mode as usize].inc_by(n);
        }
    }

    /// `n` heartbeats were refused with the contract's error `code`.
    pub fn heartbeats_rejected(&self, mode: HeartbeatMode, code: &str, n: u64) {
        if n > 0 {
            let i = REJECT_REASONS
                .iter()
                .position(|r| *r == code)
                .unwrap_or(REJECT_REASONS.len() - 1);
            self.heartbeats_rejected[mode as usize][i].inc_by(n);
        }
    }

    /// A heartbeat request (or a whole batch) took `took`.
    pub fn heartbeat_handled(&self, mode: HeartbeatMode, took: Duration) {
        self.heartbeat_duration[mode as usize].observe(took.as_secs_f64());
    }

    /// A batch of `writes` transitions was committed in `took`.
    pub fn committed(&self, writes: usize, took: Duration) {
        self.batch_size.observe(writes as f64);
        self.commit_duration.observe(took.as_secs_f64());
    }

    /// A batch of transitions failed to commit.
    pub fn commit_failed(&self) {
        self.commit_failures.inc();
    }

    /// A committed event: counts its transition (or registration), an
    /// offline by its class and, for a stale one, its detection lag.
    pub fn event(&self, e: &EventRecord) {
        match e.kind {
            EventType::WorkerRegistered => {
                // The first session of a worker is its first registration.
                let again = e.session.is_some_and(|s| s > 1);
                self.registrations[usize::from(again)].inc();
            }
            EventType::MachineOnline => self.machine_transitions[0].inc(),
            EventType::MachineOffline => self.machine_transitions[1].inc(),
            EventType::WorkerDeleted => {}
            kind => {
                if let Some(i) = WORKER_TRANSITIONS
                    .iter()
                    .position(|t| *t == (kind, e.reason))
                {
                    self.worker_transitions[i].inc();
                }
                if kind == EventType::WorkerOffline {
                    self.offline(e);
                }
                if e.reason == Some(EventReason::Stale) {
                    if let Some(ms) = e.detection_lag_ms {
                        self.detection_lag.observe(ms.max(0) as f64 / 1000.0);
                    }
                }
            }
        }
    }

    /// Counts a committed `worker.offline` by its class and kind.
    fn offline(&self, e: &EventRecord) {
        let Some(reason) = e.reason.and_then(offline_reason) else {
            return;
        };
        let (class, _) = reason.classify(e.exit);
        if let Some(i) = OFFLINES.iter().position(|t| *t == (class, reason)) {
            self.offlines[i].inc();
        }
    }

    /// A write-behind run took `took` and wrote `heartbeats` times; `ok`
    /// is false if any of its writes failed.
    pub fn flushed(&self, heartbeats: usize, took: Duration, ok: bool) {
        self.flush_duration.observe(took.as_secs_f64());
        self.flushed_heartbeats.inc_by(heartbeats as u64);
        if !ok {
            self.flush_failures.inc();
        }
    }

    /// A stale sweep ended.
    pub fn sweep_ran(&self, took: Duration, report: Option<&StaleReport>, now_s: i64) {
        self.task_ran(CleanupTask::Sweep, took, report, now_s);
    }

    /// A full cleanup ended.
    pub fn cleanup_ran(&self, took: Duration, report: Option<&CleanupReport>, now_s: i64) {
        self.task_ran(CleanupTask::All, took, report.map(|r| &r.stale), now_s);
        if let Some(r) = report {
            self.last_forgotten_workers.set(r.forgotten_workers as i64);
            self.last_forgotten_machines
                .set(r.forgotten_machines as i64);
            self.last_pruned_events.set(r.pruned_events as i64);
            self.last_expired_tokens.set(r.expired_tokens as i64);
        }
    }

    fn task_ran(&self, task: CleanupTask, took: Duration, stale: Option<&StaleReport>, now_s: i64) {
        let t = task as usize;
        self.cleanup_duration[t].observe(took.as_secs_f64());
        self.cleanup_runs[t][usize::from(stale.is_none())].inc();
        if let Some(s) = stale {
            let last = &self.last_run[t];
            last.timestamp.set(now_s);
            last.marked_offline.set(s.marked_offline_count as i64);
            last.affected_machines
                .set(s.affected_machine_ids.len() as i64);
        }
    }

    /// A write to the store failed; `new_incident` when it was writable.
    pub fn store_write_failed(&self, new_incident: bool) {
        self.store_write_failures.inc();
        self.store_writable.set(0);
        if new_incident {
            self.store_incidents.inc();
        }
    }

    /// A write to the store succeeded.
    pub fn store_write_succeeded(&self) {
        self.store_writable.set(1);
    }

    /// The sweep suspected `suspects` workers, of which `n` really
    /// diverged and were reloaded.
    pub fn diverged(&self, suspects: usize, n: usize) {
        self.sweep_suspects.inc_by(suspects as u64);
        self.divergences.inc_by(n as u64);
    }

    /// The server noticed a pause of `length`.
    pub fn paused(&self, length: Duration) {
        self.pauses.inc();
        self.paused_seconds.inc_by(length.as_secs_f64());
    }

    /// A delivery attempt of `n` notifications ended with `result`.
    pub fn notified(&self, channel: &str, kind: &str, transition: &str, result: &str, n: u64) {
        self.notifications
            .with_label_values(&[channel, kind, transition, result])
            .inc_by(n);
    }

    /// An incident of a rule kind opened or resolved (durably).
    pub fn incident(&self, kind: &str, transition: &str) {
        self.incidents.with_label_values(&[kind, transition]).inc();
    }

    /// The outbox as the deliverer last saw it.
    pub fn outbox(&self, pending: u64, oldest_age: Duration) {
        self.outbox_pending.set(pending as i64);
        self.outbox_oldest_age.set(oldest_age.as_secs_f64());
    }

    /// Records whether this server is the active one.
    pub fn set_active(&self, active: bool) {
        self.active.set(i64::from(active));
    }

    /// The text exposition, with the gauges set from `census`.
    pub fn render(&self, census: &Census) -> String {
        let g = |v: &IntGaugeVec, label: &str, n: u64| {
            v.with_label_values(&[label]).set(n as i64);
        };
        g(&self.workers, "online", census.online);
        g(&self.workers, "draining", census.draining);
        g(&self.workers, "offline", census.offline);
        g(&self.machines, "online", census.machines_online);
        g(&self.machines, "offline", census.machines_offline);
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding metrics into memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
