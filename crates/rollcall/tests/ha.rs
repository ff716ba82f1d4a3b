//! Replicas on PostgreSQL, with real processes: several `rollcall serve`
//! on one database, workers heartbeating through different replicas, the
//! active one killed or cut off from the database.
//!
//! Each test gets a database of its own (`ROLLCALL_TEST_POSTGRES_URL`); see
//! `pg` below for what happens when that is not set.

mod common;
mod pg;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use pg::{replica, role};
use reqwest::StatusCode;
use serde_json::Value;

/// Heartbeat interval and staleness of the workers in these tests.
const EVERY: Duration = Duration::from_millis(200);
const STALE_AFTER_MS: i64 = 1_500;

/// A takeover (lock poll, settle, load) takes about two seconds; a debug
/// build on a busy machine gets a generous bound before the test gives up.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until one of `urls` reports the active role; returns its index.
async fn wait_active(urls: &[&str]) -> usize {
    eventually(TAKEOVER_TIMEOUT, "a replica to become active", || async {
        for (i, u) in urls.iter().enumerate() {
            if role(u).await.as_deref() == Some("active") {
                return Some(i);
            }
        }
        None
    })
    .await
}

/// Collects the events a replica's stream delivers, from the start of the
/// log.
fn collect_stream(url: &str) -> (Arc<Mutex<Vec<u64>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let client = rollcall_client::Client::builder()
        .server(url)
        .token(ADMIN)
        .build()
        .expect("a client");
    let task = tokio::spawn(async move {
        let mut stream = client.event_stream(Some(0)).await.expect("a stream");
        while let Some(e) = stream.next().await {
            match e {
                Ok(e) => sink.lock().unwrap().push(e.seq),
                Err(e) => panic!("the event stream failed: {e}"),
            }
        }
    });
    (seen, task)
}

fn offline_events_of(events: &[Value], id: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["type"] == "worker.offline" && e["worker_id"] == id)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_the_active_replica_hands_over_without_false_offline() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = replica(&db, dirs[0].path()).spawn().await;
    assert_eq!(
        role(&a.url).await.as_deref(),
        Some("active"),
        "the first replica leads"
    );
    let b = replica(&db, dirs[1].path()).spawn().await;
    let c = replica(&db, dirs[2].path()).spawn().await;
    assert_eq!(role(&b.url).await.as_deref(), Some("standby"));
    assert_eq!(role(&c.url).await.as_deref(), Some("standby"));

    // A stream client on a standby, from the start of the log.
    let (streamed, stream_task) = collect_stream(&c.url);

    // Registrations through every replica (the standbys forward them).
    let w1 = a.admin().register("w1", "m1").await;
    let w2 = Api::new(&b.url, ADMIN).register("w2", "m2").await;
    let w3 = Api::new(&c.url, ADMIN).register("w3", "m2").await;
    let silent = Api::new(&b.url, ADMIN).register("silent", "m3").await;
    // A heartbeat through a standby is answered by the active replica.
    let beat = Api::new(&c.url, ADMIN).heartbeat(&silent).await;
    assert_eq!(beat["status"], "online");

    let via_b = Target::new(&b.url);
    let via_c = Target::new(&c.url);
    let mut pulses = vec![
        Pulse::task(&via_b, &w1, EVERY),
        Pulse::task(&via_b, &w2, EVERY),
        Pulse::task(&via_c, &w3, EVERY),
    ];
    // Let every pulse be acknowledged through its standby before the kill.
    eventually(
        Duration::from_secs(10),
        "heartbeats through standbys",
        || async { pulses.iter().all(|p| p.stats().acks >= 2).then_some(()) },
    )
    .await;

    let killed_at = now_ms();
    a.kill9().await;
    let urls = [b.url.as_str(), c.url.as_str()];
    let new_active = wait_active(&urls).await;
    let active_at = now_ms();
    eprintln!(
        "takeover: replica {} active {} ms after kill -9",
        ["b", "c"][new_active],
        active_at - killed_at
    );
    let other = urls[1 - new_active];
    assert_eq!(
        role(other).await.as_deref(),
        Some("standby"),
        "exactly one active"
    );

    // The silent worker stopped before the takeover: the new active
    // replica still detects it, within stale_after of taking over (the
    // restart grace) and a second of slack.
    let api = Api::new(other, ADMIN);
    let offline = eventually(
        Duration::from_secs(20),
        "the silent worker to go offline",
        || async {
            let w = api.worker(&silent.id).await;
            (w["status"] == "offline").then_some(w)
        },
    )
    .await;
    assert_eq!(offline["offline_reason"], "stale", "{offline}");
    let marked_at = ts(&offline["status_changed_at"]);
    assert!(
        marked_at <= active_at + STALE_AFTER_MS + 1_000,
        "detected {} ms after the takeover",
        marked_at - active_at
    );

    // The heartbeating workers keep going through the takeover and two more
    // stale periods after it.
    until_ms(now_ms() + 2 * STALE_AFTER_MS).await;
    let acks_before: Vec<u64> = pulses.iter().map(|p| p.stats().acks).collect();
    eventually(
        Duration::from_secs(10),
        "heartbeats acknowledged by the new active",
        || async {
            pulses
                .iter()
                .zip(&acks_before)
                .all(|(p, before)| p.stats().acks > *before)
                .then_some(())
        },
    )
    .await;
    for p in &mut pulses {
        p.stop().await;
    }
    let events = api.events("").await;
    for w in [&w1, &w2, &w3] {
        assert_eq!(
            offline_events_of(&events, &w.id),
            Vec::<Value>::new(),
            "a worker that kept heartbeating was marked offline"
        );
        assert_eq!(api.worker(&w.id).await["status"], "online");
    }
    assert_eq!(offline_events_of(&events, &silent.id).len(), 1);

    // The log is gap-free and duplicate-free across the takeover, and the
    // standby's stream client saw every entry once, in order.
    let log: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        log.windows(2).all(|w| w[0] < w[1]),
        "log out of order: {log:?}"
    );
    let last = *log.last().unwrap();
    eventually(
        Duration::from_secs(10),
        "the stream to reach the end of the log",
        || async { (streamed.lock().unwrap().last() >= Some(&last)).then_some(()) },
    )
    .await;
    let seen = streamed.lock().unwrap().clone();
    assert_eq!(seen, log, "the stream on a standby differs from the log");
    stream_task.abort();
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutting_the_active_replicas_connection_demotes_it_and_never_two_are_active() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = replica(&db, dirs[0].path()).spawn().await;
    let b = replica(&db, dirs[1].path()).spawn().await;
    assert_eq!(role(&a.url).await.as_deref(), Some("active"));
    assert_eq!(role(&b.url).await.as_deref(), Some("standby"));

    let w = Api::new(&b.url, ADMIN).register("w", "m").await;
    let mut pulse = Pulse::task(&Target::new(&b.url), &w, EVERY);

    // Watch both roles all along: never may both say active.
    let both_active = Arc::new(Mutex::new(Vec::<i64>::new()));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (a_url, b_url) = (a.url.clone(), b.url.clone());
        let (both, on) = (both_active.clone(), watching.clone());
        tokio::spawn(async move {
            let mut samples = 0u64;
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                let (ra, rb) = tokio::join!(role(&a_url), role(&b_url));
                if ra.as_deref() == Some("active") && rb.as_deref() == Some("active") {
                    both.lock().unwrap().push(now_ms());
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            samples
        })
    };

    let cut = db.terminate_lock_holder().await;
    assert!(
        cut,
        "the active replica's lock connection was found and cut"
    );
    // The replica that lost its connection stops acting as active…
    eventually(TAKEOVER_TIMEOUT, "the cut replica to stand by", || async {
        (role(&a.url).await.as_deref() == Some("standby")).then_some(())
    })
    .await;
    // …and one replica (either) takes over.
    wait_active(&[a.url.as_str(), b.url.as_str()]).await;
    until_ms(now_ms() + 2 * STALE_AFTER_MS).await;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let samples = watcher.await.unwrap();
    assert!(samples > 10, "the watcher sampled the roles");
    assert_eq!(
        both_active.lock().unwrap().clone(),
        Vec::<i64>::new(),
        "two replicas reported the active role at the same time"
    );

    pulse.stop().await;
    let api = Api::new(&b.url, ADMIN);
    assert_eq!(api.worker(&w.id).await["status"], "online");
    let events = api.events("").await;
    assert_eq!(offline_events_of(&events, &w.id), Vec::<Value>::new());
    let seqs: BTreeSet<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs.len(), events.len(), "duplicate events");
    // Both replicas are still serving.
    for url in [&a.url, &b.url] {
        let resp = http_client()
            .get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
    }
    db.drop().await;
}
