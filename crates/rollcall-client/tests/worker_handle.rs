//! The worker handle against a stateful fake server whose failures each
//! test scripts. Time is paused: every sleep of the handle is virtual, so
//! the tests run at full speed with the server's real 30 s interval, and
//! waits have virtual deadlines.

mod support;

use std::time::Duration;

use rollcall_client::backoff::retry_ceiling;
use rollcall_client::{
    Client, Error, ErrorCode, MachineId, OfflineReason, Phase, Status, WorkerHandle, WorkerName,
    WorkerOptions,
};
use support::{closed_port_url, FakeRollcall, WKR};

const INTERVAL: Duration = Duration::from_secs(30);
/// A virtual deadline long enough for anything these tests wait for.
const DEADLINE: Duration = Duration::from_secs(3600);

fn options() -> WorkerOptions {
    let mut o = WorkerOptions::new(WorkerName::parse("render-1").unwrap());
    o.machine_id = Some(MachineId::parse("host-a").unwrap());
    o.hostname = Some("host-a.example".into());
    o.initial_backoff = Duration::from_secs(1);
    o
}

fn enroll_client(url: &str) -> Client {
    Client::builder()
        .server(url)
        .token("rc_enroll_test")
        .build()
        .unwrap()
}

/// Asserts `gap` is within `[lo, hi]`, with a millisecond of slack for the
/// rounding of virtual time.
fn assert_between(gap: Duration, lo: Duration, hi: Duration, what: &str) {
    let slack = Duration::from_millis(1);
    assert!(
        gap + slack >= lo && gap <= hi + slack,
        "{what}: {gap:?} not in [{lo:?}, {hi:?}]"
    );
}

#[tokio::test(start_paused = true)]
async fn registers_and_heartbeats_at_the_server_interval_with_jitter() {
    let fake = FakeRollcall::start(INTERVAL).await;
    let started = tokio::time::Instant::now();
    let worker = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap();
    assert_eq!(worker.id().unwrap().as_str(), WKR);
    assert_eq!(worker.session(), Some(1));
    assert_eq!(worker.status(), Some(Status::Online));
    assert_eq!(worker.state().phase, Phase::Registered);

    fake.wait_until(DEADLINE, "8 heartbeats", |s| s.ok_heartbeats().len() >= 8)
        .await;
    let beats = fake.with(|s| s.ok_heartbeats());
    let mut previous = started;
    let mut gaps = Vec::new();
    for t in &beats[..8] {
        gaps.push(*t - previous);
        previous = *t;
    }
    for g in &gaps {
        assert_between(
            *g,
            INTERVAL.mul_f64(0.9),
            INTERVAL.mul_f64(1.1),
            "heartbeat gap",
        );
    }
    assert!(
        gaps.windows(2).any(|w| w[0] != w[1]),
        "jitter should vary the gaps: {gaps:?}"
    );
    // Every heartbeat used the worker's own token.
    assert!(fake.with(|s| s
        .heartbeats
        .iter()
        .all(|(_, t, _)| t.as_deref() == Some("rc_worker_1"))));
    // The registration carried the options.
    let body = fake.with(|s| s.registrations[0].clone());
    assert_eq!(body["name"], "render-1");
    assert_eq!(body["machine"]["id"], "host-a");
    assert_eq!(body["machine"]["hostname"], "host-a.example");
}

#[tokio::test(start_paused = true)]
async fn a_refused_worker_token_makes_it_register_again() {
    let fake = FakeRollcall::start(INTERVAL).await;
    let worker = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap();
    fake.wait_until(DEADLINE, "a heartbeat", |s| !s.ok_heartbeats().is_empty())
        .await;

    // The token is revoked (or rotated) behind the worker's back.
    fake.revoke_token();
    fake.wait_until(DEADLINE, "a second registration", |s| {
        s.registrations.len() == 2
    })
    .await;
    fake.wait_until(DEADLINE, "a heartbeat with the new token", |s| {
        s.heartbeats
            .iter()
            .any(|(_, t, code)| t.as_deref() == Some("rc_worker_2") && *code == 200)
    })
    .await;

    let state = worker.state();
    assert_eq!(state.phase, Phase::Registered);
    assert_eq!(state.registrations, 2);
    assert_eq!(state.session, Some(2));
    // One 401, then straight to registering: no backoff in between.
    let (refused_at, reregistered) = fake.with(|s| {
        let refused = s.heartbeats.iter().find(|(_, _, c)| *c == 401).unwrap().0;
        (refused, s.register_attempts)
    });
    assert_eq!(reregistered, 2);
    let first_new = fake.with(|s| {
        s.heartbeats
            .iter()
            .find(|(_, t, _)| t.as_deref() == Some("rc_worker_2"))
            .unwrap()
            .0
    });
    assert_between(
        first_new - refused_at,
        INTERVAL.mul_f64(0.9),
        INTERVAL.mul_f64(1.1),
        "first heartbeat of the new session",
    );
}

#[tokio::test(start_paused = true)]
async fn backs_off_while_the_server_is_unavailable_capped_at_the_interval() {
    let fake = FakeRollcall::start(INTERVAL).await;
    let worker = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap();
    let mut state = worker.subscribe();
    const FAILURES: usize = 8;
    fake.update(|s| s.heartbeat_failures.extend([503; FAILURES]));

    fake.wait_until(DEADLINE, "recovery after the failures", |s| {
        s.heartbeats.len() > FAILURES
    })
    .await;
    let beats = fake.with(|s| s.heartbeats.clone());
    assert!(beats[..FAILURES].iter().all(|(_, _, c)| *c == 503));
    assert_eq!(beats[FAILURES].2, 200);
    // Attempt n+1 follows attempt n after half to all of
    // min(interval, 1 s · 2^(n-1)): 1, 2, 4, 8, 16, 30, 30 s ceilings.
    for n in 1..=FAILURES {
        let gap = beats[n].0 - beats[n - 1].0;
        let ceiling = retry_ceiling(n as u32, Duration::from_secs(1), INTERVAL);
        assert_between(gap, ceiling / 2, ceiling, &format!("retry {n}"));
    }
    // Back to the normal rhythm after the recovery.
    fake.wait_until(DEADLINE, "one more heartbeat", |s| {
        s.heartbeats.len() > FAILURES + 1
    })
    .await;
    let beats = fake.with(|s| s.heartbeats.clone());
    assert_between(
        beats[FAILURES + 1].0 - beats[FAILURES].0,
        INTERVAL.mul_f64(0.9),
        INTERVAL.mul_f64(1.1),
        "after recovery",
    );
    let st = state.borrow_and_update().clone();
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.last_error.is_none());
    assert_eq!(st.registrations, 1, "a 503 is not a reason to re-register");
}

#[tokio::test(start_paused = true)]
async fn failures_are_visible_in_the_state() {
    let fake = FakeRollcall::start(INTERVAL).await;
    let worker = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap();
    fake.update(|s| s.heartbeat_failures.extend([503; 3]));
    let mut rx = worker.subscribe();
    let st = tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.consecutive_failures >= 3))
        .await
        .unwrap()
        .unwrap()
        .clone();
    let last = st.last_error.expect("the last error is kept");
    assert_eq!(last.code(), Some(&ErrorCode::Unavailable));
    assert_eq!(st.phase, Phase::Registered);
}

#[tokio::test(start_paused = true)]
async fn spawn_registering_retries_until_the_server_answers() {
    let fake = FakeRollcall::start(INTERVAL).await;
    fake.update(|s| s.register_failures.extend([503, 503, 500]));
    let worker = WorkerHandle::spawn_registering(&enroll_client(&fake.url), options());
    assert_eq!(worker.state().phase, Phase::Registering);
    assert_eq!(worker.id(), None);

    let id = tokio::time::timeout(DEADLINE, worker.wait_registered())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id.as_str(), WKR);
    assert_eq!(fake.with(|s| s.register_attempts), 4);
    fake.wait_until(DEADLINE, "a heartbeat", |s| !s.ok_heartbeats().is_empty())
        .await;
}

#[tokio::test(start_paused = true)]
async fn spawn_registering_waits_for_a_server_that_is_not_there_yet() {
    let (url, addr) = closed_port_url().await;
    let worker = WorkerHandle::spawn_registering(&enroll_client(&url), options());
    let mut rx = worker.subscribe();
    tokio::time::timeout(DEADLINE, rx.wait_for(|s| s.consecutive_failures >= 3))
        .await
        .unwrap()
        .unwrap();
    assert!(worker.state().last_error.unwrap().is_transport());

    // The server comes up on that address.
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let fake = FakeRollcall::start_on(listener, INTERVAL);
    tokio::time::timeout(DEADLINE, worker.wait_registered())
        .await
        .unwrap()
        .unwrap();
    fake.wait_until(DEADLINE, "a heartbeat", |s| !s.ok_heartbeats().is_empty())
        .await;
}

#[tokio::test(start_paused = true)]
async fn register_reports_refusals_to_the_caller() {
    let fake = FakeRollcall::start(INTERVAL).await;
    fake.update(|s| s.register_failures.push_back(400));
    let e = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap_err();
    assert_eq!(e.status().map(|s| s.as_u16()), Some(400));

    let wrong = Client::builder()
        .server(&fake.url)
        .token("rc_enroll_wrong")
        .build()
        .unwrap();
    let e = WorkerHandle::register(&wrong, options()).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Unauthorized));
}

#[tokio::test(start_paused = true)]
async fn shutdown_goes_offline_and_stops_heartbeating() {
    let fake = FakeRollcall::start(INTERVAL).await;
    let worker = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap();
    fake.wait_until(DEADLINE, "a heartbeat", |s| !s.ok_heartbeats().is_empty())
        .await;
    let rx = worker.subscribe();

    let w = worker.shutdown().await.unwrap().expect("it was registered");
    assert_eq!(w.status, Status::Offline);
    assert_eq!(fake.with(|s| s.offlines.clone()), ["shutdown"]);
    assert_eq!(rx.borrow().phase, Phase::Stopped);
    assert_eq!(rx.borrow().status, Some(Status::Offline));

    let beats = fake.with(|s| s.heartbeats.len());
    tokio::time::sleep(INTERVAL * 10).await;
    assert_eq!(fake.with(|s| s.heartbeats.len()), beats);
}

#[tokio::test(start_paused = true)]
async fn offline_with_exited_for_agents() {
    let fake = FakeRollcall::start(INTERVAL).await;
    let worker = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap();
    worker.offline(OfflineReason::Exited).await.unwrap();
    assert_eq!(fake.with(|s| s.offlines.clone()), ["exited"]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_before_registering_sends_nothing() {
    let (url, _) = closed_port_url().await;
    let worker = WorkerHandle::spawn_registering(&enroll_client(&url), options());
    assert!(matches!(worker.drain().await, Err(Error::NotRegistered)));
    assert_eq!(worker.shutdown().await.unwrap(), None);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_stops_heartbeating() {
    let fake = FakeRollcall::start(INTERVAL).await;
    let worker = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap();
    fake.wait_until(DEADLINE, "a heartbeat", |s| !s.ok_heartbeats().is_empty())
        .await;
    let mut rx = worker.subscribe();
    drop(worker);
    // The task is gone: its state channel closes.
    tokio::time::timeout(DEADLINE, async { while rx.changed().await.is_ok() {} })
        .await
        .unwrap();
    let beats = fake.with(|s| s.heartbeats.len());
    tokio::time::sleep(INTERVAL * 10).await;
    assert_eq!(fake.with(|s| s.heartbeats.len()), beats);
    assert!(fake.with(|s| s.offlines.is_empty()));
}

#[tokio::test(start_paused = true)]
async fn drain_is_applied_again_after_registering_again() {
    let fake = FakeRollcall::start(INTERVAL).await;
    let worker = WorkerHandle::register(&enroll_client(&fake.url), options())
        .await
        .unwrap();
    let w = worker.drain().await.unwrap();
    assert_eq!(w.status, Status::Draining);
    assert_eq!(worker.status(), Some(Status::Draining));

    fake.revoke_token();
    fake.wait_until(DEADLINE, "the new session drained", |s| {
        s.registrations.len() == 2 && s.drains == 2
    })
    .await;
    fake.wait_until(DEADLINE, "a heartbeat of the new session", |s| {
        s.heartbeats
            .iter()
            .any(|(_, t, c)| t.as_deref() == Some("rc_worker_2") && *c == 200)
    })
    .await;
    assert_eq!(worker.status(), Some(Status::Draining));
    assert_eq!(worker.session(), Some(2));
}
