//! The client against the real server, in process on port 0 with short
//! timings (heartbeat 250 ms, stale after 1 s): the contract as both
//! sides implement it. Real time here — the server keeps its own clock — so
//! every wait is a condition polled against a deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rollcall_client::{
    BatchHeartbeat, Client, ErrorCode, EventQuery, EventReason, EventType, MachineId,
    MachineStatus, NewToken, OfflineReason, Phase, RegisterRequest, Status, TokenKind,
    WorkerHandle, WorkerName, WorkerOptions, WorkerQuery,
};
use rollcall_server::{RawConfig, SystemClock};

const ADMIN: &str = "rc_admin_0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(15);

struct Server {
    running: rollcall_server::Running,
    url: String,
    _dir: tempfile::TempDir,
}

async fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\nheartbeat_interval = \"250ms\"\n\
         stale_after = \"1s\"\nadmin_token = {ADMIN:?}\n",
        dir.path().display().to_string()
    );
    let config = RawConfig::from_toml("test.toml", &toml)
        .unwrap()
        .resolve()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let running = rollcall_server::start(config, listener, Arc::new(SystemClock))
        .await
        .unwrap();
    let url = format!("http://{}", running.addr());
    Server {
        running,
        url,
        _dir: dir,
    }
}

fn client(url: &str, token: &str) -> Client {
    Client::builder()
        .server(url)
        .token(token)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// Polls `check` until it returns `Some`, failing after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn options(name: &str) -> WorkerOptions {
    let mut o = WorkerOptions::new(WorkerName::parse(name).unwrap());
    o.machine_id = Some(MachineId::parse("host-a").unwrap());
    o.hostname = Some("host-a.example".into());
    o.labels.insert("queue".into(), "gpu".into());
    o.initial_backoff = Duration::from_millis(20);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_contract_against_the_real_server() {
    let server = start_server().await;
    let anon = Client::new(&server.url).unwrap();
    anon.healthz().await.unwrap();
    assert!(anon.readyz().await.unwrap());
    assert!(anon.openapi().await.unwrap().get("paths").is_some());

    // Tokens.
    let admin = client(&server.url, ADMIN);
    let enroll = admin
        .create_token(&NewToken::new(TokenKind::Enroll, "fleet"))
        .await
        .unwrap();
    assert_eq!(enroll.kind, TokenKind::Enroll);
    let read = admin
        .create_token(&NewToken::new(TokenKind::Read, "dash").expires_in(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(read.expires_at.is_some());
    let tokens = admin.list_all_tokens().await.unwrap();
    assert!(tokens.iter().any(|t| t.id == enroll.id));
    let enroll = client(&server.url, enroll.token.expose());
    let read = client(&server.url, read.token.expose());

    // Auth errors are typed.
    let e = client(&server.url, "rc_read_nope")
        .list_workers(&WorkerQuery::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Unauthorized));
    let e = read.cleanup_stale().await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Forbidden));

    // A worker handle registers and heartbeats at the server's interval.
    let worker = WorkerHandle::register(&enroll, options("render-1"))
        .await
        .unwrap();
    let id = worker.id().unwrap();
    assert_eq!(worker.session(), Some(1));
    assert_eq!(
        worker.state().heartbeat_interval,
        Some(Duration::from_millis(250))
    );
    let mut rx = worker.subscribe();
    tokio::time::timeout(WAIT, rx.wait_for(|s| s.deadline_at.is_some()))
        .await
        .unwrap()
        .unwrap();
    // Alive well past stale_after: the heartbeats arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let w = read.get_worker(&id).await.unwrap();
    assert_eq!(w.status, Status::Online);
    assert_eq!(w.session, 1);
    assert_eq!(w.labels["queue"], "gpu");

    let online = read
        .list_all_workers(&WorkerQuery {
            status: Some(Status::Online),
            machine_id: Some(MachineId::parse("host-a").unwrap()),
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(online.len(), 1);
    let m = read
        .get_machine(&MachineId::parse("host-a").unwrap())
        .await
        .unwrap();
    assert_eq!(m.machine.status, MachineStatus::Online);
    assert_eq!(m.machine.hostname.as_deref(), Some("host-a.example"));
    assert_eq!(m.workers.len(), 1);
    let machines = read.list_all_machines(&Default::default()).await.unwrap();
    assert_eq!(machines.len(), 1);

    // Drain through the handle.
    assert_eq!(worker.drain().await.unwrap().status, Status::Draining);
    assert_eq!(read.get_worker(&id).await.unwrap().status, Status::Draining);

    // An admin deletes the worker: its token is revoked, the handle gets a
    // 401 and registers again (a new record), and stays draining.
    admin.delete_worker(&id).await.unwrap();
    let st = tokio::time::timeout(
        WAIT,
        rx.wait_for(|s| s.registrations == 2 && s.phase == Phase::Registered),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    let new_id = st.worker_id.unwrap();
    eventually("the new session drained", || async {
        let w = read.get_worker(&new_id).await.ok()?;
        (w.status == Status::Draining).then_some(())
    })
    .await;

    // Batch heartbeats for a worker registered by hand.
    let req = RegisterRequest::new(
        WorkerName::parse("batch-1").unwrap(),
        MachineId::parse("host-b").unwrap(),
    );
    let reg = enroll.register(&req).await.unwrap();
    assert!(reg.created);
    let results = enroll
        .batch_heartbeats(&[
            BatchHeartbeat {
                worker_id: reg.worker.id.clone(),
                token: reg.token.clone(),
            },
            BatchHeartbeat {
                worker_id: reg.worker.id.clone(),
                token: "rc_worker_wrong".into(),
            },
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 2);
    assert_eq!(results[0].outcome.as_ref().unwrap().status, Status::Online);
    assert_eq!(
        results[1].outcome.as_ref().unwrap_err().code,
        ErrorCode::Unauthorized
    );
    // Registered again: 200, new session, and the old token is fenced off.
    let again = enroll.register(&req).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.worker.session, reg.worker.session + 1);
    let e = enroll
        .with_token(reg.token.clone())
        .heartbeat(&reg.worker.id)
        .await
        .unwrap_err();
    assert!(e.is_unauthorized());
    let ack = enroll
        .with_token(again.token.clone())
        .heartbeat(&again.worker.id)
        .await
        .unwrap();
    assert_eq!(ack.session, again.worker.session);
    // Goes offline by hand with reason exited; idempotent.
    let w = enroll
        .with_token(again.token.clone())
        .offline(&again.worker.id, OfflineReason::Exited)
        .await
        .unwrap();
    assert_eq!(w.offline_reason, Some(OfflineReason::Exited));
    let w2 = admin
        .offline(&again.worker.id, OfflineReason::Exited)
        .await
        .unwrap();
    assert_eq!(w2, w);

    // A handle that is dropped stops heartbeating and goes stale.
    let quiet = WorkerHandle::register(&enroll, options("quiet-1"))
        .await
        .unwrap();
    let quiet_id = quiet.id().unwrap();
    drop(quiet);
    let stale = eventually("the dropped worker to go stale", || async {
        let w = read.get_worker(&quiet_id).await.ok()?;
        (w.status == Status::Offline).then_some(w)
    })
    .await;
    assert_eq!(stale.offline_reason, Some(OfflineReason::Stale));

    // Shutdown marks the first worker offline at once.
    let w = worker.shutdown().await.unwrap().unwrap();
    assert_eq!(w.status, Status::Offline);
    assert_eq!(w.offline_reason, Some(OfflineReason::Shutdown));

    // The event log tells the story, page by page and live.
    let events = read
        .list_all_events(&EventQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    let stale_event = events
        .iter()
        .find(|e| e.worker_id.as_ref() == Some(&quiet_id) && e.reason == Some(EventReason::Stale))
        .expect("a stale event");
    assert!(stale_event.detection_lag_ms.is_some());
    let filtered = read
        .list_all_events(&EventQuery {
            event_type: Some(EventType::WorkerRegistered),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(filtered
        .iter()
        .all(|e| e.event_type == EventType::WorkerRegistered));
    assert!(filtered.len() >= 3);

    // (The live stream, GET /v1/events/stream, is not served yet at the
    // time of writing; it is covered against a fake in tests/client.rs.)

    // Cleanup.
    assert!(admin.cleanup_stale().await.unwrap().success);
    assert!(admin.cleanup_all().await.unwrap().success);

    // Not found is typed.
    let e = read.get_worker(&id).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::NotFound));

    server.running.shutdown().await.unwrap();
}

/// The typed health calls decode what the real server answers, with the
/// figures the server computed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_against_the_real_server() {
    use rollcall_client::{CrashKind, HealthQuery, RegisterRequest};
    let server = start_server().await;
    let admin = client(&server.url, ADMIN);
    let mut req = RegisterRequest::new(
        WorkerName::parse("h1").unwrap(),
        MachineId::parse("host-h").unwrap(),
    );
    req.stale_after_ms = Some(60_000);
    let reg = admin.register(&req).await.unwrap();
    let id = reg.worker.id.clone();
    let own = admin.with_token(reg.token.expose());
    let off = own.offline(&id, OfflineReason::Exited).await.unwrap();
    let crashed = off.status_changed_at;

    let q = HealthQuery {
        buckets: Some(4),
        top: Some(3),
        ..HealthQuery::window("1h")
    };
    let w = admin.worker_health(&id, &q).await.unwrap();
    assert_eq!(w.worker_id, id);
    assert_eq!(w.name.as_ref().map(|n| n.as_str()), Some("h1"));
    assert_eq!(w.figures.crashes.exited, 1);
    assert_eq!(w.figures.crashes.total, 1);
    let last = w.figures.last_crash.unwrap();
    assert_eq!((last.at, last.kind), (crashed, CrashKind::Exited));
    assert_eq!(
        w.figures.live_ms as i64,
        crashed.diff_ms(reg.worker.registered_at)
    );
    assert_eq!(w.figures.observed_ms, w.figures.live_ms + w.figures.down_ms);
    assert_eq!(w.buckets.len(), 4);
    assert_eq!(w.buckets.iter().map(|b| b.crashes).sum::<u64>(), 1);

    let m = admin
        .machine_health(&MachineId::parse("host-h").unwrap(), &q)
        .await
        .unwrap();
    assert_eq!(m.workers.len(), 1);
    assert_eq!(m.figures.crashes.exited, 1);
    assert_eq!(m.figures.live_ms, w.figures.live_ms);

    let f = admin.fleet_health(&q).await.unwrap();
    assert_eq!((f.workers, f.machines), (1, 1));
    assert_eq!(f.crashes.exited, 1);
    assert_eq!(f.top_machines_by_crashes[0].machine_id.as_str(), "host-h");
    assert_eq!(f.top_workers_by_crashes[0].worker_id, id);
    let labelled = HealthQuery {
        labels: vec![("queue".into(), "none".into())],
        ..HealthQuery::window("1h")
    };
    assert_eq!(admin.fleet_health(&labelled).await.unwrap().workers, 0);

    let e = admin
        .fleet_health(&HealthQuery::window("7w"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::InvalidRequest));
    let e = admin
        .machine_health(&MachineId::parse("nowhere").unwrap(), &q)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::NotFound));
}
