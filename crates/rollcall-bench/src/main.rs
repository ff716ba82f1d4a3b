//! `rollcall-bench`: numbers anyone can reproduce on their own machine.
//!
//! Each command starts the real `rollcall` binary (release build, embedded
//! SQLite, a temporary data directory) as a separate process, drives it over
//! loopback, and prints a table and a JSON line.
//!
//! - `heartbeat`: heartbeats/s through `POST /v1/workers/{id}/heartbeat` with
//!   C keep-alive connections over N workers, next to the same load against a
//!   do-nothing axum handler in its own process (the HTTP ceiling of this
//!   machine), and the ratio of the two.
//! - `detection`: N workers kept alive with batched heartbeats; K stop at
//!   once; the lag from each deadline to its `offline (stale)` commit, as
//!   recorded by the server in `detection_lag_ms`.
//! - `rss`: the server's resident memory with N online workers.
//!
//! Build first: `cargo build --release -p rollcall -p rollcall-bench`.

#![forbid(unsafe_code)]

mod load;
mod server;
mod store;

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use serde_json::json;

use server::{percentile, Rollcall};

#[derive(Debug, Parser)]
#[command(name = "rollcall-bench", about = "Benchmarks for rollcall")]
struct Cli {
    /// The rollcall binary (default: `rollcall` next to this program).
    #[arg(long, global = true)]
    rollcall: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Heartbeat throughput and latency, with the do-nothing baseline.
    Heartbeat {
        #[arg(long, default_value_t = 10_000)]
        workers: usize,
        #[arg(long, default_value_t = 64)]
        connections: usize,
        /// Measured time per run.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        duration: Duration,
        /// Alternate baseline and rollcall runs this many times each.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Detection lag when K of N online workers stop at once.
    Detection {
        #[arg(long, default_value_t = 10_000)]
        workers: usize,
        #[arg(long, default_value_t = 1_000)]
        stop: usize,
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        stale_after: Duration,
    },
    /// Server memory with N online workers.
    Rss {
        #[arg(long, default_value_t = 100_000)]
        workers: usize,
    },
    /// The store alone: K transitions of N workers committed as one batch.
    StoreCommit {
        #[arg(long, default_value_t = 10_000)]
        workers: usize,
        #[arg(long, default_value_t = 1_000)]
        transitions: usize,
        #[arg(long, default_value_t = 100)]
        machines: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Internal: the do-nothing HTTP server used as the baseline.
    #[command(hide = true)]
    BaselineServer,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::BaselineServer => rt.block_on(server::baseline_server()),
        Cmd::Heartbeat {
            workers,
            connections,
            duration,
            rounds,
        } => rt.block_on(heartbeat(
            cli.rollcall,
            workers,
            connections,
            duration,
            rounds,
        )),
        Cmd::Detection {
            workers,
            stop,
            stale_after,
        } => rt.block_on(detection(cli.rollcall, workers, stop, stale_after)),
        Cmd::Rss { workers } => rt.block_on(rss(cli.rollcall, workers)),
        Cmd::StoreCommit {
            workers,
            transitions,
            machines,
            rounds,
        } => rt.block_on(store::commit(workers, transitions, machines, rounds)),
    }
}

async fn heartbeat(
    bin: Option<std::path::PathBuf>,
    workers: usize,
    connections: usize,
    duration: Duration,
    rounds: usize,
) -> Result<()> {
    let rc = Rollcall::start(bin.clone(), &[]).await?;
    let registered = rc.register_many(workers, 64, 30_000, None).await?;
    println!("registered {} workers", registered.len());
    let targets: Vec<load::Target> = registered
        .iter()
        .map(|w| load::Target {
            path: format!("/v1/workers/{}/heartbeat", w.id),
            token: w.token.clone(),
        })
        .collect();
    let baseline = server::Baseline::start().await?;
    let noop: Vec<load::Target> = (0..workers)
        .map(|i| load::Target {
            path: format!("/noop/{i}"),
            token: format!("rc_worker_{i:064}"),
        })
        .collect();

    let mut base_runs = Vec::new();
    let mut rc_runs = Vec::new();
    for round in 0..rounds {
        let b = load::run(baseline.addr, &noop, connections, duration).await?;
        println!(
            "round {round}: baseline   {:>10.0} req/s  p50 {:?}  p99 {:?}",
            b.rate(),
            b.p(0.5),
            b.p(0.99)
        );
        base_runs.push(b);
        let r = load::run(rc.addr, &targets, connections, duration).await?;
        println!(
            "round {round}: rollcall   {:>10.0} req/s  p50 {:?}  p99 {:?}  errors {}",
            r.rate(),
            r.p(0.5),
            r.p(0.99),
            r.errors
        );
        if r.errors > 0 {
            bail!("{} heartbeats failed", r.errors);
        }
        rc_runs.push(r);
    }
    let median = |runs: &[load::Outcome]| {
        let mut v: Vec<f64> = runs.iter().map(|r| r.rate()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let (b, r) = (median(&base_runs), median(&rc_runs));
    let ratios: Vec<f64> = rc_runs
        .iter()
        .zip(&base_runs)
        .map(|(r, b)| r.rate() / b.rate())
        .collect();
    let last = rc_runs.last().context("no runs")?;
    println!();
    println!(
        "heartbeats/s (median of {rounds}): rollcall {r:.0}, do-nothing axum {b:.0}, ratio {:.2}",
        r / b
    );
    println!(
        "per-round ratios: {:?}",
        ratios.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>()
    );
    println!(
        "rollcall latency (last round): p50 {:?} p99 {:?} p999 {:?}",
        last.p(0.5),
        last.p(0.99),
        last.p(0.999)
    );
    println!("server RSS: {} MiB", rc.rss_kib()? / 1024);
    println!(
        "{}",
        json!({
            "bench": "heartbeat", "workers": workers, "connections": connections,
            "duration_s": duration.as_secs_f64(), "rounds": rounds,
            "rollcall_rps_median": r, "baseline_rps_median": b, "ratio": r / b,
            "ratios": ratios,
            "p50_us": last.p(0.5).as_micros() as u64, "p99_us": last.p(0.99).as_micros() as u64,
            "p999_us": last.p(0.999).as_micros() as u64,
            "rss_kib": rc.rss_kib()?,
        })
    );
    Ok(())
}

async fn detection(
    bin: Option<std::path::PathBuf>,
    workers: usize,
    stop: usize,
    stale_after: Duration,
) -> Result<()> {
    anyhow::ensure!(stop <= workers, "--stop must be at most --workers");
    let rc = Rollcall::start(bin, &[]).await?;
    let hb = stale_after / 4;
    let registered = rc
        .register_many(
            workers,
            64,
            stale_after.as_millis() as u64,
            Some(hb.as_millis() as u64),
        )
        .await?;
    println!(
        "registered {} workers (stale_after {stale_after:?}, heartbeat {hb:?})",
        registered.len()
    );
    let enroll = rc.create_token("enroll").await?;
    // Keep everyone alive with batched heartbeats; at `stop_at`, drop the
    // first `stop` workers from the batches.
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Rounds in a row that resumed no worker: the fleet is steady.
    let quiet_rounds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let keeper = {
        let rc = rc.clone();
        let stopped = stopped.clone();
        let quiet_rounds = quiet_rounds.clone();
        let registered = registered.clone();
        tokio::spawn(async move {
            loop {
                let from = if stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    stop
                } else {
                    0
                };
                let started = Instant::now();
                let chunks: Vec<_> = registered[from..]
                    .chunks(1000)
                    .map(|c| c.to_vec())
                    .collect();
                let sends = chunks.into_iter().map(|c| rc.batch_heartbeat(&enroll, c));
                let mut resumed = 0;
                for r in futures::future::join_all(sends).await {
                    match r {
                        Ok(n) => resumed += n,
                        Err(e) => eprintln!("batch heartbeat failed: {e:#}"),
                    }
                }
                if resumed == 0 {
                    quiet_rounds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                } else {
                    quiet_rounds.store(0, std::sync::atomic::Ordering::SeqCst);
                }
                tokio::time::sleep(hb.saturating_sub(started.elapsed())).await;
            }
        })
    };
    // Registering takes longer than `stale_after`, so the first workers may
    // have gone stale already; the keeper's first rounds bring every worker
    // back online. The measurement starts once the log is quiet.
    let steady = Instant::now();
    while quiet_rounds.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        anyhow::ensure!(
            steady.elapsed() < Duration::from_secs(120),
            "the fleet never became steady"
        );
        tokio::time::sleep(hb).await;
    }
    let after = rc.last_seq().await?;
    tokio::time::sleep(stale_after * 2).await;
    let warm = rc.offline_events(after).await?;
    anyhow::ensure!(
        warm.is_empty(),
        "{} workers went offline while being kept alive",
        warm.len()
    );
    stopped.store(true, std::sync::atomic::Ordering::SeqCst);
    let stopped_at = Instant::now();
    let mut lags = Vec::new();
    while stopped_at.elapsed() < stale_after * 3 + Duration::from_secs(10) {
        let events = rc.offline_events(after).await?;
        if events.len() >= stop {
            lags = events
                .iter()
                .filter_map(|e| e["detection_lag_ms"].as_i64())
                .collect();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    keeper.abort();
    anyhow::ensure!(
        lags.len() == stop,
        "only {} of {stop} workers were marked offline",
        lags.len()
    );
    lags.sort_unstable();
    let false_offline = rc.offline_events(after).await?.len() - stop;
    println!(
        "detection lag over {stop} of {workers} workers: p50 {} ms, p99 {} ms, max {} ms; false offline: {false_offline}",
        percentile(&lags, 0.5), percentile(&lags, 0.99), lags[lags.len() - 1]
    );
    println!(
        "{}",
        json!({"bench": "detection", "workers": workers, "stopped": stop,
               "stale_after_ms": stale_after.as_millis() as u64,
               "lag_p50_ms": percentile(&lags, 0.5), "lag_p99_ms": percentile(&lags, 0.99),
               "lag_max_ms": lags[lags.len() - 1], "false_offline": false_offline})
    );
    Ok(())
}

async fn rss(bin: Option<std::path::PathBuf>, workers: usize) -> Result<()> {
    let rc = Rollcall::start(bin, &[]).await?;
    let idle = rc.rss_kib()?;
    let started = Instant::now();
    let registered = rc.register_many(workers, 64, 3_600_000, None).await?;
    let took = started.elapsed();
    let online = rc.count_online().await?;
    anyhow::ensure!(online == workers, "{online} of {workers} online");
    let full = rc.rss_kib()?;
    println!(
        "{} online workers (registered in {took:?}): RSS {} MiB (idle {} MiB), {:.0} bytes per worker",
        registered.len(),
        full / 1024,
        idle / 1024,
        (full - idle) as f64 * 1024.0 / workers as f64
    );
    println!(
        "{}",
        json!({"bench": "rss", "workers": workers, "rss_kib": full, "idle_rss_kib": idle,
               "register_s": took.as_secs_f64()})
    );
    Ok(())
}
