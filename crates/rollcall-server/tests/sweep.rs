//! The sweep under load: "the store and the engine disagreed" only when
//! they really do.
//!
//! The sweep reads the engine, then pages through the store. Under a storm
//! every transition committed in between — and every one committed but not
//! yet installed in the engine — used to look like a divergence, so each
//! run reloaded (and warned about) about a thousand workers. The writer
//! now confirms each suspect where nothing is in flight; only a row that
//! really differs counts (`rollcall_sweep_divergences_total`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WORKERS: usize = 2_000;

async fn counter(app: &TestApp, name: &str) -> u64 {
    let r = app.get("/metrics", &app.admin).await;
    let line = r
        .text
        .lines()
        .find(|l| l.strip_prefix(name).is_some_and(|v| v.starts_with(' ')))
        .unwrap_or_else(|| panic!("no {name} in the scrape:\n{}", r.text));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

async fn divergences(app: &TestApp) -> u64 {
    counter(app, "rollcall_sweep_divergences_total").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transitions_in_flight_are_not_divergences() {
    let app = spawn_app_with(|c| {
        c.heartbeat_interval = Some("100ms".into());
        c.stale_after = Some("300ms".into());
    })
    .await;
    let mut workers: Vec<Reg> = Vec::new();
    let ids: Vec<usize> = (0..WORKERS).collect();
    for chunk in ids.chunks(100) {
        workers.extend(
            futures::future::join_all(chunk.iter().map(|i| {
                app.register_body(
                    json!({"name": format!("w{i}"), "machine": {"id": format!("m{}", i % 20)}}),
                )
            }))
            .await,
        );
    }

    // A fleet that flaps all the time: each tick, every other worker (a
    // different half each time) heartbeats, so workers keep going stale
    // and resuming while the sweep runs.
    let stop = Arc::new(AtomicBool::new(false));
    let flapper = {
        let (base, admin, workers, stop) = (
            app.base.clone(),
            app.admin.clone(),
            workers.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                let entries: Vec<Value> = workers
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| (i / 7 + round / 4).is_multiple_of(2))
                    .map(|(_, w)| json!({"worker_id": w.id, "token": w.token}))
                    .collect();
                for chunk in entries.chunks(500) {
                    let r = http
                        .post(format!("{base}/v1/heartbeats"))
                        .bearer_auth(&admin)
                        .json(&json!({ "heartbeats": chunk }))
                        .send()
                        .await
                        .expect("a batch answer");
                    assert!(r.status().is_success(), "{}", r.status());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let before = app.events().await.len();
    let cleaner = app.cleaner();
    // Sweeps until some ran into transitions in flight. The bound is a hang
    // guard only: on SQLite the first few sweeps do; on PostgreSQL it took
    // more than 200 in some runs on the 2-core CI machine.
    // It also keeps sweeping until the storm is well under way (more than
    // 100 transitions since it began), however fast the suspects came.
    for _ in 0..5_000 {
        cleaner.detect_stale_workers().await.expect("a sweep");
        if counter(&app, "rollcall_sweep_suspects_total").await >= 10
            && app.events().await.len() - before > 100
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    flapper.await.unwrap();
    let during = app.events().await.len() - before;
    assert!(
        during > 100,
        "the sweeps ran during a storm ({during} events)"
    );
    let suspects = counter(&app, "rollcall_sweep_suspects_total").await;
    assert!(
        suspects > 0,
        "no sweep read a worker in flight: the race was not exercised"
    );
    assert_eq!(
        divergences(&app).await,
        0,
        "a transition in flight was taken for a divergence"
    );
}

/// The positive control: a row changed behind rollcall's back (here with
/// the `sqlite3` shell, when the machine has it) is a divergence, counted
/// and reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_changed_from_outside_is_a_divergence() {
    if on_postgres() {
        return;
    }
    let sqlite3_found = std::process::Command::new("sqlite3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !sqlite3_found {
        eprintln!("SKIPPED: no sqlite3 shell to change a row from outside");
        return;
    }
    let app = spawn_app().await;
    let w = app.register_stale("edited", "m", 60_000).await;
    let db = app.dir.path().join("rollcall.db");
    assert!(db.exists(), "{db:?}");
    let out = std::process::Command::new("sqlite3")
        .args(["-cmd", ".timeout 5000"])
        .arg(&db)
        .arg(format!(
            "UPDATE workers SET status = 'offline', offline_reason = 'shutdown' WHERE id = '{}'; SELECT changes();",
            w.id
        ))
        .output()
        .expect("running sqlite3");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "{out:?}");
    app.cleaner().detect_stale_workers().await.expect("a sweep");
    assert_eq!(divergences(&app).await, 1);
    // The engine took the store's row: the worker is offline there too, so
    // its next heartbeat resumes it.
    let hb = app.heartbeat(&w).await;
    assert_eq!(hb["resumed"], true, "{hb}");
    assert_eq!(hb["session"], 2, "{hb}");
}
