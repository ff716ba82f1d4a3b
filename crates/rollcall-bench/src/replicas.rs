//! `replicas`: rollcall on PostgreSQL, two replicas on one scratch
//! database. Heartbeat throughput and latency through the active replica and
//! through the standby (which forwards every heartbeat to the active one),
//! and how long a standby takes to become active after `kill -9` of the
//! active replica.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use rollcall_store::testing::TestDatabase;
use serde_json::json;

use crate::server::{load_average, Rollcall};
use crate::{
    fmt_rate, heartbeat_targets, list, load, median, ms, row, Report, REGISTER_CONCURRENCY,
};

#[derive(Debug, Clone, Args)]
pub struct ReplicasArgs {
    /// The PostgreSQL server; a scratch database is created there and dropped.
    #[arg(
        long,
        env = "ROLLCALL_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    postgres: String,
    #[arg(long, default_value_t = 10_000)]
    workers: usize,
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured time per run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Runs through each replica, alternated.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Takeovers measured (each kills the active replica).
    #[arg(long, default_value_t = 5)]
    takeovers: usize,
}

/// The role a replica reports in `x-rollcall-role`, if it answers.
async fn role(http: &reqwest::Client, rc: &Rollcall) -> Option<String> {
    let resp = http
        .get(format!("http://{}/readyz", rc.addr))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    resp.headers()
        .get("x-rollcall-role")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn start(
    bin: &Option<std::path::PathBuf>,
    db: &TestDatabase,
    admin: &str,
) -> Result<Rollcall> {
    Rollcall::start_with_admin(
        bin.clone(),
        &["--database-url", db.url(), "--stale-after", "90s"],
        admin,
    )
    .await
}

pub async fn replicas(bin: Option<std::path::PathBuf>, a: ReplicasArgs) -> Result<Report> {
    const B: &str = "replicas";
    let db = TestDatabase::create(&a.postgres)
        .await
        .with_context(|| format!("creating a scratch database on {}", a.postgres))?;
    let admin = format!("rc_admin_bench_{:032x}", rand::random::<u128>());
    let http = reqwest::Client::new();
    let mut active = start(&bin, &db, &admin).await?;
    let mut standby = start(&bin, &db, &admin).await?;
    if role(&http, &active).await.as_deref() != Some("active")
        || role(&http, &standby).await.as_deref() != Some("standby")
    {
        bail!("expected the first replica active and the second standing by");
    }
    let registered = active
        .register_many(a.workers, REGISTER_CONCURRENCY, 90_000, None)
        .await?;
    eprintln!("replicas: registered {} workers", registered.len());
    let targets = heartbeat_targets(&registered);

    let (mut via_active, mut via_standby, mut ratios) = (vec![], vec![], vec![]);
    let (mut a_p99, mut s_p50, mut s_p99, mut a_p50) = (vec![], vec![], vec![], vec![]);
    let mut loads = Vec::new();
    for round in 0..a.rounds {
        loads.push(load_average());
        let ra = load::run(active.addr, &targets, a.connections, a.duration).await?;
        let rs = load::run(standby.addr, &targets, a.connections, a.duration).await?;
        if ra.errors + rs.errors > 0 {
            bail!("{} heartbeats failed", ra.errors + rs.errors);
        }
        eprintln!(
            "replicas round {round}: via active {:.0}/s (p99 {:.2} ms), via standby {:.0}/s (p99 {:.2} ms); load {}",
            ra.rate(),
            ms(ra.p(0.99)),
            rs.rate(),
            ms(rs.p(0.99)),
            loads.last().map(String::as_str).unwrap_or("")
        );
        via_active.push(ra.rate());
        via_standby.push(rs.rate());
        ratios.push(rs.rate() / ra.rate());
        a_p50.push(ms(ra.p(0.5)));
        a_p99.push(ms(ra.p(0.99)));
        s_p50.push(ms(rs.p(0.5)));
        s_p99.push(ms(rs.p(0.99)));
    }

    // Takeovers: a spare standby joins, the active replica is killed, and
    // the time until one of the others says it is active is measured.
    let mut takeovers = Vec::new();
    for i in 0..a.takeovers {
        let spare = start(&bin, &db, &admin).await?;
        active.kill()?;
        let killed = Instant::now();
        let until = killed + Duration::from_secs(30);
        let mut winner = None;
        while winner.is_none() {
            if Instant::now() > until {
                bail!("no replica became active within 30 s of kill -9");
            }
            if role(&http, &standby).await.as_deref() == Some("active") {
                winner = Some(0);
            } else if role(&http, &spare).await.as_deref() == Some("active") {
                winner = Some(1);
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let took = ms(killed.elapsed());
        eprintln!("replicas takeover {i}: {took:.0} ms after kill -9");
        takeovers.push(took);
        (active, standby) = if winner == Some(0) {
            (standby, spare)
        } else {
            (spare, standby)
        };
    }
    drop((active, standby));
    db.drop_database().await?;

    let ratio = median(&ratios);
    let mut rows = vec![
        row(
            B,
            "heartbeats/s via the active replica (median)",
            fmt_rate(median(&via_active)),
        ),
        row(
            B,
            "heartbeats/s via a standby (median)",
            fmt_rate(median(&via_standby)),
        ),
        row(
            B,
            "standby / active (median of rounds)",
            format!("{ratio:.2} ({})", list(&ratios, 2)),
        ),
        row(
            B,
            "p50 / p99 via active, ms",
            format!("{:.2} / {:.2}", median(&a_p50), median(&a_p99)),
        ),
        row(
            B,
            "p50 / p99 via standby, ms",
            format!("{:.2} / {:.2}", median(&s_p50), median(&s_p99)),
        ),
    ];
    if !takeovers.is_empty() {
        let mut sorted = takeovers.clone();
        sorted.sort_by(|x, y| x.total_cmp(y));
        rows.push(row(
            B,
            "takeover after kill -9, ms (median, min–max)",
            format!(
                "{:.0} ({:.0}–{:.0})",
                median(&takeovers),
                sorted[0],
                sorted[sorted.len() - 1]
            ),
        ));
    }
    Ok(Report {
        rows,
        json: json!({
            "bench": B,
            "workers": a.workers,
            "connections": a.connections,
            "duration_s": a.duration.as_secs_f64(),
            "via_active_per_s": via_active,
            "via_standby_per_s": via_standby,
            "standby_over_active": ratios,
            "active_p50_ms": a_p50, "active_p99_ms": a_p99,
            "standby_p50_ms": s_p50, "standby_p99_ms": s_p99,
            "takeover_ms": takeovers,
            "load": loads,
        }),
    })
}
