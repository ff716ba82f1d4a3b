//! The health endpoints against the real server (SQLite, or PostgreSQL with
//! `ROLLCALL_TEST_API_STORE=postgres`, as `api.rs`): exact figures over
//! windows computed from the timestamps the server returned, buckets,
//! rankings, errors, and history that outlives the event log.

mod common;

use common::*;
use serde_json::{json, Value};

const FIGURE_KEYS: &[&str] = &[
    "observed_ms",
    "no_data_ms",
    "live_ms",
    "down_ms",
    "availability",
    "crashes",
    "graceful",
    "administrative",
    "mtbf_ms",
    "last_crash",
    "flapping",
];

fn rfc(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

fn keys_with(extra: &[&'static str]) -> Vec<&'static str> {
    let mut k = FIGURE_KEYS.to_vec();
    k.extend_from_slice(extra);
    k
}

/// A worker that crashed (exited 3), came back and shut down; the
/// timestamps of each step.
struct History {
    w: Reg,
    registered: i64,
    crashed: i64,
    resumed: i64,
    stopped: i64,
}

async fn history(app: &TestApp, name: &str, machine: &str) -> History {
    let w = app.register_stale(name, machine, 60_000).await;
    let registered = ts(&w.worker["registered_at"]);
    let off = app
        .post(
            &format!("/v1/workers/{}/offline", w.id),
            &w.token,
            json!({"reason": "exited", "exit_code": 3}),
        )
        .await
        .expect(200)
        .clone();
    let crashed = ts(&off["status_changed_at"]);
    // Make the down time at least a few milliseconds.
    sleep_until_ms(crashed + 20).await;
    app.heartbeat(&w).await;
    app.wait_resumed(&w.id, 2).await;
    let resumed = ts(&app.worker(&w.id).await["status_changed_at"]);
    sleep_until_ms(resumed + 20).await;
    let off = app.offline(&w, "shutdown").await;
    let stopped = ts(&off["status_changed_at"]);
    History {
        w,
        registered,
        crashed,
        resumed,
        stopped,
    }
}

#[tokio::test]
async fn worker_machine_and_fleet_figures_are_exact() {
    let app = spawn_app().await;
    let h = history(&app, "a", "m1").await;
    // The window [registered, stopped + 10): the shutdown is in it.
    let to = h.stopped + 10;
    sleep_until_ms(to + 1).await;
    let q = format!(
        "from={}&to={}",
        encode(&rfc(h.registered)),
        encode(&rfc(to))
    );
    let live = (h.crashed - h.registered) + (h.stopped - h.resumed);
    let down = (h.resumed - h.crashed) + 10;

    let w = app
        .get(&format!("/v1/workers/{}/health?{q}", h.w.id), &app.admin)
        .await
        .expect(200)
        .clone();
    assert_keys(
        &w,
        &keys_with(&["worker_id", "machine_id", "name", "from", "to", "buckets"]),
    );
    assert_eq!(ts(&w["from"]), h.registered);
    assert_eq!(ts(&w["to"]), to);
    assert_eq!(w["name"], "a");
    assert_eq!(w["machine_id"], "m1");
    assert_eq!(w["live_ms"], live);
    assert_eq!(w["down_ms"], down);
    assert_eq!(w["observed_ms"], live + down);
    assert_eq!(w["no_data_ms"], 0);
    assert_eq!(
        w["availability"].as_f64().unwrap(),
        live as f64 / (live + down) as f64
    );
    assert_eq!(
        w["crashes"],
        json!({"total": 1, "stale": 0, "replaced": 0, "exited": 1})
    );
    assert_eq!(w["graceful"], 1);
    assert_eq!(w["administrative"], 0);
    assert_eq!(w["mtbf_ms"], live);
    assert_eq!(ts(&w["last_crash"]["at"]), h.crashed);
    assert_eq!(w["last_crash"]["kind"], "exited");
    assert_eq!(w["flapping"], false);
    assert_eq!(w["buckets"], json!([]));

    // Buckets cover the window exactly and add up.
    let b = app
        .get(
            &format!("/v1/workers/{}/health?{q}&buckets=7", h.w.id),
            &app.admin,
        )
        .await
        .expect(200)
        .clone();
    let buckets = b["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 7);
    assert_eq!(ts(&buckets[0]["from"]), h.registered);
    assert_eq!(ts(&buckets[6]["to"]), to);
    let sum = |k: &str| buckets.iter().map(|b| b[k].as_i64().unwrap()).sum::<i64>();
    assert_eq!(sum("live_ms"), live);
    assert_eq!(sum("down_ms"), down);
    assert_eq!(sum("crashes"), 1);
    for pair in buckets.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"]);
    }

    // The machine had only this worker: the same time, its crashes.
    let m = app
        .get(&format!("/v1/machines/m1/health?{q}&buckets=2"), &app.admin)
        .await
        .expect(200)
        .clone();
    assert_keys(
        &m,
        &keys_with(&["machine_id", "hostname", "from", "to", "buckets", "workers"]),
    );
    assert_eq!(
        (m["live_ms"].as_i64(), m["down_ms"].as_i64()),
        (Some(live), Some(down))
    );
    assert_eq!(m["crashes"]["exited"], 1);
    assert_eq!(m["buckets"].as_array().unwrap().len(), 2);
    let workers = m["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 1);
    assert_eq!(workers[0]["worker_id"], h.w.id.as_str());
    assert_eq!(workers[0]["live_ms"], live);
    assert_eq!(workers[0]["buckets"].as_array().unwrap().len(), 2);

    // A second, healthy worker on another machine, registered after the
    // window: not in it.
    let other = app.register_stale("b", "m2", 60_000).await;
    let f = app
        .get(&format!("/v1/health?{q}&top=5"), &app.admin)
        .await
        .expect(200)
        .clone();
    assert_keys(
        &f,
        &[
            "from",
            "to",
            "workers",
            "machines",
            "observed_ms",
            "no_data_ms",
            "live_ms",
            "down_ms",
            "availability",
            "crashes",
            "graceful",
            "administrative",
            "top_machines_by_crashes",
            "top_machines_by_downtime",
            "top_workers_by_crashes",
            "top_workers_by_downtime",
        ],
    );
    assert_eq!(
        (f["workers"].as_u64(), f["machines"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(
        (f["live_ms"].as_i64(), f["down_ms"].as_i64()),
        (Some(live), Some(down))
    );
    assert_eq!(f["crashes"]["total"], 1);
    assert_eq!(f["graceful"], 1);
    let top = &f["top_machines_by_crashes"][0];
    assert_keys(
        top,
        &[
            "machine_id",
            "hostname",
            "availability",
            "down_ms",
            "crashes",
            "mtbf_ms",
            "last_crash",
        ],
    );
    assert_eq!(top["machine_id"], "m1");
    assert_eq!(top["down_ms"], down);
    assert_eq!(f["top_workers_by_crashes"][0]["worker_id"], h.w.id.as_str());
    assert_eq!(f["top_workers_by_downtime"][0]["down_ms"], down);
    assert_eq!(f["top_machines_by_downtime"][0]["machine_id"], "m1");

    // The last hour includes the healthy worker; a read token may ask.
    let read = app.token("read").await;
    let f = app
        .get("/v1/health?window=1h", &read)
        .await
        .expect(200)
        .clone();
    assert_eq!(f["workers"], 2);
    assert_eq!(f["machines"], 2);
    let wh = app
        .get(&format!("/v1/workers/{}/health?window=1h", other.id), &read)
        .await
        .expect(200)
        .clone();
    assert_eq!(wh["crashes"]["total"], 0);
    assert_eq!(wh["down_ms"], 0);
    assert_eq!(wh["availability"], 1.0);
    assert_eq!(wh["mtbf_ms"], Value::Null);
}

#[tokio::test]
async fn bad_requests_are_refused_in_the_contract_shape() {
    let app = spawn_app().await;
    let w = app.register_stale("a", "m1", 60_000).await;
    let paths = [
        "/v1/health".to_owned(),
        "/v1/machines/m1/health".to_owned(),
        format!("/v1/workers/{}/health", w.id),
    ];
    for p in &paths {
        for q in [
            "window=7w",
            "window=0h",
            "window=401d",
            "window=1h&from=2026-01-01T00:00:00Z",
            "from=yesterday",
            "to=2026-01-01T00:00:00Z",
            "from=2999-01-01T00:00:00Z",
            "top=0",
            "top=1001",
            "top=x",
            "buckets=0",
            "buckets=1001",
            "label=novalue",
            "window=1h&window=2h",
        ] {
            let r = app.get(&format!("{p}?{q}"), &app.admin).await;
            assert_error_in(&format!("{p}?{q}"), &r, 400, "invalid_request");
        }
        // More buckets than milliseconds.
        // (One reading of the clock: two could be a millisecond apart and
        // make the window 11 ms long.)
        let now = now_ms();
        let (from, to) = (rfc(now - 5_000), rfc(now - 4_990));
        let r = app
            .get(
                &format!("{p}?from={}&to={}&buckets=11", encode(&from), encode(&to)),
                &app.admin,
            )
            .await;
        assert_error(&r, 400, "invalid_request");
        let r = app.get(p, "").await;
        assert_error(&r, 401, "unauthorized");
        let enroll = app.token("enroll").await;
        assert_error(&app.get(p, &enroll).await, 403, "forbidden");
    }
    assert_error(
        &app.get(&format!("/v1/workers/{UNKNOWN_WORKER}/health"), &app.admin)
            .await,
        404,
        "not_found",
    );
    assert_error(
        &app.get("/v1/workers/nope/health", &app.admin).await,
        404,
        "not_found",
    );
    assert_error(
        &app.get("/v1/machines/nope/health", &app.admin).await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn history_outlives_the_event_log_and_deletion() {
    let app = spawn_app_with(|c| {
        c.event_retention = Some("1s".into());
        c.health_retention = Some("1h".into());
    })
    .await;
    let h = history(&app, "a", "m1").await;
    let r = app
        .delete(&format!("/v1/workers/{}", h.w.id), &app.admin)
        .await;
    assert_eq!(r.status, 204, "{}", r.text);
    let to = h.stopped + 10;
    let q = format!(
        "from={}&to={}",
        encode(&rfc(h.registered)),
        encode(&rfc(to))
    );
    sleep_until_ms(to + 1).await;
    let before = app
        .get(&format!("/v1/workers/{}/health?{q}", h.w.id), &app.admin)
        .await
        .expect(200)
        .clone();
    // Every event is older than the event log's retention: pruned.
    sleep_until_ms(now_ms() + 1_100).await;
    let report = app
        .post("/v1/cleanup/all", &app.admin, json!({}))
        .await
        .expect(200)
        .clone();
    assert!(report["pruned_events"].as_u64().unwrap() >= 6, "{report}");
    assert!(app.worker_events(&h.w.id).await.is_empty());
    let after = app
        .get(&format!("/v1/workers/{}/health?{q}", h.w.id), &app.admin)
        .await
        .expect(200)
        .clone();
    assert_eq!(before, after);
    assert_eq!(after["crashes"]["exited"], 1);
    assert_eq!(after["graceful"], 1);
    assert_eq!(after["name"], "a");
    // A window older than the history's retention is refused.
    let r = app.get("/v1/health?window=2h", &app.admin).await;
    assert_error(&r, 400, "invalid_request");
}

#[tokio::test]
async fn the_openapi_document_has_the_health_endpoints() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for path in [
        "/v1/health",
        "/v1/machines/{id}/health",
        "/v1/workers/{id}/health",
    ] {
        let op = &doc["paths"][path]["get"];
        assert!(op.is_object(), "openapi.json lacks GET {path}");
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for p in ["window", "from", "to", "buckets", "top", "label"] {
            assert!(params.contains(&p), "{path} lacks {p}: {params:?}");
        }
        for status in ["200", "400", "401", "403"] {
            assert!(op["responses"][status].is_object(), "{path} {status}");
        }
    }
    let schemas = &doc["components"]["schemas"];
    assert_eq!(
        schemas["CrashKind"]["enum"],
        json!(["stale", "replaced", "exited"])
    );
    for s in [
        "FleetHealth",
        "MachineHealth",
        "WorkerHealth",
        "Bucket",
        "Figures",
    ] {
        assert!(schemas[s].is_object(), "{s}");
    }
}
