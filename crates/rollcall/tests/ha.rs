//! Replicas on PostgreSQL, with real processes: several `rollcall serve`
//! on one database, workers heartbeating through different replicas, the
//! active one killed or cut off from the database.
//!
//! Each test gets a database of its own (`ROLLCALL_TEST_POSTGRES_URL`); see
//! `pg` below for what happens when that is not set.

mod common;
mod pg;
#[path = "../../rollcall-server/tests/common/receiver.rs"]
mod receiver;

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
    collect_stream_after(url, 0)
}

/// Collects the events a replica's stream delivers after `after`.
fn collect_stream_after(
    url: &str,
    after: u64,
) -> (Arc<Mutex<Vec<u64>>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let client = rollcall_client::Client::builder()
        .server(url)
        .token(ADMIN)
        .build()
        .expect("a client");
    let task = tokio::spawn(async move {
        let mut stream = client.event_stream(Some(after)).await.expect("a stream");
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

/// One answer, as a client sees it: status, headers (every one but `date`
/// and the role header, which name the moment and the answering replica),
/// and the body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: String,
}

async fn answer(resp: reqwest::Response) -> Answer {
    let status = resp.status();
    let mut headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .filter(|(n, _)| *n != "date" && *n != "x-rollcall-role")
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("<binary>").to_owned()))
        .collect();
    headers.sort();
    let body = resp.text().await.expect("a response body");
    Answer {
        status,
        headers,
        body,
    }
}

/// Sends one request and returns its answer and the role header.
async fn send_raw(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> (Answer, Option<String>) {
    let mut req = http_client().request(method.parse().unwrap(), format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json").body(body);
    }
    let resp = req.send().await.expect("an HTTP response");
    let role = resp
        .headers()
        .get("x-rollcall-role")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (answer(resp).await, role)
}

/// Starts an active replica and a standby on a fresh database.
async fn pair(db: &pg::Database, dirs: &[tempfile::TempDir]) -> (Server, Server) {
    let a = replica(db, dirs[0].path()).spawn().await;
    assert_eq!(role(&a.url).await.as_deref(), Some("active"));
    let b = replica(db, dirs[1].path()).spawn().await;
    assert_eq!(role(&b.url).await.as_deref(), Some("standby"));
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standby_answers_refused_changes_exactly_as_the_active_replica() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = pair(&db, &dirs).await;
    let w = a.admin().register("w", "m").await;

    let over = vec![b'x'; 64 * 1024 + 1];
    // (method, path, token, body, the active replica's status)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, StatusCode);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/tokens",
            Some(ADMIN),
            b"{bad".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/tokens",
            Some(ADMIN),
            br#"{"kind": "bogus", "name": "x"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/v1/tokens",
            None,
            b"{}".to_vec(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/v1/tokens",
            Some("rc_read_no-such-token"),
            over.clone(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "POST",
            "/v1/tokens",
            Some(ADMIN),
            over.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "POST",
            "/v1/workers/ID/heartbeat",
            Some(ADMIN),
            Vec::new(),
            StatusCode::FORBIDDEN,
        ),
        (
            "POST",
            "/v1/workers/wkr_nope/drain",
            Some(ADMIN),
            Vec::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            "PUT",
            "/v1/workers",
            Some(ADMIN),
            Vec::new(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (
            "POST",
            "/v1/nothing",
            Some(ADMIN),
            Vec::new(),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (method, path, token, body, status) in cases {
        let path = path.replace("ID", &w.id);
        let (direct, role_a) = send_raw(&a.url, method, &path, token, body.clone()).await;
        let (forwarded, role_b) = send_raw(&b.url, method, &path, token, body).await;
        assert_eq!(direct.status, status, "{method} {path}: {direct:?}");
        assert_eq!(role_a.as_deref(), Some("active"));
        assert_eq!(role_b.as_deref(), Some("standby"));
        assert_eq!(forwarded, direct, "{method} {path} through the standby");
    }

    // A body larger than the active replica reads and drains (64 KiB, then
    // up to 4 MiB) is still a 413 through a standby, every time, and does
    // not disturb the changes that follow.
    let too_large = send_raw(&a.url, "POST", "/v1/tokens", Some(ADMIN), over)
        .await
        .0;
    for _ in 0..10 {
        let (huge, _) = send_raw(
            &b.url,
            "POST",
            "/v1/tokens",
            Some(ADMIN),
            vec![b'x'; 5 * 1024 * 1024],
        )
        .await;
        assert_eq!(huge, too_large, "a 5 MiB body through the standby");
        let (created, _) = send_raw(
            &b.url,
            "POST",
            "/v1/tokens",
            Some(ADMIN),
            br#"{"kind": "read", "name": "after a refused body"}"#.to_vec(),
        )
        .await;
        assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    }
    db.drop().await;
}

/// A client that gives up half-way through a body sent to a standby costs
/// that request only: the standby still knows the active replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_cut_short_through_a_standby_does_not_refuse_later_changes() {
    use tokio::io::AsyncWriteExt;
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (_a, b) = pair(&db, &dirs).await;
    let api = Api::new(&b.url, ADMIN);
    for round in 1..=3 {
        let mut conn = tokio::net::TcpStream::connect(b.addr).await.unwrap();
        let head = format!(
            "POST /v1/tokens HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {ADMIN}\r\n\
             content-type: application/json\r\ncontent-length: 100000\r\n\r\n",
            b.addr
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&[b' '; 1000]).await.unwrap();
        conn.flush().await.unwrap();
        // The standby reads what was sent, then the end of the connection.
        drop(conn);
        eventually(
            Duration::from_secs(10),
            "the standby to notice the cut upload",
            || async {
                (b.stderr()
                    .matches("forwarding to the active replica failed")
                    .count()
                    >= round)
                    .then_some(())
            },
        )
        .await;
        let (status, body) = api
            .post(
                "/v1/tokens",
                serde_json::json!({"kind": "read", "name": "next"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "round {round}: {body}");
    }
    db.drop().await;
}

/// The status of `GET /v1/workers` with `token` on `url`.
async fn read_status(url: &str, token: &str) -> StatusCode {
    Api::new(url, token).get("/v1/workers").await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_changed_through_a_standby_counts_there_at_once_and_soon_everywhere() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = pair(&db, &dirs).await;
    let c = replica(&db, dirs[2].path()).spawn().await;
    assert_eq!(role(&c.url).await.as_deref(), Some("standby"));
    let via_b = Api::new(&b.url, ADMIN);
    for round in 0..10 {
        let (status, created) = via_b
            .post(
                "/v1/tokens",
                serde_json::json!({"kind": "read", "name": format!("reader {round}")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let token = created["token"].as_str().unwrap();
        let id = created["id"].as_str().unwrap();
        // The standby that passed the change on knows the token at once…
        assert_eq!(
            read_status(&b.url, token).await,
            StatusCode::OK,
            "round {round}"
        );
        // …as does the active replica that made it; the other standby
        // learns it from the database's notification.
        assert_eq!(read_status(&a.url, token).await, StatusCode::OK);
        eventually(
            Duration::from_secs(10),
            "the other standby to know the token",
            || async { (read_status(&c.url, token).await == StatusCode::OK).then_some(()) },
        )
        .await;

        let resp = via_b
            .http
            .delete(format!("{}/v1/tokens/{id}", b.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        // A deleted token stops working at once where it was deleted…
        assert_eq!(
            read_status(&b.url, token).await,
            StatusCode::UNAUTHORIZED,
            "round {round}"
        );
        assert_eq!(read_status(&a.url, token).await, StatusCode::UNAUTHORIZED);
        // …and soon on every replica.
        eventually(
            Duration::from_secs(10),
            "the other standby to forget the token",
            || async {
                (read_status(&c.url, token).await == StatusCode::UNAUTHORIZED).then_some(())
            },
        )
        .await;
    }
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_standbys_stream_delivers_the_log_in_order_while_the_active_replica_commits() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = pair(&db, &dirs).await;
    let (from_start, start_task) = collect_stream(&b.url);

    // Bursts of concurrent changes, through both replicas: registrations,
    // then each worker's own offline.
    let register = |i: usize| {
        let url = if i.is_multiple_of(2) {
            a.url.clone()
        } else {
            b.url.clone()
        };
        async move {
            Api::new(&url, ADMIN)
                .register(&format!("w{i}"), &format!("m{}", i % 5))
                .await
        }
    };
    let workers = futures::future::join_all((0..40).map(register)).await;
    // A second client joins mid-way, resuming after some event on the log.
    let mid = Api::new(&a.url, ADMIN).events("").await.len() as u64 / 2;
    let (from_mid, mid_task) = collect_stream_after(&b.url, mid);
    let offline = |(i, w): (usize, &Registered)| {
        let url = if i.is_multiple_of(2) {
            b.url.clone()
        } else {
            a.url.clone()
        };
        let http = http_client();
        let (id, token) = (w.id.clone(), w.token.clone());
        async move {
            let resp = http
                .post(format!("{url}/v1/workers/{id}/offline"))
                .bearer_auth(token)
                .send()
                .await
                .expect("an answer to offline");
            assert_eq!(resp.status(), StatusCode::OK, "offline of {id}");
        }
    };
    futures::future::join_all(workers.iter().enumerate().map(offline)).await;

    let log: Vec<u64> = Api::new(&b.url, ADMIN)
        .events("")
        .await
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        log,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "the log has a gap"
    );
    let last = *log.last().unwrap();
    for (seen, what) in [(&from_start, "from the start"), (&from_mid, "from mid-way")] {
        eventually(
            Duration::from_secs(10),
            "the stream to reach the end of the log",
            || async { (seen.lock().unwrap().last() >= Some(&last)).then_some(()) },
        )
        .await;
        let first = if what == "from mid-way" { mid + 1 } else { 1 };
        assert_eq!(
            *seen.lock().unwrap(),
            (first..=last).collect::<Vec<_>>(),
            "the standby's stream {what} differs from the log"
        );
    }
    start_task.abort();
    mid_task.abort();
    db.drop().await;
}

/// The log line of a replica that took the role from one that may not have
/// noticed yet (it waits before acting), and of one that found it free.
const TOOK_OVER_WAITING: &str = "took the active role; waiting for the replica that held it";
const TOOK_OVER_FREE: &str = "took the active role, which no replica held";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_of_the_active_replica_hands_over_at_once_kill9_after_the_wait() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut a, mut b) = pair(&db, &dirs).await;
    let w = Api::new(&b.url, ADMIN).register("w", "m").await;
    let target = Target::new(&b.url);
    let mut pulse = Pulse::task(&target, &w, EVERY);
    eventually(Duration::from_secs(10), "heartbeats", || async {
        (pulse.stats().acks >= 2).then_some(())
    })
    .await;

    // SIGTERM: the active replica hands over as it stops; the standby
    // takes the free role without waiting.
    let t = std::time::Instant::now();
    let (status, _) = a.stop_with("TERM").await;
    assert!(status.success(), "{status:?}: {}", a.stderr());
    wait_active(&[b.url.as_str()]).await;
    let graceful = t.elapsed();
    let log = b.stderr();
    assert!(log.contains(TOOK_OVER_FREE), "{log}");
    assert!(!log.contains(TOOK_OVER_WAITING), "{log}");

    // kill -9: the standby has to wait until the dead replica could have
    // noticed.
    let a = replica(&db, dirs[0].path()).spawn().await;
    assert_eq!(role(&a.url).await.as_deref(), Some("standby"));
    target.set(&a.url);
    let acks = pulse.stats().acks;
    eventually(
        Duration::from_secs(10),
        "heartbeats through the standby",
        || async { (pulse.stats().acks > acks).then_some(()) },
    )
    .await;
    let t = std::time::Instant::now();
    b.kill9().await;
    wait_active(&[a.url.as_str()]).await;
    let killed = t.elapsed();
    assert!(a.stderr().contains(TOOK_OVER_WAITING), "{}", a.stderr());
    eprintln!("handover: {graceful:?} after SIGTERM, {killed:?} after kill -9");

    // The worker heartbeated through both handovers and stayed online.
    let acks = pulse.stats().acks;
    eventually(
        Duration::from_secs(10),
        "heartbeats after the takeover",
        || async { (pulse.stats().acks > acks).then_some(()) },
    )
    .await;
    pulse.stop().await;
    let api = Api::new(&a.url, ADMIN);
    assert_eq!(api.worker(&w.id).await["status"], "online");
    assert_eq!(
        offline_events_of(&api.events("").await, &w.id),
        Vec::<Value>::new()
    );
    db.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_given_two_replicas_keeps_its_worker_online_when_the_first_dies() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (mut a, b) = pair(&db, &dirs).await;
    let (status, enroll) = a
        .admin()
        .post(
            "/v1/tokens",
            serde_json::json!({"kind": "enroll", "name": "agents"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enroll}");

    let mut agent = tokio::process::Command::new(BIN);
    agent
        .args(["agent", "run", "--server", &format!("{},{}", a.url, b.url)])
        .args(["--token", enroll["token"].as_str().unwrap()])
        .args([
            "--name",
            "sleeper",
            "--machine-id",
            "host-a",
            "--",
            "sleep",
            "600",
        ])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ROLLCALL_") {
            agent.env_remove(&k);
        }
    }
    let mut agent = agent.spawn().expect("rollcall agent starts");

    let api_b = Api::new(&b.url, ADMIN);
    let worker = eventually(
        Duration::from_secs(20),
        "the agent's worker online",
        || async {
            let list = api_b.get_ok("/v1/workers?machine_id=host-a").await;
            list["items"]
                .as_array()
                .and_then(|ws| ws.iter().find(|w| w["name"] == "sleeper"))
                .filter(|w| w["status"] == "online")
                .cloned()
        },
    )
    .await;
    let id = worker["id"].as_str().unwrap().to_owned();

    // The replica the agent talks to first, the active one, dies.
    a.kill9().await;
    wait_active(&[b.url.as_str()]).await;
    let active_at = now_ms();
    // Heartbeats reach the new active replica, through the second URL…
    let api = Api::new(&b.url, ADMIN);
    eventually(
        Duration::from_secs(10),
        "a heartbeat after the takeover",
        || async {
            let w = api.worker(&id).await;
            let beat = &w["last_heartbeat_at"];
            (!beat.is_null() && ts(beat) > active_at).then_some(())
        },
    )
    .await;
    // …and keep it online, in the same session, past a stale period.
    until_ms(now_ms() + STALE_AFTER_MS + 500).await;
    let now = api.worker(&id).await;
    assert_eq!(now["status"], "online", "{now}");
    assert_eq!(now["session"], worker["session"], "{now}");
    assert_eq!(
        offline_events_of(&api.events("").await, &id),
        Vec::<Value>::new()
    );
    assert!(
        matches!(agent.try_wait(), Ok(None)),
        "the agent and its child keep running"
    );

    // Told to stop, the agent marks its worker offline through the survivor.
    let pid = agent.id().expect("the agent runs");
    let status = std::process::Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    tokio::time::timeout(EXIT_TIMEOUT, agent.wait())
        .await
        .expect("the agent exits on SIGTERM")
        .unwrap();
    let w = api.worker(&id).await;
    assert_eq!(w["status"], "offline", "{w}");
    assert_eq!(w["offline_reason"], "shutdown", "{w}");
    db.drop().await;
}

/// Heartbeats the workers in `beating` (as it is at each round) through
/// `url`, in batches of 1,000 every 300 ms, until aborted.
fn keep_beating(
    url: &str,
    beating: Arc<Mutex<Vec<(String, String)>>>,
) -> tokio::task::JoinHandle<()> {
    let client = http_client();
    let url = format!("{url}/v1/heartbeats");
    tokio::spawn(async move {
        loop {
            let workers = beating.lock().unwrap().clone();
            for chunk in workers.chunks(1_000) {
                let beats: Vec<Value> = chunk
                    .iter()
                    .map(|(id, token)| serde_json::json!({"worker_id": id, "token": token}))
                    .collect();
                let _ = client
                    .post(&url)
                    .bearer_auth(ADMIN)
                    .json(&serde_json::json!({ "heartbeats": beats }))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mass_failure_across_a_takeover_is_still_one_page() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let hook = receiver::Receiver::start().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    // The default group_wait (10 s) outlasts a takeover and the restart
    // grace after it.
    let file = write_file(
        dirs[0].path(),
        "rollcall.toml",
        &format!(
            "[[channel]]\nname = \"out\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"k3v9-Qz7u-2Lr8-Wm4x-Ty6p\"\n\
             [[alert]]\nname = \"down\"\nkind = \"worker_offline\"\nchannels = [\"out\"]\n\
             [[alert]]\nname = \"outage\"\nkind = \"mass_failure\"\npercent = 20\nwindow = \"30s\"\nchannels = [\"out\"]\n",
            hook.url
        ),
    );
    let config = ["--config", file.to_str().unwrap()];
    let mut a = replica(&db, dirs[0].path()).args(&config).spawn().await;
    assert_eq!(role(&a.url).await.as_deref(), Some("active"));
    let b = replica(&db, dirs[1].path()).args(&config).spawn().await;
    assert_eq!(role(&b.url).await.as_deref(), Some("standby"));

    // 2,000 workers on 20 machines, registered and beating through the
    // standby (it forwards to the active replica).
    let beating: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let keep = keep_beating(&b.url, beating.clone());
    let api = Api::new(&b.url, ADMIN);
    let (mut live, mut dying) = (Vec::new(), Vec::new());
    for i in 0..2_000 {
        let body = serde_json::json!({"name": format!("w{i}"), "machine": {"id": format!("m{}", i % 20)},
                                      "heartbeat_interval_ms": 300, "stale_after_ms": 3_000});
        let w = api.register_with(body).await;
        let pair = (w.id.clone(), w.token.clone());
        beating.lock().unwrap().push(pair.clone());
        if i % 2 == 0 {
            dying.push(pair);
        } else {
            live.push(pair);
        }
    }
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // Half the fleet stops; the active replica dies as the crashes begin.
    *beating.lock().unwrap() = live;
    eventually(Duration::from_secs(30), "the first crashes", || async {
        let events = api.events("?type=worker.offline").await;
        (!events.is_empty()).then_some(())
    })
    .await;
    a.kill9().await;
    assert!(
        hook.all().is_empty(),
        "nothing was sent before the takeover (group_wait): the new active replica sends it all"
    );
    let urls = [b.url.as_str()];
    wait_active(&urls).await;

    let opened = eventually(
        Duration::from_secs(60),
        "the mass failure pages",
        || async { hook.notifications().first().cloned() },
    )
    .await;
    assert_eq!(opened["incident"]["kind"], "mass_failure", "{opened}");
    let path = format!(
        "/v1/incidents/{}",
        opened["incident"]["id"].as_str().unwrap()
    );
    eventually(Duration::from_secs(60), "all 1,000 covered", || async {
        let mass = api.get_ok(&path).await;
        let n = mass["details"]["covered"].as_array().map_or(0, Vec::len);
        (n == 1_000).then_some(())
    })
    .await;

    // They come back: the resolve.
    beating.lock().unwrap().extend(dying);
    eventually(Duration::from_secs(60), "the resolve", || async {
        hook.notifications()
            .iter()
            .any(|n| n["transition"] == "resolved")
            .then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the outbox empties", || async {
        let resp = http_client()
            .get(format!("{}/metrics", b.url))
            .bearer_auth(ADMIN)
            .send()
            .await
            .ok()?;
        let body = resp.text().await.ok()?;
        body.contains("rollcall_outbox_pending 0").then_some(())
    })
    .await;
    keep.abort();
    // One opening and one resolve, each perhaps more than once but then
    // with its key: never a page per worker.
    let keys: BTreeSet<String> = hook
        .notifications()
        .iter()
        .map(|n| n["idempotency_key"].as_str().unwrap().to_owned())
        .collect();
    let mass_id = opened["incident"]["id"].as_str().unwrap();
    assert_eq!(
        keys,
        BTreeSet::from([
            format!("{mass_id}:opened:out"),
            format!("{mass_id}:resolved:out")
        ]),
        "{:#?}",
        hook.notifications()
    );
    db.drop().await;
}
