//! `GET /metrics`: a workload that touches every series, then a scrape whose
//! numbers are checked against what the API itself reports (the event log,
//! the lists, the cleanup results) and against `promtool check metrics`;
//! and the scrape's access rules (`metrics_token`, `metrics_listen`).
//!
//! promtool comes from Debian's `prometheus` package. Without it the
//! promtool check is skipped with a note, unless
//! `ROLLCALL_REQUIRE_PROMTOOL=1` (CI), which makes its absence a failure.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// One sample of a scrape: metric name and labels.
type Series = (String, BTreeMap<String, String>);

/// A parsed scrape.
#[derive(Debug)]
struct Scrape {
    text: String,
    samples: Vec<(Series, f64)>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("a sample line without a value: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number in {line:?}"));
            let (name, labels) = match series.split_once('{') {
                None => (series, BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unclosed labels in {line:?}"));
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair
                                .split_once("=\"")
                                .unwrap_or_else(|| panic!("bad label {pair:?} in {line:?}"));
                            (k.to_owned(), v.trim_end_matches('"').to_owned())
                        })
                        .collect();
                    (name, labels)
                }
            };
            samples.push(((name.to_owned(), labels), value));
        }
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// The value of the sample with exactly these labels; panics if absent.
    #[track_caller]
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|((n, l), _)| n == name && *l == want)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no sample {name}{want:?} in the scrape:\n{}", self.text))
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    let r = app.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    Scrape::parse(&r.text)
}

/// `promtool check metrics` on a scrape, or a note when promtool is absent
/// (a failure when `ROLLCALL_REQUIRE_PROMTOOL=1`).
fn promtool_check(text: &str) {
    let spawned = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("ROLLCALL_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
                "ROLLCALL_REQUIRE_PROMTOOL=1 but promtool cannot run: {e}"
            );
            rollcall_store::testing::skip(&format!(
                "promtool not found ({e}): `promtool check metrics` not run \
                 (install Debian's `prometheus` package to run it)"
            ));
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics failed ({}):\n{}{}\nscrape:\n{text}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn count_where(items: &[Value], key: &str, value: &str) -> f64 {
    items.iter().filter(|i| i[key] == value).count() as f64
}

/// Every series moves as the workload says, agrees with what the API
/// reports, and the scrape is clean under promtool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_moves_every_series_and_promtool_accepts_the_scrape() {
    let app = spawn_app_with(|c| {
        // Cleanup forgets every offline worker and prunes every event, so
        // that its counts are not zero.
        c.forget_offline_after = Some("1ms".into());
        c.event_retention = Some("1ms".into());
    })
    .await;

    let before = scrape(&app).await;
    assert_eq!(
        before.get(
            "rollcall_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for (name, labels) in [
        (
            "rollcall_heartbeats_accepted_total",
            vec![("mode", "single")],
        ),
        ("rollcall_registrations_total", vec![("kind", "new")]),
        (
            "rollcall_worker_transitions_total",
            vec![("status", "offline"), ("reason", "stale")],
        ),
        ("rollcall_detection_lag_seconds_count", vec![]),
        (
            "rollcall_worker_offlines_total",
            vec![("class", "crash"), ("kind", "stale")],
        ),
        (
            "rollcall_cleanup_runs_total",
            vec![("task", "run_all_cleanup_tasks"), ("result", "success")],
        ),
    ] {
        assert_eq!(before.get(name, &labels), 0.0, "{name} at start");
    }
    // Every series exists before anything happened (a scrape must not
    // depend on history to be complete).
    promtool_check(&before.text);

    // Registrations: four new workers on three machines, one again. Only
    // w4 has a short stale_after: it is the one that goes stale.
    const LONG: u64 = 60_000;
    let enroll = app.token("enroll").await;
    let first = app
        .register_as(
            &enroll,
            json!({"name": "w1", "machine": {"id": "host-a"}, "stale_after_ms": LONG}),
        )
        .await;
    let w2 = app.register_stale("w2", "host-a", LONG).await;
    let w3 = app.register_stale("w3", "host-b", LONG).await;
    let w4 = app.register_stale("w4", "host-c", 300).await;
    // Again, while online: w1's old session is replaced.
    let w1 = app.register_stale("w1", "host-a", LONG).await;
    assert_eq!((w1.status, &w1.id), (200, &first.id));

    // Single heartbeats: 3 accepted, 1 unauthorized, 2 forbidden.
    for _ in 0..3 {
        app.heartbeat(&w2).await;
    }
    let r = app
        .heartbeat_raw(&w2.id, "rc_worker_not-a-real-token")
        .await;
    assert_error(&r, 401, "unauthorized");
    let r = app.heartbeat_raw(&w3.id, &w2.token).await;
    assert_error(&r, 403, "forbidden");
    let r = app.heartbeat_raw(&w2.id, &app.admin).await;
    assert_error(&r, 403, "forbidden");

    // Batches: one with 2 accepted, 1 unauthorized and 1 forbidden entry;
    // one refused as a whole without a token, one as too large.
    let r = app
        .post(
            "/v1/heartbeats",
            &enroll,
            json!({"heartbeats": [
                {"worker_id": w2.id, "token": w2.token},
                {"worker_id": w3.id, "token": w3.token},
                {"worker_id": w3.id, "token": "rc_worker_bogus"},
                {"worker_id": w3.id, "token": w2.token},
            ]}),
        )
        .await;
    let oks: Vec<bool> = r.expect(200)["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(oks, [true, true, false, false]);
    let r = app
        .send(Method::POST, "/v1/heartbeats", None, Some(b"{}".to_vec()))
        .await;
    assert_error(&r, 401, "unauthorized");
    let too_many: Vec<Value> = (0..1001)
        .map(|_| json!({"worker_id": w2.id, "token": w2.token}))
        .collect();
    let r = app
        .post("/v1/heartbeats", &enroll, json!({ "heartbeats": too_many }))
        .await;
    assert_error(&r, 400, "invalid_request");

    // Drain and exit; shut down, then resume with a heartbeat.
    app.post_empty(&format!("/v1/workers/{}/drain", w3.id), &w3.token)
        .await
        .expect(200);
    app.offline(&w3, "exited").await;
    app.offline(&w2, "shutdown").await;
    let resumed = app.heartbeat(&w2).await;
    assert_eq!(resumed["resumed"], true);

    // w4 goes stale on its own.
    wait_until("w4 to be marked stale", Duration::from_secs(10), || async {
        app.worker(&w4.id).await["offline_reason"] == "stale"
    })
    .await;

    // An admin deletes w1 while it is online: revoked.
    app.delete(&format!("/v1/workers/{}", w1.id), &app.admin)
        .await
        .expect(204);

    // Heartbeat times are written behind (flush every 200 ms).
    wait_for("a write-behind run", Duration::from_secs(10), || async {
        let s = scrape(&app).await;
        (s.get("rollcall_flushed_heartbeats_total", &[]) >= 1.0).then_some(())
    })
    .await;

    // Transitions and registrations agree with the event log, and with
    // what the workload did.
    let events = app.events().await;
    let mid = scrape(&app).await;
    let of_type = |t: &str, reason: Option<&str>| {
        events
            .iter()
            .filter(|e| e["type"] == t && e["reason"].as_str() == reason)
            .count() as f64
    };
    let transitions = [
        ("worker.online", "online", Some("registered"), 5.0),
        ("worker.online", "online", Some("heartbeat"), 1.0),
        ("worker.draining", "draining", None, 1.0),
        ("worker.offline", "offline", Some("shutdown"), 1.0),
        ("worker.offline", "offline", Some("exited"), 1.0),
        ("worker.offline", "offline", Some("stale"), 1.0),
        ("worker.offline", "offline", Some("replaced"), 1.0),
        ("worker.offline", "offline", Some("revoked"), 1.0),
    ];
    for (kind, status, reason, expected) in transitions {
        let labels = [("status", status), ("reason", reason.unwrap_or(""))];
        let got = mid.get("rollcall_worker_transitions_total", &labels);
        assert_eq!(
            got,
            of_type(kind, reason),
            "{kind} {reason:?} vs the event log"
        );
        assert_eq!(got, expected, "{kind} {reason:?}");
    }
    // Three machines came online; host-b (w3 exited) and host-c (w4
    // stale) went offline.
    for (status, expected) in [("online", 3.0), ("offline", 2.0)] {
        let got = mid.get("rollcall_machine_transitions_total", &[("status", status)]);
        assert_eq!(
            got,
            of_type(&format!("machine.{status}"), None),
            "machine.{status}"
        );
        assert_eq!(got, expected, "machine.{status}");
    }
    let registered: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "worker.registered")
        .collect();
    assert_eq!(
        mid.get("rollcall_registrations_total", &[("kind", "new")]),
        4.0
    );
    assert_eq!(
        mid.get("rollcall_registrations_total", &[("kind", "again")]),
        1.0
    );
    assert_eq!(registered.len(), 5);

    // Detection lag: one stale transition, its lag as the event says.
    let stale = events.iter().find(|e| e["reason"] == "stale").unwrap();
    let lag_s = stale["detection_lag_ms"].as_f64().unwrap() / 1000.0;
    assert_eq!(mid.get("rollcall_detection_lag_seconds_count", &[]), 1.0);
    assert!((mid.get("rollcall_detection_lag_seconds_sum", &[]) - lag_s).abs() < 1e-9);
    assert_eq!(
        mid.get("rollcall_detection_lag_seconds_bucket", &[("le", "+Inf")]),
        1.0
    );

    // Heartbeats: 3 + 1 (the resume) single, 2 in a batch.
    let hb = |name: &str, labels: &[(&str, &str)]| mid.get(name, labels);
    assert_eq!(
        hb("rollcall_heartbeats_accepted_total", &[("mode", "single")]),
        4.0
    );
    assert_eq!(
        hb("rollcall_heartbeats_accepted_total", &[("mode", "batch")]),
        2.0
    );
    let rejected = "rollcall_heartbeats_rejected_total";
    for (mode, reason, n) in [
        ("single", "unauthorized", 1.0),
        ("single", "forbidden", 2.0),
        ("single", "invalid_request", 0.0),
        ("batch", "unauthorized", 2.0),
        ("batch", "forbidden", 1.0),
        ("batch", "invalid_request", 1.0),
        ("batch", "unavailable", 0.0),
    ] {
        assert_eq!(
            hb(rejected, &[("mode", mode), ("reason", reason)]),
            n,
            "{mode} {reason}"
        );
    }
    let single_requests = 4.0 + 3.0;
    assert_eq!(
        hb(
            "rollcall_heartbeat_duration_seconds_count",
            &[("mode", "single")]
        ),
        single_requests
    );
    assert_eq!(
        hb(
            "rollcall_heartbeat_duration_seconds_count",
            &[("mode", "batch")]
        ),
        3.0
    );
    assert!(
        hb(
            "rollcall_heartbeat_duration_seconds_sum",
            &[("mode", "single")]
        ) > 0.0
    );

    // Commits: every transition was committed in some batch.
    let commits = mid.get("rollcall_transition_commit_duration_seconds_count", &[]);
    assert!(commits >= 1.0);
    assert_eq!(
        mid.get("rollcall_transition_batch_size_count", &[]),
        commits
    );
    assert!(mid.get("rollcall_transition_batch_size_sum", &[]) >= commits);
    assert_eq!(
        mid.get("rollcall_transition_commit_failures_total", &[]),
        0.0
    );
    assert!(mid.get("rollcall_flush_duration_seconds_count", &[]) >= 1.0);
    assert_eq!(mid.get("rollcall_flush_failures_total", &[]), 0.0);

    // Cleanup: an expired token, then the sweep and the full cleanup on
    // demand; the gauges hold the results the API answered.
    let short = app.create_token("read", "short-lived", Some(1)).await;
    sleep_until_ms(ts(&short["expires_at"]) + 1).await;
    let sweep = app.post_empty("/v1/cleanup/stale", &app.admin).await;
    let sweep = sweep.expect(200).clone();
    let all = app.post_empty("/v1/cleanup/all", &app.admin).await;
    let all = all.expect(200).clone();
    assert_eq!(all["forgotten_workers"], 2, "w3 and w4: {all}");
    assert_eq!(all["forgotten_machines"], 2, "host-b and host-c: {all}");
    assert_eq!(all["expired_tokens"], 1, "{all}");
    assert!(all["pruned_events"].as_u64().unwrap() > 0, "{all}");
    let after = scrape(&app).await;
    let last = |name: &str| after.get(&format!("rollcall_cleanup_last_{name}"), &[]);
    for key in [
        "forgotten_workers",
        "forgotten_machines",
        "pruned_events",
        "expired_tokens",
    ] {
        assert_eq!(last(key), all[key].as_f64().unwrap(), "{key}: {all}");
    }
    for (task, report) in [
        ("detect_stale_workers", &sweep),
        ("run_all_cleanup_tasks", &all["stale"]),
    ] {
        let t = [("task", task)];
        assert_eq!(
            after.get("rollcall_cleanup_last_marked_offline", &t),
            report["marked_offline_count"].as_f64().unwrap()
        );
        assert_eq!(
            after.get("rollcall_cleanup_last_affected_machines", &t),
            report["affected_machine_ids"].as_array().unwrap().len() as f64
        );
        let at = after.get("rollcall_cleanup_last_success_timestamp_seconds", &t);
        assert!(
            (at - now_ms() as f64 / 1000.0).abs() < 60.0,
            "{task} ran at {at}"
        );
    }
    let runs = |task: &str, result: &str| {
        after.get(
            "rollcall_cleanup_runs_total",
            &[("task", task), ("result", result)],
        )
    };
    // The full cleanup runs the sweep too.
    assert_eq!(runs("detect_stale_workers", "success"), 2.0);
    assert_eq!(runs("run_all_cleanup_tasks", "success"), 1.0);
    assert_eq!(runs("run_all_cleanup_tasks", "failure"), 0.0);
    for task in ["detect_stale_workers", "run_all_cleanup_tasks"] {
        let n = after.get("rollcall_cleanup_duration_seconds_count", &[("task", task)]);
        assert_eq!(n, runs(task, "success"), "{task}");
    }
    // Forgetting is a deletion, not a transition: the counters stay.
    assert_eq!(
        after.get(
            "rollcall_worker_transitions_total",
            &[("status", "offline"), ("reason", "shutdown")]
        ),
        1.0
    );

    // Gauges: the census agrees with the lists.
    let workers = app.workers().await;
    let machines = app.machines().await;
    for status in ["online", "draining", "offline"] {
        assert_eq!(
            after.get("rollcall_workers", &[("status", status)]),
            count_where(&workers, "status", status),
            "workers {status}"
        );
    }
    assert_eq!(after.get("rollcall_workers", &[("status", "online")]), 1.0);
    for status in ["online", "offline"] {
        assert_eq!(
            after.get("rollcall_machines", &[("status", status)]),
            count_where(&machines, "status", status),
            "machines {status}"
        );
    }
    assert_eq!(after.get("rollcall_machines", &[("status", "online")]), 1.0);

    promtool_check(&after.text);
}

/// The series of `rollcall_worker_offlines_total`: (class, kind).
const OFFLINE_SERIES: [(&str, &str); 6] = [
    ("graceful", "shutdown"),
    ("graceful", "exited"),
    ("crash", "stale"),
    ("crash", "replaced"),
    ("crash", "exited"),
    ("administrative", "revoked"),
];

/// The (class, kind) a `worker.offline` event of the log counts under,
/// from its reason and exit status as the API shows them.
fn offline_series(e: &Value) -> (&'static str, &'static str) {
    match (e["reason"].as_str().unwrap(), e["exit_code"].as_u64()) {
        ("shutdown", _) => ("graceful", "shutdown"),
        ("exited", Some(0)) => ("graceful", "exited"),
        ("exited", _) => ("crash", "exited"),
        ("stale", _) => ("crash", "stale"),
        ("replaced", _) => ("crash", "replaced"),
        ("revoked", _) => ("administrative", "revoked"),
        (other, _) => panic!("an offline reason the contract does not have: {other}"),
    }
}

/// Every offline is counted once it is committed, by its class and kind:
/// exit 0 graceful, a failure code, a signal or no status a crash, as are
/// stale and replaced; revoked administrative. The series exist from the
/// start, carry no per-worker label, and agree with the event log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offlines_are_counted_by_class_and_kind() {
    let app = spawn_app().await;
    let offlines = |s: &Scrape| -> Vec<(String, f64)> {
        s.samples
            .iter()
            .filter(|((n, _), _)| n == "rollcall_worker_offlines_total")
            .map(|((_, l), v)| {
                let keys: Vec<&str> = l.keys().map(String::as_str).collect();
                assert_eq!(keys, ["class", "kind"], "labels {l:?}");
                (format!("{}/{}", l["class"], l["kind"]), *v)
            })
            .collect()
    };
    let before = scrape(&app).await;
    let mut names: Vec<String> = offlines(&before).into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut want: Vec<String> = OFFLINE_SERIES
        .iter()
        .map(|(c, k)| format!("{c}/{k}"))
        .collect();
    want.sort();
    assert_eq!(names, want, "exactly these series, present from the start");
    assert!(offlines(&before).iter().all(|(_, v)| *v == 0.0));
    promtool_check(&before.text);

    const LONG: u64 = 60_000;
    let reg = |name: &'static str, stale_after: u64| {
        let app = &app;
        async move { app.register_stale(name, "host-a", stale_after).await }
    };
    let exit = |w: Reg, body: Value| {
        let app = &app;
        async move {
            app.post(&format!("/v1/workers/{}/offline", w.id), &w.token, body)
                .await
                .expect(200);
        }
    };
    exit(
        reg("zero", LONG).await,
        json!({"reason": "exited", "exit_code": 0}),
    )
    .await;
    exit(
        reg("three", LONG).await,
        json!({"reason": "exited", "exit_code": 3}),
    )
    .await;
    exit(
        reg("nine", LONG).await,
        json!({"reason": "exited", "signal": 9}),
    )
    .await;
    exit(reg("unknown", LONG).await, json!({"reason": "exited"})).await;
    exit(reg("bye", LONG).await, json!({"reason": "shutdown"})).await;
    let bye_again = app.register_stale("bye2", "host-a", LONG).await;
    exit(bye_again.clone(), json!({})).await;
    // A repeat changes nothing, and counts nothing.
    exit(bye_again, json!({"reason": "shutdown"})).await;
    // Refused: counted nowhere.
    let refused = reg("refused", LONG).await;
    let r = app
        .post(
            &format!("/v1/workers/{}/offline", refused.id),
            &refused.token,
            json!({"reason": "shutdown", "exit_code": 1}),
        )
        .await;
    assert_error(&r, 400, "invalid_request");
    // Registered again while online: the old session is replaced. Then an
    // admin deletes it while online: revoked.
    let again = reg("refused", LONG).await;
    app.delete(&format!("/v1/workers/{}", again.id), &app.admin)
        .await
        .expect(204);
    let quiet = reg("quiet", 300).await;
    wait_until(
        "quiet to be marked stale",
        Duration::from_secs(10),
        || async { app.worker(&quiet.id).await["offline_reason"] == "stale" },
    )
    .await;

    let events = app.events().await;
    let after = scrape(&app).await;
    let mut from_log: BTreeMap<(&str, &str), f64> = BTreeMap::new();
    for e in events.iter().filter(|e| e["type"] == "worker.offline") {
        *from_log.entry(offline_series(e)).or_default() += 1.0;
    }
    for ((class, kind), expected) in OFFLINE_SERIES
        .into_iter()
        .zip([2.0, 1.0, 1.0, 1.0, 3.0, 1.0])
    {
        let got = after.get(
            "rollcall_worker_offlines_total",
            &[("class", class), ("kind", kind)],
        );
        assert_eq!(
            got,
            from_log.get(&(class, kind)).copied().unwrap_or(0.0),
            "{class}/{kind} vs the event log"
        );
        assert_eq!(got, expected, "{class}/{kind}");
    }
    // Every offline transition is counted in exactly one class.
    let total: f64 = offlines(&after).iter().map(|(_, v)| v).sum();
    let transitions: f64 = ["shutdown", "exited", "stale", "replaced", "revoked"]
        .iter()
        .map(|r| {
            after.get(
                "rollcall_worker_transitions_total",
                &[("status", "offline"), ("reason", r)],
            )
        })
        .sum();
    assert_eq!(total, transitions);
    promtool_check(&after.text);
}

/// With `metrics_token`, a scrape needs that token or an admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_token_guards_the_scrape() {
    const SCRAPE: &str = "scrape-secret-0123456789";
    let app = spawn_app_with(|c| c.metrics_token = Some(SCRAPE.into())).await;
    let r = app.send(Method::GET, "/metrics", None, None).await;
    assert_error(&r, 401, "unauthorized");
    let r = app.get("/metrics", "scrape-secret-wrong").await;
    assert_error(&r, 401, "unauthorized");
    let r = app
        .send_auth(Method::GET, "/metrics", Some(SCRAPE), None)
        .await;
    assert_error(&r, 401, "unauthorized");
    for kind in ["read", "enroll"] {
        let token = app.token(kind).await;
        let r = app.get("/metrics", &token).await;
        assert_error_in(kind, &r, 403, "forbidden");
    }
    for token in [SCRAPE, &app.admin] {
        let r = app.get("/metrics", token).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.contains("rollcall_build_info"), "{}", r.text);
    }
}

/// With `metrics_listen`, `/metrics` is served there and only there, and
/// that listener serves nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_moves_the_scrape_to_its_own_listener() {
    const SCRAPE: &str = "scrape-secret-0123456789";
    let mut app = spawn_app_with(|c| {
        c.metrics_listen = Some("127.0.0.1:0".into());
        c.metrics_token = Some(SCRAPE.into());
    })
    .await;
    let addr = app
        .running()
        .metrics_addr()
        .expect("a separate metrics listener");
    assert_ne!(addr.port(), 0);
    assert_ne!(app.base, format!("http://{addr}"));

    let r = app.get("/metrics", &app.admin).await;
    assert_error(&r, 404, "not_found");

    let metrics = |path: &str, token: Option<&str>| {
        let mut req = app.client.get(format!("http://{addr}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.expect("the metrics listener answers");
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let (status, text) = metrics("/metrics", Some(SCRAPE)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("rollcall_build_info"), "{text}");
    let (status, text) = metrics("/metrics", None).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("\"unauthorized\""), "{text}");
    for path in ["/v1/workers", "/healthz", "/"] {
        let (status, text) = metrics(path, Some(&app.admin)).await;
        assert_eq!(status, 404, "{path} on the metrics listener: {text}");
    }

    // It stops with the server, and comes back on restart.
    app.stop().await;
    assert!(
        reqwest::get(format!("http://{addr}/metrics"))
            .await
            .is_err(),
        "the metrics listener is closed after shutdown"
    );
    app.start().await;
    assert!(app.running().metrics_addr().is_some());
}
