//! A simulated fleet for the detection benchmarks: N registered workers kept
//! alive with batched heartbeats (`POST /v1/heartbeats`, 1000 per request),
//! some of which stop at once; their `worker.offline` events are read from
//! the event stream and each is compared with that worker's deadline.
//!
//! A worker's deadline is the `deadline_at` the server acknowledged in the
//! answer to its last heartbeat (its last acknowledged heartbeat plus
//! `stale_after`). Client and server share this machine's clock, so the lag
//! of a worker is the wall-clock time at which its `offline (stale)` event
//! arrived on the stream minus that deadline: detection, commit and delivery.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use rollcall_core::Timestamp;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::server::{percentile, ProcStats, Registered, Rollcall};
use crate::sse;

/// Heartbeats per batch request.
const BATCH: usize = 1000;
/// Batch requests the keeper has in flight at once.
const IN_FLIGHT: usize = 4;

#[derive(Debug)]
struct Shared {
    workers: Vec<Registered>,
    stopped: Vec<AtomicBool>,
    /// Last acknowledged `deadline_at` per worker, in milliseconds.
    deadline: Vec<AtomicI64>,
    /// Completed rounds, and how many of the last rounds in a row resumed
    /// no worker.
    rounds: AtomicU64,
    quiet: AtomicUsize,
    failures: AtomicU64,
    /// Latency of each batch request (µs), since the last `take_latencies`.
    latencies: std::sync::Mutex<Vec<i64>>,
}

/// Keeps the fleet alive until dropped.
#[derive(Debug)]
pub struct Keeper {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Deserialize)]
struct BatchAnswer {
    results: Vec<BatchResult>,
}

#[derive(Deserialize)]
struct BatchResult {
    ok: bool,
    resumed: Option<bool>,
    deadline_at: Option<Timestamp>,
}

impl Keeper {
    /// Starts heartbeating every worker every `interval`.
    pub fn start(
        rc: Rollcall,
        enroll: String,
        workers: Vec<Registered>,
        interval: Duration,
    ) -> Self {
        let n = workers.len();
        let shared = Arc::new(Shared {
            workers,
            stopped: (0..n).map(|_| AtomicBool::new(false)).collect(),
            deadline: (0..n).map(|_| AtomicI64::new(0)).collect(),
            rounds: AtomicU64::new(0),
            quiet: AtomicUsize::new(0),
            failures: AtomicU64::new(0),
            latencies: std::sync::Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(keep(rc, enroll, shared.clone(), interval));
        Keeper { shared, task }
    }

    pub fn stop(&self, range: std::ops::Range<usize>, stopped: bool) {
        for i in range {
            self.shared.stopped[i].store(stopped, Ordering::SeqCst);
        }
    }

    /// The batch latencies (µs) recorded since the last call, sorted.
    pub fn take_latencies(&self) -> Vec<i64> {
        let mut v = std::mem::take(&mut *self.shared.latencies.lock().unwrap());
        v.sort_unstable();
        v
    }

    pub fn deadline_ms(&self, i: usize) -> i64 {
        self.shared.deadline[i].load(Ordering::SeqCst)
    }

    /// Waits until `rounds` rounds in a row resumed nobody: every worker
    /// that is not stopped is online and has been heartbeating.
    pub async fn steady(&self, rounds: usize, timeout: Duration) -> Result<()> {
        let start = self.shared.rounds.load(Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        loop {
            let done = self.shared.rounds.load(Ordering::SeqCst) - start;
            if done >= rounds as u64 && self.shared.quiet.load(Ordering::SeqCst) >= rounds {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "the fleet never became steady");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn keep(rc: Rollcall, enroll: String, shared: Arc<Shared>, interval: Duration) {
    loop {
        let started = Instant::now();
        let live: Vec<usize> = (0..shared.workers.len())
            .filter(|i| !shared.stopped[*i].load(Ordering::SeqCst))
            .collect();
        let chunks: Vec<Vec<usize>> = live.chunks(BATCH).map(|c| c.to_vec()).collect();
        let resumed: usize = futures::stream::iter(chunks)
            .map(|chunk| {
                let rc = rc.clone();
                let enroll = enroll.clone();
                let shared = shared.clone();
                async move {
                    match send_batch(&rc, &enroll, &shared, &chunk).await {
                        Ok(n) => n,
                        Err(e) => {
                            shared.failures.fetch_add(1, Ordering::SeqCst);
                            eprintln!("batch heartbeat failed: {e:#}");
                            // Not quiet: count it as a resume.
                            1
                        }
                    }
                }
            })
            .buffer_unordered(IN_FLIGHT)
            .fold(0, |a, n| async move { a + n })
            .await;
        let took = started.elapsed();
        if resumed > 0 || took > interval {
            eprintln!(
                "  keeper: {} workers beat in {:.2} s, {resumed} resumed",
                live.len(),
                took.as_secs_f64()
            );
        }
        if resumed == 0 {
            shared.quiet.fetch_add(1, Ordering::SeqCst);
        } else {
            shared.quiet.store(0, Ordering::SeqCst);
        }
        shared.rounds.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
    }
}

async fn send_batch(
    rc: &Rollcall,
    enroll: &str,
    shared: &Shared,
    chunk: &[usize],
) -> Result<usize> {
    let beats: Vec<Value> = chunk
        .iter()
        .map(|&i| json!({"worker_id": shared.workers[i].id, "token": shared.workers[i].token}))
        .collect();
    let sent = Instant::now();
    let bytes = rc
        .post_raw("/v1/heartbeats", enroll, json!({ "heartbeats": beats }))
        .await?;
    shared
        .latencies
        .lock()
        .unwrap()
        .push(sent.elapsed().as_micros() as i64);
    let answer: BatchAnswer = serde_json::from_slice(&bytes)?;
    ensure!(answer.results.len() == chunk.len(), "short batch answer");
    let mut resumed = 0;
    for (r, &i) in answer.results.iter().zip(chunk) {
        ensure!(
            r.ok,
            "a heartbeat of worker {} failed",
            shared.workers[i].id
        );
        if r.resumed == Some(true) {
            resumed += 1;
        }
        let d = r.deadline_at.context("no deadline_at")?.as_millis();
        shared.deadline[i].fetch_max(d, Ordering::SeqCst);
    }
    Ok(resumed)
}

/// One round: `stop` workers stopped at once.
#[derive(Debug, Clone)]
pub struct Round {
    /// Event arrival minus acknowledged deadline, per stopped worker (ms), sorted.
    pub lags: Vec<i64>,
    /// The server's own `detection_lag_ms` (commit minus deadline), sorted.
    pub server_lags: Vec<i64>,
    /// `worker.offline (stale)` events of workers that were kept alive.
    pub false_offline: usize,
    /// Last arrival minus the latest deadline: how long after the last of
    /// them was due all were known offline.
    pub all_offline_after_ms: i64,
    /// Latest minus earliest deadline of the stopped workers.
    pub deadline_spread_ms: i64,
    pub load: String,
    pub server: ProcStats,
    /// Server CPU seconds spent from the stop until all were offline.
    pub cpu_s: f64,
    pub wall_s: f64,
}

impl Round {
    pub fn json(&self) -> Value {
        json!({
            "lag_p50_ms": percentile(&self.lags, 0.5),
            "lag_p99_ms": percentile(&self.lags, 0.99),
            "lag_max_ms": self.lags.last().copied().unwrap_or(0),
            "server_lag_p50_ms": percentile(&self.server_lags, 0.5),
            "server_lag_p99_ms": percentile(&self.server_lags, 0.99),
            "server_lag_max_ms": self.server_lags.last().copied().unwrap_or(0),
            "all_offline_after_ms": self.all_offline_after_ms,
            "deadline_spread_ms": self.deadline_spread_ms,
            "false_offline": self.false_offline,
            "load": self.load,
            "server_rss_kib": self.server.rss_kib,
            "server_cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
        })
    }
}

/// Stops workers `range` at once and waits for every one of them to be
/// reported offline on `events`; then lets them resume and waits until the
/// fleet is steady again.
pub async fn stop_round(
    rc: &Rollcall,
    keeper: &Keeper,
    events: &mut sse::Subscription,
    range: std::ops::Range<usize>,
    stale_after: Duration,
) -> Result<Round> {
    let index: HashMap<&str, usize> = range
        .clone()
        .map(|i| (keeper.shared.workers[i].id.as_str(), i))
        .collect();
    // Drop whatever the stream delivered before this round.
    while events.events.try_recv().is_ok() {}
    let before = rc.stats()?;
    let load = crate::server::load_average();
    let started = Instant::now();
    eprintln!("stopping {} workers at once", range.len());
    keeper.stop(range.clone(), true);
    let mut seen: HashMap<usize, (i64, Option<i64>)> = HashMap::with_capacity(range.len());
    let mut false_offline = 0;
    let limit = stale_after * 3 + Duration::from_secs(60);
    while seen.len() < range.len() {
        let left = limit
            .checked_sub(started.elapsed())
            .context("timed out waiting for offline events")?;
        let e = tokio::time::timeout(left, events.events.recv())
            .await
            .with_context(|| {
                format!(
                    "only {} of {} workers were reported offline",
                    seen.len(),
                    range.len()
                )
            })?
            .context("event stream closed")?;
        if e.kind != "worker.offline" || e.reason.as_deref() != Some("stale") {
            continue;
        }
        match e.worker_id.as_deref().and_then(|w| index.get(w)) {
            Some(&i) => {
                seen.entry(i).or_insert((e.received_ms, e.detection_lag_ms));
            }
            None => false_offline += 1,
        }
    }
    let wall_s = started.elapsed().as_secs_f64();
    let after = rc.stats()?;
    let mut lags = Vec::with_capacity(seen.len());
    let mut server_lags = Vec::with_capacity(seen.len());
    let (mut first_deadline, mut last_deadline, mut last_arrival) = (i64::MAX, i64::MIN, i64::MIN);
    for (&i, &(received, server_lag)) in &seen {
        let d = keeper.deadline_ms(i);
        lags.push(received - d);
        server_lags.extend(server_lag);
        first_deadline = first_deadline.min(d);
        last_deadline = last_deadline.max(d);
        last_arrival = last_arrival.max(received);
    }
    lags.sort_unstable();
    server_lags.sort_unstable();
    // Bring them back and wait for a steady fleet before the next round.
    keeper.stop(range, false);
    keeper
        .steady(2, stale_after * 4 + Duration::from_secs(120))
        .await?;
    Ok(Round {
        lags,
        server_lags,
        false_offline,
        all_offline_after_ms: last_arrival - last_deadline,
        deadline_spread_ms: last_deadline - first_deadline,
        load,
        server: after,
        cpu_s: after.cpu_s - before.cpu_s,
        wall_s,
    })
}

/// One storm: every worker silent until all are offline, then every worker
/// heartbeating again at once, until the fleet has settled.
#[derive(Debug, Clone)]
pub struct Storm {
    /// From the first heartbeat of the storm until every worker was
    /// reported online again on the stream.
    pub all_online_ms: i64,
    /// From the first heartbeat of the storm until every worker was online
    /// for good: the last time all were, after which a whole `stale_after`
    /// passed without an offline (equal to `all_online_ms` without flaps).
    pub settled_ms: i64,
    /// Workers reported offline (stale) again while heartbeating.
    pub flaps: usize,
    /// Batch heartbeat latency (µs, sorted) while calm, and during the storm.
    pub calm_latency_us: Vec<i64>,
    pub storm_latency_us: Vec<i64>,
    pub load: String,
    pub cpu_s: f64,
    pub wall_s: f64,
}

impl Storm {
    pub fn json(&self) -> Value {
        json!({
            "all_online_ms": self.all_online_ms,
            "settled_ms": self.settled_ms,
            "flaps": self.flaps,
            "calm_batch_p50_ms": percentile(&self.calm_latency_us, 0.5) as f64 / 1000.0,
            "calm_batch_p99_ms": percentile(&self.calm_latency_us, 0.99) as f64 / 1000.0,
            "storm_batch_p50_ms": percentile(&self.storm_latency_us, 0.5) as f64 / 1000.0,
            "storm_batch_p99_ms": percentile(&self.storm_latency_us, 0.99) as f64 / 1000.0,
            "load": self.load,
            "server_cpu_s": self.cpu_s,
            "wall_s": self.wall_s,
        })
    }
}

/// Runs one storm over the whole fleet (see [`Storm`]). The fleet must be
/// steady when it starts; it is steady again when this returns.
pub async fn storm_round(
    rc: &Rollcall,
    keeper: &Keeper,
    events: &mut sse::Subscription,
    stale_after: Duration,
) -> Result<Storm> {
    let n = keeper.shared.workers.len();
    let index: HashMap<&str, usize> = keeper
        .shared
        .workers
        .iter()
        .enumerate()
        .map(|(i, w)| (w.id.as_str(), i))
        .collect();
    // Calm: the latencies since the fleet became steady.
    let calm_latency_us = keeper.take_latencies();
    while events.events.try_recv().is_ok() {}
    let limit = stale_after * 10 + Duration::from_secs(300);

    // Silence until every worker is reported offline.
    eprintln!("storm: {n} workers fall silent");
    keeper.stop(0..n, true);
    let silent = Instant::now();
    let mut offline = vec![false; n];
    let mut down = 0;
    while down < n {
        let left = limit
            .checked_sub(silent.elapsed())
            .context("timed out waiting for the fleet to go offline")?;
        let e = tokio::time::timeout(left, events.events.recv())
            .await
            .with_context(|| format!("only {down} of {n} workers went offline"))?
            .context("event stream closed")?;
        if e.kind == "worker.offline" {
            if let Some(&i) = e.worker_id.as_deref().and_then(|w| index.get(w)) {
                if !offline[i] {
                    offline[i] = true;
                    down += 1;
                }
            }
        }
    }

    // The storm: every worker heartbeats again at once.
    let before = rc.stats()?;
    let load = crate::server::load_average();
    keeper.take_latencies();
    eprintln!("storm: {n} workers heartbeat again at once");
    let started = Instant::now();
    keeper.stop(0..n, false);
    let mut flaps = 0;
    let mut all_online_ms = None;
    let mut settled_ms = 0;
    let mut last_offline = started;
    loop {
        if down == 0 {
            let since = last_offline.max(started);
            if since.elapsed() >= stale_after {
                break;
            }
        }
        ensure!(
            started.elapsed() < limit,
            "the fleet never settled: {down} workers offline, {flaps} flaps"
        );
        let e = match tokio::time::timeout(Duration::from_millis(50), events.events.recv()).await {
            Ok(e) => e.context("event stream closed")?,
            Err(_) => continue,
        };
        let Some(&i) = e.worker_id.as_deref().and_then(|w| index.get(w)) else {
            continue;
        };
        match e.kind.as_str() {
            "worker.online" if offline[i] => {
                offline[i] = false;
                down -= 1;
                if down == 0 {
                    settled_ms = started.elapsed().as_millis() as i64;
                    all_online_ms.get_or_insert(settled_ms);
                }
            }
            "worker.offline" if !offline[i] => {
                offline[i] = true;
                down += 1;
                flaps += 1;
                last_offline = Instant::now();
            }
            _ => {}
        }
    }
    let storm_latency_us = keeper.take_latencies();
    let after = rc.stats()?;
    Ok(Storm {
        all_online_ms: all_online_ms.unwrap_or(0),
        settled_ms,
        flaps,
        calm_latency_us,
        storm_latency_us,
        load,
        cpu_s: after.cpu_s - before.cpu_s,
        wall_s: started.elapsed().as_secs_f64(),
    })
}
