//! Backups of the SQLite database, against the real binary: a clean stop
//! leaves `rollcall.db` whole on its own (the WAL checkpointed and
//! truncated), and `rollcall backup FILE` taken while the server is under
//! load yields a database that a new server opens and serves — with every
//! registration acknowledged before the backup began.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, Api, Registered, Serve};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Runs `rollcall ARGS` to completion with no `ROLLCALL_*` from the
/// environment: (exit code, stdout, stderr).
async fn rollcall(args: &[&str]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(common::BIN);
    cmd.args(args);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ROLLCALL_") {
            cmd.env_remove(&k);
        }
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("`rollcall {}` did not finish within 60 s", args.join(" ")))
    .expect("running rollcall");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every worker id the server lists.
async fn worker_ids(api: &Api) -> Vec<String> {
    let page = api.get_ok("/v1/workers?limit=1000").await;
    assert!(page["next_cursor"].is_null(), "more than one page: {page}");
    let mut ids: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|w| w["id"].as_str().expect("id").to_owned())
        .collect();
    ids.sort();
    ids
}

fn file_len(path: &Path) -> Option<u64> {
    std::fs::metadata(path).ok().map(|m| m.len())
}

/// After SIGTERM the WAL is empty (or gone) and `rollcall.db` copied alone
/// is the whole database: a server started on the copy has every worker and
/// every event.
#[tokio::test]
async fn a_clean_stop_leaves_the_whole_database_in_rollcall_db() {
    let dir = common::data_dir();
    let mut server = Serve::new(dir.path()).spawn().await;
    let api = server.admin();
    let mut registered = Vec::new();
    for i in 0..5 {
        registered.push(api.register(&format!("w-{i}"), "host-a").await);
    }
    let (status, body) = api
        .post(
            &format!("/v1/workers/{}/drain", registered[0].id),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.heartbeat(&registered[1]).await;
    let ids = worker_ids(&api).await;
    let events = api.events("").await;
    assert!(events.len() >= 11, "{events:?}");

    let db = dir.path().join("rollcall.db");
    let wal = dir.path().join("rollcall.db-wal");
    assert!(
        file_len(&wal).unwrap_or(0) > 0,
        "while serving, commits are in the WAL"
    );
    let (status, _) = server.stop_with("TERM").await;
    assert!(status.success(), "{status}; stderr:\n{}", server.stderr());
    assert_eq!(
        file_len(&wal).unwrap_or(0),
        0,
        "a clean stop checkpoints and truncates the WAL"
    );

    // The database file alone, as a naive copy takes it.
    let copy = common::data_dir();
    std::fs::copy(&db, copy.path().join("rollcall.db")).expect("copying rollcall.db");
    let restored = Serve::new(copy.path()).spawn().await;
    let api = restored.admin();
    assert_eq!(worker_ids(&api).await, ids);
    assert_eq!(api.events("").await, events);
    assert_eq!(
        api.worker(&registered[0].id).await["status"],
        "draining",
        "the drain is in the copy"
    );
}

/// Registrations and heartbeats run while `rollcall backup` copies the
/// database. A server started on the backup answers reads and writes, holds
/// every registration acknowledged before the backup began, and accepts the
/// restored workers' tokens.
#[tokio::test]
async fn a_backup_taken_under_load_opens_and_serves() {
    let dir = common::data_dir();
    let server = Serve::new(dir.path()).spawn().await;
    let api = server.admin();

    // The load: register workers one after another and heartbeat the ones
    // already registered, until told to stop.
    let acked: Arc<Mutex<Vec<Registered>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (api, acked, stop) = (api.clone(), acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let w = api
                    .register(&format!("w-{i}"), &format!("host-{}", i % 4))
                    .await;
                acked.lock().unwrap().push(w);
                let some: Vec<Registered> = acked
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(5)
                    .cloned()
                    .collect();
                for w in &some {
                    api.heartbeat(w).await;
                }
                i += 1;
            }
        })
    };
    eventually(Duration::from_secs(30), "20 registrations", || {
        let n = acked.lock().unwrap().len();
        async move { (n >= 20).then_some(()) }
    })
    .await;

    let before: Vec<Registered> = acked.lock().unwrap().clone();
    let backup_dir = common::data_dir();
    let file = backup_dir.path().join("rollcall-backup.db");
    let file_arg = file.display().to_string();
    let data_arg = dir.path().display().to_string();
    let (code, out, err) = rollcall(&["backup", &file_arg, "--data-dir", &data_arg]).await;
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.starts_with("backed up "), "{out}");
    // The load kept going while the backup ran, and goes on a little after.
    let after_backup = acked.lock().unwrap().len();
    eventually(
        Duration::from_secs(30),
        "registrations after the backup",
        || {
            let n = acked.lock().unwrap().len();
            async move { (n >= after_backup + 5).then_some(()) }
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    load.await.expect("the load task");
    let total = acked.lock().unwrap().len();

    // A backup never overwrites a file.
    let size = file_len(&file);
    let (code, _, err) = rollcall(&["backup", &file_arg, "--data-dir", &data_arg]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(file_len(&file), size);

    // Restore into a fresh data directory, next to the running original.
    let restore_dir = common::data_dir();
    std::fs::copy(&file, restore_dir.path().join("rollcall.db")).expect("copying the backup");
    let restored = Serve::new(restore_dir.path()).spawn().await;
    let rapi = restored.admin();
    assert_eq!(rapi.get("/readyz").await.0, StatusCode::OK);
    let ids = worker_ids(&rapi).await;
    for w in &before {
        assert!(
            ids.contains(&w.id),
            "{} was acknowledged before the backup began",
            w.id
        );
    }
    assert!(ids.len() <= total, "{} > {total}", ids.len());
    // The event log is whole: strictly increasing seqs, every worker's
    // registration in it.
    let events = rapi.events("").await;
    let seqs: Vec<i64> = events.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|p| p[0] < p[1]), "{seqs:?}");
    for id in &ids {
        assert!(
            events
                .iter()
                .any(|e| e["type"] == "worker.registered" && e["worker_id"] == id.as_str()),
            "{id} has its registration event"
        );
    }
    // It serves: a restored worker's token still works, and new writes land.
    let hb = rapi.heartbeat(&before[0]).await;
    assert_eq!(hb["status"], "online", "{hb}");
    let fresh = rapi.register("after-restore", "host-z").await;
    assert_eq!(rapi.worker(&fresh.id).await["status"], "online");
    let m: Value = rapi.machine("host-z").await;
    assert_eq!(m["status"], "online", "{m}");
    drop(server);
}

/// What `rollcall backup` refuses, with exit code 2 and one line that says
/// what to do instead.
#[tokio::test]
async fn backup_refuses_what_it_cannot_copy() {
    let dir = common::data_dir();
    let file = dir.path().join("out.db");
    let file_arg = file.display().to_string();

    // PostgreSQL: pg_dump, and no password in the message.
    let (code, out, err) = rollcall(&[
        "backup",
        &file_arg,
        "--database-url",
        "postgres://rollcall:s3cret-pw@db.internal/rollcall",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    assert!(err.contains("pg_dump"), "{err}");
    assert!(!err.contains("s3cret-pw"), "{err}");

    // No database where the data directory says.
    let empty = dir.path().join("empty").display().to_string();
    let (code, _, err) = rollcall(&["backup", &file_arg, "--data-dir", &empty]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no database"), "{err}");

    // A SQLite file that is not rollcall's.
    let other = dir.path().join("other.db");
    std::fs::write(&other, b"").unwrap();
    let other_url = format!("sqlite://{}", other.display());
    let (code, _, err) = rollcall(&["backup", &file_arg, "--database-url", &other_url]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a rollcall database"), "{err}");
    assert!(!file.exists(), "nothing is left at the destination");
}
