//! `store-commit`: the cost of the transition writer's transactions, on the
//! store alone (no HTTP, no engine): K stale transitions of N workers spread
//! over M machines, committed as one batch.
//!
//! SQLite in a temporary directory by default; with
//! `ROLLCALL_BENCH_POSTGRES_URL` set (a server URL whose database exists),
//! PostgreSQL in a scratch database created on that server and dropped
//! afterwards.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rollcall_core::{
    transition, Command, Labels, MachineId, Status, Timestamp, TokenHash, WorkerId, WorkerName,
};
use rollcall_store::postgres::PgStore;
use rollcall_store::sqlite::SqliteStore;
use rollcall_store::testing::TestDatabase;
use rollcall_store::{Expect, MachineUpsert, NewEvent, Store, WorkerRecord, WorkerWrite};

/// Where to find a PostgreSQL server to measure instead of SQLite.
const POSTGRES_URL_ENV: &str = "ROLLCALL_BENCH_POSTGRES_URL";

pub(crate) fn events(t: &rollcall_core::Transition, at: Timestamp) -> Vec<NewEvent> {
    t.events
        .iter()
        .map(|e| NewEvent {
            at,
            kind: e.kind,
            reason: e.reason,
            session: Some(e.session),
            detection_lag_ms: None,
            exit: None,
        })
        .collect()
}

/// Registers `workers`, then times committing `expire` stale transitions in
/// one batch, `rounds` times (re-registering in between).
pub async fn commit(workers: usize, expire: usize, machines: usize, rounds: usize) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut scratch = None;
    let store: Arc<dyn Store> = match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.is_empty() => {
            let db = TestDatabase::create(&url).await?;
            println!("PostgreSQL, scratch database {}", db.name());
            let store = PgStore::connect(db.url()).await?;
            scratch = Some(db);
            Arc::new(store)
        }
        _ => {
            println!("SQLite, in {}", dir.path().display());
            Arc::new(
                SqliteStore::open(dir.path().join("bench.db").to_str().unwrap_or("bench.db"))
                    .await?,
            )
        }
    };
    let now = Timestamp::from_millis(1_800_000_000_000);
    let started = Instant::now();
    let mut records = register_fleet(store.as_ref(), workers, machines, now).await?;
    println!("registered {workers} workers in {:?}", started.elapsed());
    let mut times = Vec::new();
    for round in 0..rounds {
        let mut writes = Vec::new();
        for r in records.iter_mut().take(expire) {
            let cmd = if r.status == Status::Online {
                Command::Expire { session: r.session }
            } else {
                Command::Heartbeat
            };
            let t = transition(Some(r.state()), cmd, now)?;
            let expect = Expect {
                status: r.status,
                session: r.session,
            };
            r.set_state(t.next.expect("kept"));
            writes.push(WorkerWrite::Put {
                record: r.clone(),
                expect: Some(expect),
                machine: None,
                events: events(&t, now),
            });
        }
        let t = Instant::now();
        let result = store.commit(writes).await?;
        let took = t.elapsed();
        anyhow::ensure!(result.applied.iter().all(|a| *a), "a write was not applied");
        println!(
            "round {round}: {expire} transitions in one commit: {took:?} ({:.1} µs each)",
            took.as_micros() as f64 / expire as f64
        );
        times.push(took);
    }
    times.sort();
    println!("median: {:?}", times[times.len() / 2]);
    drop(store);
    if let Some(db) = scratch {
        db.drop_database().await?;
    }
    Ok(())
}

/// Registers `workers` workers named `w<i>` on `machines` machines `m<i %
/// machines>` at `at`, through `Store::commit` in transactions of 1,000, as
/// the writer would; returns their records.
pub async fn register_fleet(
    store: &dyn Store,
    workers: usize,
    machines: usize,
    at: Timestamp,
) -> Result<Vec<WorkerRecord>> {
    let mut records = Vec::with_capacity(workers);
    for chunk in (0..workers).collect::<Vec<_>>().chunks(1000) {
        let mut writes = Vec::new();
        for &i in chunk {
            let t = transition(None, Command::Register, at)?;
            let s = t.next.expect("registered");
            let machine_id = MachineId::parse(&format!("m{}", i % machines))?;
            let record = WorkerRecord {
                id: WorkerId::generate(at, rand::random()),
                name: WorkerName::parse(&format!("w{i}"))?,
                machine_id: machine_id.clone(),
                status: s.status,
                offline_reason: s.offline_reason,
                session: s.session,
                labels: Labels::default(),
                heartbeat_interval: Duration::from_secs(1),
                stale_after: Duration::from_secs(3),
                registered_at: at,
                last_heartbeat_at: None,
                status_changed_at: at,
                token_hash: TokenHash::of(&format!("rc_worker_{i}")),
            };
            writes.push(WorkerWrite::Put {
                record: record.clone(),
                expect: None,
                machine: Some(MachineUpsert {
                    id: machine_id,
                    hostname: None,
                    labels: None,
                    seen_at: at,
                }),
                events: events(&t, at),
            });
            records.push(record);
        }
        store.commit(writes).await?;
    }
    Ok(records)
}
