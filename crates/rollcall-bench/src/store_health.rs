//! `store-health`: the fleet-health history on SQLite, store and core alone
//! (no HTTP). Generates `days` of history for N workers on M machines
//! through `Store::commit` with a controlled clock (the writer's code path,
//! which fills the history tables), with server gaps as no-data
//! observations; then times the reads `api/health.rs` makes for
//! `GET /v1/health?window=30d&top=20`, a machine's and a worker's
//! `?window=30d&buckets=30`, and a K-transition expiry commit with and
//! without the history writes (alternated on the same data).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rollcall_core::health::{self as h, Observations, Window};
use rollcall_core::{transition, Command, MachineId, OfflineReason, Status, Timestamp, WorkerId};
use rollcall_store::sqlite::SqliteStore;
use rollcall_store::{Expect, FleetQuery, HealthSpan, SpansOf, Store, WorkerRecord, WorkerWrite};

use crate::store::{events, register_fleet};

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The write of `cmd` on `r` at `at`, if it changes anything.
fn put(r: &mut WorkerRecord, cmd: Command, at: Timestamp) -> Result<Option<WorkerWrite>> {
    let t = transition(Some(r.state()), cmd, at)?;
    if t.events.is_empty() {
        return Ok(None);
    }
    let expect = Expect {
        status: r.status,
        session: r.session,
    };
    r.set_state(t.next.context("kept")?);
    Ok(Some(WorkerWrite::Put {
        record: r.clone(),
        expect: Some(expect),
        machine: None,
        events: events(&t, at),
    }))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The history's clock: the current observation, extended before each
/// commit, and the server gaps between observations.
struct Clock {
    start: Timestamp,
    gaps: Vec<(i64, i64)>,
}

impl Clock {
    /// Extends the observation to `at`, first passing any gap before it.
    async fn to(&mut self, store: &SqliteStore, at: i64) -> Result<()> {
        while let Some(&(g, len)) = self.gaps.first() {
            if g > at {
                break;
            }
            store
                .extend_observation(self.start, Timestamp::from_millis(g))
                .await?;
            self.start = Timestamp::from_millis(g + len);
            store.begin_observation(self.start).await?;
            self.gaps.remove(0);
        }
        store
            .extend_observation(self.start, Timestamp::from_millis(at))
            .await?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn health(
    workers: usize,
    machines: usize,
    days: i64,
    crashes: usize,
    gaps: usize,
    expire: usize,
    rounds: usize,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    println!("SQLite, in {}", dir.path().display());
    let store =
        SqliteStore::open(dir.path().join("bench.db").to_str().unwrap_or("bench.db")).await?;
    let t0 = 1_800_000_000_000_i64;
    let end = t0 + days * DAY_MS;
    let gen = Instant::now();

    // Server gaps of an hour, evenly spread.
    let mut clock = Clock {
        start: Timestamp::from_millis(t0),
        gaps: (1..=gaps)
            .map(|i| (t0 + (end - t0) * i as i64 / (gaps as i64 + 1), HOUR_MS))
            .collect(),
    };
    store.begin_observation(clock.start).await?;

    // Registration at t0.
    let at = Timestamp::from_millis(t0);
    let mut records = register_fleet(&store, workers, machines, at).await?;
    println!("registered {workers} workers in {:?}", gen.elapsed());

    // Offlines: every 3 h a slice of the workers goes offline (two in
    // three stale, one in three a graceful shutdown) and comes back 10 min
    // later; every 8th slot a whole machine goes down with them. Slots in a
    // server gap are skipped.
    let slot_ms = 3 * HOUR_MS;
    let slots = ((end - t0) / slot_ms - 1).max(1) as usize;
    let per_slot = (workers * crashes).div_ceil(slots);
    let mut next = 0usize;
    let mut transitions = 0usize;
    let mut commits = Vec::new();
    for k in 0..slots {
        let t = t0 + (k as i64 + 1) * slot_ms;
        let back = t + 10 * 60_000;
        if clock.gaps.iter().any(|&(g, len)| t < g + len && back >= g) {
            continue;
        }
        let mut chosen: BTreeMap<usize, ()> = BTreeMap::new();
        for _ in 0..per_slot {
            chosen.insert(next % workers, ());
            next += 1;
        }
        if k % 8 == 0 {
            let m = (k / 8) % machines;
            for i in (m..workers).step_by(machines) {
                chosen.insert(i, ());
            }
        }
        clock.to(&store, t).await?;
        let mut writes = Vec::with_capacity(chosen.len());
        for (n, &i) in chosen.keys().enumerate() {
            let r = &mut records[i];
            let cmd = if n % 3 == 2 {
                Command::Offline(OfflineReason::Shutdown)
            } else {
                Command::Expire { session: r.session }
            };
            writes.extend(put(r, cmd, Timestamp::from_millis(t))?);
        }
        transitions += writes.len();
        let c = Instant::now();
        store.commit(writes).await?;
        commits.push(c.elapsed());
        clock.to(&store, back).await?;
        let mut writes = Vec::with_capacity(chosen.len());
        for &i in chosen.keys() {
            writes.extend(put(
                &mut records[i],
                Command::Heartbeat,
                Timestamp::from_millis(back),
            )?);
        }
        transitions += writes.len();
        store.commit(writes).await?;
    }
    let now = Timestamp::from_millis(end);
    clock.to(&store, end).await?;
    println!("observations: {}", store.observations().await?.len());
    println!(
        "generated {days} d: {workers} workers on {machines} machines, {transitions} transitions \
         in {} offline/online commit pairs (median offline commit {:?}, {per_slot}+ workers), \
         {gaps} gaps of 1 h; total {:?}",
        commits.len(),
        median(commits.clone()),
        gen.elapsed()
    );

    let window = Window::new(Timestamp::from_millis(end - 30 * DAY_MS), now)?;
    let buckets = window.split(30)?;

    // GET /v1/health?window=30d&top=20: the calls api::health::fleet makes.
    let mut fleet_times = Vec::new();
    let mut ranked = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let c = Instant::now();
        let obs = Observations::new(store.observations().await?, Some(now));
        let summary = store
            .fleet_health(&FleetQuery {
                window,
                no_data_before_from: obs.no_data_before(window.from),
                no_data_before_to: obs.no_data_before(window.to),
                top: 20,
                labels: Vec::new(),
            })
            .await?;
        let mut mids: Vec<MachineId> = summary.machines_by_crashes.clone();
        mids.extend(summary.machines_by_downtime.iter().cloned());
        mids.sort();
        mids.dedup();
        let mspans = store.health_spans(SpansOf::Machines(&mids), window).await?;
        for id in &mids {
            let _f = machine_figures(&mspans, id, &obs, window);
            let _ = store.get_machine(id).await?;
        }
        let mut wids: Vec<WorkerId> = summary.workers_by_crashes.clone();
        wids.extend(summary.workers_by_downtime.iter().cloned());
        wids.sort();
        wids.dedup();
        let wspans = store.health_spans(SpansOf::Workers(&wids), window).await?;
        let mut by_worker: BTreeMap<&WorkerId, Vec<&HealthSpan>> = BTreeMap::new();
        for sp in &wspans {
            if let Some(w) = &sp.worker_id {
                by_worker.entry(w).or_default().push(sp);
            }
        }
        for id in &wids {
            let spans = by_worker.get(id).cloned().unwrap_or_default();
            let _ = worker_figures(&spans, &obs, window, None);
        }
        fleet_times.push(c.elapsed());
        println!(
            "fleet: {:?} ({} workers, {} machines, {} ranked machines, {} ranked workers)",
            c.elapsed(),
            summary.workers,
            summary.machines,
            mids.len(),
            wids.len()
        );
        ranked = (summary.machines_by_crashes, summary.workers_by_crashes);
    }

    // GET /v1/machines/{id}/health?window=30d&buckets=30, on the machine
    // that crashed most: its spans and its workers', each worker's figures
    // and buckets too (as the endpoint answers them).
    let machine = ranked.0.first().cloned().unwrap_or(MachineId::parse("m0")?);
    let mut machine_times = Vec::new();
    for _ in 0..rounds {
        let c = Instant::now();
        let ids = std::slice::from_ref(&machine);
        let spans = store.health_spans(SpansOf::Machines(ids), window).await?;
        let _ = store.get_machine(&machine).await?;
        let obs = Observations::new(store.observations().await?, Some(now));
        let _f = machine_figures(&spans, &machine, &obs, window);
        for b in &buckets {
            let _ = machine_figures(&spans, &machine, &obs, *b);
        }
        let mut per: BTreeMap<&WorkerId, Vec<&HealthSpan>> = BTreeMap::new();
        for sp in &spans {
            if let Some(w) = &sp.worker_id {
                per.entry(w).or_default().push(sp);
            }
        }
        for s in per.values() {
            let _ = worker_figures(s, &obs, window, Some(&buckets));
        }
        machine_times.push(c.elapsed());
        println!(
            "machine {machine}, 30 x 1 d: {:?} ({} spans, {} workers)",
            c.elapsed(),
            spans.len(),
            per.len()
        );
    }

    // GET /v1/workers/{id}/health?window=30d&buckets=30.
    let worker = ranked
        .1
        .first()
        .cloned()
        .unwrap_or_else(|| records[0].id.clone());
    let mut worker_times = Vec::new();
    for _ in 0..rounds {
        let c = Instant::now();
        let ids = std::slice::from_ref(&worker);
        let spans = store.health_spans(SpansOf::Workers(ids), window).await?;
        let _ = store.get_worker(&worker).await?;
        let obs = Observations::new(store.observations().await?, Some(now));
        let refs: Vec<&HealthSpan> = spans.iter().collect();
        let _ = worker_figures(&refs, &obs, window, Some(&buckets));
        worker_times.push(c.elapsed());
        println!(
            "worker {worker}, 30 x 1 d: {:?} ({} spans)",
            c.elapsed(),
            spans.len()
        );
    }

    // The K-transition expiry, with and without the history writes,
    // alternated on the same store; each followed by an (untimed) commit
    // bringing the workers back.
    let mut with = Vec::new();
    let mut without = Vec::new();
    let mut at = end;
    for round in 0..rounds * 2 {
        let history = round % 2 == 0;
        store.bench_set_history_writes(history);
        at += 60_000;
        clock.to(&store, at).await?;
        let mut writes = Vec::with_capacity(expire);
        for r in records.iter_mut() {
            if writes.len() == expire {
                break;
            }
            if r.status == Status::Online {
                writes.extend(put(
                    r,
                    Command::Expire { session: r.session },
                    Timestamp::from_millis(at),
                )?);
            }
        }
        let n = writes.len();
        let c = Instant::now();
        let result = store.commit(writes).await?;
        let took = c.elapsed();
        anyhow::ensure!(result.applied.iter().all(|a| *a), "a write was not applied");
        println!(
            "expiry of {n} ({} history): {took:?}",
            if history { "with" } else { "without" }
        );
        if history { &mut with } else { &mut without }.push(took);
        at += 60_000;
        clock.to(&store, at).await?;
        let mut writes = Vec::new();
        for r in records.iter_mut() {
            if r.status == Status::Offline {
                writes.extend(put(r, Command::Heartbeat, Timestamp::from_millis(at))?);
            }
        }
        store.commit(writes).await?;
    }
    store.bench_set_history_writes(true);

    let (mw, mo) = (median(with), median(without));
    println!();
    println!("medians of {rounds} rounds:");
    println!("  fleet 30d top 20:          {:?}", median(fleet_times));
    println!("  machine 30 x 1 d buckets:  {:?}", median(machine_times));
    println!("  worker 30 x 1 d buckets:   {:?}", median(worker_times));
    println!(
        "  expiry of {expire}: {mw:?} with history, {mo:?} without: +{:.1} %",
        (mw.as_secs_f64() / mo.as_secs_f64() - 1.0) * 100.0
    );
    store.close().await?;
    Ok(())
}

/// A machine's figures: its own time, its workers' offlines.
fn machine_figures(
    spans: &[HealthSpan],
    machine: &MachineId,
    obs: &Observations,
    w: Window,
) -> h::Figures {
    let mine = spans.iter().filter(|s| &s.machine_id == machine);
    let own: Vec<_> = mine
        .clone()
        .filter(|s| s.worker_id.is_none())
        .map(|s| s.span)
        .collect();
    let offs: Vec<_> = mine
        .filter(|s| s.worker_id.is_some())
        .filter_map(|s| s.span.offline())
        .collect();
    h::figures(&own, &offs, obs, w)
}

/// A worker's figures and, when asked, buckets.
fn worker_figures(
    spans: &[&HealthSpan],
    obs: &Observations,
    w: Window,
    buckets: Option<&[Window]>,
) -> (h::Figures, Vec<h::Figures>) {
    let time: Vec<_> = spans.iter().map(|s| s.span).collect();
    let offs: Vec<_> = spans.iter().filter_map(|s| s.span.offline()).collect();
    (
        h::figures(&time, &offs, obs, w),
        buckets
            .map(|bs| h::buckets(&time, &offs, obs, bs))
            .unwrap_or_default(),
    )
}
