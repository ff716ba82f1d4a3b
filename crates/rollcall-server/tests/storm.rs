//! A resume storm settles: the scaled-down version of `rollcall-bench storm`.
//!
//! 2,000 workers with a 300 ms window (heartbeat every 100 ms, in batches)
//! go through several partitions: every worker falls silent for longer
//! than the window (all go offline), then every worker heartbeats again at
//! once. Each time the fleet must come back and settle: every worker
//! online, and no worker marked offline while it was heartbeating — no
//! flap. A heartbeat of an offline worker is answered from memory, so the
//! batches of a storm never wait for the commits of the resumes.
//!
//! The test waits on observable conditions only (the engine's census, the
//! event log); it asserts counts, never times. The strict form of "no
//! flap": no `offline (stale)` event is ever recorded before a deadline the
//! server acknowledged to that worker, in that session.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WORKERS: usize = 2_000;
const HEARTBEAT_MS: u64 = 100;
const STALE_MS: u64 = 300;
const LOOPS: usize = 4;
const PARTITIONS: usize = 3;
/// Only a guard against a hang: the conditions are waited for, not timed.
const GUARD: Duration = Duration::from_secs(120);

/// Acknowledged deadlines, per (worker, session): the latest one.
type Acks = Arc<Mutex<HashMap<(String, u64), i64>>>;

fn beat_loop(
    base: String,
    admin: String,
    workers: Vec<Reg>,
    beating: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    acks: Acks,
    failures: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let http = reqwest::Client::new();
        let body = json!({
            "heartbeats": workers
                .iter()
                .map(|w| json!({"worker_id": w.id, "token": w.token}))
                .collect::<Vec<_>>()
        });
        let mut tick = tokio::time::interval(Duration::from_millis(HEARTBEAT_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if !beating.load(Ordering::Relaxed) {
                continue;
            }
            let answer = http
                .post(format!("{base}/v1/heartbeats"))
                .bearer_auth(&admin)
                .json(&body)
                .send()
                .await;
            let answer = match answer {
                Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                Ok(r) => {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("batch answered {}", r.status()));
                    None
                }
                Err(e) => {
                    failures.lock().unwrap().push(format!("batch failed: {e}"));
                    None
                }
            };
            let Some(answer) = answer else { continue };
            let mut acks = acks.lock().unwrap();
            for r in answer["results"].as_array().expect("results") {
                if r["ok"] != Value::Bool(true) {
                    failures.lock().unwrap().push(r.to_string());
                    continue;
                }
                let key = (
                    r["worker_id"].as_str().unwrap().to_owned(),
                    r["session"].as_u64().unwrap(),
                );
                let d = ts(&r["deadline_at"]);
                let e = acks.entry(key).or_insert(d);
                *e = (*e).max(d);
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_resuming_at_once_settles_without_flapping() {
    let app = spawn_app_with(|c| {
        c.heartbeat_interval = Some(format!("{HEARTBEAT_MS}ms"));
        c.stale_after = Some(format!("{STALE_MS}ms"));
    })
    .await;
    let census = || app.running().engine().census();

    // Register the fleet (concurrently, in chunks), then let all of it go
    // stale once: the first storm starts from a fleet that is all offline.
    let mut workers: Vec<Reg> = Vec::with_capacity(WORKERS);
    let ids: Vec<usize> = (0..WORKERS).collect();
    for chunk in ids.chunks(100) {
        let regs = chunk.iter().map(|i| {
            app.register_body(json!({
                "name": format!("w{i}"),
                "machine": {"id": format!("m{}", i % 50)},
            }))
        });
        workers.extend(futures::future::join_all(regs).await);
    }
    wait_until("the registered fleet is all offline", GUARD, || async {
        census().offline == WORKERS as u64
    })
    .await;

    let beating = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acks: Acks = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let loops: Vec<_> = workers
        .chunks(WORKERS / LOOPS)
        .map(|c| {
            beat_loop(
                app.base.clone(),
                app.admin.clone(),
                c.to_vec(),
                beating.clone(),
                stop.clone(),
                acks.clone(),
                failures.clone(),
            )
        })
        .collect();

    for round in 0..=PARTITIONS {
        // The storm: every worker heartbeats again at once.
        beating.store(true, Ordering::Relaxed);
        wait_until(
            &format!("round {round}: every worker online"),
            GUARD,
            || async { census().online == WORKERS as u64 },
        )
        .await;
        // Settled: a few whole windows with every worker online.
        let settled_from = now_ms();
        sleep_until_ms(settled_from + 3 * STALE_MS as i64).await;
        assert_eq!(
            census().online,
            WORKERS as u64,
            "round {round}: workers went offline again while heartbeating"
        );
        if round == PARTITIONS {
            break;
        }
        // The partition: every worker falls silent until all are offline.
        beating.store(false, Ordering::Relaxed);
        wait_until(
            &format!("round {round}: every worker offline"),
            GUARD,
            || async { census().offline == WORKERS as u64 },
        )
        .await;
    }
    // The fleet goes stale once more after this; those offlines come after
    // `stopped_at` (every worker beat less than a window before it).
    let stopped_at = now_ms();
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }

    let failures = std::mem::take(&mut *failures.lock().unwrap());
    assert!(
        failures.is_empty(),
        "{} heartbeats failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    // Every worker went offline exactly once per silence (the one after
    // registration and one per partition) and came back exactly as often:
    // any other offline is a flap.
    let events = app.events().await;
    let mut offline: HashMap<&str, usize> = HashMap::new();
    let mut online: HashMap<&str, usize> = HashMap::new();
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    let mut early = Vec::new();
    for e in &events {
        let Some(w) = e["worker_id"].as_str() else {
            continue;
        };
        if ts(&e["at"]) >= stopped_at {
            continue;
        }
        match (e["type"].as_str().unwrap(), e["reason"].as_str()) {
            ("worker.offline", Some("stale")) => {
                *offline.entry(w).or_default() += 1;
                let session = e["session"].as_u64().unwrap();
                if let Some(d) = acks.get(&(w.to_owned(), session)) {
                    if ts(&e["at"]) <= *d {
                        early.push(format!("{e} (acknowledged deadline {d})"));
                    }
                }
            }
            ("worker.online", Some("heartbeat")) => *online.entry(w).or_default() += 1,
            _ => {}
        }
    }
    assert!(
        early.is_empty(),
        "{} workers were marked offline before a deadline the server had acknowledged, e.g. {:?}",
        early.len(),
        &early[..early.len().min(3)]
    );
    let silences = PARTITIONS + 1;
    let flaps: usize = offline.values().map(|n| n.saturating_sub(silences)).sum();
    assert_eq!(
        flaps, 0,
        "flaps: {flaps} offline transitions beyond the partitions"
    );
    assert_eq!(offline.len(), WORKERS);
    assert!(offline.values().all(|n| *n == silences), "{offline:?}");
    assert_eq!(online.len(), WORKERS);
    assert!(online.values().all(|n| *n == silences), "{online:?}");
}
