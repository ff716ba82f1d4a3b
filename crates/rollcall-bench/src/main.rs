//! `rollcall-bench`: numbers anyone can reproduce on their own machine.
//!
//! Each benchmark starts the real `rollcall` binary (release build, embedded
//! SQLite, a temporary data directory) as a separate process, drives it over
//! loopback, and ends with a table on stdout (or, with `--json`, one JSON
//! document). Progress goes to stderr. Every result records the load average
//! it was measured under and the server's memory and CPU.
//!
//! - `heartbeat`: `POST /v1/workers/{id}/heartbeat` throughput and latency
//!   over C keep-alive connections and N workers, next to a do-nothing axum
//!   handler in its own process (the HTTP ceiling of this machine) and Redis
//!   `SET key value EX 90` via `redis-benchmark` at the same concurrency.
//! - `batch`: `POST /v1/heartbeats` with up to 1000 workers per request, in
//!   worker-heartbeats per second, next to pipelined Redis `SET EX`.
//! - `detection`: K of N online workers stop at once; the lag from each
//!   worker's acknowledged deadline to its `offline (stale)` event on the
//!   event stream.
//! - `expiry`: all N workers stop at once; how long until all are offline.
//! - `storm`: all N workers fall silent until all are offline, then all
//!   heartbeat again at once; how long until every worker is online and a
//!   whole window passes without an offline, how many flapped, and the batch
//!   heartbeat latency during the storm next to the calm one.
//! - `rss`: the server's memory with N online workers.
//! - `store-commit`: the store alone, K transitions in one commit.
//! - `store-health`: the health history on SQLite: days of generated
//!   history, the fleet query, a machine's and a worker's buckets, and the
//!   history's share of an expiry commit.
//! - `replicas`: PostgreSQL mode, two replicas: heartbeats through the
//!   active replica and through a standby (which forwards them), and the
//!   takeover time after `kill -9` of the active one.
//! - `all`: every benchmark above but `store-commit` and `replicas`, with the targets.
//!
//! Build first: `cargo build --release -p rollcall -p rollcall-bench`.

#![forbid(unsafe_code)]

mod fleet;
mod load;
mod redis;
mod replicas;
mod server;
mod sse;
mod store;
mod store_health;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};

use server::{load_average, percentile, Rollcall};

#[derive(Debug, Parser)]
#[command(name = "rollcall-bench", about = "Benchmarks for rollcall")]
struct Cli {
    /// The rollcall binary (default: `rollcall` next to this program).
    #[arg(long, global = true)]
    rollcall: Option<PathBuf>,
    /// Print one JSON document on stdout instead of the table.
    #[arg(long, global = true)]
    json: bool,
    /// Also write the JSON document to this file (the table still goes to
    /// stdout).
    #[arg(long, global = true)]
    json_out: Option<PathBuf>,
    /// The Redis server for the baseline, HOST:PORT.
    #[arg(long, global = true, default_value = "127.0.0.1:6379")]
    redis: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Clone, Args)]
struct HeartbeatArgs {
    #[arg(long, default_value_t = 10_000)]
    workers: usize,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time per run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Runs of each of rollcall, the axum baseline and Redis, alternated.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Clone, Args)]
struct BatchArgs {
    #[arg(long, default_value_t = 100_000)]
    workers: usize,
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Heartbeats per request (at most 1000).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Clone, Args)]
struct DetectionArgs {
    /// Online workers, kept alive with batched heartbeats.
    #[arg(long, default_value_t = 100_000)]
    workers: usize,
    /// Workers that stop at once in each round.
    #[arg(long, default_value_t = 1_000)]
    stop: usize,
    /// The workers' stale_after; they heartbeat every quarter of it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Clone, Args)]
struct ExpiryArgs {
    /// Online workers, all of which stop at once.
    #[arg(long, default_value_t = 100_000)]
    workers: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Clone, Args)]
struct StormArgs {
    /// Online workers, all of which fall silent and come back at once.
    #[arg(long, default_value_t = 100_000)]
    workers: usize,
    /// The workers' stale_after; they heartbeat every quarter of it.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    stale_after: Duration,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Debug, Clone, Args)]
struct RssArgs {
    #[arg(long, default_value_t = 1_000_000)]
    workers: usize,
    /// Registrations in flight (the writer commits them together).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Single heartbeats: throughput and latency, with the baselines.
    Heartbeat(HeartbeatArgs),
    /// Batched heartbeats: worker-heartbeats per second.
    Batch(BatchArgs),
    /// Detection lag when K of N online workers stop at once.
    Detection(DetectionArgs),
    /// Mass expiry: all N online workers stop at once.
    Expiry(ExpiryArgs),
    /// A resume storm: all N workers silent until offline, then all back at
    /// once; time to settle, flaps, heartbeat latency.
    Storm(StormArgs),
    /// Server memory with N online workers.
    Rss(RssArgs),
    /// PostgreSQL mode: heartbeats through the active replica and through a
    /// standby, and the takeover time.
    Replicas(replicas::ReplicasArgs),
    /// Every benchmark with its defaults (or the sizes given), and the targets.
    All {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Workers for the 1 GiB memory target.
        #[arg(long, default_value_t = 1_000_000)]
        rss_workers: usize,
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
    /// The health history on SQLite: generated history, its reads, and the
    /// history's share of a K-transition expiry commit.
    StoreHealth {
        #[arg(long, default_value_t = 100_000)]
        workers: usize,
        #[arg(long, default_value_t = 1_000)]
        machines: usize,
        #[arg(long, default_value_t = 30)]
        days: i64,
        /// Offlines per worker over the days (two in three crashes).
        #[arg(long, default_value_t = 3)]
        offlines: usize,
        /// Server gaps (no data) of an hour each.
        #[arg(long, default_value_t = 3)]
        gaps: usize,
        #[arg(long, default_value_t = 10_000)]
        transitions: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Internal: the do-nothing HTTP server used as the baseline.
    #[command(hide = true)]
    BaselineServer,
}

/// One line of the result table.
#[derive(Debug, Clone)]
struct Row {
    bench: &'static str,
    metric: String,
    value: String,
    target: String,
    /// Whether the target is met, when the row has one.
    met: Option<bool>,
}

/// What one benchmark found.
#[derive(Debug, Clone)]
struct Report {
    rows: Vec<Row>,
    json: Value,
}

fn row(bench: &'static str, metric: impl Into<String>, value: impl Into<String>) -> Row {
    Row {
        bench,
        metric: metric.into(),
        value: value.into(),
        target: String::new(),
        met: None,
    }
}

fn target(mut r: Row, target: impl Into<String>, met: bool) -> Row {
    r.target = target.into();
    r.met = Some(met);
    r
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    v[v.len() / 2]
}

fn median_i(v: &[i64]) -> i64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return 0;
    }
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn fmt_rate(r: f64) -> String {
    let s = format!("{:.0}", r);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let bin = cli.rollcall.clone();
    let redis = cli.redis.clone();
    let reports: Vec<Report> = match cli.command {
        Cmd::BaselineServer => return rt.block_on(server::baseline_server()),
        Cmd::StoreCommit {
            workers,
            transitions,
            machines,
            rounds,
        } => return rt.block_on(store::commit(workers, transitions, machines, rounds)),
        Cmd::StoreHealth {
            workers,
            machines,
            days,
            offlines,
            gaps,
            transitions,
            rounds,
        } => {
            return rt.block_on(store_health::health(
                workers,
                machines,
                days,
                offlines,
                gaps,
                transitions,
                rounds,
            ))
        }
        Cmd::Heartbeat(a) => vec![rt.block_on(heartbeat(bin, &redis, a))?],
        Cmd::Batch(a) => vec![rt.block_on(batch(bin, &redis, a))?],
        Cmd::Detection(a) => vec![rt.block_on(detection(bin, a))?],
        Cmd::Expiry(a) => vec![rt.block_on(expiry(bin, a))?],
        Cmd::Storm(a) => vec![rt.block_on(storm(bin, a))?],
        Cmd::Rss(a) => vec![rt.block_on(rss(bin, a))?],
        Cmd::Replicas(a) => vec![rt.block_on(replicas::replicas(bin, a))?],
        Cmd::All {
            rounds,
            rss_workers,
        } => rt.block_on(async {
            let mut out = Vec::new();
            out.push(
                heartbeat(
                    bin.clone(),
                    &redis,
                    HeartbeatArgs {
                        workers: 10_000,
                        connections: 64,
                        duration: Duration::from_secs(10),
                        rounds,
                    },
                )
                .await?,
            );
            out.push(
                batch(
                    bin.clone(),
                    &redis,
                    BatchArgs {
                        workers: 100_000,
                        connections: 8,
                        batch: 1000,
                        duration: Duration::from_secs(10),
                        rounds,
                    },
                )
                .await?,
            );
            out.push(
                detection(
                    bin.clone(),
                    DetectionArgs {
                        workers: 100_000,
                        stop: 1_000,
                        stale_after: Duration::from_secs(10),
                        rounds,
                    },
                )
                .await?,
            );
            out.push(
                expiry(
                    bin.clone(),
                    ExpiryArgs {
                        workers: 100_000,
                        stale_after: Duration::from_secs(10),
                        rounds,
                    },
                )
                .await?,
            );
            out.push(
                rss(
                    bin.clone(),
                    RssArgs {
                        workers: rss_workers,
                        concurrency: 512,
                    },
                )
                .await?,
            );
            anyhow::Ok(out)
        })?,
    };
    let doc: Vec<Value> = reports.iter().map(|r| r.json.clone()).collect();
    let doc = serde_json::to_string_pretty(&json!({ "results": doc }))?;
    if let Some(path) = &cli.json_out {
        std::fs::write(path, &doc)?;
    }
    if cli.json {
        println!("{doc}");
    } else {
        print_table(&reports);
    }
    Ok(())
}

fn print_table(reports: &[Report]) {
    let rows: Vec<&Row> = reports.iter().flat_map(|r| &r.rows).collect();
    let w = |f: fn(&Row) -> usize| rows.iter().map(|r| f(r)).max().unwrap_or(0);
    let (wb, wm, wv, wt) = (
        w(|r| r.bench.len()).max(5),
        w(|r| r.metric.len()).max(6),
        w(|r| r.value.len()).max(5),
        w(|r| r.target.len()).max(6),
    );
    println!(
        "{:wb$}  {:wm$}  {:>wv$}  {:wt$}  met",
        "bench", "metric", "value", "target"
    );
    println!("{}", "-".repeat(wb + wm + wv + wt + 13));
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        };
        println!(
            "{:wb$}  {:wm$}  {:>wv$}  {:wt$}  {met}",
            r.bench, r.metric, r.value, r.target
        );
    }
}

/// The rows every loaded benchmark ends with: the server's CPU while loaded
/// (`cpu_share`: CPU seconds per wall second), its RSS at the end, and the
/// load average of each round.
fn server_rows(
    bench: &'static str,
    cpu_share: f64,
    stats: &server::ProcStats,
    loads: &[String],
) -> [Row; 3] {
    [
        row(
            bench,
            "server CPU while loaded",
            format!("{:.0} %", cpu_share * 100.0),
        ),
        row(
            bench,
            "server RSS at end",
            format!("{} MiB", stats.rss_kib / 1024),
        ),
        row(bench, "load average per round", loads.join(" | ")),
    ]
}

/// Registration settings shared by the benchmarks.
const REGISTER_CONCURRENCY: usize = 512;

/// One single-heartbeat request per registered worker, with its own token.
fn heartbeat_targets(registered: &[server::Registered]) -> Vec<load::Target> {
    registered
        .iter()
        .map(|w| load::Target {
            path: format!("/v1/workers/{}/heartbeat", w.id),
            auth: format!("Bearer {}", w.token),
            body: Bytes::new(),
            beats: 1,
        })
        .collect()
}

async fn heartbeat(bin: Option<PathBuf>, redis_url: &str, a: HeartbeatArgs) -> Result<Report> {
    const B: &str = "heartbeat";
    let rc = Rollcall::start(bin, &[]).await?;
    let registered = rc
        .register_many(a.workers, REGISTER_CONCURRENCY, 90_000, None)
        .await?;
    eprintln!("heartbeat: registered {} workers", registered.len());
    let targets = heartbeat_targets(&registered);
    let baseline = server::Baseline::start().await?;
    let noop: Vec<load::Target> = (0..a.workers)
        .map(|i| load::Target {
            path: format!("/noop/{i}"),
            auth: format!("Bearer rc_worker_{i:064}"),
            body: Bytes::new(),
            beats: 1,
        })
        .collect();

    let (mut rc_rates, mut base_rates, mut redis_rates, mut ratios) =
        (vec![], vec![], vec![], vec![]);
    let (mut p50, mut p99, mut p999) = (vec![], vec![], vec![]);
    let (mut base_p50, mut base_p99, mut redis_p50, mut redis_p99) =
        (vec![], vec![], vec![], vec![]);
    let (mut cpu, mut wall) = (0.0, 0.0);
    let mut loads = Vec::new();
    for round in 0..a.rounds {
        loads.push(load_average());
        let b = load::run(baseline.addr, &noop, a.connections, a.duration).await?;
        let before = rc.stats()?;
        let r = load::run(rc.addr, &targets, a.connections, a.duration).await?;
        let after = rc.stats()?;
        ensure!(r.errors == 0, "{} heartbeats failed", r.errors);
        cpu += after.cpu_s - before.cpu_s;
        wall += r.elapsed.as_secs_f64();
        let requests = ((r.rate() * a.duration.as_secs_f64()) as usize).max(10_000);
        let red = redis::run(redis_url, a.connections, requests, 1, a.workers)?;
        eprintln!(
            "heartbeat round {round}: rollcall {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), axum {:.0}/s, redis {:.0}/s; load {}",
            r.rate(),
            ms(r.p(0.5)),
            ms(r.p(0.99)),
            b.rate(),
            red.rps,
            loads.last().map(String::as_str).unwrap_or("")
        );
        rc_rates.push(r.rate());
        base_rates.push(b.rate());
        redis_rates.push(red.rps);
        ratios.push(r.rate() / b.rate());
        p50.push(ms(r.p(0.5)));
        p99.push(ms(r.p(0.99)));
        p999.push(ms(r.p(0.999)));
        base_p50.push(ms(b.p(0.5)));
        base_p99.push(ms(b.p(0.99)));
        redis_p50.push(red.p50_ms);
        redis_p99.push(red.p99_ms);
    }
    let stats = rc.stats()?;
    let ratio = median(&ratios);
    let mut rows = vec![
        row(
            B,
            "rollcall heartbeats/s (median)",
            fmt_rate(median(&rc_rates)),
        ),
        row(
            B,
            "do-nothing axum req/s (median)",
            fmt_rate(median(&base_rates)),
        ),
        row(B, "redis SET EX/s (median)", fmt_rate(median(&redis_rates))),
        target(
            row(
                B,
                "rollcall / axum (median of rounds)",
                format!("{ratio:.2}"),
            ),
            ">= 0.70",
            ratio >= 0.7,
        ),
        row(B, "ratios per round", list(&ratios, 2)),
        row(
            B,
            "rollcall / redis",
            format!("{:.2}", median(&rc_rates) / median(&redis_rates)),
        ),
        row(
            B,
            "rollcall p50 / p99 / p999 ms",
            format!(
                "{:.2} / {:.2} / {:.2}",
                median(&p50),
                median(&p99),
                median(&p999)
            ),
        ),
        row(
            B,
            "axum p50 / p99 ms",
            format!("{:.2} / {:.2}", median(&base_p50), median(&base_p99)),
        ),
        row(
            B,
            "redis p50 / p99 ms",
            format!("{:.2} / {:.2}", median(&redis_p50), median(&redis_p99)),
        ),
    ];
    rows.extend(server_rows(B, cpu / wall, &stats, &loads));
    Ok(Report {
        rows,
        json: json!({
            "bench": B, "workers": a.workers, "connections": a.connections,
            "duration_s": a.duration.as_secs_f64(), "rounds": a.rounds,
            "rollcall_rps": rc_rates, "baseline_rps": base_rates, "redis_rps": redis_rates,
            "ratios": ratios, "ratio_median": ratio,
            "rollcall_p50_ms": p50, "rollcall_p99_ms": p99, "rollcall_p999_ms": p999,
            "baseline_p50_ms": base_p50, "baseline_p99_ms": base_p99,
            "redis_p50_ms": redis_p50, "redis_p99_ms": redis_p99,
            "server_cpu_percent": cpu / wall * 100.0,
            "server_rss_kib": stats.rss_kib, "server_cpu_s": stats.cpu_s,
            "load": loads, "target_met": ratio >= 0.7,
        }),
    })
}

async fn batch(bin: Option<PathBuf>, redis_url: &str, a: BatchArgs) -> Result<Report> {
    const B: &str = "batch";
    ensure!((1..=1000).contains(&a.batch), "--batch must be 1 to 1000");
    let rc = Rollcall::start(bin, &[]).await?;
    let registered = rc
        .register_many(a.workers, REGISTER_CONCURRENCY, 90_000, None)
        .await?;
    eprintln!("batch: registered {} workers", registered.len());
    let enroll = rc.create_token("enroll").await?;
    let targets: Vec<load::Target> = registered
        .chunks(a.batch)
        .map(|c| {
            let beats: Vec<Value> = c
                .iter()
                .map(|w| json!({"worker_id": w.id, "token": w.token}))
                .collect();
            load::Target {
                path: "/v1/heartbeats".into(),
                auth: format!("Bearer {enroll}"),
                body: Bytes::from(json!({ "heartbeats": beats }).to_string()),
                beats: c.len() as u64,
            }
        })
        .collect();
    let (mut rates, mut redis_rates, mut p50, mut p99, mut p999) =
        (vec![], vec![], vec![], vec![], vec![]);
    let (mut cpu, mut wall) = (0.0, 0.0);
    let mut loads = Vec::new();
    for round in 0..a.rounds {
        loads.push(load_average());
        let before = rc.stats()?;
        let r = load::run(rc.addr, &targets, a.connections, a.duration).await?;
        let after = rc.stats()?;
        ensure!(r.errors == 0, "{} batches failed", r.errors);
        cpu += after.cpu_s - before.cpu_s;
        wall += r.elapsed.as_secs_f64();
        let requests = ((r.beat_rate() * a.duration.as_secs_f64()) as usize).max(100_000);
        let red = redis::run(redis_url, a.connections, requests, a.batch, a.workers)?;
        eprintln!(
            "batch round {round}: rollcall {:.0} worker-heartbeats/s ({:.0} requests/s, p50 {:.1} ms, p99 {:.1} ms), redis pipelined {:.0}/s; load {}",
            r.beat_rate(),
            r.rate(),
            ms(r.p(0.5)),
            ms(r.p(0.99)),
            red.rps,
            loads.last().map(String::as_str).unwrap_or("")
        );
        rates.push(r.beat_rate());
        redis_rates.push(red.rps);
        p50.push(ms(r.p(0.5)));
        p99.push(ms(r.p(0.99)));
        p999.push(ms(r.p(0.999)));
    }
    let stats = rc.stats()?;
    let rate = median(&rates);
    let mut rows = vec![
        target(
            row(B, "worker-heartbeats/s (median)", fmt_rate(rate)),
            ">= 1,000,000",
            rate >= 1_000_000.0,
        ),
        row(B, "per round", list(&rates, 0)),
        row(
            B,
            format!("redis SET EX/s, pipelined {}", a.batch),
            fmt_rate(median(&redis_rates)),
        ),
        row(
            B,
            format!("request ({}) p50 / p99 / p999 ms", a.batch),
            format!(
                "{:.1} / {:.1} / {:.1}",
                median(&p50),
                median(&p99),
                median(&p999)
            ),
        ),
    ];
    rows.extend(server_rows(B, cpu / wall, &stats, &loads));
    Ok(Report {
        rows,
        json: json!({
            "bench": B, "workers": a.workers, "connections": a.connections, "batch": a.batch,
            "duration_s": a.duration.as_secs_f64(), "rounds": a.rounds,
            "worker_heartbeats_per_s": rates, "median": rate,
            "redis_pipelined_set_per_s": redis_rates,
            "request_p50_ms": p50, "request_p99_ms": p99, "request_p999_ms": p999,
            "server_cpu_percent": cpu / wall * 100.0,
            "server_rss_kib": stats.rss_kib, "server_cpu_s": stats.cpu_s,
            "load": loads, "target_met": rate >= 1_000_000.0,
        }),
    })
}

/// Starts a server with `workers` kept alive and the event stream open.
async fn fleet(
    bin: Option<PathBuf>,
    workers: usize,
    stale_after: Duration,
) -> Result<(Rollcall, fleet::Keeper, sse::Subscription)> {
    let rc = Rollcall::start(bin, &[]).await?;
    let hb = stale_after / 4;
    let started = Instant::now();
    let registered = rc
        .register_many(
            workers,
            REGISTER_CONCURRENCY,
            stale_after.as_millis() as u64,
            Some(hb.as_millis() as u64),
        )
        .await?;
    eprintln!(
        "registered {} workers in {:.1} s (stale_after {stale_after:?}, heartbeat {hb:?})",
        registered.len(),
        started.elapsed().as_secs_f64()
    );
    let enroll = rc.create_token("enroll").await?;
    let read = rc.create_token("read").await?;
    // Registering may take longer than stale_after: the first workers may
    // be offline already. The keeper's first rounds bring them back.
    let keeper = fleet::Keeper::start(rc.clone(), enroll, registered, hb);
    keeper
        .steady(3, stale_after * 6 + Duration::from_secs(120))
        .await?;
    let events = sse::subscribe(rc.addr, read, rc.last_seq().await?).await?;
    Ok((rc, keeper, events))
}

async fn detection(bin: Option<PathBuf>, a: DetectionArgs) -> Result<Report> {
    const B: &str = "detection";
    ensure!(a.stop <= a.workers, "--stop must be at most --workers");
    let (rc, keeper, mut events) = fleet(bin, a.workers, a.stale_after).await?;
    let mut rounds = Vec::new();
    for round in 0..a.rounds {
        let from = (round * a.stop) % (a.workers - a.stop + 1);
        let r = fleet::stop_round(
            &rc,
            &keeper,
            &mut events,
            from..from + a.stop,
            a.stale_after,
        )
        .await?;
        eprintln!("detection round {round}: {}", r.json());
        rounds.push(r);
    }
    lag_report(B, &rc, &rounds, a.workers, a.stop, a.stale_after, false)
}

async fn expiry(bin: Option<PathBuf>, a: ExpiryArgs) -> Result<Report> {
    const B: &str = "expiry";
    let (rc, keeper, mut events) = fleet(bin, a.workers, a.stale_after).await?;
    let mut rounds = Vec::new();
    for round in 0..a.rounds {
        let r = fleet::stop_round(&rc, &keeper, &mut events, 0..a.workers, a.stale_after).await?;
        eprintln!("expiry round {round}: {}", r.json());
        rounds.push(r);
    }
    lag_report(B, &rc, &rounds, a.workers, a.workers, a.stale_after, true)
}

async fn storm(bin: Option<PathBuf>, a: StormArgs) -> Result<Report> {
    const B: &str = "storm";
    let (rc, keeper, mut events) = fleet(bin, a.workers, a.stale_after).await?;
    let mut rounds = Vec::new();
    for round in 0..a.rounds {
        let r = fleet::storm_round(&rc, &keeper, &mut events, a.stale_after).await?;
        eprintln!("storm round {round}: {}", r.json());
        rounds.push(r);
        keeper
            .steady(2, a.stale_after * 4 + Duration::from_secs(120))
            .await?;
    }
    let settled: Vec<i64> = rounds.iter().map(|r| r.settled_ms).collect();
    let online: Vec<i64> = rounds.iter().map(|r| r.all_online_ms).collect();
    let flaps: usize = rounds.iter().map(|r| r.flaps).sum();
    let p = |v: &[i64], q: f64| percentile(v, q) as f64 / 1000.0;
    let calm99: Vec<f64> = rounds.iter().map(|r| p(&r.calm_latency_us, 0.99)).collect();
    let storm99: Vec<f64> = rounds
        .iter()
        .map(|r| p(&r.storm_latency_us, 0.99))
        .collect();
    let calm50: Vec<f64> = rounds.iter().map(|r| p(&r.calm_latency_us, 0.5)).collect();
    let storm50: Vec<f64> = rounds.iter().map(|r| p(&r.storm_latency_us, 0.5)).collect();
    let loads: Vec<String> = rounds.iter().map(|r| r.load.clone()).collect();
    let stats = rc.stats()?;
    let joined = |v: &[i64]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let settled_m = median_i(&settled);
    let rows = vec![
        row(
            B,
            "workers (all silent, then all back at once)",
            format!(
                "{} (stale_after {} s)",
                a.workers,
                a.stale_after.as_secs_f64()
            ),
        ),
        target(
            row(
                B,
                "all online for good after (median)",
                format!("{settled_m} ms"),
            ),
            "<= 2000 ms",
            settled_m <= 2000,
        ),
        row(
            B,
            "all online for good after, per round ms",
            joined(&settled),
        ),
        row(B, "all online first after, per round ms", joined(&online)),
        target(
            row(B, "flaps (all rounds)", flaps.to_string()),
            "0",
            flaps == 0,
        ),
        row(
            B,
            "batch heartbeat p50 / p99 ms, calm (median)",
            format!("{:.1} / {:.1}", median(&calm50), median(&calm99)),
        ),
        row(
            B,
            "batch heartbeat p50 / p99 ms, storm (median)",
            format!("{:.1} / {:.1}", median(&storm50), median(&storm99)),
        ),
        row(B, "storm p99 per round ms", list(&storm99, 1)),
        row(
            B,
            "server RSS at end",
            format!("{} MiB", stats.rss_kib / 1024),
        ),
        row(B, "load average per round", loads.join(" | ")),
    ];
    Ok(Report {
        rows,
        json: json!({
            "bench": B, "workers": a.workers,
            "stale_after_ms": a.stale_after.as_millis() as u64,
            "flaps": flaps,
            "settled_ms": settled,
            "rounds": rounds.iter().map(|r| r.json()).collect::<Vec<_>>(),
            "met": settled_m <= 2000 && flaps == 0,
        }),
    })
}

fn lag_report(
    bench: &'static str,
    rc: &Rollcall,
    rounds: &[fleet::Round],
    workers: usize,
    stop: usize,
    stale_after: Duration,
    mass: bool,
) -> Result<Report> {
    let p50: Vec<i64> = rounds.iter().map(|r| percentile(&r.lags, 0.5)).collect();
    let p99: Vec<i64> = rounds.iter().map(|r| percentile(&r.lags, 0.99)).collect();
    let max: Vec<i64> = rounds
        .iter()
        .map(|r| *r.lags.last().unwrap_or(&0))
        .collect();
    let s50: Vec<i64> = rounds
        .iter()
        .map(|r| percentile(&r.server_lags, 0.5))
        .collect();
    let s99: Vec<i64> = rounds
        .iter()
        .map(|r| percentile(&r.server_lags, 0.99))
        .collect();
    let smax: Vec<i64> = rounds
        .iter()
        .map(|r| *r.server_lags.last().unwrap_or(&0))
        .collect();
    let after: Vec<i64> = rounds.iter().map(|r| r.all_offline_after_ms).collect();
    let spread: Vec<i64> = rounds.iter().map(|r| r.deadline_spread_ms).collect();
    let false_offline: usize = rounds.iter().map(|r| r.false_offline).sum();
    let cpu: Vec<f64> = rounds.iter().map(|r| r.cpu_s / r.wall_s * 100.0).collect();
    let loads: Vec<String> = rounds.iter().map(|r| r.load.clone()).collect();
    let stats = rc.stats()?;
    let joined = |v: &[i64]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let b = bench;
    let mut rows = vec![row(
        b,
        "workers online / stopped at once",
        format!(
            "{workers} / {stop} (stale_after {} s)",
            stale_after.as_secs_f64()
        ),
    )];
    let (p99m, maxm) = (median_i(&p99), median_i(&max));
    if mass {
        rows.push(target(
            row(
                b,
                "all offline within (max lag, median)",
                format!("{maxm} ms"),
            ),
            "<= 2000 ms",
            maxm <= 2000,
        ));
        rows.push(row(b, "max lag per round ms", joined(&max)));
        rows.push(row(
            b,
            "lag p50 / p99 ms (median)",
            format!("{} / {}", median_i(&p50), p99m),
        ));
    } else {
        rows.push(target(
            row(b, "lag p99 ms (median of rounds)", p99m.to_string()),
            "<= 100 ms",
            p99m <= 100,
        ));
        rows.push(row(
            b,
            "lag p50 / max ms (median)",
            format!("{} / {maxm}", median_i(&p50)),
        ));
        rows.push(row(b, "p99 per round ms", joined(&p99)));
    }
    rows.extend([
        row(
            b,
            "server-recorded lag p50 / p99 / max ms",
            format!(
                "{} / {} / {}",
                median_i(&s50),
                median_i(&s99),
                median_i(&smax)
            ),
        ),
        row(b, "last offline after last deadline ms", joined(&after)),
        row(b, "deadline spread ms", joined(&spread)),
        row(b, "false offline", false_offline.to_string()),
        row(
            b,
            "server CPU during detection",
            format!("{} %", list(&cpu, 0)),
        ),
        row(
            b,
            "server RSS at end",
            format!("{} MiB", stats.rss_kib / 1024),
        ),
        row(b, "load average per round", loads.join(" | ")),
    ]);
    let met = if mass { maxm <= 2000 } else { p99m <= 100 };
    Ok(Report {
        rows,
        json: json!({
            "bench": bench, "workers": workers, "stopped": stop,
            "stale_after_ms": stale_after.as_millis() as u64,
            "rounds": rounds.iter().map(|r| r.json()).collect::<Vec<_>>(),
            "lag_p50_ms_median": median_i(&p50), "lag_p99_ms_median": p99m, "lag_max_ms_median": maxm,
            "false_offline": false_offline, "server_rss_kib": stats.rss_kib,
            "server_cpu_s": stats.cpu_s, "target_met": met,
        }),
    })
}

async fn rss(bin: Option<PathBuf>, a: RssArgs) -> Result<Report> {
    const B: &str = "rss";
    let rc = Rollcall::start(bin, &[]).await?;
    let idle = rc.stats()?;
    let load_before = load_average();
    let started = Instant::now();
    let registered = rc
        .register_many(a.workers, a.concurrency, 3_600_000, None)
        .await?;
    let took = started.elapsed();
    drop(registered);
    let online = rc.count_online().await?;
    ensure!(
        online == a.workers as u64,
        "{online} of {} online",
        a.workers
    );
    let full = rc.stats()?;
    let per_worker = (full.rss_kib.saturating_sub(idle.rss_kib)) as f64 * 1024.0 / a.workers as f64;
    const GIB_KIB: u64 = 1024 * 1024;
    let rows = vec![
        target(
            row(
                B,
                format!("RSS with {} online workers", a.workers),
                format!("{} MiB", full.rss_kib / 1024),
            ),
            "<= 1024 MiB (at 1,000,000)",
            full.rss_kib <= GIB_KIB,
        ),
        row(B, "bytes per worker", format!("{per_worker:.0}")),
        row(
            B,
            "idle RSS / peak RSS",
            format!("{} / {} MiB", idle.rss_kib / 1024, full.hwm_kib / 1024),
        ),
        row(
            B,
            "registration",
            format!(
                "{:.1} s ({}/s, {} in flight)",
                took.as_secs_f64(),
                fmt_rate(a.workers as f64 / took.as_secs_f64()),
                a.concurrency
            ),
        ),
        row(
            B,
            "server CPU during registration",
            format!(
                "{:.0} %",
                (full.cpu_s - idle.cpu_s) / took.as_secs_f64() * 100.0
            ),
        ),
        row(
            B,
            "load average before / after",
            format!("{load_before} | {}", load_average()),
        ),
    ];
    Ok(Report {
        rows,
        json: json!({"bench": B, "workers": a.workers, "rss_kib": full.rss_kib,
            "idle_rss_kib": idle.rss_kib, "peak_rss_kib": full.hwm_kib,
            "bytes_per_worker": per_worker, "register_s": took.as_secs_f64(),
            "server_cpu_s": full.cpu_s, "load_before": load_before, "load_after": load_average(),
            "target_met": full.rss_kib <= GIB_KIB}),
    })
}
