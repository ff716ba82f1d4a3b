//! The server's HTTP contract (`docs/API.md`) and the numbered invariants of
//! ARCHITECTURE.md, tested in-process against the real server on port 0.
//!
//! Every test starts its own server on a fresh data directory (see
//! `common::spawn_app`). Nothing sleeps and hopes: conditions are polled
//! until a deadline, and waits for time to pass are computed from the
//! timestamps the server returned.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const WORKER_KEYS: &[&str] = &[
    "id",
    "name",
    "machine_id",
    "status",
    "offline_reason",
    "session",
    "labels",
    "heartbeat_interval_ms",
    "stale_after_ms",
    "registered_at",
    "last_heartbeat_at",
    "deadline_at",
    "status_changed_at",
];
const MACHINE_KEYS: &[&str] = &[
    "id",
    "hostname",
    "labels",
    "status",
    "workers_online",
    "workers_total",
    "first_seen_at",
    "last_seen_at",
    "status_changed_at",
];
const EVENT_KEYS: &[&str] = &[
    "seq",
    "at",
    "type",
    "worker_id",
    "machine_id",
    "reason",
    "session",
    "detection_lag_ms",
    "exit_code",
    "signal",
    "incident_id",
];
const HEARTBEAT_KEYS: &[&str] = &[
    "status",
    "session",
    "resumed",
    "deadline_at",
    "heartbeat_interval_ms",
];

/// Checks the shape of a Worker object and its timestamps.
#[track_caller]
fn check_worker(w: &Value) {
    assert_keys(w, WORKER_KEYS);
    assert!(w["id"].as_str().unwrap().starts_with("wkr_"), "{w}");
    ts(&w["registered_at"]);
    ts(&w["status_changed_at"]);
    opt_ts(&w["last_heartbeat_at"]);
    let status = w["status"].as_str().unwrap();
    assert!(["online", "draining", "offline"].contains(&status), "{w}");
    if status == "offline" {
        assert!(
            w["deadline_at"].is_null(),
            "an offline worker has no deadline: {w}"
        );
        assert!(w["offline_reason"].is_string(), "{w}");
    } else {
        ts(&w["deadline_at"]);
        assert!(w["offline_reason"].is_null(), "{w}");
    }
    assert!(w["session"].as_u64().unwrap() >= 1);
    assert!(w["labels"].is_object());
    assert!(w["heartbeat_interval_ms"].is_u64());
    assert!(w["stale_after_ms"].is_u64());
}

#[track_caller]
fn check_machine(m: &Value) {
    // A machine, or a machine's detail (the machine plus its workers).
    let mut keys = MACHINE_KEYS.to_vec();
    if m.get("workers").is_some() {
        keys.push("workers");
        m["workers"]
            .as_array()
            .unwrap()
            .iter()
            .for_each(check_worker);
    }
    assert_keys(m, &keys);
    ts(&m["first_seen_at"]);
    ts(&m["last_seen_at"]);
    ts(&m["status_changed_at"]);
    assert!(["online", "offline"].contains(&m["status"].as_str().unwrap()));
    assert!(m["labels"].is_object());
    let online = m["workers_online"].as_u64().unwrap();
    let total = m["workers_total"].as_u64().unwrap();
    assert!(online <= total);
    assert_eq!(m["status"] == "online", online > 0, "derived status: {m}");
}

#[track_caller]
fn check_event(e: &Value) {
    assert_keys(e, EVENT_KEYS);
    assert!(e["seq"].as_i64().unwrap() >= 1);
    ts(&e["at"]);
    let kind = e["type"].as_str().unwrap();
    assert!(
        [
            "worker.registered",
            "worker.online",
            "worker.draining",
            "worker.offline",
            "worker.deleted",
            "machine.online",
            "machine.offline"
        ]
        .contains(&kind),
        "{e}"
    );
    if kind.starts_with("machine.") {
        assert!(e["worker_id"].is_null() && e["session"].is_null(), "{e}");
    } else {
        assert!(e["worker_id"].as_str().unwrap().starts_with("wkr_"));
        assert!(e["session"].as_u64().unwrap() >= 1);
    }
    if e["reason"] == "stale" {
        assert!(e["detection_lag_ms"].as_i64().unwrap() >= 0, "{e}");
    } else {
        assert!(e["detection_lag_ms"].is_null(), "{e}");
    }
}

/// Path of a worker action.
fn wpath(id: &str, action: &str) -> String {
    format!("/v1/workers/{id}/{action}")
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_openapi_need_no_token() {
    let app = spawn_app().await;
    let r = app.send(Method::GET, "/healthz", None, None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text, "ok");
    let r = app.send(Method::GET, "/readyz", None, None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A lone server (or the one replica, on PostgreSQL) is the active one.
    assert_eq!(
        r.headers
            .get("x-rollcall-role")
            .map(|v| v.to_str().unwrap()),
        Some("active")
    );

    let r = app.send(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(r.status, 200);
    let doc: Value = serde_json::from_str(&r.text).expect("valid JSON");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/tokens", &["post", "get"][..]),
        ("/v1/tokens/{id}", &["delete"]),
        ("/v1/workers", &["post", "get"]),
        ("/v1/workers/{id}", &["get", "delete"]),
        ("/v1/workers/{id}/heartbeat", &["post"]),
        ("/v1/workers/{id}/drain", &["post"]),
        ("/v1/workers/{id}/offline", &["post"]),
        ("/v1/heartbeats", &["post"]),
        ("/v1/machines", &["get"]),
        ("/v1/machines/{id}", &["get"]),
        ("/v1/events", &["get"]),
        ("/v1/cleanup/stale", &["post"]),
        ("/v1/cleanup/all", &["post"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
    ] {
        let p = paths
            .get(path)
            .unwrap_or_else(|| panic!("openapi.json lacks {path}"));
        for m in methods {
            assert!(p.get(*m).is_some(), "openapi.json lacks {m} {path}");
        }
    }
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_listed_without_secrets_and_deleted() {
    let app = spawn_app().await;
    let before = now_ms();
    let enroll = app
        .create_token("enroll", "fleet enrolment", Some(86_400_000))
        .await;
    let after = now_ms();
    assert_keys(
        &enroll,
        &["id", "kind", "name", "token", "expires_at", "scope"],
    );
    assert!(enroll["scope"].is_null());
    assert!(enroll["id"].as_str().unwrap().starts_with("tok_"));
    assert_eq!(enroll["kind"], "enroll");
    assert_eq!(enroll["name"], "fleet enrolment");
    let secret = enroll["token"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("rc_enroll_"), "{secret}");
    let exp = ts(&enroll["expires_at"]);
    assert!(exp >= before + 86_400_000 && exp <= after + 86_400_000);

    let read = app.create_token("read", "dashboard", None).await;
    assert_eq!(read["kind"], "read");
    assert!(read["expires_at"].is_null());
    assert!(read["token"].as_str().unwrap().starts_with("rc_read_"));

    // The new tokens work at once.
    app.get("/v1/workers", read["token"].as_str().unwrap())
        .await
        .expect(200);
    app.register_as(&secret, json!({"name": "w", "machine": {"id": "m"}}))
        .await;

    let r = app.get("/v1/tokens", &app.admin).await;
    let body = r.expect(200);
    assert_keys(body, &["items", "next_cursor"]);
    assert!(body["next_cursor"].is_null());
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{body}");
    for t in items {
        assert_keys(
            t,
            &[
                "id",
                "kind",
                "name",
                "created_at",
                "expires_at",
                "last_used_at",
                "scope",
            ],
        );
        assert!(t["scope"].is_null());
        ts(&t["created_at"]);
        opt_ts(&t["expires_at"]);
        opt_ts(&t["last_used_at"]);
    }
    assert!(!r.text.contains(&secret), "a listed token shows its secret");
    assert!(!r.text.contains(read["token"].as_str().unwrap()));
    let listed_enroll = items.iter().find(|t| t["id"] == enroll["id"]).unwrap();
    assert_eq!(listed_enroll["kind"], "enroll");
    assert_eq!(listed_enroll["name"], "fleet enrolment");
    assert_eq!(listed_enroll["expires_at"], enroll["expires_at"]);

    // Last use is written behind (flush_interval 200 ms).
    wait_until(
        "the enroll token's last use is recorded",
        Duration::from_secs(5),
        || async {
            let tokens = app.tokens().await;
            let t = tokens.iter().find(|t| t["id"] == enroll["id"]).unwrap();
            t["last_used_at"].is_string()
        },
    )
    .await;

    // Delete: 204, gone from the list, stops working at once.
    let r = app
        .delete(
            &format!("/v1/tokens/{}", enroll["id"].as_str().unwrap()),
            &app.admin,
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty());
    let r = app
        .post(
            "/v1/workers",
            &secret,
            json!({"name": "w2", "machine": {"id": "m"}}),
        )
        .await;
    assert_error(&r, 401, "unauthorized");
    let tokens = app.tokens().await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["id"], read["id"]);
    // Deleting it again: it is not there.
    let r = app
        .delete(
            &format!("/v1/tokens/{}", enroll["id"].as_str().unwrap()),
            &app.admin,
        )
        .await;
    assert_error(&r, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_and_cleanup_deletes_it() {
    let app = spawn_app().await;
    let t = app.create_token("read", "short-lived", Some(1_500)).await;
    let secret = t["token"].as_str().unwrap().to_owned();
    let expires = ts(&t["expires_at"]);
    let r = app.get("/v1/workers", &secret).await;
    if now_ms() < expires {
        // Answered before it expired: it worked.
        r.expect(200);
    }
    wait_until("the token has expired", Duration::from_secs(10), || async {
        let r = app.get("/v1/workers", &secret).await;
        if r.status == 401 {
            assert_error(&r, 401, "unauthorized");
            true
        } else {
            r.expect(200);
            false
        }
    })
    .await;
    assert!(now_ms() >= expires, "refused before it expired");
    // Still listed until cleanup deletes it.
    assert_eq!(app.tokens().await.len(), 1);
    let report = app
        .post_empty("/v1/cleanup/all", &app.admin)
        .await
        .expect(200)
        .clone();
    assert_eq!(report["expired_tokens"], 1, "{report}");
    assert!(app.tokens().await.is_empty());
    assert_error(&app.get("/v1/workers", &secret).await, 401, "unauthorized");
}

// ---------------------------------------------------------------------------
// Workers
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_answers_201_then_200_with_the_contract_shape() {
    let app = spawn_app().await;
    let enroll = app.token("enroll").await;
    let t0 = now_ms();
    let r = app
        .post(
            "/v1/workers",
            &enroll,
            json!({
                "name": "render-1",
                "machine": {"id": "host-a", "hostname": "host-a.example", "labels": {"rack": "r1"}},
                "labels": {"queue": "gpu"},
                "unknown_field": "is ignored",
            }),
        )
        .await;
    let t1 = now_ms();
    let body = r.expect(201).clone();
    assert_keys(&body, &["worker", "token"]);
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("rc_worker_"), "{token}");
    let w = &body["worker"];
    check_worker(w);
    assert_eq!(w["name"], "render-1");
    assert_eq!(w["machine_id"], "host-a");
    assert_eq!(w["status"], "online");
    assert!(w["offline_reason"].is_null());
    assert_eq!(w["session"], 1);
    assert_eq!(w["labels"], json!({"queue": "gpu"}));
    assert_eq!(w["heartbeat_interval_ms"], 100, "the server's default");
    assert_eq!(w["stale_after_ms"], 500, "the server's default");
    assert!(w["last_heartbeat_at"].is_null());
    let registered = ts(&w["registered_at"]);
    assert!(registered >= t0 && registered <= t1);
    assert_eq!(ts(&w["status_changed_at"]), registered);
    // The deadline is registered_at + stale_after.
    assert_eq!(ts(&w["deadline_at"]), registered + 500);

    let id = w["id"].as_str().unwrap().to_owned();
    let events = app.worker_events(&id).await;
    let got: Vec<_> = events.iter().map(brief).collect();
    assert_eq!(
        got,
        [
            ev("worker.registered", None, Some(1)),
            ev("worker.online", Some("registered"), Some(1)),
        ]
    );
    let all = app.events().await;
    assert_eq!(all.len(), 3);
    for e in &all {
        check_event(e);
        assert_eq!(e["machine_id"], "host-a");
        assert_eq!(ts(&e["at"]), registered);
    }
    assert_eq!(brief(&all[2]), ev("machine.online", None, None));

    let m = app.machine("host-a").await;
    assert_eq!(m["hostname"], "host-a.example");
    assert_eq!(m["labels"], json!({"rack": "r1"}));

    // The same name on the same machine again: 200, same id, new session
    // and token; the old session ends as `replaced`.
    let again = app
        .post(
            "/v1/workers",
            &enroll,
            json!({"name": "render-1", "machine": {"id": "host-a"}, "heartbeat_interval_ms": 200}),
        )
        .await;
    let again = again.expect(200).clone();
    check_worker(&again["worker"]);
    assert_eq!(again["worker"]["id"], id.as_str());
    assert_eq!(again["worker"]["session"], 2);
    assert_ne!(again["token"], body["token"]);
    // Only heartbeat_interval given: stale_after is 3 × it.
    assert_eq!(again["worker"]["heartbeat_interval_ms"], 200);
    assert_eq!(again["worker"]["stale_after_ms"], 600);
    // Without machine labels or hostname, the machine keeps its own.
    let m = app.machine("host-a").await;
    assert_eq!(m["hostname"], "host-a.example");
    assert_eq!(m["labels"], json!({"rack": "r1"}));

    // Only stale_after given: the heartbeat interval is a third, rounded down.
    let w = app
        .register_body(
            json!({"name": "thirds", "machine": {"id": "host-a"}, "stale_after_ms": 1000}),
        )
        .await;
    assert_eq!(w.status, 201);
    assert_eq!(w.worker["heartbeat_interval_ms"], 333);
    assert_eq!(w.worker["stale_after_ms"], 1000);
    // Both given, at exactly 2×: accepted as is.
    let w = app
        .register_body(json!({"name": "both", "machine": {"id": "host-a"},
            "heartbeat_interval_ms": 50, "stale_after_ms": 100}))
        .await;
    assert_eq!(w.worker["heartbeat_interval_ms"], 50);
    assert_eq!(w.worker["stale_after_ms"], 100);
    // The same name on another machine is another worker.
    let other = app.register("render-1", "host-b").await;
    assert_eq!(other.status, 201);
    assert_ne!(other.id, id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_accepts_values_at_the_limits() {
    let app = spawn_app().await;
    let name = "a".repeat(128);
    let machine = "Az09._:-".repeat(16);
    let labels: BTreeMap<String, String> = (0..32)
        .map(|i| (format!("{i:0>64}"), "v".repeat(256)))
        .collect();
    let w = app
        .register_body(json!({
            "name": name, "machine": {"id": machine, "hostname": "h".repeat(253), "labels": labels},
            "labels": labels, "stale_after_ms": 3_600_000, "heartbeat_interval_ms": 50,
        }))
        .await;
    assert_eq!(w.status, 201);
    assert_eq!(w.worker["name"], name.as_str());
    assert_eq!(w.worker["labels"].as_object().unwrap().len(), 32);
    let m = app.machine(&machine).await;
    assert_eq!(m["labels"].as_object().unwrap().len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_extends_the_deadline_with_the_contract_shape() {
    let app = spawn_app().await;
    let w = app.register_stale("w", "m", 60_000).await;
    let t0 = now_ms();
    let r = app
        .send(
            Method::POST,
            &wpath(&w.id, "heartbeat"),
            Some(&w.token),
            None,
        )
        .await;
    let t1 = now_ms();
    let hb = r.expect(200).clone();
    assert_keys(&hb, HEARTBEAT_KEYS);
    assert_eq!(hb["status"], "online");
    assert_eq!(hb["session"], 1);
    assert_eq!(hb["resumed"], false);
    assert_eq!(hb["heartbeat_interval_ms"], 20_000);
    let d = ts(&hb["deadline_at"]);
    assert!(
        d >= t0 + 60_000 && d <= t1 + 60_000,
        "deadline = now + stale_after"
    );
    // `{}` and an empty body are both fine.
    let hb2 = app
        .post(&wpath(&w.id, "heartbeat"), &w.token, json!({}))
        .await
        .expect(200)
        .clone();
    assert!(ts(&hb2["deadline_at"]) >= d);

    // GET shows the heartbeat time and deadline at once (from memory).
    let got = app.worker(&w.id).await;
    check_worker(&got);
    let last = ts(&got["last_heartbeat_at"]);
    assert!(last >= t0);
    assert_eq!(ts(&got["deadline_at"]), last + 60_000);
    // A heartbeat of a live worker records no event.
    assert_eq!(app.worker_events(&w.id).await.len(), 2);
    // It is written behind within flush_interval: the machine's last_seen_at
    // moves too.
    wait_until(
        "the machine's last_seen_at follows the heartbeat",
        Duration::from_secs(5),
        || async { ts(&app.machine("m").await["last_seen_at"]) >= last },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_keeps_the_worker_live_and_is_409_once_offline() {
    let app = spawn_app().await;
    let w = app.register_stale("w", "m", 60_000).await;
    let r = app.post_empty(&wpath(&w.id, "drain"), &w.token).await;
    let d = r.expect(200).clone();
    check_worker(&d);
    assert_eq!(d["status"], "draining");
    assert_eq!(d["session"], 1);
    assert!(d["deadline_at"].is_string());
    // It keeps heartbeating, and stays draining.
    let hb = app.heartbeat(&w).await;
    assert_eq!(hb["status"], "draining");
    assert_eq!(hb["resumed"], false);
    // Draining again (admin this time) changes nothing and records nothing.
    let n = app.events().await.len();
    let d2 = app
        .post_empty(&wpath(&w.id, "drain"), &app.admin)
        .await
        .expect(200)
        .clone();
    assert_eq!(d2["status"], "draining");
    assert_eq!(d2["status_changed_at"], d["status_changed_at"]);
    assert_eq!(app.events().await.len(), n);
    // The machine stays online while its only worker drains.
    let m = app.machine("m").await;
    assert_eq!(m["status"], "online");
    assert_eq!(m["workers_online"], 1);
    let kinds: Vec<_> = app.worker_events(&w.id).await.iter().map(brief).collect();
    assert_eq!(kinds.last().unwrap(), &ev("worker.draining", None, Some(1)));

    app.offline(&w, "shutdown").await;
    let r = app.post_empty(&wpath(&w.id, "drain"), &w.token).await;
    assert_error(&r, 409, "conflict");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_worker_revokes_its_token_and_records_offline_then_deleted() {
    let app = spawn_app().await;
    let w = app.register_stale("w", "m", 60_000).await;
    let r = app
        .delete(&format!("/v1/workers/{}", w.id), &app.admin)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(r.text.is_empty());
    let got: Vec<_> = app.worker_events(&w.id).await.iter().map(brief).collect();
    assert_eq!(
        got,
        [
            ev("worker.registered", None, Some(1)),
            ev("worker.online", Some("registered"), Some(1)),
            ev("worker.offline", Some("revoked"), Some(1)),
            ev("worker.deleted", None, Some(1)),
        ]
    );
    // Its machine lost its last worker in the same transaction.
    let last: Vec<_> = app.events().await.iter().rev().take(1).map(brief).collect();
    assert_eq!(last, [ev("machine.offline", None, None)]);
    assert_error(
        &app.heartbeat_raw(&w.id, &w.token).await,
        401,
        "unauthorized",
    );
    assert_error(
        &app.post_empty(&wpath(&w.id, "offline"), &w.token).await,
        401,
        "unauthorized",
    );
    assert_error(
        &app.get(&format!("/v1/workers/{}", w.id), &app.admin).await,
        404,
        "not_found",
    );
    assert_error(
        &app.delete(&format!("/v1/workers/{}", w.id), &app.admin)
            .await,
        404,
        "not_found",
    );
    let m = app.machine("m").await;
    assert_eq!(m["workers_total"], 0);
    assert_eq!(m["status"], "offline");

    // Deleting an offline worker records only worker.deleted.
    let w2 = app.register_stale("w2", "m", 60_000).await;
    app.offline(&w2, "exited").await;
    app.delete(&format!("/v1/workers/{}", w2.id), &app.admin)
        .await
        .expect(204);
    let got: Vec<_> = app.worker_events(&w2.id).await.iter().map(brief).collect();
    assert_eq!(got.last().unwrap(), &ev("worker.deleted", None, Some(1)));
    assert_eq!(
        got[got.len() - 2],
        ev("worker.offline", Some("exited"), Some(1))
    );
    // Registering the name again makes a new worker.
    let again = app.register("w", "m").await;
    assert_eq!(again.status, 201);
    assert_ne!(again.id, w.id);
    assert_eq!(again.session(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_list_and_get_with_filters() {
    let app = spawn_app().await;
    let read = app.token("read").await;
    let a = app.register_stale("a", "m1", 60_000).await;
    let b = app.register_stale("b", "m1", 60_000).await;
    let c = app.register_stale("c", "m2", 60_000).await;
    app.post_empty(&wpath(&b.id, "drain"), &b.token)
        .await
        .expect(200);
    app.offline(&c, "shutdown").await;

    let r = app.get("/v1/workers", &read).await;
    let body = r.expect(200);
    assert_keys(body, &["items", "next_cursor"]);
    assert!(body["next_cursor"].is_null());
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    items.iter().for_each(check_worker);

    let ids = |path: String| {
        let app = &app;
        let read = read.clone();
        async move {
            let r = app.get(&path, &read).await;
            let mut v: Vec<String> = r.expect(200)["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_str().unwrap().to_owned())
                .collect();
            v.sort();
            v
        }
    };
    assert_eq!(
        ids("/v1/workers?status=online".into()).await,
        std::slice::from_ref(&a.id)
    );
    assert_eq!(
        ids("/v1/workers?status=draining".into()).await,
        std::slice::from_ref(&b.id)
    );
    assert_eq!(
        ids("/v1/workers?status=offline".into()).await,
        std::slice::from_ref(&c.id)
    );
    let mut m1 = vec![a.id.clone(), b.id.clone()];
    m1.sort();
    assert_eq!(ids("/v1/workers?machine_id=m1".into()).await, m1);
    assert_eq!(
        ids("/v1/workers?machine_id=m1&status=draining".into()).await,
        std::slice::from_ref(&b.id)
    );
    assert!(ids("/v1/workers?machine_id=nowhere".into())
        .await
        .is_empty());

    let got = app.get(&format!("/v1/workers/{}", c.id), &read).await;
    let got = got.expect(200);
    check_worker(got);
    assert_eq!(got["status"], "offline");
    assert_eq!(got["offline_reason"], "shutdown");
    assert!(got["deadline_at"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_list_and_detail() {
    let app = spawn_app().await;
    let read = app.token("read").await;
    let a = app.register_stale("a", "m1", 60_000).await;
    let b = app.register_stale("b", "m1", 60_000).await;
    let c = app.register_stale("c", "m2", 60_000).await;
    app.offline(&c, "shutdown").await;

    let body = app.get("/v1/machines", &read).await.expect(200).clone();
    assert_keys(&body, &["items", "next_cursor"]);
    assert!(body["next_cursor"].is_null());
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 2);
    items.iter().for_each(check_machine);
    let m1 = items.iter().find(|m| m["id"] == "m1").unwrap();
    assert_eq!(m1["status"], "online");
    assert_eq!(m1["workers_online"], 2);
    assert_eq!(m1["workers_total"], 2);
    assert!(m1["hostname"].is_null());
    let m2 = items.iter().find(|m| m["id"] == "m2").unwrap();
    assert_eq!(m2["status"], "offline");
    assert_eq!(m2["workers_online"], 0);
    assert_eq!(m2["workers_total"], 1);

    let online = app.get("/v1/machines?status=online", &read).await;
    let online = online.expect(200)["items"].as_array().unwrap().clone();
    assert_eq!(online.len(), 1);
    assert_eq!(online[0]["id"], "m1");
    let offline = app.get("/v1/machines?status=offline", &read).await;
    assert_eq!(offline.expect(200)["items"][0]["id"], "m2");

    let detail = app.get("/v1/machines/m1", &read).await.expect(200).clone();
    let mut keys = MACHINE_KEYS.to_vec();
    keys.push("workers");
    assert_keys(&detail, &keys);
    let workers = detail["workers"].as_array().unwrap();
    workers.iter().for_each(check_worker);
    let mut got: Vec<_> = workers.iter().map(|w| w["id"].as_str().unwrap()).collect();
    got.sort_unstable();
    let mut want = vec![a.id.as_str(), b.id.as_str()];
    want.sort_unstable();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_filters_and_pages() {
    let app = spawn_app().await;
    let read = app.token("read").await;
    let a = app.register_stale("a", "m1", 60_000).await;
    let b = app.register_stale("b", "m2", 60_000).await;
    app.offline(&a, "shutdown").await;

    let body = app.get("/v1/events", &read).await.expect(200).clone();
    assert_keys(&body, &["items", "next_cursor"]);
    assert!(body["next_cursor"].is_null());
    let all = body["items"].as_array().unwrap().clone();
    all.iter().for_each(check_event);
    let got: Vec<_> = all.iter().map(brief).collect();
    assert_eq!(
        got,
        [
            ev("worker.registered", None, Some(1)),
            ev("worker.online", Some("registered"), Some(1)),
            ev("machine.online", None, None),
            ev("worker.registered", None, Some(1)),
            ev("worker.online", Some("registered"), Some(1)),
            ev("machine.online", None, None),
            ev("worker.offline", Some("shutdown"), Some(1)),
            ev("machine.offline", None, None),
        ]
    );
    let seqs: Vec<i64> = all.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {seqs:?}"
    );

    // after= skips; next_cursor is the last seq while more may follow.
    let page = app
        .get(&format!("/v1/events?after={}&limit=2", seqs[2]), &read)
        .await
        .expect(200)
        .clone();
    let items = page["items"].as_array().unwrap();
    assert_eq!(items[0]["seq"], seqs[3]);
    assert_eq!(items.len(), 2);
    assert_eq!(page["next_cursor"], seqs[4].to_string());
    let last = app
        .get(&format!("/v1/events?after={}", seqs[7]), &read)
        .await
        .expect(200)
        .clone();
    assert_eq!(last, json!({"items": [], "next_cursor": null}));

    let filtered = |q: &str| {
        let path = format!("/v1/events?{q}");
        let app = &app;
        let read = read.clone();
        async move {
            app.get(&path, &read).await.expect(200)["items"]
                .as_array()
                .unwrap()
                .clone()
        }
    };
    let of_b = filtered(&format!("worker_id={}", b.id)).await;
    assert_eq!(of_b.len(), 2);
    assert!(of_b.iter().all(|e| e["worker_id"] == b.id.as_str()));
    let of_m1 = filtered("machine_id=m1").await;
    assert_eq!(of_m1.len(), 5);
    assert!(of_m1.iter().all(|e| e["machine_id"] == "m1"));
    let offline = filtered("type=worker.offline").await;
    assert_eq!(offline.len(), 1);
    assert_eq!(offline[0]["worker_id"], a.id.as_str());
    let machine_online = filtered("type=machine.online&machine_id=m2").await;
    assert_eq!(machine_online.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_heartbeats_answer_in_request_order_per_entry() {
    let app = spawn_app().await;
    let enroll = app.token("enroll").await;
    let read = app.token("read").await;
    let w1 = app.register_stale("w1", "m", 60_000).await;
    let w2 = app.register_stale("w2", "m", 60_000).await;
    let off = app.register_stale("off", "m", 60_000).await;
    app.offline(&off, "exited").await;
    let gone = app.register_stale("gone", "m", 60_000).await;
    app.delete(&format!("/v1/workers/{}", gone.id), &app.admin)
        .await
        .expect(204);

    let entries = json!({"heartbeats": [
        {"worker_id": w1.id, "token": w1.token},
        {"worker_id": w2.id, "token": w1.token},
        {"worker_id": w2.id, "token": "rc_worker_0000000000000000000000000000000000000000000000000000000000000000"},
        {"worker_id": w2.id, "token": "garbage"},
        {"worker_id": off.id, "token": off.token},
        {"worker_id": w2.id, "token": app.admin},
        {"worker_id": w2.id, "token": enroll},
        {"worker_id": gone.id, "token": gone.token},
        {"worker_id": w2.id, "token": w2.token},
        {"worker_id": UNKNOWN_WORKER, "token": w2.token},
        {"worker_id": w2.id, "token": read},
    ]});
    let r = app.post("/v1/heartbeats", &enroll, entries.clone()).await;
    let body = r.expect(200).clone();
    assert_keys(&body, &["results"]);
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 11);
    for (res, entry) in results
        .iter()
        .zip(entries["heartbeats"].as_array().unwrap())
    {
        assert_eq!(res["worker_id"], entry["worker_id"], "request order");
    }
    let ok = |r: &Value, session: u64, resumed: bool| {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["status"], "online", "{r}");
        assert_eq!(r["session"], session, "{r}");
        assert_eq!(r["resumed"], resumed, "{r}");
        assert!(r.get("error").is_none(), "{r}");
        ts(&r["deadline_at"]);
    };
    let err = |r: &Value, code: &str| {
        assert_keys(r, &["worker_id", "ok", "error"]);
        assert_eq!(r["ok"], false, "{r}");
        assert_keys(&r["error"], &["code", "message"]);
        assert_eq!(r["error"]["code"], code, "{r}");
    };
    ok(&results[0], 1, false);
    err(&results[1], "forbidden");
    err(&results[2], "unauthorized");
    err(&results[3], "unauthorized");
    ok(&results[4], 2, true);
    // Valid tokens of other kinds are answered like unknown ones: the batch
    // tells nothing about a token that is not a worker's.
    err(&results[5], "unauthorized");
    err(&results[6], "unauthorized");
    assert_eq!(results[5]["error"], results[3]["error"]);
    err(&results[7], "unauthorized");
    ok(&results[8], 1, false);
    err(&results[9], "forbidden");
    err(&results[10], "unauthorized");
    assert_eq!(results[10]["error"], results[3]["error"]);
    // …and its last use is not recorded: once another token's use has been
    // written behind, the read token in the entry still has none.
    let probe = app.create_token("read", "probe", None).await;
    app.get("/v1/workers", probe["token"].as_str().unwrap())
        .await
        .expect(200);
    let used = |name: &'static str| {
        let app = &app;
        async move {
            app.tokens()
                .await
                .into_iter()
                .find(|t| t["name"] == name)
                .map(|t| !t["last_used_at"].is_null())
                .unwrap()
        }
    };
    wait_until(
        "the probe token's use is written behind",
        Duration::from_secs(30),
        || used("probe"),
    )
    .await;
    assert!(!used("read token").await, "a batch entry recorded a use");

    // The resumed worker has its worker.online(heartbeat) event, once the
    // resume (answered from memory) is durable.
    app.wait_resumed(&off.id, 2).await;
    let got: Vec<_> = app.worker_events(&off.id).await.iter().map(brief).collect();
    assert_eq!(
        got.last().unwrap(),
        &ev("worker.online", Some("heartbeat"), Some(2))
    );
    // The good entries were taken: w1 and w2 have fresh heartbeat times.
    for w in [&w1, &w2] {
        assert!(app.worker(&w.id).await["last_heartbeat_at"].is_string());
    }
    // Admin may send a batch too, and an empty one is fine.
    let r = app
        .post("/v1/heartbeats", &app.admin, json!({"heartbeats": []}))
        .await;
    assert_eq!(r.expect(200), &json!({"results": []}));
}

// ---------------------------------------------------------------------------
// Sessions: re-registration and resume
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reregistering_an_online_worker_replaces_its_session_and_fences_the_old_token() {
    let app = spawn_app().await;
    let old = app.register_stale("w", "m", 60_000).await;
    app.heartbeat(&old).await;
    let new = app.register_stale("w", "m", 60_000).await;
    assert_eq!(new.status, 200);
    assert_eq!(new.id, old.id);
    assert_eq!(new.session(), old.session() + 1);
    assert_ne!(new.token, old.token);
    assert!(new.worker["last_heartbeat_at"].is_null(), "a new session");

    let got: Vec<_> = app.worker_events(&old.id).await.iter().map(brief).collect();
    assert_eq!(
        got,
        [
            ev("worker.registered", None, Some(1)),
            ev("worker.online", Some("registered"), Some(1)),
            ev("worker.offline", Some("replaced"), Some(1)),
            ev("worker.registered", None, Some(2)),
            ev("worker.online", Some("registered"), Some(2)),
        ]
    );
    // The machine never went offline in between.
    let machine: Vec<_> = app
        .events()
        .await
        .iter()
        .filter(|e| e["worker_id"].is_null())
        .map(brief)
        .collect();
    assert_eq!(machine, [ev("machine.online", None, None)]);

    // The old token is fenced off everywhere.
    assert_error(
        &app.heartbeat_raw(&old.id, &old.token).await,
        401,
        "unauthorized",
    );
    assert_error(
        &app.post_empty(&wpath(&old.id, "offline"), &old.token).await,
        401,
        "unauthorized",
    );
    assert_error(
        &app.post_empty(&wpath(&old.id, "drain"), &old.token).await,
        401,
        "unauthorized",
    );
    let hb = app.heartbeat(&new).await;
    assert_eq!(hb["session"], 2);
    assert_eq!(hb["resumed"], false);

    // Re-registering an offline worker starts a new session without a
    // `replaced` event.
    app.offline(&new, "shutdown").await;
    let third = app.register_stale("w", "m", 60_000).await;
    assert_eq!(third.status, 200);
    assert_eq!(third.session(), 3);
    let got: Vec<_> = app.worker_events(&old.id).await.iter().map(brief).collect();
    assert_eq!(
        got[5..],
        [
            ev("worker.offline", Some("shutdown"), Some(2)),
            ev("worker.registered", None, Some(3)),
            ev("worker.online", Some("registered"), Some(3)),
        ]
    );

    // A draining worker is live: registering it again replaces it too.
    app.post_empty(&wpath(&third.id, "drain"), &third.token)
        .await
        .expect(200);
    let fourth = app.register_stale("w", "m", 60_000).await;
    assert_eq!(fourth.status, 200);
    assert_eq!(fourth.session(), 4);
    assert_eq!(fourth.worker["status"], "online");
    let got: Vec<_> = app.worker_events(&old.id).await.iter().map(brief).collect();
    assert_eq!(
        got[8..],
        [
            ev("worker.draining", None, Some(3)),
            ev("worker.offline", Some("replaced"), Some(3)),
            ev("worker.registered", None, Some(4)),
            ev("worker.online", Some("registered"), Some(4)),
        ]
    );
    assert_error(
        &app.heartbeat_raw(&third.id, &third.token).await,
        401,
        "unauthorized",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_resumes_a_worker_offline_for_any_reason() {
    let app = spawn_app().await;
    for reason in ["shutdown", "exited", "stale"] {
        let w = app.register_stale(reason, "m", 300).await;
        if reason == "stale" {
            wait_until("the worker went stale", Duration::from_secs(10), || async {
                app.worker(&w.id).await["status"] == "offline"
            })
            .await;
        } else {
            app.offline(&w, reason).await;
        }
        let got = app.worker(&w.id).await;
        assert_eq!(got["offline_reason"], reason);
        let hb = app.heartbeat(&w).await;
        assert_eq!(hb["status"], "online", "{reason}");
        assert_eq!(hb["session"], 2, "{reason}");
        assert_eq!(hb["resumed"], true, "{reason}");
        // Answered from memory; shown (and in the log) once durable.
        app.wait_resumed(&w.id, 2).await;
        let events: Vec<_> = app.worker_events(&w.id).await.iter().map(brief).collect();
        assert_eq!(
            events[2..],
            [
                ev("worker.offline", Some(reason), Some(1)),
                ev("worker.online", Some("heartbeat"), Some(2)),
            ],
            "{reason}"
        );
        let got = app.worker(&w.id).await;
        assert_eq!(got["status"], "online");
        assert_eq!(got["session"], 2);
        assert!(got["offline_reason"].is_null());
        // The token did not change: the next heartbeat is an ordinary one.
        let hb = app.heartbeat(&w).await;
        assert_eq!(hb["resumed"], false);
        assert_eq!(hb["session"], 2);
        app.offline(&w, "shutdown").await;
    }
}

// ---------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_distinct_names() {
    let app = spawn_app().await;
    let enroll = app.token("enroll").await;
    let regs = futures::future::join_all((0..60).map(|i| {
        let app = &app;
        let enroll = enroll.clone();
        async move {
            app.post(
                "/v1/workers",
                &enroll,
                json!({"name": format!("w{i}"), "machine": {"id": format!("m{}", i % 4)}, "stale_after_ms": 60_000}),
            )
            .await
        }
    }))
    .await;
    let mut ids = BTreeSet::new();
    for r in &regs {
        let body = r.expect(201);
        assert_eq!(body["worker"]["session"], 1);
        ids.insert(body["worker"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 60);
    let listed: BTreeSet<_> = app
        .workers()
        .await
        .iter()
        .map(|w| w["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);
    let machines = app.machines().await;
    assert_eq!(machines.len(), 4);
    for m in &machines {
        assert_eq!(m["workers_online"], 15);
        assert_eq!(m["workers_total"], 15);
    }
    // One machine.online per machine, however the registrations were batched.
    let events = app.events().await;
    let machine_online = events
        .iter()
        .filter(|e| e["type"] == "machine.online")
        .count();
    assert_eq!(machine_online, 4);
    assert_eq!(events.len(), 60 * 2 + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_the_same_name() {
    let app = spawn_app().await;
    let n = 50;
    let regs = futures::future::join_all((0..n).map(|_| {
        let app = &app;
        async move {
            app.post(
                "/v1/workers",
                &app.admin,
                json!({"name": "same", "machine": {"id": "m"}, "stale_after_ms": 60_000}),
            )
            .await
        }
    }))
    .await;
    let created = regs.iter().filter(|r| r.status == 201).count();
    let again = regs.iter().filter(|r| r.status == 200).count();
    assert_eq!((created, again), (1, n - 1), "exactly one 201");
    let ids: BTreeSet<_> = regs
        .iter()
        .map(|r| r.body["worker"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "one worker record");
    let id = ids.into_iter().next().unwrap();
    let sessions: BTreeSet<u64> = regs
        .iter()
        .map(|r| r.body["worker"]["session"].as_u64().unwrap())
        .collect();
    assert_eq!(sessions, (1..=n as u64).collect(), "distinct sessions");
    let created_session = regs.iter().find(|r| r.status == 201).unwrap().body["worker"]["session"]
        .as_u64()
        .unwrap();
    assert_eq!(created_session, 1, "the 201 started session 1");

    let workers = app.workers().await;
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["session"], n as u64);
    // Only the last session's token works.
    for r in &regs {
        let token = r.body["token"].as_str().unwrap();
        let session = r.body["worker"]["session"].as_u64().unwrap();
        let hb = app.heartbeat_raw(&id, token).await;
        if session == n as u64 {
            assert_eq!(hb.expect(200)["session"], n as u64);
        } else {
            assert_error(&hb, 401, "unauthorized");
        }
    }
    // The log: each session registered, came online and (but the last)
    // was replaced, in order.
    let events = app.worker_events(&id).await;
    let mut want = Vec::new();
    for s in 1..=n as u64 {
        if s > 1 {
            want.push(ev("worker.offline", Some("replaced"), Some(s - 1)));
        }
        want.push(ev("worker.registered", None, Some(s)));
        want.push(ev("worker.online", Some("registered"), Some(s)));
    }
    assert_eq!(events.iter().map(brief).collect::<Vec<_>>(), want);
}

// ---------------------------------------------------------------------------
// Pagination
// ---------------------------------------------------------------------------

/// Pages through `path` with limit 10 and checks: no gaps, no overlaps, the
/// page sizes, and a null cursor on the last page only.
async fn check_pages(app: &TestApp, path: &str, cursor_param: &str, key: &str, expect: usize) {
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{path}?limit=10");
        if let Some(c) = &cursor {
            url.push_str(&format!("&{cursor_param}={}", encode(c)));
        }
        let body = app.get(&url, &app.admin).await.expect(200).clone();
        pages += 1;
        let items = body["items"].as_array().unwrap();
        seen.extend(items.iter().map(|i| i[key].to_string()));
        match body["next_cursor"].as_str() {
            Some(c) => {
                assert_eq!(items.len(), 10, "{path}: a short page before the last");
                cursor = Some(c.to_owned());
            }
            None => {
                assert!(body["next_cursor"].is_null());
                break;
            }
        }
        assert!(pages < 100);
    }
    assert_eq!(pages, expect.div_ceil(10), "{path}: page count");
    assert_eq!(seen.len(), expect, "{path}: item count");
    let unique: BTreeSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), expect, "{path}: an item on two pages");
    // The pages, concatenated, are the whole list in one page.
    let whole = app
        .get(&format!("{path}?limit=1000"), &app.admin)
        .await
        .expect(200)
        .clone();
    let whole: Vec<String> = whole["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].to_string())
        .collect();
    assert_eq!(seen, whole, "{path}: pages differ from the whole list");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagination_has_no_gaps_or_overlaps() {
    let app = spawn_app().await;
    futures::future::join_all((0..57).map(|i| {
        let app = &app;
        async move {
            app.register_stale(&format!("w{i}"), &format!("m{i:02}"), 60_000)
                .await
        }
    }))
    .await;
    futures::future::join_all((0..57).map(|i| {
        let app = &app;
        async move { app.create_token("read", &format!("t{i}"), None).await }
    }))
    .await;
    check_pages(&app, "/v1/workers", "cursor", "id", 57).await;
    check_pages(&app, "/v1/machines", "cursor", "id", 57).await;
    check_pages(&app, "/v1/tokens", "cursor", "id", 57).await;
    // Events: 57 × (registered, online, machine.online).
    check_pages(&app, "/v1/events", "after", "seq", 171).await;
    let seqs: Vec<i64> = app
        .events()
        .await
        .iter()
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=171).collect::<Vec<_>>(), "seq has no gaps");
    // Default limit is 100.
    let body = app.get("/v1/events", &app.admin).await.expect(200).clone();
    assert_eq!(body["items"].as_array().unwrap().len(), 100);
    assert_eq!(body["next_cursor"], "100");
    // Filters page too.
    let page = app
        .get("/v1/workers?status=online&limit=50", &app.admin)
        .await
        .expect(200)
        .clone();
    assert_eq!(page["items"].as_array().unwrap().len(), 50);
    let next = page["next_cursor"].as_str().unwrap();
    let rest = app
        .get(
            &format!("/v1/workers?status=online&limit=50&cursor={}", encode(next)),
            &app.admin,
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(rest["items"].as_array().unwrap().len(), 7);
    assert!(rest["next_cursor"].is_null());
}

// ---------------------------------------------------------------------------
// Cleanup
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_endpoints_return_the_seed_result_objects() {
    let app = spawn_app().await;
    let w = app.register_stale("w", "m", 60_000).await;
    let r = app.post_empty("/v1/cleanup/stale", &app.admin).await;
    let stale = r.expect(200).clone();
    assert_keys(
        &stale,
        &[
            "success",
            "deleted_count",
            "marked_offline_count",
            "affected_machine_ids",
        ],
    );
    assert_eq!(stale["success"], true);
    assert_eq!(stale["deleted_count"], 0);
    assert_eq!(stale["marked_offline_count"], 0);
    assert_eq!(stale["affected_machine_ids"], json!([]));

    // A machine left without workers is forgotten by the full cleanup; an
    // offline worker is kept (forget_offline_after is 7 days by default).
    let gone = app.register_stale("gone", "empty", 60_000).await;
    app.delete(&format!("/v1/workers/{}", gone.id), &app.admin)
        .await
        .expect(204);
    app.offline(&w, "shutdown").await;
    let r = app.post_empty("/v1/cleanup/all", &app.admin).await;
    let all = r.expect(200).clone();
    assert_keys(
        &all,
        &[
            "success",
            "stale",
            "forgotten_workers",
            "forgotten_machines",
            "pruned_events",
            "expired_tokens",
            "duration_ms",
        ],
    );
    assert_eq!(all["success"], true);
    assert_keys(
        &all["stale"],
        &[
            "success",
            "deleted_count",
            "marked_offline_count",
            "affected_machine_ids",
        ],
    );
    assert_eq!(all["forgotten_workers"], 0);
    assert_eq!(all["forgotten_machines"], 1);
    assert_eq!(all["pruned_events"], 0);
    assert_eq!(all["expired_tokens"], 0);
    assert!(all["duration_ms"].is_u64());
    assert_error(
        &app.get("/v1/machines/empty", &app.admin).await,
        404,
        "not_found",
    );
    assert_eq!(app.worker(&w.id).await["status"], "offline");
    assert_eq!(app.machines().await.len(), 1);

    // The sweep driven directly gives the same object.
    let report = app.cleaner().detect_stale_workers().await.unwrap();
    assert!(report.success);
    assert_eq!(report.deleted_count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_forgets_old_offline_workers_empty_machines_old_events_and_expired_tokens() {
    let app = spawn_app_with(|c| {
        c.forget_offline_after = Some("1ms".into());
        c.event_retention = Some("1ms".into());
    })
    .await;
    let keep = app.register_stale("keep", "m-keep", 60_000).await;
    let old = app.register_stale("old", "m-old", 60_000).await;
    let off = app.offline(&old, "shutdown").await;
    let expired = app.create_token("read", "expires", Some(1)).await;
    let kept = app.create_token("read", "stays", None).await;
    let events_before = app.events().await;
    assert_eq!(events_before.len(), 8);
    let newest = events_before.iter().map(|e| ts(&e["at"])).max().unwrap();
    // Past every retention: wait until the clock is beyond the last event,
    // the offline transition and the token's expiry by a few ms.
    sleep_until_ms(
        newest
            .max(ts(&off["status_changed_at"]))
            .max(ts(&expired["expires_at"]))
            + 5,
    )
    .await;

    let report = app
        .post_empty("/v1/cleanup/all", &app.admin)
        .await
        .expect(200)
        .clone();
    assert_eq!(report["forgotten_workers"], 1, "{report}");
    assert_eq!(report["forgotten_machines"], 1, "{report}");
    assert_eq!(report["pruned_events"], 8, "{report}");
    assert_eq!(report["expired_tokens"], 1, "{report}");
    assert_eq!(report["stale"]["marked_offline_count"], 0);

    assert_error(
        &app.get(&format!("/v1/workers/{}", old.id), &app.admin)
            .await,
        404,
        "not_found",
    );
    assert_error(
        &app.get("/v1/machines/m-old", &app.admin).await,
        404,
        "not_found",
    );
    assert_eq!(app.worker(&keep.id).await["status"], "online");
    assert_eq!(app.machine("m-keep").await["status"], "online");
    // Only the forgetting itself is left in the log.
    let events: Vec<_> = app.events().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(brief(&events[0]), ev("worker.deleted", None, Some(1)));
    assert_eq!(events[0]["worker_id"], old.id.as_str());
    assert_eq!(events[0]["seq"], 9, "seq never goes back");
    let tokens = app.tokens().await;
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0]["id"], kept["id"]);
    // The forgotten worker's token is gone with it.
    assert_error(
        &app.heartbeat_raw(&old.id, &old.token).await,
        401,
        "unauthorized",
    );
    // New events continue the sequence.
    app.offline(&keep, "shutdown").await;
    let events = app.events().await;
    assert_eq!(events[1]["seq"], 10);
}

// ---------------------------------------------------------------------------
// Errors. Each class runs against the same fixture and checks, after every
// rejected request, that nothing changed (invariant 8).
// ---------------------------------------------------------------------------

/// Tokens and workers in every state the error cases need.
struct Fixture {
    enroll: String,
    read: String,
    read_id: String,
    /// Online workers on m1 (long stale_after: they stay online).
    a: Reg,
    b: Reg,
    /// Offline (shutdown) on m2.
    off: Reg,
    /// A read token that was deleted.
    revoked: String,
    /// The first token of a worker registered twice.
    rotated: String,
    /// A deleted worker and its token.
    deleted: Reg,
}

async fn fixture(app: &TestApp) -> Fixture {
    let enroll = app.token("enroll").await;
    let read = app.create_token("read", "reader", None).await;
    let revoked = app.create_token("read", "revoked", None).await;
    app.delete(
        &format!("/v1/tokens/{}", revoked["id"].as_str().unwrap()),
        &app.admin,
    )
    .await
    .expect(204);
    let a = app.register_stale("a", "m1", 600_000).await;
    let b = app.register_stale("b", "m1", 600_000).await;
    let off = app.register_stale("off", "m2", 600_000).await;
    app.offline(&off, "shutdown").await;
    let first = app.register_stale("d", "m1", 600_000).await;
    app.register_stale("d", "m1", 600_000).await;
    let deleted = app.register_stale("e", "m3", 600_000).await;
    app.delete(&format!("/v1/workers/{}", deleted.id), &app.admin)
        .await
        .expect(204);
    Fixture {
        enroll,
        read: read["token"].as_str().unwrap().to_owned(),
        read_id: read["id"].as_str().unwrap().to_owned(),
        a,
        b,
        off,
        revoked: revoked["token"].as_str().unwrap().to_owned(),
        rotated: first.token,
        deleted,
    }
}

/// One request expected to be refused.
struct Case {
    what: String,
    method: Method,
    path: String,
    /// The raw `Authorization` header.
    auth: Option<String>,
    body: Option<Vec<u8>>,
    status: u16,
    code: &'static str,
}

fn case(
    method: Method,
    path: impl Into<String>,
    token: Option<&str>,
    body: Option<Vec<u8>>,
    status: u16,
) -> Case {
    let path = path.into();
    let code = match status {
        400 => "invalid_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        409 => "conflict",
        413 => "payload_too_large",
        _ => unreachable!(),
    };
    let shown_body = body
        .as_ref()
        .map(|b| {
            let s = String::from_utf8_lossy(b);
            if s.len() > 120 {
                format!("<{} bytes>", b.len())
            } else {
                s.into_owned()
            }
        })
        .unwrap_or_default();
    Case {
        what: format!("{method} {path} {shown_body}"),
        method,
        path,
        auth: token.map(|t| format!("Bearer {t}")),
        body,
        status,
        code,
    }
}

fn j(v: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&v).unwrap())
}

fn raw(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

/// `v` as JSON, padded with whitespace to exactly `size` bytes.
fn padded(v: Value, size: usize) -> Vec<u8> {
    let mut s = serde_json::to_string(&v).unwrap();
    assert!(s.len() <= size);
    let close = s.pop().unwrap();
    s.push_str(&" ".repeat(size - s.len() - 1));
    s.push(close);
    assert_eq!(s.len(), size);
    s.into_bytes()
}

/// Sends every case, checks its error, and checks that the state did not
/// change.
async fn expect_rejected(app: &TestApp, cases: Vec<Case>) {
    let before = app.snapshot().await;
    for c in cases {
        let r = app
            .send_auth(c.method.clone(), &c.path, c.auth.as_deref(), c.body)
            .await;
        assert_error_in(&c.what, &r, c.status, c.code);
        let after = app.snapshot().await;
        assert!(
            before == after,
            "{}: a refused request changed the state",
            c.what
        );
    }
}

fn register_body(name: &str, machine: &str) -> Value {
    json!({"name": name, "machine": {"id": machine}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_8_bad_input_is_400_and_changes_nothing() {
    use Method as M;
    let app = spawn_app().await;
    let fx = fixture(&app).await;
    let e = Some(fx.enroll.as_str());
    let admin = Some(app.admin.as_str());
    let mut cases = Vec::new();
    let reg = |body: Option<Vec<u8>>| case(M::POST, "/v1/workers", e, body, 400);

    // Malformed JSON, wrong types, missing fields.
    for body in [
        "{\"name\":",
        "hello",
        "",
        "[]",
        "null",
        "{\"name\": \"x\", \"machine\": {\"id\": \"m1\"}} trailing",
    ] {
        cases.push(reg(raw(body)));
    }
    for body in [
        json!({"name": 5, "machine": {"id": "m1"}}),
        json!({"name": "x", "machine": "m1"}),
        json!({"name": "x", "machine": {"id": 7}}),
        json!({"name": "x", "machine": {"id": "m1", "labels": ["a"]}}),
        json!({"name": "x", "machine": {"id": "m1", "hostname": 3}}),
        json!({"name": "x", "machine": {"id": "m1"}, "labels": {"a": 1}}),
        json!({"name": "x", "machine": {"id": "m1"}, "labels": "a=b"}),
        json!({"name": "x", "machine": {"id": "m1"}, "heartbeat_interval_ms": "100"}),
        json!({"name": "x", "machine": {"id": "m1"}, "heartbeat_interval_ms": -5}),
        json!({"name": "x", "machine": {"id": "m1"}, "heartbeat_interval_ms": 1.5}),
        json!({"name": "x", "machine": {"id": "m1"}, "stale_after_ms": 1e30}),
        json!({"machine": {"id": "m1"}}),
        json!({"name": "x"}),
        json!({"name": "x", "machine": {}}),
        json!({"name": "x", "machine": {"hostname": "h"}}),
    ] {
        cases.push(reg(j(body)));
    }
    // Names and machine ids: 1–128 of [A-Za-z0-9._:-].
    let bad_ids = [
        "",
        "a b",
        "a/b",
        "ünï",
        "tab\t",
        "new\nline",
        "x?",
        &"n".repeat(129),
    ];
    for bad in bad_ids {
        cases.push(reg(j(register_body(bad, "m1"))));
        cases.push(reg(j(register_body("x", bad))));
    }
    // Labels: ≤ 32 pairs, keys 1–64, values ≤ 256; the machine's too.
    let too_many: BTreeMap<String, String> =
        (0..33).map(|i| (format!("k{i}"), "v".into())).collect();
    for labels in [
        json!(too_many),
        json!({"k".repeat(65): "v"}),
        json!({"": "v"}),
        json!({"k": "v".repeat(257)}),
    ] {
        cases.push(reg(j(
            json!({"name": "x", "machine": {"id": "m1"}, "labels": labels}),
        )));
        cases.push(reg(j(
            json!({"name": "x", "machine": {"id": "m9", "labels": labels}}),
        )));
    }
    for hostname in [String::new(), "h".repeat(254)] {
        cases.push(reg(j(
            json!({"name": "x", "machine": {"id": "m9", "hostname": hostname}}),
        )));
    }
    // Interval rules (min_heartbeat_interval 50 ms, max_stale_after 1 h).
    for (hb, stale) in [
        (Some(49), None),
        (Some(0), None),
        (None, Some(149)), // heartbeat would be 49
        (None, Some(0)),
        (Some(1000), Some(1999)), // stale < 2 × heartbeat
        (Some(50), Some(99)),
        (None, Some(3_600_001)), // above max_stale_after
        (Some(1_200_001), None), // stale would be 3_600_003
        (Some(u64::MAX), None),
        (Some(49), Some(3_600_000)),
    ] {
        let mut body = register_body("x", "m9");
        if let Some(h) = hb {
            body["heartbeat_interval_ms"] = json!(h);
        }
        if let Some(s) = stale {
            body["stale_after_ms"] = json!(s);
        }
        cases.push(reg(j(body)));
    }
    // Re-registering an existing worker with bad input changes nothing
    // either (same session, same token; checked after the loop).
    cases.push(reg(j(
        json!({"name": "a", "machine": {"id": "m1"}, "labels": {"": "x"}}),
    )));
    cases.push(reg(j(
        json!({"name": "a", "machine": {"id": "m1"}, "stale_after_ms": 10}),
    )));

    // Tokens.
    let tok = |body: Option<Vec<u8>>| case(M::POST, "/v1/tokens", admin, body, 400);
    for body in [
        json!({"kind": "admin", "name": "x"}),
        json!({"kind": "worker", "name": "x"}),
        json!({"kind": "bogus", "name": "x"}),
        json!({"kind": 5, "name": "x"}),
        json!({"name": "x"}),
        json!({"kind": "read"}),
        json!({"kind": "read", "name": ""}),
        json!({"kind": "read", "name": "n".repeat(129)}),
        json!({"kind": "read", "name": "x", "expires_in_ms": 0}),
        json!({"kind": "read", "name": "x", "expires_in_ms": -1}),
        json!({"kind": "read", "name": "x", "expires_in_ms": "10"}),
        json!({"kind": "read", "name": "x", "expires_in_ms": 1e30}),
        json!({"kind": "read", "name": "x", "expires_in_ms": 3_153_600_000_001u64}),
        json!({"kind": "read", "name": "x", "scope": {"machines": ["gpu-*"]}}),
        json!({"kind": "enroll", "name": "x", "scope": {}}),
        json!({"kind": "enroll", "name": "x", "scope": {"machines": []}}),
        json!({"kind": "enroll", "name": "x", "scope": {"machines": ["gpu?"]}}),
        json!({"kind": "enroll", "name": "x", "scope": {"machines": "gpu-*"}}),
        json!({"kind": "enroll", "name": "x", "scope": {"labels": {"pool": 1}}}),
        json!({"kind": "enroll", "name": "x", "scope": {"labels": {"pool": "a\u{1b}"}}}),
        json!({"kind": "enroll", "name": "x", "scope": ["gpu-*"]}),
    ] {
        cases.push(tok(j(body)));
    }
    cases.push(tok(raw("{\"kind\": \"read\"")));
    cases.push(tok(raw("")));

    // Worker actions with their own token.
    let a = &fx.a;
    let at = Some(a.token.as_str());
    cases.push(case(
        M::POST,
        wpath(&a.id, "heartbeat"),
        at,
        raw("{\"x\":"),
        400,
    ));
    cases.push(case(M::POST, wpath(&a.id, "drain"), at, raw("{"), 400));
    for reason in [
        json!("stale"),
        json!("replaced"),
        json!("revoked"),
        json!("bogus"),
        json!(""),
        json!(5),
    ] {
        cases.push(case(
            M::POST,
            wpath(&a.id, "offline"),
            at,
            j(json!({"reason": reason})),
            400,
        ));
    }
    cases.push(case(
        M::POST,
        wpath(&a.id, "offline"),
        at,
        raw("{\"reason\""),
        400,
    ));
    cases.push(case(
        M::POST,
        wpath(&a.id, "offline"),
        admin,
        j(json!({"reason": "stale"})),
        400,
    ));

    // Batches.
    let batch = |body: Option<Vec<u8>>| case(M::POST, "/v1/heartbeats", e, body, 400);
    let entry = json!({"worker_id": a.id, "token": a.token});
    cases.push(batch(j(json!({}))));
    cases.push(batch(j(json!({"heartbeats": {}}))));
    cases.push(batch(j(json!({"heartbeats": [{"worker_id": a.id}]}))));
    cases.push(batch(j(
        json!({"heartbeats": [{"worker_id": a.id, "token": 5}]}),
    )));
    cases.push(batch(raw("{\"heartbeats\": [")));
    // More than 1000 entries (all valid ones: the count alone refuses it,
    // and none of them is taken).
    cases.push(batch(j(json!({"heartbeats": vec![entry.clone(); 1001]}))));

    // Query parameters.
    for q in [
        "/v1/workers?limit=0",
        "/v1/workers?limit=1001",
        "/v1/workers?limit=abc",
        "/v1/workers?limit=-1",
        "/v1/workers?limit=",
        "/v1/workers?limit=1.5",
        "/v1/workers?status=bogus",
        "/v1/workers?status=ONLINE",
        "/v1/workers?cursor=garbage",
        "/v1/workers?machine_id=bad%20id",
        "/v1/machines?limit=0",
        "/v1/machines?limit=1001",
        "/v1/machines?status=draining",
        "/v1/machines?cursor=bad%20id",
        "/v1/events?limit=0",
        "/v1/events?limit=1001",
        "/v1/events?limit=abc",
        "/v1/events?after=abc",
        "/v1/events?after=-1",
        "/v1/events?type=worker.exploded",
        "/v1/events?type=",
        "/v1/events?worker_id=garbage",
        "/v1/events?machine_id=bad%20id",
        "/v1/tokens?limit=0",
        "/v1/tokens?limit=1001",
        "/v1/tokens?cursor=garbage",
    ] {
        cases.push(case(M::GET, q, admin, None, 400));
    }
    expect_rejected(&app, cases).await;

    // The existing worker kept its session and token; the good limits work.
    let hb = app.heartbeat(&fx.a).await;
    assert_eq!(hb["session"], 1);
    for q in [
        "/v1/workers?limit=1",
        "/v1/workers?limit=1000",
        "/v1/events?after=0",
    ] {
        app.get(q, &app.admin).await.expect(200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_8_unauthenticated_requests_are_401_and_change_nothing() {
    use Method as M;
    let app = spawn_app().await;
    let fx = fixture(&app).await;
    let a = &fx.a;
    let valid_reg = j(register_body("new", "m1"));
    let endpoints: Vec<(Method, String, Option<Vec<u8>>)> = vec![
        (
            M::POST,
            "/v1/tokens".into(),
            j(json!({"kind": "read", "name": "x"})),
        ),
        (M::GET, "/v1/tokens".into(), None),
        (M::DELETE, format!("/v1/tokens/{}", fx.read_id), None),
        (M::POST, "/v1/workers".into(), valid_reg.clone()),
        (M::GET, "/v1/workers".into(), None),
        (M::GET, format!("/v1/workers/{}", a.id), None),
        (M::DELETE, format!("/v1/workers/{}", a.id), None),
        (M::POST, wpath(&a.id, "heartbeat"), None),
        (M::POST, wpath(&a.id, "drain"), None),
        (M::POST, wpath(&a.id, "offline"), None),
        (
            M::POST,
            "/v1/heartbeats".into(),
            j(json!({"heartbeats": [{"worker_id": a.id, "token": a.token}]})),
        ),
        (M::GET, "/v1/machines".into(), None),
        (M::GET, "/v1/machines/m1".into(), None),
        (M::GET, "/v1/events".into(), None),
        (M::POST, "/v1/cleanup/stale".into(), None),
        (M::POST, "/v1/cleanup/all".into(), None),
    ];
    let read_secret = fx.read.strip_prefix("rc_read_").unwrap();
    let bad_auth: Vec<Option<String>> = vec![
        None,
        Some(String::new()),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Basic {}", app.admin)),
        Some(app.admin.clone()),
        Some("Bearer garbage".into()),
        Some(format!("Bearer {}x", app.admin)),
        Some(format!("Bearer rc_admin_{}", "0".repeat(64))),
        Some(format!("Bearer rc_enroll_{}", "0".repeat(64))),
        Some(format!("Bearer rc_read_{}", "0".repeat(64))),
        Some(format!("Bearer rc_worker_{}", "0".repeat(64))),
        // A real secret under another kind's prefix is not a token.
        Some(format!("Bearer rc_admin_{read_secret}")),
        Some(format!("Bearer rc_enroll_{read_secret}")),
        Some(format!("Bearer {}", fx.revoked)),
        Some(format!("Bearer {}", fx.rotated)),
        Some(format!("Bearer {}", fx.deleted.token)),
    ];
    let mut cases = Vec::new();
    for auth in &bad_auth {
        for (method, path, body) in &endpoints {
            let mut c = case(method.clone(), path.clone(), None, body.clone(), 401);
            c.what = format!("{} [auth {:?}]", c.what, auth);
            c.auth = auth.clone();
            cases.push(c);
        }
    }
    // 401 comes first: before 403, 413, 400, 404 and 409.
    let big = vec![b' '; 100 * 1024];
    let mut big_reg = serde_json::to_vec(&register_body("x", "m1")).unwrap();
    big_reg.extend_from_slice(&big);
    cases.push(case(
        M::POST,
        "/v1/workers",
        None,
        Some(big_reg.clone()),
        401,
    ));
    cases.push(case(
        M::POST,
        "/v1/workers",
        Some("garbage"),
        Some(big_reg),
        401,
    ));
    cases.push(case(M::POST, "/v1/workers", None, raw("{\"name\":"), 401));
    cases.push(case(
        M::POST,
        "/v1/tokens",
        Some(&fx.revoked),
        raw("nonsense"),
        401,
    ));
    cases.push(case(
        M::GET,
        format!("/v1/workers/{UNKNOWN_WORKER}"),
        None,
        None,
        401,
    ));
    cases.push(case(M::GET, "/v1/workers?limit=0", None, None, 401));
    cases.push(case(
        M::GET,
        "/v1/machines/nowhere",
        Some(&fx.revoked),
        None,
        401,
    ));
    cases.push(case(
        M::DELETE,
        format!("/v1/tokens/{UNKNOWN_TOKEN_ID}"),
        None,
        None,
        401,
    ));
    cases.push(case(M::POST, wpath(&fx.off.id, "drain"), None, None, 401));
    cases.push(case(
        M::POST,
        wpath(&fx.off.id, "drain"),
        Some(&fx.rotated),
        None,
        401,
    ));
    cases.push(case(
        M::POST,
        wpath(UNKNOWN_WORKER, "heartbeat"),
        Some(&fx.deleted.token),
        None,
        401,
    ));
    let entry = json!({"worker_id": a.id, "token": a.token});
    cases.push(case(
        M::POST,
        "/v1/heartbeats",
        None,
        j(json!({"heartbeats": vec![entry; 1001]})),
        401,
    ));
    cases.push(case(
        M::POST,
        "/v1/heartbeats",
        None,
        Some(vec![b' '; 1100 * 1024]),
        401,
    ));
    expect_rejected(&app, cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_9_a_token_acts_only_within_its_scope() {
    use Method as M;
    let app = spawn_app().await;
    let fx = fixture(&app).await;
    let (a, b) = (&fx.a, &fx.b);
    let admin = app.admin.as_str();
    let enroll = fx.enroll.as_str();
    let read = fx.read.as_str();
    let own = a.token.as_str();
    let other = b.token.as_str();
    let mut cases = Vec::new();
    let mut deny = |tokens: &[&str], method: Method, path: String, body: Option<Vec<u8>>| {
        for t in tokens {
            let mut c = case(method.clone(), path.clone(), Some(t), body.clone(), 403);
            // Name the token by its kind prefix (`rc_read`, …), not its secret.
            let kind: Vec<&str> = t.splitn(3, '_').take(2).collect();
            c.what = format!("{} [{} token]", c.what, kind.join("_"));
            cases.push(c);
        }
    };
    // Admin only: tokens and cleanup, and deleting workers.
    let tok_body = j(json!({"kind": "read", "name": "x"}));
    deny(&[enroll, read, own], M::POST, "/v1/tokens".into(), tok_body);
    deny(&[enroll, read, own], M::GET, "/v1/tokens".into(), None);
    deny(
        &[enroll, read, own],
        M::DELETE,
        format!("/v1/tokens/{}", fx.read_id),
        None,
    );
    deny(
        &[enroll, read, own],
        M::POST,
        "/v1/cleanup/stale".into(),
        None,
    );
    deny(
        &[enroll, read, own],
        M::POST,
        "/v1/cleanup/all".into(),
        None,
    );
    deny(
        &[enroll, read, own, other],
        M::DELETE,
        format!("/v1/workers/{}", a.id),
        None,
    );
    // Enroll or admin: registration and batches.
    deny(
        &[read, own],
        M::POST,
        "/v1/workers".into(),
        j(register_body("new", "m1")),
    );
    let batch = j(json!({"heartbeats": [{"worker_id": a.id, "token": a.token}]}));
    deny(&[read, own], M::POST, "/v1/heartbeats".into(), batch);
    // Read or admin: every GET.
    for path in [
        "/v1/workers".to_owned(),
        format!("/v1/workers/{}", a.id),
        "/v1/machines".into(),
        "/v1/machines/m1".into(),
        "/v1/events".into(),
    ] {
        deny(&[enroll, own], M::GET, path, None);
    }
    // Heartbeats: the worker's own token only, not even admin.
    deny(
        &[admin, enroll, read, other],
        M::POST,
        wpath(&a.id, "heartbeat"),
        None,
    );
    // Drain and offline: own token or admin.
    deny(&[enroll, read, other], M::POST, wpath(&a.id, "drain"), None);
    deny(
        &[enroll, read, other],
        M::POST,
        wpath(&a.id, "offline"),
        None,
    );
    // A worker token on another worker's path, whether or not it exists.
    for path in [
        wpath(UNKNOWN_WORKER, "heartbeat"),
        wpath(UNKNOWN_WORKER, "drain"),
        wpath(UNKNOWN_WORKER, "offline"),
        wpath("not-a-worker-id", "heartbeat"),
        wpath("not-a-worker-id", "offline"),
        wpath(&fx.off.id, "drain"),
        wpath(&fx.deleted.id, "heartbeat"),
    ] {
        deny(&[own], M::POST, path, None);
    }
    // 403 comes before 413, 400, 404 and 409.
    let mut big_reg = serde_json::to_vec(&register_body("x", "m1")).unwrap();
    big_reg.extend_from_slice(&[b' '; 100 * 1024]);
    deny(
        &[read, own],
        M::POST,
        "/v1/workers".into(),
        Some(big_reg.clone()),
    );
    deny(&[read], M::POST, "/v1/workers".into(), raw("{\"name\":"));
    deny(
        &[read],
        M::POST,
        "/v1/workers".into(),
        j(register_body("", "")),
    );
    deny(
        &[enroll],
        M::POST,
        "/v1/tokens".into(),
        Some(big_reg.clone()),
    );
    deny(
        &[other],
        M::POST,
        wpath(&a.id, "heartbeat"),
        Some(big_reg.clone()),
    );
    deny(
        &[other],
        M::POST,
        wpath(&a.id, "offline"),
        j(json!({"reason": "bogus"})),
    );
    deny(
        &[read],
        M::POST,
        "/v1/heartbeats".into(),
        Some(vec![b' '; 1100 * 1024]),
    );
    deny(
        &[read],
        M::DELETE,
        format!("/v1/workers/{UNKNOWN_WORKER}"),
        None,
    );
    deny(&[enroll], M::GET, "/v1/workers?limit=0".into(), None);
    deny(&[enroll], M::GET, "/v1/machines/nowhere".into(), None);
    deny(&[enroll], M::POST, wpath(&fx.off.id, "drain"), None);
    deny(&[admin], M::POST, wpath(UNKNOWN_WORKER, "heartbeat"), None);
    deny(
        &[enroll],
        M::DELETE,
        format!("/v1/tokens/{UNKNOWN_TOKEN_ID}"),
        None,
    );
    expect_rejected(&app, cases).await;

    // The refusal names the token's kind, with the right article.
    for (token, kind) in [(enroll, "an enroll"), (read, "a read"), (own, "a worker")] {
        let resp = app.get("/v1/tokens", token).await;
        let message = resp.expect(403)["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("{kind} token may not")),
            "{message}"
        );
    }

    // And within its scope each token works.
    app.get("/v1/workers", read).await.expect(200);
    app.get("/v1/events", read).await.expect(200);
    app.register_as(enroll, register_body("by-enroll", "m1"))
        .await;
    app.heartbeat(a).await;
    app.post_empty(&wpath(&b.id, "drain"), admin)
        .await
        .expect(200);
    app.post_empty(&wpath(&a.id, "drain"), own)
        .await
        .expect(200);
    app.post_empty(&wpath(&a.id, "offline"), own)
        .await
        .expect(200);
    app.post_empty(&wpath(&b.id, "offline"), admin)
        .await
        .expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_404_and_conflict_409_change_nothing() {
    use Method as M;
    let app = spawn_app().await;
    let fx = fixture(&app).await;
    let admin = Some(app.admin.as_str());
    let read = Some(fx.read.as_str());
    let mut cases = vec![
        case(
            M::GET,
            format!("/v1/workers/{UNKNOWN_WORKER}"),
            admin,
            None,
            404,
        ),
        case(
            M::GET,
            format!("/v1/workers/{UNKNOWN_WORKER}"),
            read,
            None,
            404,
        ),
        case(M::GET, "/v1/workers/garbage", admin, None, 404),
        case(
            M::GET,
            format!("/v1/workers/{}", fx.deleted.id),
            admin,
            None,
            404,
        ),
        case(M::POST, wpath(UNKNOWN_WORKER, "drain"), admin, None, 404),
        case(M::POST, wpath(UNKNOWN_WORKER, "offline"), admin, None, 404),
        case(M::POST, wpath("garbage", "offline"), admin, None, 404),
        case(M::POST, wpath(&fx.deleted.id, "drain"), admin, None, 404),
        case(
            M::DELETE,
            format!("/v1/workers/{UNKNOWN_WORKER}"),
            admin,
            None,
            404,
        ),
        case(
            M::DELETE,
            format!("/v1/workers/{}", fx.deleted.id),
            admin,
            None,
            404,
        ),
        case(M::DELETE, "/v1/workers/garbage", admin, None, 404),
        case(M::GET, "/v1/machines/nowhere", admin, None, 404),
        case(M::GET, "/v1/machines/nowhere", read, None, 404),
        case(M::GET, "/v1/machines/bad%20id", admin, None, 404),
        case(
            M::DELETE,
            format!("/v1/tokens/{UNKNOWN_TOKEN_ID}"),
            admin,
            None,
            404,
        ),
        case(M::DELETE, "/v1/tokens/garbage", admin, None, 404),
        // Unknown routes, with or without a token.
        case(M::GET, "/v1/nope", admin, None, 404),
        case(M::GET, "/v2/workers", None, None, 404),
        case(M::POST, wpath(&fx.a.id, "explode"), admin, None, 404),
        case(M::GET, "/v1/workers/a/b/c", admin, None, 404),
        // 409: draining an offline worker, by admin or by its own token.
        case(M::POST, wpath(&fx.off.id, "drain"), admin, None, 409),
        case(
            M::POST,
            wpath(&fx.off.id, "drain"),
            Some(&fx.off.token),
            None,
            409,
        ),
    ];
    // An idempotent drain and offline are not conflicts (checked below); a
    // 404 on a worker path also holds for drain with a body.
    cases.push(case(
        M::POST,
        wpath(UNKNOWN_WORKER, "drain"),
        admin,
        j(json!({})),
        404,
    ));
    expect_rejected(&app, cases).await;

    // A known path with a method it does not have: a JSON 4xx (405) that
    // changes nothing either.
    let before = app.snapshot().await;
    for (method, path) in [
        (M::PUT, "/v1/workers".to_owned()),
        (M::PATCH, format!("/v1/workers/{}", fx.a.id)),
        (M::GET, wpath(&fx.a.id, "heartbeat")),
        (M::DELETE, "/v1/machines/m1".to_owned()),
    ] {
        let r = app
            .send(method.clone(), &path, Some(&app.admin), j(json!({})))
            .await;
        assert_error_in(&format!("{method} {path}"), &r, 405, "invalid_request");
    }
    assert!(app.snapshot().await == before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_too_large_413_comes_before_400_and_changes_nothing() {
    use Method as M;
    let app = spawn_app().await;
    let fx = fixture(&app).await;
    let a = &fx.a;
    let e = Some(fx.enroll.as_str());
    let admin = Some(app.admin.as_str());
    let own = Some(a.token.as_str());
    const KIB64: usize = 64 * 1024;
    // Valid content, one byte too large: the size alone refuses it.
    let valid_reg = padded(register_body("big", "m1"), KIB64 + 1);
    // Invalid content and too large: 413, not 400.
    let invalid_reg = serde_json::to_vec(&register_body(&"n".repeat(70_000), "m1")).unwrap();
    let offline = padded(json!({"reason": "shutdown"}), KIB64 + 1);
    let token_body = padded(json!({"kind": "read", "name": "x"}), KIB64 + 1);
    // Batches may be up to 1 MiB.
    let entry = json!({"worker_id": a.id, "token": a.token});
    let batch_valid = padded(json!({"heartbeats": [entry]}), 1024 * 1024 + 1);
    let batch_1001 = padded(json!({"heartbeats": vec![entry; 1001]}), 1024 * 1024 + 1);
    let cases = vec![
        case(M::POST, "/v1/workers", e, Some(valid_reg.clone()), 413),
        case(M::POST, "/v1/workers", admin, Some(valid_reg), 413),
        case(M::POST, "/v1/workers", e, Some(invalid_reg), 413),
        case(M::POST, "/v1/workers", e, Some(vec![b'{'; 200 * 1024]), 413),
        case(M::POST, "/v1/tokens", admin, Some(token_body), 413),
        case(
            M::POST,
            wpath(&a.id, "heartbeat"),
            own,
            Some(padded(json!({}), KIB64 + 1)),
            413,
        ),
        case(
            M::POST,
            wpath(&a.id, "drain"),
            own,
            Some(padded(json!({}), KIB64 + 1)),
            413,
        ),
        case(
            M::POST,
            wpath(&a.id, "offline"),
            own,
            Some(offline.clone()),
            413,
        ),
        case(M::POST, wpath(&a.id, "offline"), admin, Some(offline), 413),
        case(
            M::POST,
            "/v1/cleanup/stale",
            admin,
            Some(vec![b' '; KIB64 + 1]),
            413,
        ),
        case(
            M::POST,
            "/v1/cleanup/all",
            admin,
            Some(vec![b' '; KIB64 + 1]),
            413,
        ),
        case(M::POST, "/v1/heartbeats", e, Some(batch_valid), 413),
        case(M::POST, "/v1/heartbeats", e, Some(batch_1001), 413),
        case(
            M::POST,
            "/v1/heartbeats",
            admin,
            Some(vec![b'['; 2 * 1024 * 1024]),
            413,
        ),
    ];
    expect_rejected(&app, cases).await;

    // At the limits themselves, bodies are taken.
    let exact = padded(register_body("exactly-64k", "m1"), KIB64);
    let r = app.post_raw("/v1/workers", Some(&fx.enroll), exact).await;
    assert_eq!(r.expect(201)["worker"]["name"], "exactly-64k");
    let hb = app
        .post_raw(&wpath(&a.id, "heartbeat"), own, padded(json!({}), KIB64))
        .await;
    assert_eq!(hb.expect(200)["status"], "online");
    // A batch over 64 KiB but under 1 MiB is fine.
    let entry = json!({"worker_id": a.id, "token": a.token});
    let batch = padded(json!({"heartbeats": [entry]}), 1024 * 1024);
    let r = app.post_raw("/v1/heartbeats", e, batch).await;
    assert_eq!(r.expect(200)["results"][0]["ok"], true);
}

// ---------------------------------------------------------------------------
// The numbered invariants (ARCHITECTURE.md, "What rollcall guarantees")
// ---------------------------------------------------------------------------

/// Client-side timing of a heartbeat: sent at (before the request) and
/// answered at (after the response), on the server's clock.
#[derive(Debug, Clone)]
struct Ack {
    sent: i64,
    answered: i64,
    session: u64,
    resumed: bool,
    deadline: i64,
}

/// Heartbeats `w` every `every` until `until_ms`; returns the acks.
async fn beat_until(app: &TestApp, w: &Reg, every: Duration, until_ms: i64) -> Vec<Ack> {
    let mut acks = Vec::new();
    while now_ms() < until_ms {
        tokio::time::sleep(every).await;
        let sent = now_ms();
        let hb = app.heartbeat(w).await;
        acks.push(Ack {
            sent,
            answered: now_ms(),
            session: hb["session"].as_u64().unwrap(),
            resumed: hb["resumed"].as_bool().unwrap(),
            deadline: ts(&hb["deadline_at"]),
        });
    }
    acks
}

/// The longest the server can have gone without taking a heartbeat of this
/// worker: from sending one (or the registration, at `start`) to the answer
/// of the next.
fn max_gap(start: i64, acks: &[Ack]) -> i64 {
    let mut prev_sent = start;
    let mut gap = 0;
    for a in acks {
        gap = gap.max(a.answered - prev_sent);
        prev_sent = a.sent;
    }
    gap
}

/// No stale transition of a session happened at or before a deadline the
/// server acknowledged for that session: no heartbeat was lost.
#[track_caller]
fn assert_no_stale_before_acked_deadline(events: &[Value], acks: &[Ack]) {
    for e in events {
        if e["type"] == "worker.offline" && e["reason"] == "stale" {
            let session = e["session"].as_u64().unwrap();
            let at = ts(&e["at"]);
            for a in acks.iter().filter(|a| a.session == session) {
                assert!(
                    at > a.deadline,
                    "marked stale at {at}, before the deadline {} it acknowledged: {e}",
                    a.deadline
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_1_no_false_offline_while_heartbeating_and_sweeping() {
    let app = spawn_app().await; // heartbeat 100 ms, stale_after 500 ms
    let start = now_ms();
    let workers = futures::future::join_all((0..5).map(|i| {
        let app = &app;
        async move { app.register(&format!("w{i}"), "m").await }
    }))
    .await;
    let until = now_ms() + 3_000;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeps = {
        let stop = stop.clone();
        let app = &app;
        async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = app.cleaner().detect_stale_workers().await.unwrap();
                assert_eq!(
                    r.marked_offline_count, 0,
                    "the sweep marked a beating worker"
                );
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        }
    };
    let beats = async {
        let acks = futures::future::join_all(
            workers
                .iter()
                .map(|w| beat_until(&app, w, Duration::from_millis(100), until)),
        )
        .await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        acks
    };
    let (acks, sweeps) = tokio::join!(beats, sweeps);
    assert!(sweeps > 10, "the sweep ran alongside ({sweeps} times)");
    for (w, acks) in workers.iter().zip(&acks) {
        assert!(acks.len() >= 10, "{} heartbeats", acks.len());
        let events = app.worker_events(&w.id).await;
        assert_no_stale_before_acked_deadline(&events, acks);
        let gap = max_gap(start, acks);
        if gap < 500 - 5 {
            // Every heartbeat reached the server within stale_after of the
            // previous one: it must never have been marked offline.
            let got: Vec<_> = events.iter().map(brief).collect();
            assert_eq!(
                got,
                [
                    ev("worker.registered", None, Some(1)),
                    ev("worker.online", Some("registered"), Some(1)),
                ],
                "a false offline (longest gap {gap} ms)"
            );
            assert!(acks.iter().all(|a| !a.resumed && a.session == 1));
            assert_eq!(app.worker(&w.id).await["status"], "online");
        } else {
            eprintln!(
                "note: the machine stalled this client for {gap} ms; only the weaker check applies"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_2_bounded_detection_of_a_silent_worker() {
    let app = spawn_app().await;
    // Silent from registration.
    let w = app.register_stale("silent", "m1", 1_000).await;
    let deadline = w.deadline_ms();
    assert_eq!(deadline, ts(&w.worker["registered_at"]) + 1_000);
    // Silent after one heartbeat.
    let once = app.register_stale("once", "m2", 1_000).await;
    let hb = app.heartbeat(&once).await;
    let once_deadline = ts(&hb["deadline_at"]);

    // Shortly before its deadline it is still online.
    sleep_until_ms(deadline - 300).await;
    let got = app.worker(&w.id).await;
    if now_ms() < deadline {
        assert_eq!(got["status"], "online", "offline before its deadline");
        assert_eq!(ts(&got["deadline_at"]), deadline);
    }

    for (w, deadline, machine) in [(&w, deadline, "m1"), (&once, once_deadline, "m2")] {
        let offline = wait_for(
            "the silent worker is marked stale",
            Duration::from_secs(15),
            || async {
                app.worker_events(&w.id)
                    .await
                    .into_iter()
                    .find(|e| e["type"] == "worker.offline")
            },
        )
        .await;
        check_event(&offline);
        assert_eq!(offline["reason"], "stale");
        assert_eq!(offline["session"], 1);
        let at = ts(&offline["at"]);
        assert!(
            at > deadline,
            "marked stale at {at}, not after its deadline {deadline}"
        );
        assert!(
            at <= deadline + 1_000,
            "detected {} ms after the deadline",
            at - deadline
        );
        let lag = offline["detection_lag_ms"].as_i64().unwrap();
        assert_eq!(
            lag,
            at - deadline,
            "detection_lag_ms is the time from deadline to marking"
        );
        let got = app.worker(&w.id).await;
        assert_eq!(got["status"], "offline");
        assert_eq!(got["offline_reason"], "stale");
        assert!(got["deadline_at"].is_null());
        assert_eq!(ts(&got["status_changed_at"]), at);
        // Its machine went offline in the same transaction.
        let m = app.machine_events(machine).await;
        let last = m.last().unwrap();
        assert_eq!(brief(last), ev("machine.offline", None, None));
        assert_eq!(ts(&last["at"]), at);
        assert_eq!(
            last["seq"].as_i64().unwrap(),
            offline["seq"].as_i64().unwrap() + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_2_bounded_detection_when_many_expire_at_once() {
    let app = spawn_app().await;
    let n = 200;
    let workers = futures::future::join_all((0..n).map(|i| {
        let app = &app;
        async move {
            app.register_stale(&format!("w{i}"), &format!("m{}", i % 10), 1_000)
                .await
        }
    }))
    .await;
    let deadlines: HashMap<String, i64> = workers
        .iter()
        .map(|w| (w.id.clone(), w.deadline_ms()))
        .collect();
    let offline = wait_for(
        "all 200 workers are marked stale",
        Duration::from_secs(20),
        || async {
            let events = app
                .list_all("/v1/events?type=worker.offline", "after", 1000)
                .await;
            (events.len() >= n).then_some(events)
        },
    )
    .await;
    assert_eq!(offline.len(), n, "one offline event per worker");
    let mut lags = Vec::new();
    for e in &offline {
        assert_eq!(e["reason"], "stale");
        let id = e["worker_id"].as_str().unwrap();
        let deadline = deadlines[id];
        let at = ts(&e["at"]);
        assert!(at > deadline, "{id} marked stale before its deadline");
        assert!(
            at <= deadline + 1_000,
            "{id} detected {} ms late",
            at - deadline
        );
        assert_eq!(e["detection_lag_ms"].as_i64().unwrap(), at - deadline);
        lags.push(at - deadline);
    }
    let ids: BTreeSet<_> = offline
        .iter()
        .map(|e| e["worker_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), n);
    lags.sort_unstable();
    eprintln!(
        "detection lag of {n} simultaneous expiries: p50 {} ms, p99 {} ms, max {} ms",
        lags[n / 2],
        lags[n * 99 / 100],
        lags[n - 1]
    );
    let machines = app.machines().await;
    assert_eq!(machines.len(), 10);
    for m in &machines {
        assert_eq!(m["status"], "offline");
        assert_eq!(m["workers_online"], 0);
        assert_eq!(m["workers_total"], 20);
    }
    let machine_offline = app
        .list_all("/v1/events?type=machine.offline", "after", 1000)
        .await;
    assert_eq!(machine_offline.len(), 10, "one machine.offline per machine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn invariant_3_race_safety_heartbeats_against_the_detector() {
    let app = spawn_app_with(|c| c.min_heartbeat_interval = Some("1ms".into())).await;
    let workers = futures::future::join_all((0..12).map(|i| {
        app.register_body(json!({
            "name": format!("racer{i}"), "machine": {"id": format!("m{}", i % 3)},
            "heartbeat_interval_ms": 1, "stale_after_ms": 3,
        }))
    }))
    .await;
    const TASKS_PER_WORKER: usize = 2;
    const ITERATIONS: usize = 200;
    // Each task heartbeats its worker at random intervals around the
    // deadline (0–6 ms against stale_after 3 ms), recording every answer.
    let app = &app;
    let tasks = workers.iter().flat_map(|w| {
        (0..TASKS_PER_WORKER).map(move |_| async move {
            let mut acks = Vec::with_capacity(ITERATIONS);
            for _ in 0..ITERATIONS {
                let pause = rand::random_range(0..=6u64);
                if pause == 0 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                let sent = now_ms();
                let r = app.heartbeat_raw(&w.id, &w.token).await;
                let hb = r.expect(200);
                acks.push(Ack {
                    sent,
                    answered: now_ms(),
                    session: hb["session"].as_u64().unwrap(),
                    resumed: hb["resumed"].as_bool().unwrap(),
                    deadline: ts(&hb["deadline_at"]),
                });
            }
            (w.id.clone(), acks)
        })
    });
    let results = futures::future::join_all(tasks).await;
    let mut acks: HashMap<String, Vec<Ack>> = HashMap::new();
    for (id, task_acks) in results {
        // One task's answers come in order: sessions never go back.
        assert!(
            task_acks.windows(2).all(|p| p[0].session <= p[1].session),
            "sessions went back within one task"
        );
        acks.entry(id).or_default().extend(task_acks);
    }
    // Finally every worker is brought back online by a heartbeat.
    for w in &workers {
        let hb = app.heartbeat(w).await;
        assert_eq!(hb["status"], "online");
        acks.get_mut(&w.id).unwrap().push(Ack {
            sent: 0,
            answered: 0,
            session: hb["session"].as_u64().unwrap(),
            resumed: hb["resumed"].as_bool().unwrap(),
            deadline: ts(&hb["deadline_at"]),
        });
    }
    // Let them all go stale once more, so that the log is final: every
    // worker offline in (at least) the last session it was answered — a
    // resumed answer comes from memory, before its resume is committed.
    let answered: HashMap<String, u64> = acks
        .iter()
        .map(|(id, a)| (id.clone(), a.iter().map(|a| a.session).max().unwrap()))
        .collect();
    wait_until(
        "every racer is offline in its last answered session",
        Duration::from_secs(20),
        || async {
            app.list_all("/v1/workers", "cursor", 1000)
                .await
                .iter()
                .filter_map(|w| Some((answered.get(w["id"].as_str()?)?, w)))
                .all(|(s, w)| w["status"] == "offline" && w["session"].as_u64() >= Some(*s))
        },
    )
    .await;

    let events = app.events().await;
    let per_worker = by_worker(&events);
    let mut resumes_total = 0;
    for w in &workers {
        let evs = &per_worker[&w.id];
        let acks = &acks[&w.id];
        let got: Vec<_> = evs.iter().map(brief).collect();
        assert_eq!(
            got[..2],
            [
                ev("worker.registered", None, Some(1)),
                ev("worker.online", Some("registered"), Some(1)),
            ]
        );
        // Online and offline strictly alternate; each resume is session + 1.
        let mut live = true;
        let mut session = 1;
        let mut resumed_sessions = BTreeSet::new();
        for e in &got[2..] {
            match (e.0.as_str(), e.1.as_deref()) {
                ("worker.offline", Some("stale")) => {
                    assert!(live, "two offlines in a row: {got:?}");
                    assert_eq!(e.2, Some(session));
                    live = false;
                }
                ("worker.online", Some("heartbeat")) => {
                    assert!(!live, "two onlines in a row: {got:?}");
                    assert_eq!(e.2, Some(session + 1), "a resume is session + 1");
                    session += 1;
                    resumed_sessions.insert(session);
                    live = true;
                }
                other => panic!("unexpected event {other:?}"),
            }
        }
        assert!(!live, "the log ends offline");
        // Every resumed answer is exactly one worker.online(heartbeat).
        let answered: Vec<u64> = acks
            .iter()
            .filter(|a| a.resumed)
            .map(|a| a.session)
            .collect();
        let answered_set: BTreeSet<u64> = answered.iter().copied().collect();
        assert_eq!(
            answered.len(),
            answered_set.len(),
            "two resumed answers for one session"
        );
        assert_eq!(
            answered_set, resumed_sessions,
            "resumed answers vs worker.online(heartbeat) events"
        );
        // No answer names a session that never started; no heartbeat was lost.
        assert!(acks.iter().all(|a| a.session <= session));
        assert_no_stale_before_acked_deadline(evs, acks);
        resumes_total += resumed_sessions.len();
    }
    let beats = workers.len() * (TASKS_PER_WORKER * ITERATIONS + 1);
    eprintln!("{beats} heartbeats raced the detector; {resumes_total} resumes");
    assert!(resumes_total > 0, "the race was never exercised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_4_machine_status_follows_its_last_live_worker() {
    let app = spawn_app().await;
    // A worker on another machine, which none of this may touch.
    app.register_stale("d", "n", 60_000).await;
    let a = app.register_stale("a", "m", 60_000).await;
    let b = app.register_stale("b", "m", 60_000).await;
    let c = app.register_stale("c", "m", 60_000).await;

    let expect = |status: &'static str, online: u64, total: u64| {
        let app = &app;
        async move {
            let m = app.machine("m").await;
            check_machine(&m);
            assert_eq!(
                (
                    m["status"].as_str().unwrap(),
                    m["workers_online"].as_u64().unwrap(),
                    m["workers_total"].as_u64().unwrap()
                ),
                (status, online, total),
                "{m}"
            );
            let live = m["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|w| w["status"] != "offline")
                .count() as u64;
            assert_eq!(live, online);
            // The list agrees with the detail.
            let listed = app.machines().await;
            let listed = listed.iter().find(|x| x["id"] == "m").unwrap();
            assert_eq!(listed["status"], status);
            assert_eq!(listed["workers_online"], online);
        }
    };
    expect("online", 3, 3).await;
    app.post_empty(&wpath(&a.id, "drain"), &a.token)
        .await
        .expect(200);
    expect("online", 3, 3).await; // draining counts as live
    app.offline(&b, "shutdown").await;
    expect("online", 2, 3).await;
    app.offline(&c, "exited").await;
    expect("online", 1, 3).await; // only the draining worker is left
    app.offline(&a, "shutdown").await;
    expect("offline", 0, 3).await;
    let hb = app.heartbeat(&b).await;
    assert_eq!(hb["resumed"], true);
    app.wait_resumed(&b.id, 2).await;
    expect("online", 1, 3).await;
    app.delete(&format!("/v1/workers/{}", b.id), &app.admin)
        .await
        .expect(204);
    expect("offline", 0, 2).await;
    let c2 = app.register_stale("c", "m", 300).await;
    assert_eq!(c2.status, 200);
    expect("online", 1, 2).await;
    wait_until("c goes stale", Duration::from_secs(10), || async {
        app.worker(&c2.id).await["status"] == "offline"
    })
    .await;
    expect("offline", 0, 2).await;

    // Exactly one machine event per change, each in the transaction of the
    // worker event that caused it (same time, next seq).
    let events = app.machine_events("m").await;
    let machine: Vec<_> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["worker_id"].is_null())
        .collect();
    let kinds: Vec<_> = machine
        .iter()
        .map(|(_, e)| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "machine.online",
            "machine.offline",
            "machine.online",
            "machine.offline",
            "machine.online",
            "machine.offline"
        ]
    );
    for (i, e) in machine {
        let cause = &events[i - 1];
        assert!(cause["worker_id"].is_string());
        assert_eq!(cause["at"], e["at"], "{e} vs {cause}");
        assert_eq!(
            e["seq"].as_i64().unwrap(),
            cause["seq"].as_i64().unwrap() + 1
        );
        assert_eq!(e["machine_id"], "m");
    }
    // The other machine saw none of it.
    let n_events: Vec<_> = app.machine_events("n").await.iter().map(brief).collect();
    assert_eq!(n_events.len(), 3);
    assert_eq!(app.machine("n").await["status"], "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_5_durable_before_announced() {
    let app = spawn_app().await;
    // Checks, right after a response reported a transition, that the log
    // already holds `want` as its last events for the worker and that GET
    // shows `status`/`session`.
    let check = |id: String,
                 want: Vec<(String, Option<String>, Option<u64>)>,
                 status: &'static str,
                 session: u64| {
        let app = &app;
        async move {
            let evs: Vec<_> = app.worker_events(&id).await.iter().map(brief).collect();
            assert!(evs.ends_with(&want), "{want:?} not in the log yet: {evs:?}");
            let w = app.worker(&id).await;
            assert_eq!(w["status"], status);
            assert_eq!(w["session"], session);
        }
    };
    let w = app.register_stale("w", "m", 60_000).await;
    check(
        w.id.clone(),
        vec![ev("worker.online", Some("registered"), Some(1))],
        "online",
        1,
    )
    .await;
    assert_eq!(app.machine("m").await["status"], "online");
    app.post_empty(&wpath(&w.id, "drain"), &w.token)
        .await
        .expect(200);
    check(
        w.id.clone(),
        vec![ev("worker.draining", None, Some(1))],
        "draining",
        1,
    )
    .await;
    app.offline(&w, "shutdown").await;
    check(
        w.id.clone(),
        vec![ev("worker.offline", Some("shutdown"), Some(1))],
        "offline",
        1,
    )
    .await;
    assert_eq!(app.machine("m").await["status"], "offline");
    // A heartbeat of an offline worker is answered before its resume is
    // durable (a liveness answer, not an event); the worker is shown
    // online, with its event in the log, once it is.
    let hb = app.heartbeat(&w).await;
    assert_eq!(hb["resumed"], true);
    app.wait_resumed(&w.id, 2).await;
    check(
        w.id.clone(),
        vec![ev("worker.online", Some("heartbeat"), Some(2))],
        "online",
        2,
    )
    .await;
    assert_eq!(app.machine("m").await["status"], "online");
    let w2 = app.register_stale("w", "m", 60_000).await;
    check(
        w.id.clone(),
        vec![
            ev("worker.offline", Some("replaced"), Some(2)),
            ev("worker.registered", None, Some(3)),
            ev("worker.online", Some("registered"), Some(3)),
        ],
        "online",
        3,
    )
    .await;
    app.offline(&w2, "exited").await;
    let r = app
        .post(
            "/v1/heartbeats",
            &app.admin,
            json!({"heartbeats": [{"worker_id": w2.id, "token": w2.token}]}),
        )
        .await;
    assert_eq!(r.expect(200)["results"][0]["resumed"], true);
    app.wait_resumed(&w.id, 4).await;
    check(
        w.id.clone(),
        vec![ev("worker.online", Some("heartbeat"), Some(4))],
        "online",
        4,
    )
    .await;

    // Many at once: each answer is already in the log when it arrives.
    let many = futures::future::join_all((0..20).map(|i| {
        let app = &app;
        async move { app.register_stale(&format!("x{i}"), "m2", 60_000).await }
    }))
    .await;
    futures::future::join_all(many.iter().map(|x| async {
        app.offline(x, "shutdown").await;
        check(
            x.id.clone(),
            vec![ev("worker.offline", Some("shutdown"), Some(1))],
            "offline",
            1,
        )
        .await;
    }))
    .await;

    // The detector: once a stale worker is shown offline, its event is in
    // the log (same transaction).
    let s = app.register_stale("s", "m3", 300).await;
    wait_until("s is shown offline", Duration::from_secs(10), || async {
        app.worker(&s.id).await["status"] == "offline"
    })
    .await;
    check(
        s.id.clone(),
        vec![ev("worker.offline", Some("stale"), Some(1))],
        "offline",
        1,
    )
    .await;

    let r = app
        .delete(&format!("/v1/workers/{}", w.id), &app.admin)
        .await;
    assert_eq!(r.status, 204);
    let evs: Vec<_> = app.worker_events(&w.id).await.iter().map(brief).collect();
    assert_eq!(
        evs[evs.len() - 2..],
        [
            ev("worker.offline", Some("revoked"), Some(4)),
            ev("worker.deleted", None, Some(4))
        ]
    );
    assert_error(
        &app.get(&format!("/v1/workers/{}", w.id), &app.admin).await,
        404,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_6_restart_grace() {
    let mut app = spawn_app().await;
    let silent = app.register_stale("silent", "m", 1_000).await;
    let beating = app.register_stale("beating", "m", 1_000).await;
    let hb = app.heartbeat(&beating).await;
    let shown = app.worker(&beating.id).await;
    let events_before = app.events().await;
    app.stop().await;

    // Down for longer than stale_after past both deadlines.
    sleep_until_ms(silent.deadline_ms().max(ts(&hb["deadline_at"])) + 300).await;
    let restart = now_ms();
    app.start().await;
    let up = now_ms();

    // Right after the start both are online, with a full period from now.
    let s = app.worker(&silent.id).await;
    let answered = now_ms();
    let s_deadline = ts(&s["deadline_at"]);
    assert!(s_deadline >= restart + 1_000, "no restart grace: {s}");
    assert!(s_deadline <= up + 1_000);
    if answered < restart + 1_000 {
        assert_eq!(s["status"], "online");
        assert_eq!(s["session"], 1);
    }
    let b = app.worker(&beating.id).await;
    assert!(ts(&b["deadline_at"]) >= restart + 1_000);
    // The heartbeat time was written at shutdown and survived.
    assert_eq!(b["last_heartbeat_at"], shown["last_heartbeat_at"]);
    assert!(b["last_heartbeat_at"].is_string());
    // The server recorded nothing while it was down or starting.
    assert_eq!(app.events().await, events_before);

    // The beating worker keeps beating (every 200 ms against 1 s) and stays
    // online; the silent one goes stale a full period after the restart.
    let acks = beat_until(&app, &beating, Duration::from_millis(200), now_ms() + 2_000).await;
    let offline = wait_for(
        "the silent worker goes stale",
        Duration::from_secs(15),
        || async {
            app.worker_events(&silent.id)
                .await
                .into_iter()
                .find(|e| e["type"] == "worker.offline")
        },
    )
    .await;
    assert_eq!(offline["reason"], "stale");
    let at = ts(&offline["at"]);
    assert!(
        at > s_deadline,
        "stale at {at}, before its restart deadline {s_deadline}"
    );
    assert!(at <= s_deadline + 1_000);

    let b_events = app.worker_events(&beating.id).await;
    assert_no_stale_before_acked_deadline(&b_events, &acks);
    if max_gap(up, &acks) < 1_000 - 5 {
        assert!(
            b_events.iter().all(|e| e["type"] != "worker.offline"),
            "a beating worker went offline across the restart: {b_events:?}"
        );
        assert_eq!(app.worker(&beating.id).await["status"], "online");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_7_graceful_offline_is_immediate_and_idempotent() {
    let app = spawn_app().await;
    let a = app.register_stale("a", "m", 60_000).await;
    let b = app.register_stale("b", "m", 60_000).await;

    let first = app.offline(&a, "shutdown").await;
    check_worker(&first);
    assert_eq!(first["status"], "offline");
    assert_eq!(first["offline_reason"], "shutdown");
    assert!(first["deadline_at"].is_null());
    assert_eq!(first["session"], 1);
    // It took effect in the call.
    assert_eq!(app.worker(&a.id).await["status"], "offline");
    let n = app.events().await.len();
    // Again, by its token, by admin, with another reason, without a body:
    // the same Worker, and nothing recorded.
    for (token, body) in [
        (a.token.as_str(), Some(json!({"reason": "shutdown"}))),
        (app.admin.as_str(), Some(json!({"reason": "exited"}))),
        (a.token.as_str(), None),
        (a.token.as_str(), Some(json!({}))),
    ] {
        let r = match body {
            Some(body) => app.post(&wpath(&a.id, "offline"), token, body).await,
            None => app.post_empty(&wpath(&a.id, "offline"), token).await,
        };
        assert_eq!(r.expect(200), &first);
    }
    assert_eq!(app.events().await.len(), n);
    // The machine still has b.
    assert_eq!(app.machine("m").await["status"], "online");

    // b is the last live worker: the machine goes offline in the same
    // transaction (no body: the reason defaults to shutdown).
    let off = app
        .post_empty(&wpath(&b.id, "offline"), &app.admin)
        .await
        .expect(200)
        .clone();
    assert_eq!(off["offline_reason"], "shutdown");
    let events = app.events().await;
    let tail: Vec<_> = events[events.len() - 2..].iter().map(brief).collect();
    assert_eq!(
        tail,
        [
            ev("worker.offline", Some("shutdown"), Some(1)),
            ev("machine.offline", None, None)
        ]
    );
    assert_eq!(
        events[events.len() - 2]["at"],
        events[events.len() - 1]["at"]
    );
    let m = app.machine("m").await;
    assert_eq!(m["status"], "offline");
    assert_eq!(m["status_changed_at"], off["status_changed_at"]);
    let again = app.offline(&b, "exited").await;
    assert_eq!(again, off);
    assert_eq!(app.events().await.len(), events.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exited_offline_records_the_exit_status_it_was_given() {
    let app = spawn_app().await;
    let a = app.register("a", "m").await;
    let b = app.register("b", "m").await;
    let c = app.register("c", "m").await;
    let d = app.register("d", "m").await;
    // Refused, and nothing changes: a status with another reason, both at
    // once, out of range, not integers.
    let n = app.events().await.len();
    for body in [
        json!({"reason": "shutdown", "exit_code": 0}),
        json!({"exit_code": 1}),
        json!({"reason": "exited", "exit_code": 1, "signal": 9}),
        json!({"reason": "exited", "exit_code": 256}),
        json!({"reason": "exited", "exit_code": -1}),
        json!({"reason": "exited", "signal": 0}),
        json!({"reason": "exited", "signal": 65}),
        json!({"reason": "exited", "exit_code": "3"}),
    ] {
        let r = app
            .post(&wpath(&a.id, "offline"), &a.token, body.clone())
            .await;
        assert_error_in(&body.to_string(), &r, 400, "invalid_request");
    }
    assert_eq!(app.events().await.len(), n);
    assert_eq!(app.worker(&a.id).await["status"], "online");

    let exited = |code: Value, signal: Value| {
        let mut body = json!({"reason": "exited"});
        if !code.is_null() {
            body["exit_code"] = code;
        }
        if !signal.is_null() {
            body["signal"] = signal;
        }
        body
    };
    for (w, body) in [
        (&a, exited(json!(0), Value::Null)),
        (&b, exited(json!(3), Value::Null)),
        (&c, exited(Value::Null, json!(9))),
        (&d, exited(Value::Null, Value::Null)),
    ] {
        app.post(&wpath(&w.id, "offline"), &w.token, body)
            .await
            .expect(200);
    }
    let events = app.events().await;
    let offline = |id: &str| {
        events
            .iter()
            .find(|e| e["type"] == "worker.offline" && e["worker_id"] == id)
            .unwrap_or_else(|| panic!("no offline event for {id}"))
            .clone()
    };
    for (w, code, signal) in [
        (&a, json!(0), Value::Null),
        (&b, json!(3), Value::Null),
        (&c, Value::Null, json!(9)),
        (&d, Value::Null, Value::Null),
    ] {
        let e = offline(&w.id);
        check_event(&e);
        assert_eq!(e["reason"], "exited");
        assert_eq!((&e["exit_code"], &e["signal"]), (&code, &signal), "{e}");
    }
    // Every other event carries neither.
    for e in events.iter().filter(|e| e["type"] != "worker.offline") {
        assert!(e["exit_code"].is_null() && e["signal"].is_null(), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_its_body_was_read_still_gets_its_answer() {
    let app = spawn_app().await;
    let enroll = app.token("enroll").await;
    let closes = |r: &Resp| {
        r.headers
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
    };
    let big = vec![b' '; 100 * 1024];
    // Refused before the body is read: the server drains the rest of the
    // body (up to a cap), so the client reads its answer and the connection
    // stays usable.
    let r = app.post_raw("/v1/workers", None, big.clone()).await;
    assert_error(&r, 401, "unauthorized");
    assert!(!closes(&r), "a drained body needs no Connection: close");
    // (Beyond the cap the server stops draining and answers with
    // `Connection: close`; whether the client then reads the answer depends
    // on its timing, so that is not asserted here.)
    // A body read to the end keeps the connection, refused or not.
    let r = app.post_raw("/v1/workers", Some(&enroll), "{").await;
    assert_error(&r, 400, "invalid_request");
    assert!(!closes(&r));
    let r = app
        .post("/v1/workers", &enroll, register_body("w", "m"))
        .await;
    r.expect(201);
    assert!(!closes(&r));
    // So a client that pools connections never sends its next request on
    // one the server is closing.
    // (A 413 closes it too unless the server happened to receive the whole
    // body while reading up to the limit.)
    for _ in 0..30 {
        let r = app.post_raw("/v1/heartbeats", None, big.clone()).await;
        assert_error(&r, 401, "unauthorized");
        let r = app.send(Method::GET, "/healthz", None, None).await;
        assert_eq!(r.status, 200);
        let r = app
            .post_raw("/v1/workers", Some(&enroll), big.clone())
            .await;
        assert_error(&r, 413, "payload_too_large");
        let r = app.send(Method::GET, "/healthz", None, None).await;
        assert_eq!(r.status, 200);
    }
}

#[tokio::test]
async fn control_and_bidi_characters_in_free_text_are_400_naming_the_field() {
    let app = spawn_app().await;
    let enroll = app.token("enroll").await;
    let bad = [
        "\u{1b}[2J\u{1b}[H",
        "fake\nline",
        "nul\0",
        "del\u{7f}",
        "c1\u{9b}31m",
        "evil\u{202e}txt.exe",
        "iso\u{2066}late",
        "sep\u{2028}arator",
    ];
    for b in bad {
        let cases = [
            (
                json!({"name": "w", "machine": {"id": "m1", "hostname": b}}),
                "machine.hostname",
            ),
            (
                json!({"name": "w", "machine": {"id": "m1"}, "labels": {b: "v"}}),
                "labels",
            ),
            (
                json!({"name": "w", "machine": {"id": "m1"}, "labels": {"k": b}}),
                "labels",
            ),
            (
                json!({"name": "w", "machine": {"id": "m1", "labels": {b: "v"}}}),
                "machine.labels",
            ),
            (
                json!({"name": "w", "machine": {"id": "m1", "labels": {"k": b}}}),
                "machine.labels",
            ),
        ];
        for (body, field) in cases {
            let r = app.post("/v1/workers", &enroll, body.clone()).await;
            let e = r.expect(400);
            assert_eq!(e["error"]["code"], "invalid_request");
            let msg = e["error"]["message"].as_str().unwrap();
            assert!(msg.starts_with(field), "{body}: {msg}");
            assert!(!msg.contains(b), "the message does not echo it: {msg:?}");
        }
        let r = app
            .post("/v1/tokens", &app.admin, json!({"kind": "read", "name": b}))
            .await;
        let e = r.expect(400);
        assert!(
            e["error"]["message"].as_str().unwrap().starts_with("name "),
            "{e}"
        );
    }
    // Nothing was created; ordinary Unicode is fine.
    assert!(app.workers().await.is_empty());
    assert_eq!(app.tokens().await.len(), 1, "only the enroll token");
    let ok = app
        .post(
            "/v1/workers",
            &enroll,
            json!({"name": "w", "machine": {"id": "m1", "hostname": "Zürich 日本 🚀",
                "labels": {"région": "ÎLE"}}, "labels": {"queue": "gpu a"}}),
        )
        .await;
    ok.expect(201);
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_is_private_and_secrets_are_not_cached() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app_with(|c| {
        let nested = format!("{}/nested/data", c.data_dir.as_deref().unwrap());
        c.data_dir = Some(nested);
    })
    .await;
    let enroll = app.token("enroll").await;
    let r = app
        .post(
            "/v1/workers",
            &enroll,
            json!({"name": "w", "machine": {"id": "m"}}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["x-content-type-options"], "nosniff");
    let t = app
        .post(
            "/v1/tokens",
            &app.admin,
            json!({"kind": "read", "name": "r"}),
        )
        .await;
    t.expect(201);
    assert_eq!(t.headers["cache-control"], "no-store");
    // Errors and reads are JSON too, never sniffed.
    let e = app.get("/v1/workers", "nope").await;
    assert_eq!(e.headers["x-content-type-options"], "nosniff");
    if on_postgres() {
        return;
    }
    let data = app.dir.path().join("nested/data");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700, "the data directory");
    for f in [
        "rollcall.db",
        "rollcall.db-wal",
        "rollcall.db-shm",
        "rollcall.db.lock",
    ] {
        let p = data.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        } else {
            assert!(f != "rollcall.db", "the database exists");
        }
    }
}

#[tokio::test]
async fn the_openapi_document_says_what_the_wire_carries() {
    let app = spawn_app().await;
    let doc = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    let doc: Value = doc.json().await.unwrap();
    let schemas = &doc["components"]["schemas"];
    let wire = |name: &str| -> Vec<String> {
        schemas[name]["enum"]
            .as_array()
            .unwrap_or_else(|| panic!("{name} is an enum: {}", schemas[name]))
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    let names = |all: &[&str]| all.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    use rollcall_core::{EventReason, EventType, MachineStatus, OfflineReason, Status};
    assert_eq!(
        wire("Status"),
        names(&Status::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>())
    );
    assert_eq!(wire("Status")[0], "online");
    assert_eq!(
        wire("MachineStatus"),
        names(
            &MachineStatus::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        wire("EventType"),
        names(
            &EventType::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert!(wire("EventType").contains(&"worker.registered".to_owned()));
    assert_eq!(
        wire("EventReason"),
        names(
            &EventReason::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        )
    );
    assert_eq!(
        wire("OfflineReason"),
        names(
            &OfflineReason::ALL
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        )
    );
    // Operation ids are unique; parameters are where the server reads them.
    let mut ids = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "{method} {path}: {id} twice");
            for p in op["parameters"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().unwrap();
                match p["in"].as_str().unwrap() {
                    "path" => assert!(path.contains(&format!("{{{name}}}")), "{path}: {p}"),
                    "query" => assert_eq!(p["required"], false, "{path}: {p}"),
                    "header" => {}
                    other => panic!("{path}: {name} in {other}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn json_arrays_where_objects_are_expected_are_400_and_change_nothing() {
    let app = spawn_app().await;
    let w = app.register("w", "m").await;
    let enroll = app.token("enroll").await;
    let before = app.worker(&w.id).await;
    for (path, token, body) in [
        (
            format!("/v1/workers/{}/offline", w.id),
            w.token.clone(),
            r#"["exited"]"#,
        ),
        (
            "/v1/workers".to_owned(),
            enroll.clone(),
            r#"["w2", {"id": "m"}]"#,
        ),
        (
            "/v1/tokens".to_owned(),
            app.admin.clone(),
            r#"["read", "x"]"#,
        ),
        ("/v1/heartbeats".to_owned(), enroll.clone(), r#"[[]]"#),
        ("/v1/workers".to_owned(), enroll.clone(), r#""string""#),
    ] {
        let r = app
            .post_raw(&path, Some(&token), body.as_bytes().to_vec())
            .await;
        let e = r.expect(400);
        assert_eq!(e["error"]["code"], "invalid_request", "{path}");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("JSON object"),
            "{path}: {e}"
        );
    }
    assert_eq!(app.worker(&w.id).await, before);
    assert_eq!(app.workers().await.len(), 1);
}

#[tokio::test]
async fn re_register_own_token_keeps_a_live_worker_from_being_taken_over() {
    let app = spawn_app_with(|c| c.re_register = Some("own_token".into())).await;
    let fleet_a = app.token("enroll").await;
    let fleet_b = app.token("enroll").await;
    let body = json!({"name": "render-1", "machine": {"id": "host-a", "hostname": "a.example"}});
    let first = app.register_as(&fleet_a, body.clone()).await;
    assert_eq!(first.status, 201);
    let take_over = |token: String, worker_token: Option<String>| {
        let app = &app;
        let body = json!({"name": "render-1", "machine": {"id": "host-a", "hostname": "evil"}});
        async move {
            let mut req = app
                .client
                .post(app.url("/v1/workers"))
                .bearer_auth(token)
                .json(&body);
            if let Some(t) = worker_token {
                req = req.header("x-rollcall-worker-token", t);
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // Another enroll token, with no token or a wrong one: 409, nothing changes.
    for wt in [
        None,
        Some("rc_worker_nope".to_owned()),
        Some(fleet_a.clone()),
    ] {
        let (status, body) = take_over(fleet_b.clone(), wt).await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "conflict");
    }
    // Content is checked before the conflict: bad intervals are 400 even for
    // a live worker's name.
    let bad = json!({"name": "render-1", "machine": {"id": "host-a"}, "heartbeat_interval_ms": 1});
    let r = app.post("/v1/workers", &fleet_b, bad).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["error"]["code"], "invalid_request");
    assert_eq!(app.heartbeat_raw(&first.id, &first.token).await.status, 200);
    let m = app.get("/v1/machines/host-a", &app.admin).await;
    assert_eq!(m.expect(200)["hostname"], "a.example");
    assert_eq!(app.worker(&first.id).await["session"], 1);
    // With the worker's current token it may (a planned restart).
    let (status, again) = take_over(fleet_b.clone(), Some(first.token.clone())).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["worker"]["session"], 2);
    let token2 = again["token"].as_str().unwrap().to_owned();
    // An admin token may as well.
    let (status, body) = take_over(app.admin.clone(), None).await;
    assert_eq!(status, 200, "{body}");
    let token3 = body["token"].as_str().unwrap().to_owned();
    assert_eq!(app.heartbeat_raw(&first.id, &token2).await.status, 401);
    // Once the worker is offline, any enroll token registers it again.
    app.post_empty(&format!("/v1/workers/{}/offline", first.id), &token3)
        .await
        .expect(200);
    let (status, body) = take_over(fleet_b.clone(), None).await;
    assert_eq!(status, 200, "{body}");
}

// ---------------------------------------------------------------------------
// Scoped enroll tokens
// ---------------------------------------------------------------------------

/// Creates an enroll token with `scope`; returns its secret.
async fn scoped_token(app: &TestApp, scope: Value) -> String {
    let body = json!({"kind": "enroll", "name": "scoped", "scope": scope});
    let r = app.post("/v1/tokens", &app.admin, body).await;
    r.expect(201)["token"].as_str().unwrap().to_owned()
}

/// Asserts a 403 `forbidden` whose message contains `says`, and that the
/// refused registration changed nothing.
async fn assert_refused(app: &TestApp, token: &str, body: Value, says: &str) {
    let before = app.snapshot().await;
    let r = app.post("/v1/workers", token, body.clone()).await;
    assert_error_in(&body.to_string(), &r, 403, "forbidden");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(says), "{body}: {message}");
    assert!(
        app.snapshot().await == before,
        "{body}: a refused registration changed the state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_enroll_tokens_register_only_workers_inside_their_scope() {
    let app = spawn_app().await;
    let body = json!({"kind": "enroll", "name": "gpu fleet", "scope": {
        "machines": ["gpu-*", "render"], "labels": {"pool": "gpu"}}});
    let created = app
        .post("/v1/tokens", &app.admin, body)
        .await
        .expect(201)
        .clone();
    let scope = json!({"machines": ["gpu-*", "render"], "labels": {"pool": "gpu"}});
    assert_eq!(created["scope"], scope);
    let gpus = created["token"].as_str().unwrap().to_owned();
    let listed = app.tokens().await;
    let t = listed.iter().find(|t| t["id"] == created["id"]).unwrap();
    assert_eq!(t["scope"], scope);

    // Inside the scope: a machine id matching a pattern, the required label
    // with its value (other labels are fine).
    let w = app
        .register_as(
            &gpus,
            json!({"name": "w1", "machine": {"id": "gpu-1", "labels": {"rack": "7"}},
                   "labels": {"pool": "gpu", "team": "ml"}}),
        )
        .await;
    assert_eq!(w.status, 201);
    assert_eq!(app.heartbeat_raw(&w.id, &w.token).await.status, 200);
    let r = app
        .register_as(
            &gpus,
            json!({"name": "w2", "machine": {"id": "render"}, "labels": {"pool": "gpu"}}),
        )
        .await;
    assert_eq!(r.status, 201);
    // Registering its own worker again (a restart) is inside the scope too.
    let again = app
        .register_as(
            &gpus,
            json!({"name": "w1", "machine": {"id": "gpu-1"}, "labels": {"pool": "gpu"}}),
        )
        .await;
    assert_eq!((again.status, again.id.as_str()), (200, w.id.as_str()));
    assert_eq!(app.workers().await.len(), 2);

    // Outside: 403 forbidden, no worker, no machine, no event.
    for (body, says) in [
        (
            json!({"name": "w3", "machine": {"id": "cpu-1"}, "labels": {"pool": "gpu"}}),
            "machine.id cpu-1",
        ),
        // Patterns match the whole id, case-sensitively.
        (
            json!({"name": "w3", "machine": {"id": "xgpu-1"}, "labels": {"pool": "gpu"}}),
            "machine.id xgpu-1",
        ),
        (
            json!({"name": "w3", "machine": {"id": "GPU-1"}, "labels": {"pool": "gpu"}}),
            "machine.id GPU-1",
        ),
        (
            json!({"name": "w3", "machine": {"id": "render-2"}, "labels": {"pool": "gpu"}}),
            "machine.id render-2",
        ),
        (
            json!({"name": "w3", "machine": {"id": "gpu-2"}}),
            "labels must include pool=gpu",
        ),
        (
            json!({"name": "w3", "machine": {"id": "gpu-2"}, "labels": {"pool": "cpu"}}),
            "labels must include pool=gpu",
        ),
        // The worker's labels count, not the machine's.
        (
            json!({"name": "w3", "machine": {"id": "gpu-2", "labels": {"pool": "gpu"}}}),
            "labels must include pool=gpu",
        ),
    ] {
        assert_refused(&app, &gpus, body, says).await;
    }
    assert_eq!(app.workers().await.len(), 2);
    let r = app.get("/v1/machines/cpu-1", &app.admin).await;
    assert_error(&r, 404, "not_found");

    // Content is checked before the scope: a bad body is 400 whatever it names.
    let bad = json!({"name": "w 3", "machine": {"id": "cpu-1"}});
    let r = app.post("/v1/workers", &gpus, bad).await;
    assert_error(&r, 400, "invalid_request");

    // Unscoped enroll tokens and admin tokens register anywhere.
    let any = app.token("enroll").await;
    let body = json!({"name": "w4", "machine": {"id": "cpu-1"}});
    assert_eq!(app.register_as(&any, body).await.status, 201);
    assert_eq!(app.register("w5", "cpu-2").await.status, 201);

    // A scope with only machines, or only labels.
    let machines_only = scoped_token(&app, json!({"machines": ["rack*-a*"]})).await;
    let body = json!({"name": "w6", "machine": {"id": "rack12-a7"}});
    assert_eq!(app.register_as(&machines_only, body).await.status, 201);
    let body = json!({"name": "w6", "machine": {"id": "rack12-b7"}});
    assert_refused(&app, &machines_only, body, "machine.id rack12-b7").await;
    let labels_only = scoped_token(&app, json!({"machines": null, "labels": {"team": "ml"}})).await;
    let body = json!({"name": "w7", "machine": {"id": "anywhere"}, "labels": {"team": "ml"}});
    assert_eq!(app.register_as(&labels_only, body).await.status, 201);
    let body = json!({"name": "w8", "machine": {"id": "anywhere"}, "labels": {"team": "ops"}});
    assert_refused(&app, &labels_only, body, "labels must include team=ml").await;
    assert_eq!(app.workers().await.len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_enroll_token_cannot_take_over_workers_outside_its_scope() {
    let app = spawn_app().await;
    let gpus = scoped_token(
        &app,
        json!({"machines": ["gpu-*"], "labels": {"pool": "gpu"}}),
    )
    .await;
    // Workers registered by others: one on a machine outside the scope, one
    // on a machine inside it but without the required label.
    let outside = app
        .register_body(json!({"name": "render-1",
            "machine": {"id": "host-a", "hostname": "a.example", "labels": {"rack": "1"}}}))
        .await;
    let unlabelled = app
        .register_body(
            json!({"name": "render-2", "machine": {"id": "gpu-9", "hostname": "g.example"}}),
        )
        .await;
    let count = app.workers().await.len();

    // Its name, on a machine outside the scope: refused, nothing changed.
    assert_refused(
        &app,
        &gpus,
        json!({"name": "render-1", "machine": {"id": "host-a", "hostname": "evil"},
               "labels": {"pool": "gpu"}}),
        "machine.id host-a",
    )
    .await;
    // A machine inside the scope, but the worker registered there does not
    // carry the scope's label: giving it the label now does not make it ours.
    assert_refused(
        &app,
        &gpus,
        json!({"name": "render-2", "machine": {"id": "gpu-9", "hostname": "evil"},
               "labels": {"pool": "gpu"}}),
        "worker render-2 on gpu-9 is registered without the label pool=gpu",
    )
    .await;
    assert_eq!(app.workers().await.len(), count);
    for w in [&outside, &unlabelled] {
        assert_eq!(app.worker(&w.id).await["session"], 1);
        assert_eq!(app.heartbeat_raw(&w.id, &w.token).await.status, 200);
    }
    assert_eq!(app.machine("host-a").await["hostname"], "a.example");
    assert_eq!(app.machine("gpu-9").await["hostname"], "g.example");

    // Offline, it is still not the scoped token's to take.
    app.offline(&unlabelled, "shutdown").await;
    assert_refused(
        &app,
        &gpus,
        json!({"name": "render-2", "machine": {"id": "gpu-9"}, "labels": {"pool": "gpu"}}),
        "registered without the label pool=gpu",
    )
    .await;
    // An admin token may, and once it carries the label, so may the scoped one.
    let relabelled = app
        .register_body(json!({"name": "render-2", "machine": {"id": "gpu-9"},
                              "labels": {"pool": "gpu"}}))
        .await;
    let taken = app
        .register_as(
            &gpus,
            json!({"name": "render-2", "machine": {"id": "gpu-9"}, "labels": {"pool": "gpu"}}),
        )
        .await;
    assert_eq!(
        (taken.status, taken.id.as_str()),
        (200, relabelled.id.as_str())
    );
    assert_eq!(
        app.heartbeat_raw(&relabelled.id, &relabelled.token)
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn scope_refusals_come_before_re_register_conflicts() {
    let app = spawn_app_with(|c| c.re_register = Some("own_token".into())).await;
    let gpus = scoped_token(&app, json!({"machines": ["gpu-*"]})).await;
    let any = app.token("enroll").await;
    app.register_as(&any, json!({"name": "w", "machine": {"id": "host-a"}}))
        .await;
    let mine = app
        .register_as(&gpus, json!({"name": "w", "machine": {"id": "gpu-1"}}))
        .await;
    // A live worker outside the scope: 403, not the 409 of re_register.
    assert_refused(
        &app,
        &gpus,
        json!({"name": "w", "machine": {"id": "host-a"}}),
        "machine.id host-a",
    )
    .await;
    // Its own live worker, without the worker's token: the 409 as usual.
    let r = app
        .post(
            "/v1/workers",
            &gpus,
            json!({"name": "w", "machine": {"id": "gpu-1"}}),
        )
        .await;
    assert_error(&r, 409, "conflict");
    assert_eq!(app.heartbeat_raw(&mine.id, &mine.token).await.status, 200);
}

#[tokio::test]
async fn bad_scopes_are_400_naming_the_field() {
    let app = spawn_app().await;
    let scope = |kind: &str, scope: Value| json!({"kind": kind, "name": "x", "scope": scope});
    for (body, says) in [
        (
            scope("read", json!({"machines": ["gpu-*"]})),
            "scope: only enroll tokens",
        ),
        (
            scope("enroll", json!({})),
            "scope must limit machines or labels",
        ),
        (
            scope("enroll", json!({"machines": null, "labels": {}})),
            "scope must limit machines or labels",
        ),
        (
            scope("enroll", json!({"machines": []})),
            "scope.machines must list 1 to 32",
        ),
        (
            scope("enroll", json!({"machines": vec!["m"; 33]})),
            "scope.machines must list 1 to 32",
        ),
        (
            scope("enroll", json!({"machines": ["gpu-*", "gpu?"]})),
            "scope.machines[1]",
        ),
        (
            scope("enroll", json!({"machines": [""]})),
            "scope.machines[0]",
        ),
        (
            scope("enroll", json!({"machines": ["a".repeat(129)]})),
            "scope.machines[0]",
        ),
        (
            scope("enroll", json!({"machines": ["gpu 1"]})),
            "scope.machines[0]",
        ),
        (
            scope("enroll", json!({"labels": {"": "x"}})),
            "scope.labels",
        ),
        (
            scope("enroll", json!({"labels": {"k": "v".repeat(257)}})),
            "scope.labels",
        ),
        (
            scope("enroll", json!({"labels": {"k": "a\u{202e}b"}})),
            "scope.labels",
        ),
    ] {
        let before = app.snapshot().await;
        let r = app.post("/v1/tokens", &app.admin, body.clone()).await;
        assert_error_in(&body.to_string(), &r, 400, "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{body}: {message}");
        assert!(app.snapshot().await == before, "{body} created a token");
    }
    // A null scope is no scope, for any kind.
    for kind in ["enroll", "read"] {
        let r = app
            .post("/v1/tokens", &app.admin, scope(kind, Value::Null))
            .await;
        assert!(r.expect(201)["scope"].is_null());
    }
    // The largest scope there is: 32 patterns of 128 characters, 32 labels.
    let machines: Vec<String> = (0..32).map(|i| format!("{i:0>127}*")).collect();
    let labels: serde_json::Map<String, Value> = (0..32)
        .map(|i| (format!("k{i}"), json!("v".repeat(256))))
        .collect();
    let r = app
        .post(
            "/v1/tokens",
            &app.admin,
            scope("enroll", json!({"machines": machines, "labels": labels})),
        )
        .await;
    assert_eq!(
        r.expect(201)["scope"]["machines"].as_array().unwrap().len(),
        32
    );
}

#[tokio::test]
async fn the_openapi_document_has_the_running_servers_interval_bounds() {
    let app = spawn_app_with(|c| {
        c.min_heartbeat_interval = Some("250ms".into());
        c.max_stale_after = Some("2h".into());
        // The server's own defaults must respect its bounds too.
        c.heartbeat_interval = Some("300ms".into());
        c.stale_after = Some("900ms".into());
    })
    .await;
    let doc = app
        .send(Method::GET, "/openapi.json", None, None)
        .await
        .expect(200)
        .clone();
    let register = &doc["components"]["schemas"]["RegisterRequest"];
    let (min, max) = (250u64, 7_200_000u64);
    assert_eq!(
        register["properties"]["heartbeat_interval_ms"]["minimum"],
        min
    );
    assert_eq!(register["properties"]["stale_after_ms"]["maximum"], max);
    // Alone, an interval's bounds follow the x3 / third rule.
    let shapes = register["anyOf"].as_array().expect("anyOf");
    let alone = |field: &str| {
        shapes
            .iter()
            .find(|s| s["required"] == json!([field]))
            .map(|s| &s["properties"][field])
            .unwrap_or_else(|| panic!("no shape with {field} alone"))
            .clone()
    };
    assert_eq!(alone("heartbeat_interval_ms")["maximum"], max / 3);
    assert_eq!(alone("stale_after_ms")["minimum"], 3 * min);

    // The published bounds are the server's: on them accepted, past them 400.
    let enroll = app.token("enroll").await;
    for (i, (body, status)) in [
        (json!({"heartbeat_interval_ms": min}), 201),
        (json!({"heartbeat_interval_ms": min - 1}), 400),
        (json!({"heartbeat_interval_ms": max / 3}), 201),
        (json!({"heartbeat_interval_ms": max / 3 + 1}), 400),
        (json!({"stale_after_ms": 3 * min}), 201),
        (json!({"stale_after_ms": 3 * min - 1}), 400),
        (
            json!({"stale_after_ms": max, "heartbeat_interval_ms": max / 2}),
            201,
        ),
        (
            json!({"stale_after_ms": max + 1, "heartbeat_interval_ms": min}),
            400,
        ),
        // Whole numbers in any JSON spelling.
        (json!({"heartbeat_interval_ms": 1000.0}), 201),
        (json!({"heartbeat_interval_ms": 1000.5}), 400),
    ]
    .into_iter()
    .enumerate()
    {
        let mut body = body;
        body["name"] = json!(format!("w{i}"));
        body["machine"] = json!({"id": "m"});
        let r = app.post("/v1/workers", &enroll, body.clone()).await;
        assert_eq!(r.status, status, "{body}: {}", r.text);
    }
}

#[tokio::test]
async fn the_event_streams_resume_position_is_checked_as_documented() {
    let app = spawn_app().await;
    let read = app.token("read").await;
    let open = |last_event_id: Option<&'static str>, query: &'static str| {
        let mut req = app
            .client
            .get(app.url(&format!("/v1/events/stream{query}")))
            .bearer_auth(&read);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        req.send()
    };
    // Refused: not digits, too many digits, and a bad ?after= even when
    // Last-Event-ID (which wins) is given.
    for (id, query) in [
        (Some("null"), ""),
        (Some("+5"), ""),
        (Some("12345678901234567890"), ""),
        (Some(""), "?after=9223372036854775808"),
        (Some("3"), "?after=-1"),
    ] {
        let r = open(id, query).await.unwrap();
        assert_eq!(r.status(), 400, "{id:?} {query}");
    }
    // Accepted: empty (no position), and a seq past any that can exist.
    for id in ["", "9999999999999999999"] {
        let r = open(Some(id), "").await.unwrap();
        assert_eq!(r.status(), 200, "{id:?}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
    }
}
