//! A pause of the server itself is not a death of its workers.
//!
//! The real binary is stopped with SIGSTOP for three times the workers'
//! `stale_after`, then continued with SIGCONT. Meanwhile heartbeating
//! workers keep sending (their requests wait in the socket buffers, as they
//! would while a VM is paused) and silent workers, which stopped beating
//! just before the pause, stay silent. After the wake-up:
//!
//! - no heartbeating worker is marked offline (the detector, which wakes at
//!   the same moment as the waiting heartbeats, must not expire deadlines
//!   that passed while the server could not look);
//! - every silent worker is marked offline (stale) after the wake-up;
//! - the pause is logged (one warn line) and counted in the metrics.
//!
//! The same on PostgreSQL, for the active replica. A frozen active replica
//! with a standby: the standby answers forwarded changes with 503 and says
//! 503 on `/readyz` instead of hanging; the database ends the frozen
//! replica's lock session, the standby takes over, and the frozen one,
//! once continued, stands down.

mod common;
mod pg;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Workers' window: heartbeats every 250 ms, stale after 1 s.
const HEARTBEAT_MS: u64 = 250;
const STALE_MS: u64 = 1_000;
/// Heartbeating workers, sent in this many concurrent batch loops (each has
/// one request waiting in the socket buffer during the pause).
const BEATING: usize = 400;
const LOOPS: usize = 8;
const SILENT: usize = 20;
/// How long the silent workers may take to be marked offline after the
/// wake-up: their window plus generous slack for a debug build.
const DETECTION: Duration = Duration::from_secs(20);

async fn register_many(admin: &Api, prefix: &str, n: usize) -> Vec<Registered> {
    let mut out = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
        let regs = chunk.iter().map(|i| {
            admin.register_with(json!({
                "name": format!("{prefix}-{i}"),
                "machine": {"id": format!("{prefix}-m{}", i % 10)},
                "heartbeat_interval_ms": HEARTBEAT_MS,
                "stale_after_ms": STALE_MS,
            }))
        });
        out.extend(futures::future::join_all(regs).await);
    }
    out
}

/// What the heartbeat loops saw.
#[derive(Debug, Default)]
struct Seen {
    ok: u64,
    failed: Vec<String>,
}

/// Sends one batch for `workers` every `HEARTBEAT_MS` while `run` is set.
fn beat_loop(
    base: String,
    workers: Vec<Registered>,
    run: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Long enough for a request that waits out the whole pause.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("an HTTP client");
        let body = json!({
            "heartbeats": workers
                .iter()
                .map(|w| json!({"worker_id": w.id, "token": w.token}))
                .collect::<Vec<_>>()
        });
        let mut tick = tokio::time::interval(Duration::from_millis(HEARTBEAT_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while run.load(Ordering::Relaxed) {
            tick.tick().await;
            let resp = http
                .post(format!("{base}/v1/heartbeats"))
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
                .await;
            let resp = match resp {
                Ok(r) if r.status() == StatusCode::OK => {
                    Ok(r.json::<Value>().await.expect("a batch answer"))
                }
                Ok(r) => Err(format!("batch answered {}", r.status())),
                Err(e) => Err(format!("batch failed: {e}")),
            };
            let mut s = seen.lock().unwrap();
            match resp {
                Ok(v) => {
                    for r in v["results"].as_array().expect("results") {
                        if r["ok"] == Value::Bool(true) {
                            s.ok += 1;
                        } else {
                            s.failed.push(r.to_string());
                        }
                    }
                }
                Err(e) => s.failed.push(e),
            }
        }
    })
}

fn scrape(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in the scrape"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_marks_no_heartbeating_worker_offline() {
    let data = tempfile::tempdir().unwrap();
    stop_and_continue(Serve::new(data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_active_replica_marks_no_heartbeating_worker_offline() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    stop_and_continue(Serve::new(data.path()).args(&["--database-url", db.url()])).await;
    db.drop().await;
}

/// See the module docs: one server, stopped for 3 × `stale_after`.
async fn stop_and_continue(serve: Serve) {
    let server = serve.spawn().await;
    let admin = server.admin();

    let beating = register_many(&admin, "beat", BEATING).await;
    let silent = register_many(&admin, "quiet", SILENT).await;

    let run = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let per_loop = BEATING.div_ceil(LOOPS);
    let mut loops: Vec<_> = beating
        .chunks(per_loop)
        .map(|c| beat_loop(server.url.clone(), c.to_vec(), run.clone(), seen.clone()))
        .collect();
    let run_silent = Arc::new(AtomicBool::new(true));
    let silent_loop = beat_loop(
        server.url.clone(),
        silent.clone(),
        run_silent.clone(),
        seen.clone(),
    );

    // Steady: every worker beats for a few windows.
    tokio::time::sleep(Duration::from_millis(3 * STALE_MS)).await;
    // The silent ones stop; the server stops right after, while their
    // deadlines are still ahead.
    run_silent.store(false, Ordering::Relaxed);
    silent_loop.await.unwrap();
    let stopped_at = now_ms();
    server.signal("STOP").await;
    tokio::time::sleep(Duration::from_millis(3 * STALE_MS)).await;
    server.signal("CONT").await;
    let woke_at = now_ms();

    // The silent workers are detected after the wake-up, within their
    // window plus the slack of a debug build.
    eventually(DETECTION, "every silent worker offline", || async {
        let mut all = true;
        for w in &silent {
            if admin.worker(&w.id).await["status"] != "offline" {
                all = false;
                break;
            }
        }
        all.then_some(())
    })
    .await;
    // The heartbeating ones keep beating for a few more windows.
    until_ms(woke_at + 3 * STALE_MS as i64).await;
    run.store(false, Ordering::Relaxed);
    for l in loops.drain(..) {
        l.await.unwrap();
    }

    let offline = admin.events("type=worker.offline").await;
    let silent_ids: std::collections::HashSet<&str> =
        silent.iter().map(|w| w.id.as_str()).collect();
    let false_offline: Vec<&Value> = offline
        .iter()
        .filter(|e| !silent_ids.contains(e["worker_id"].as_str().unwrap_or_default()))
        .collect();
    assert!(
        false_offline.is_empty(),
        "{} heartbeating workers were marked offline across a pause of {} ms: {:?}",
        false_offline.len(),
        woke_at - stopped_at,
        false_offline.iter().take(5).collect::<Vec<_>>()
    );
    for e in &offline {
        assert_eq!(e["reason"], "stale", "{e}");
        // Detected after the wake-up, not for the time the server was
        // stopped.
        assert!(
            ts(&e["at"]) >= woke_at - 50,
            "a silent worker was marked offline at {} before the wake-up at {woke_at}: {e}",
            ts(&e["at"])
        );
    }
    assert_eq!(offline.len(), SILENT, "{offline:?}");

    {
        let seen = seen.lock().unwrap();
        assert!(
            seen.failed.is_empty(),
            "heartbeats failed: {:?}",
            &seen.failed[..seen.failed.len().min(5)]
        );
        assert!(seen.ok > 0);
    }

    let metrics = admin.get_ok("/metrics").await;
    let text = metrics.as_str().expect("a text scrape");
    assert!(scrape(text, "rollcall_pauses_total") >= 1.0, "{text}");
    let paused = scrape(text, "rollcall_paused_seconds_total");
    assert!(
        paused >= (3 * STALE_MS) as f64 / 1000.0 * 0.9,
        "rollcall_paused_seconds_total {paused}"
    );
    let log = server.stderr();
    assert!(
        log.contains("this server was not running"),
        "no pause in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_active_replica_is_replaced_and_its_standby_says_so() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = pg::replica(&db, dirs[0].path()).spawn().await;
    assert_eq!(pg::role(&a.url).await.as_deref(), Some("active"));
    let b = pg::replica(&db, dirs[1].path()).spawn().await;
    assert_eq!(pg::role(&b.url).await.as_deref(), Some("standby"));
    let standby = b.admin();
    assert_eq!(standby.get("/readyz").await.0, StatusCode::OK);

    a.signal("STOP").await;
    // A change sent to the standby is refused with 503 once the forward
    // times out (about 2 s), not held for the whole freeze.
    let (status, body) = standby
        .post(
            "/v1/workers",
            json!({"name": "during-freeze", "machine": {"id": "m"}}),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // The standby says it cannot reach the active replica — until it takes
    // over itself (the database ends the frozen replica's session).
    let said_unready = Arc::new(AtomicBool::new(false));
    eventually(Duration::from_secs(30), "the standby takes over", || {
        let standby = standby.clone();
        let url = b.url.clone();
        let said = said_unready.clone();
        async move {
            let (status, body) = standby.get("/readyz").await;
            if status == StatusCode::SERVICE_UNAVAILABLE
                && body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("active replica"))
            {
                said.store(true, Ordering::Relaxed);
            }
            (pg::role(&url).await.as_deref() == Some("active")).then_some(())
        }
    })
    .await;
    assert!(
        said_unready.load(Ordering::Relaxed),
        "the standby's /readyz never said it could not reach the active replica"
    );
    // Changes go through the new active replica.
    standby.register("after-takeover", "m").await;

    // The frozen replica, continued, finds its lock gone and stands down.
    a.signal("CONT").await;
    eventually(
        Duration::from_secs(30),
        "the old active replica stands by",
        || {
            let url = a.url.clone();
            async move { (pg::role(&url).await.as_deref() == Some("standby")).then_some(()) }
        },
    )
    .await;
    db.drop().await;
}
