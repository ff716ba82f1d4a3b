//! The PostgreSQL server restarted under two running replicas: requests
//! during the outage get an answer (503 `unavailable` where the database is
//! needed), never a hang; afterwards the replicas reconnect, one becomes
//! active again, and no heartbeating worker was marked offline.
//!
//! This restarts the machine's PostgreSQL service, so it lives in a test
//! binary of its own (cargo runs test binaries one after another) and runs
//! only with `ROLLCALL_TEST_POSTGRES_RESTART=1` (CI sets it) — besides the
//! usual `ROLLCALL_TEST_POSTGRES_URL`.

mod common;
mod pg;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pg::{replica, role};
use serde_json::Value;

const EVERY: Duration = Duration::from_millis(200);
const STALE_AFTER_MS: i64 = 1_500;

/// `pg_ctlcluster VERSION main restart`, for the one cluster installed.
fn restart_postgres() {
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .expect("a Debian PostgreSQL installation (/etc/postgresql)")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(versions.len(), 1, "one PostgreSQL version: {versions:?}");
    let out = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", &versions[0], "main", "restart"])
        .output()
        .expect("running pg_ctlcluster");
    assert!(
        out.status.success(),
        "pg_ctlcluster restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_ride_out_a_database_restart() {
    if std::env::var("ROLLCALL_TEST_POSTGRES_RESTART").as_deref() != Ok("1") {
        rollcall_store::testing::skip(
            "restarts the PostgreSQL service; runs only with ROLLCALL_TEST_POSTGRES_RESTART=1",
        );
        return;
    }
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = replica(&db, dirs[0].path()).spawn().await;
    let mut b = replica(&db, dirs[1].path()).spawn().await;
    assert_eq!(role(&a.url).await.as_deref(), Some("active"));

    let w1 = a.admin().register("w1", "m").await;
    let w2 = Api::new(&b.url, ADMIN).register("w2", "m").await;
    let mut pulses = vec![
        Pulse::task(&Target::new(&a.url), &w1, EVERY),
        Pulse::task(&Target::new(&b.url), &w2, EVERY),
    ];

    // Probe both replicas all through the outage: reads that need the
    // database and heartbeats. Every answer must come (the client's 10 s
    // timeout would catch a hang) and be 200 or 503 `unavailable`.
    let answers = Arc::new(Mutex::new(Vec::<(u16, String)>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let probing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let prober = {
        let (urls, answers, failures, on) = (
            [a.url.clone(), b.url.clone()],
            answers.clone(),
            failures.clone(),
            probing.clone(),
        );
        let w1 = w1.clone();
        tokio::spawn(async move {
            let http = http_client();
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                for url in &urls {
                    let reqs = [
                        http.get(format!("{url}/v1/workers?limit=5"))
                            .bearer_auth(ADMIN),
                        http.post(format!("{url}/v1/workers/{}/heartbeat", w1.id))
                            .bearer_auth(&w1.token),
                    ];
                    for req in reqs {
                        match req.send().await {
                            Ok(resp) => {
                                let status = resp.status().as_u16();
                                let body: Value = resp.json().await.unwrap_or(Value::Null);
                                let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
                                answers.lock().unwrap().push((status, code));
                            }
                            Err(e) => failures.lock().unwrap().push(format!("{url}: {e}")),
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    let restarted_at = now_ms();
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    eprintln!("PostgreSQL restarted in {} ms", now_ms() - restarted_at);

    // The replicas recover on their own: one is active again.
    let active = eventually(
        Duration::from_secs(30),
        "a replica to be active again",
        || async {
            for (name, url) in [("a", &a.url), ("b", &b.url)] {
                if role(url).await.as_deref() == Some("active") {
                    return Some(name);
                }
            }
            None
        },
    )
    .await;
    let recovered_at = now_ms();
    eprintln!(
        "replica {active} active {} ms after the restart began",
        recovered_at - restarted_at
    );
    // And serves reads and heartbeats through both replicas.
    eventually(
        Duration::from_secs(10),
        "both replicas to answer reads",
        || async {
            let ok_a = a.admin().get("/v1/workers").await.0.is_success();
            let ok_b = Api::new(&b.url, ADMIN)
                .get("/v1/workers")
                .await
                .0
                .is_success();
            (ok_a && ok_b).then_some(())
        },
    )
    .await;
    until_ms(now_ms() + 2 * STALE_AFTER_MS).await;
    probing.store(false, std::sync::atomic::Ordering::Relaxed);
    prober.await.unwrap();

    let failures = failures.lock().unwrap().clone();
    assert_eq!(failures, Vec::<String>::new(), "requests without an answer");
    let answers = answers.lock().unwrap().clone();
    let bad: Vec<_> = answers
        .iter()
        .filter(|(s, code)| !(*s == 200 || (*s == 503 && code == "unavailable")))
        .collect();
    assert!(
        bad.is_empty(),
        "answers other than 200 or 503 unavailable: {bad:?}"
    );
    assert!(
        answers.iter().any(|(s, _)| *s == 503),
        "the outage was seen (some 503s) — else this test tested nothing"
    );

    // No worker that kept heartbeating was marked offline.
    for p in &mut pulses {
        p.stop().await;
    }
    let api = a.admin();
    let events = api.events("type=worker.offline").await;
    assert_eq!(
        events,
        Vec::<Value>::new(),
        "false offline across the restart"
    );
    for w in [&w1, &w2] {
        assert_eq!(api.worker(&w.id).await["status"], "online");
    }
    // Both processes are alive.
    assert!(a.is_running() && b.is_running(), "a replica exited");
    db.drop().await;
}
