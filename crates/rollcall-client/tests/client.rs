//! The client against a scripted fake server: what it sends for each
//! endpoint, how it reads answers and errors, pagination and failover.

mod support;

use std::time::Duration;

use rollcall_client::{
    BatchHeartbeat, Client, Error, ErrorCode, EventQuery, EventType, MachineId, MachineQuery,
    MachineStatus, NewToken, OfflineReason, RegisterRequest, Status, StatusCode, TokenId,
    TokenKind, WorkerId, WorkerName, WorkerQuery,
};
use serde_json::json;
use support::{closed_port_url, worker_json, Canned, Scripted, WKR};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn client(urls: &[&str], token: &str) -> Client {
    Client::builder()
        .servers(urls.iter().copied())
        .token(token)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn wkr() -> WorkerId {
    WorkerId::parse(WKR).unwrap()
}

fn event_json(seq: u64) -> serde_json::Value {
    json!({"seq": seq, "at": "2026-11-28T07:18:40.123Z", "type": "worker.online",
           "worker_id": WKR, "machine_id": "host-a", "reason": "registered", "session": 1,
           "detection_lag_ms": null})
}

#[tokio::test]
async fn register_sends_the_body_and_reads_201_and_200() {
    let fake = Scripted::start().await;
    let body = json!({"worker": worker_json(WKR, 1, "online", 30000), "token": "rc_worker_a"});
    fake.then(Canned::json(201, body.clone()))
        .then(Canned::json(200, body));
    let c = client(&[&fake.url], "rc_enroll_e");
    let mut req = RegisterRequest::new(
        WorkerName::parse("render-1").unwrap(),
        MachineId::parse("host-a").unwrap(),
    );
    req.heartbeat_interval_ms = Some(1000);

    let first = c.register(&req).await.unwrap();
    assert!(first.created);
    assert_eq!(first.token.expose(), "rc_worker_a");
    assert_eq!(first.worker.id, wkr());
    let again = c.register(&req).await.unwrap();
    assert!(!again.created);

    let seen = fake.seen();
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/workers");
    assert_eq!(seen[0].token.as_deref(), Some("rc_enroll_e"));
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(
        seen[0].body,
        Some(
            json!({"name": "render-1", "machine": {"id": "host-a"}, "labels": {},
                    "heartbeat_interval_ms": 1000})
        )
    );
}

#[tokio::test]
async fn worker_calls_use_their_paths_and_bodies() {
    let fake = Scripted::start().await;
    fake.then(Canned::json(
        200,
        json!({"status": "online", "session": 2, "resumed": true,
               "deadline_at": "2026-11-28T07:20:10.123Z", "heartbeat_interval_ms": 1000}),
    ))
    .then(Canned::json(200, worker_json(WKR, 2, "draining", 1000)))
    .then(Canned::json(200, worker_json(WKR, 2, "offline", 1000)))
    .then(Canned::text(204, "", "text/plain"))
    .then(Canned::json(200, worker_json(WKR, 2, "offline", 1000)));
    let c = client(&[&fake.url], "rc_admin_a").with_token("rc_worker_w");

    let ack = c.heartbeat(&wkr()).await.unwrap();
    assert!(ack.resumed);
    assert_eq!(ack.heartbeat_interval(), Duration::from_secs(1));
    let w = c.drain(&wkr()).await.unwrap();
    assert_eq!(w.status, Status::Draining);
    let w = c.offline(&wkr(), OfflineReason::Exited).await.unwrap();
    assert_eq!(w.status, Status::Offline);
    c.delete_worker(&wkr()).await.unwrap();
    c.get_worker(&wkr()).await.unwrap();

    let seen = fake.seen();
    let calls: Vec<_> = seen
        .iter()
        .map(|s| (s.method.as_str().to_owned(), s.path.clone()))
        .collect();
    let p = |suffix: &str| format!("/v1/workers/{WKR}{suffix}");
    assert_eq!(
        calls,
        vec![
            ("POST".to_owned(), p("/heartbeat")),
            ("POST".to_owned(), p("/drain")),
            ("POST".to_owned(), p("/offline")),
            ("DELETE".to_owned(), p("")),
            ("GET".to_owned(), p("")),
        ]
    );
    assert!(seen
        .iter()
        .all(|s| s.token.as_deref() == Some("rc_worker_w")));
    assert_eq!(seen[0].body, Some(json!({})));
    assert_eq!(seen[1].body, None);
    assert_eq!(seen[2].body, Some(json!({"reason": "exited"})));
}

#[tokio::test]
async fn api_errors_become_typed_errors() {
    let fake = Scripted::start().await;
    fake.then(Canned::error(404, "not_found"))
        .then(Canned::error(409, "conflict"))
        .then(Canned::error(418, "brewing"))
        .then(Canned::text(502, "<html>bad gateway</html>", "text/html"))
        .then(Canned::error(429, "rate_limited").header("retry-after", "2"))
        .then(Canned::text(200, "not json", "application/json"));
    let c = client(&[&fake.url], "rc_admin_a");

    let e = c.get_worker(&wkr()).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::NotFound));
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    assert!(matches!(&e, Error::Api(a) if a.message == "scripted not_found"));

    let e = c.drain(&wkr()).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Conflict));

    let e = c.cleanup_stale().await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Unknown("brewing".into())));

    // A non-contract body (one replica only, so no failover).
    let e = c.get_worker(&wkr()).await.unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Unknown("http_502".into())));
    assert!(e.is_transient());

    let e = c.get_worker(&wkr()).await.unwrap_err();
    assert_eq!(e.api().unwrap().retry_after, Some(Duration::from_secs(2)));

    let e = c.get_worker(&wkr()).await.unwrap_err();
    assert!(matches!(e, Error::Decode { status, .. } if status == StatusCode::OK));
}

#[tokio::test]
async fn list_all_workers_follows_the_cursor() {
    let fake = Scripted::start().await;
    let cursor = "c/1 2+&=é";
    fake.then(Canned::json(
        200,
        json!({"items": [worker_json(WKR, 1, "online", 1000)], "next_cursor": cursor}),
    ))
    .then(Canned::json(
        200,
        json!({"items": [worker_json(WKR, 2, "online", 1000)], "next_cursor": null}),
    ));
    let c = client(&[&fake.url], "rc_read_r");
    let q = WorkerQuery {
        status: Some(Status::Online),
        machine_id: Some(MachineId::parse("host-a").unwrap()),
        ..Default::default()
    };
    let all = c.list_all_workers(&q).await.unwrap();
    assert_eq!(
        all.iter().map(|w| w.session).collect::<Vec<_>>(),
        vec![1, 2]
    );

    let seen = fake.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.path, "/v1/workers");
        assert_eq!(s.param("status"), Some("online"));
        assert_eq!(s.param("machine_id"), Some("host-a"));
        assert_eq!(s.param("limit"), Some("1000"));
    }
    assert_eq!(seen[0].param("cursor"), None);
    // The opaque cursor arrives exactly as the server sent it.
    assert_eq!(seen[1].param("cursor"), Some(cursor));
}

#[tokio::test]
async fn machines_events_tokens_and_cleanup() {
    let fake = Scripted::start().await;
    let machine = json!({
        "id": "host-a", "hostname": "host-a.example", "labels": {}, "status": "offline",
        "workers_online": 0, "workers_total": 1,
        "first_seen_at": "2026-11-28T07:18:40.123Z", "last_seen_at": "2026-11-28T07:18:40.123Z",
        "status_changed_at": "2026-11-28T07:18:40.123Z"
    });
    let mut with_workers = machine.clone();
    with_workers["workers"] = json!([worker_json(WKR, 1, "offline", 1000)]);
    let stale = json!({"success": true, "deleted_count": 0, "marked_offline_count": 2,
                       "affected_machine_ids": ["host-a"]});
    fake.then(Canned::json(
        200,
        json!({"items": [machine], "next_cursor": null}),
    ))
    .then(Canned::json(200, with_workers))
    .then(Canned::json(
        200,
        json!({"items": [event_json(5), event_json(6)], "next_cursor": "6"}),
    ))
    .then(Canned::json(
        200,
        json!({"items": [event_json(7)], "next_cursor": null}),
    ))
    .then(Canned::json(
        201,
        json!({"id": "tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8", "kind": "enroll", "name": "fleet",
               "token": "rc_enroll_new", "expires_at": "2026-11-29T07:18:40.123Z"}),
    ))
    .then(Canned::json(
        200,
        json!({"items": [{"id": "tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8", "kind": "enroll",
                          "name": "fleet", "created_at": "2026-11-28T07:18:40.123Z",
                          "expires_at": null, "last_used_at": null}], "next_cursor": null}),
    ))
    .then(Canned::text(204, "", "text/plain"))
    .then(Canned::json(200, stale.clone()))
    .then(Canned::json(
        200,
        json!({"success": true, "stale": stale, "forgotten_workers": 1,
               "forgotten_machines": 0, "pruned_events": 3, "expired_tokens": 0,
               "duration_ms": 3}),
    ));
    let c = client(&[&fake.url], "rc_admin_a");

    let machines = c
        .list_all_machines(&MachineQuery {
            status: Some(MachineStatus::Offline),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(machines[0].workers_total, 1);
    let m = c
        .get_machine(&MachineId::parse("host-a").unwrap())
        .await
        .unwrap();
    assert_eq!(m.workers[0].status, Status::Offline);

    let events = c
        .list_all_events(&EventQuery {
            after: Some(4),
            event_type: Some(EventType::WorkerOnline),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![5, 6, 7]
    );

    let created = c
        .create_token(
            &NewToken::new(TokenKind::Enroll, "fleet").expires_in(Duration::from_secs(86400)),
        )
        .await
        .unwrap();
    assert_eq!(created.token.expose(), "rc_enroll_new");
    let tokens = c.list_all_tokens().await.unwrap();
    assert_eq!(tokens[0].name, "fleet");
    c.delete_token(&TokenId::parse("tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8").unwrap())
        .await
        .unwrap();
    assert_eq!(c.cleanup_stale().await.unwrap().marked_offline_count, 2);
    assert_eq!(c.cleanup_all().await.unwrap().pruned_events, 3);

    let seen = fake.seen();
    let calls: Vec<_> = seen
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .collect();
    assert_eq!(
        calls,
        [
            "GET /v1/machines",
            "GET /v1/machines/host-a",
            "GET /v1/events",
            "GET /v1/events",
            "POST /v1/tokens",
            "GET /v1/tokens",
            "DELETE /v1/tokens/tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8",
            "POST /v1/cleanup/stale",
            "POST /v1/cleanup/all",
        ]
    );
    assert_eq!(seen[0].param("status"), Some("offline"));
    assert_eq!(seen[2].param("after"), Some("4"));
    assert_eq!(seen[2].param("type"), Some("worker.online"));
    assert_eq!(seen[3].param("after"), Some("6"));
    assert_eq!(
        seen[4].body,
        Some(json!({"kind": "enroll", "name": "fleet", "expires_in_ms": 86400000}))
    );
}

#[tokio::test]
async fn batch_heartbeats_keep_per_entry_results() {
    let fake = Scripted::start().await;
    fake.then(Canned::json(
        200,
        json!({"results": [
            {"worker_id": WKR, "ok": true, "status": "online", "session": 3, "resumed": false},
            {"worker_id": WKR, "ok": false, "error": {"code": "forbidden", "message": "not yours"}}
        ]}),
    ));
    let c = client(&[&fake.url], "rc_enroll_e");
    let entries = [
        BatchHeartbeat {
            worker_id: wkr(),
            token: "rc_worker_1".into(),
        },
        BatchHeartbeat {
            worker_id: wkr(),
            token: "rc_worker_2".into(),
        },
    ];
    let results = c.batch_heartbeats(&entries).await.unwrap();
    assert_eq!(results[0].outcome.as_ref().unwrap().session, 3);
    let err = results[1].outcome.as_ref().unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    assert_eq!(err.code.status(), Some(StatusCode::FORBIDDEN));
    let seen = fake.only();
    assert_eq!(seen.path, "/v1/heartbeats");
    assert_eq!(
        seen.body,
        Some(json!({"heartbeats": [
            {"worker_id": WKR, "token": "rc_worker_1"},
            {"worker_id": WKR, "token": "rc_worker_2"}
        ]}))
    );
}

#[tokio::test]
async fn operations_endpoints_are_public() {
    let fake = Scripted::start().await;
    fake.then(Canned::text(200, "ok", "text/plain"))
        .then(Canned::text(200, "ok", "text/plain"))
        .then(Canned::error(503, "unavailable"))
        .then(Canned::json(200, json!({"openapi": "3.1.0"})))
        .then(Canned::text(200, "# HELP x\nx 1\n", "text/plain"));
    let c = client(&[&fake.url], "rc_admin_a");
    c.healthz().await.unwrap();
    assert!(c.readyz().await.unwrap());
    assert!(!c.readyz().await.unwrap());
    assert_eq!(c.openapi().await.unwrap()["openapi"], "3.1.0");
    assert!(c.metrics().await.unwrap().contains("x 1"));
    let seen = fake.seen();
    assert_eq!(seen[0].path, "/healthz");
    assert_eq!(seen[1].path, "/readyz");
    assert_eq!(seen[3].path, "/openapi.json");
    assert!(seen[..4].iter().all(|s| s.token.is_none()));
    // /metrics may need the token (when metrics_token is set).
    assert_eq!(seen[4].token.as_deref(), Some("rc_admin_a"));
}

#[tokio::test]
async fn fails_over_on_503_and_sticks_to_the_replica_that_answered() {
    let a = Scripted::start().await;
    let b = Scripted::start().await;
    a.then(Canned::error(503, "unavailable"));
    b.then(Canned::json(200, worker_json(WKR, 1, "online", 1000)))
        .then(Canned::json(200, worker_json(WKR, 1, "online", 1000)));
    let c = client(&[&a.url, &b.url], "rc_read_r");

    c.get_worker(&wkr()).await.unwrap();
    c.get_worker(&wkr()).await.unwrap();
    assert_eq!(a.seen().len(), 1);
    assert_eq!(b.seen().len(), 2, "the second call went straight to b");
}

#[tokio::test]
async fn fails_over_when_a_replica_cannot_be_reached() {
    let (dead, _) = closed_port_url().await;
    let live = Scripted::start().await;
    live.then(Canned::json(
        201,
        json!({"worker": worker_json(WKR, 1, "online", 1000), "token": "rc_worker_a"}),
    ));
    let c = client(&[&dead, &live.url], "rc_enroll_e");
    // Even a call that must not be sent twice fails over: nothing was sent.
    let req = RegisterRequest::new(
        WorkerName::parse("w").unwrap(),
        MachineId::parse("m").unwrap(),
    );
    c.register(&req).await.unwrap();
    assert_eq!(live.seen().len(), 1);

    // With no live replica at all, the transport error comes back.
    let c = client(&[&dead], "rc_enroll_e");
    let e = c.register(&req).await.unwrap_err();
    assert!(e.is_transport() && e.is_transient(), "{e}");
}

#[tokio::test]
async fn unsafe_calls_are_not_repeated_after_an_ambiguous_failure() {
    let a = Scripted::start().await;
    let b = Scripted::start().await;
    // A 502 from a proxy: the replica behind it may have acted.
    a.then(Canned::text(502, "bad gateway", "text/plain"))
        .then(Canned::text(502, "bad gateway", "text/plain"));
    b.then(Canned::json(200, worker_json(WKR, 1, "online", 1000)));
    let c = client(&[&a.url, &b.url], "rc_admin_a");

    let e = c
        .create_token(&NewToken::new(TokenKind::Read, "x"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
    assert_eq!(b.seen().len(), 0);

    // A read is safe to repeat, so it moves on.
    c.get_worker(&wkr()).await.unwrap();
    assert_eq!(a.seen().len(), 2);
    assert_eq!(b.seen().len(), 1);
}

#[tokio::test]
async fn the_event_stream_yields_events_and_remembers_the_last_seq() {
    let fake = Scripted::start().await;
    let body = format!(
        ": keep-alive\n\nid: 5\nevent: worker.online\ndata: {}\n\n: keep-alive\n\nid: 6\nevent: worker.online\ndata: {}\n\n",
        event_json(5),
        event_json(6)
    );
    fake.then(Canned {
        status: 200,
        body,
        content_type: "text/event-stream",
        headers: Vec::new(),
    });
    let c = client(&[&fake.url], "rc_read_r");
    let mut stream = c.event_stream(Some(4)).await.unwrap();
    assert_eq!(stream.last_seq(), Some(4));
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 5);
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 6);
    assert!(stream.next().await.is_none());
    assert_eq!(stream.last_seq(), Some(6));
    let seen = fake.only();
    assert_eq!(seen.path, "/v1/events/stream");
    assert_eq!(seen.param("after"), Some("4"));
    assert_eq!(seen.token.as_deref(), Some("rc_read_r"));
}

/// A server that sends the stream's headers and one event, then nothing:
/// the client must notice within its idle timeout rather than hang.
#[tokio::test(start_paused = true)]
async fn a_silent_event_stream_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let event = event_json(9).to_string();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await.unwrap();
        let chunk = format!("id: 9\ndata: {event}\n\n");
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n",
            chunk.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        // Hold the connection open, silent, until the test ends.
        std::future::pending::<()>().await;
        drop(socket);
    });
    let c = Client::builder()
        .server(url)
        .stream_idle_timeout(Duration::from_secs(45))
        .build()
        .unwrap();
    let mut stream = c.event_stream(None).await.unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().seq, 9);
    let started = tokio::time::Instant::now();
    let e = stream.next().await.unwrap().unwrap_err();
    assert!(matches!(e, Error::StreamIdle(d) if d == Duration::from_secs(45)));
    assert!(started.elapsed() >= Duration::from_secs(45));
    assert!(stream.next().await.is_none());
    server.abort();
}

#[tokio::test]
async fn unaddressable_machine_ids_are_refused_locally() {
    let fake = Scripted::start().await;
    let c = client(&[&fake.url], "rc_read_r");
    let e = c
        .get_machine(&MachineId::parse("..").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    assert!(fake.seen().is_empty());
}
