//! Alerting end to end: alert rules on a real server, notifications to a
//! real HTTP receiver (a small server in this test). Crashes page, graceful
//! stops page nobody; the signature verifies and a tampered body does not;
//! a receiver that is down is retried; a mass failure is one page.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use rollcall_server::alerts::deliver::{verify, SIGNATURE_HEADER};
use rollcall_server::RawConfig;
use serde_json::{json, Value};

/// A `worker_offline` rule on the `hook` channel.
const DOWN: &str = "[[alert]]\nname = \"down\"\nkind = \"worker_offline\"\nchannels = [\"hook\"]\n";

const SECRET: &str = "k3v9-Qz7u-2Lr8-Wm4x-Ty6p-Hb1n";

/// Adds `[[channel]]` and `[[alert]]` tables (TOML) to a test config.
fn with_alerting(raw: &mut RawConfig, toml: &str) {
    let parsed = RawConfig::from_toml("test", toml).expect("valid alerting TOML");
    raw.alert = parsed.alert;
    raw.channel = parsed.channel;
}

fn webhook(url: &str, group_wait: &str) -> String {
    format!(
        "[[channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{url}\"\nsecret = \"{SECRET}\"\ngroup_wait = \"{group_wait}\"\n"
    )
}

/// A server whose rules (TOML `[[alert]]` tables) notify the webhook
/// channel `hook`, which posts to `hook` after `group_wait`.
async fn app_with(hook: &Receiver, group_wait: &str, rules: &str) -> TestApp {
    let alerting = format!("{}\n{rules}", webhook(&hook.url, group_wait));
    spawn_app_with(|raw| with_alerting(raw, &alerting)).await
}

async fn incidents(app: &TestApp, query: &str) -> Vec<Value> {
    app.get(&format!("/v1/incidents{query}"), &app.admin)
        .await
        .expect(200)["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn now_secs() -> i64 {
    now_ms() / 1000
}

#[tokio::test]
async fn a_crash_pages_once_signed_and_a_graceful_stop_pages_nobody() {
    let hook = Receiver::start().await;
    let app = app_with(&hook, "100ms", DOWN).await;

    let graceful = app.register("graceful", "m1").await;
    let crashing = app.register("crashing", "m1").await;
    app.offline(&graceful, "shutdown").await;
    // `crashing` never beats: it goes stale.
    let opened = wait_for(
        "the opening is delivered",
        Duration::from_secs(20),
        || async { hook.notifications().first().cloned() },
    )
    .await;
    assert_eq!(opened["transition"], "opened");
    let incident = &opened["incident"];
    assert_eq!(incident["kind"], "worker_offline");
    assert_eq!(incident["worker_id"], crashing.id.as_str());
    assert_eq!(incident["details"]["crash_kind"], "stale");
    assert_eq!(
        opened["idempotency_key"],
        format!("{}:opened:hook", incident["id"].as_str().unwrap())
    );

    // The signature verifies; the same header over another body does not.
    let req = &hook.accepted()[0];
    let sig = req.headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(verify(SECRET, sig, &req.body, now_secs(), 300));
    let mut tampered = req.body.to_vec();
    let at = tampered.iter().position(|&b| b == b'm').unwrap();
    tampered[at] = b'n';
    assert!(!verify(SECRET, sig, &tampered, now_secs(), 300));
    assert!(!verify(
        "another-secret-of-some-length",
        sig,
        &req.body,
        now_secs(),
        300
    ));
    // A replay long after is refused by its timestamp.
    assert!(!verify(SECRET, sig, &req.body, now_secs() + 3_600, 300));

    // The API shows it; the graceful stop opened nothing.
    let open = incidents(&app, "?status=open").await;
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0]["worker_id"], crashing.id.as_str());
    let all = incidents(&app, "").await;
    assert!(all.iter().all(|i| i["worker_id"] != graceful.id.as_str()));

    // Acknowledged once; a second acknowledgement changes nothing.
    let id = open[0]["id"].as_str().unwrap();
    let acked = app
        .post(
            &format!("/v1/incidents/{id}/ack"),
            &app.admin,
            json!({"by": "alice"}),
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(acked["acked_by"], "alice");
    let again = app
        .post(
            &format!("/v1/incidents/{id}/ack"),
            &app.admin,
            json!({"by": "bob"}),
        )
        .await
        .expect(200)
        .clone();
    assert_eq!(again["acked_by"], "alice");
    assert_eq!(again["acked_at"], acked["acked_at"]);

    // It comes back: resolved, and told.
    app.heartbeat(&crashing).await;
    let resolved = wait_for(
        "the resolve is delivered",
        Duration::from_secs(20),
        || async { hook.notifications().get(1).cloned() },
    )
    .await;
    assert_eq!(resolved["transition"], "resolved");
    assert_eq!(resolved["incident"]["id"], id);
    assert_eq!(resolved["incident"]["status"], "resolved");
    let got = app.get(&format!("/v1/incidents/{id}"), &app.admin).await;
    assert_eq!(got.expect(200)["status"], "resolved");
    assert!(incidents(&app, "?status=open").await.is_empty());
    assert_eq!(hook.notifications().len(), 2);
}

#[tokio::test]
async fn a_receiver_that_is_down_is_retried_with_the_same_key() {
    let hook = Receiver::start().await;
    hook.fail_next(2);
    let app = app_with(&hook, "10ms", DOWN).await;
    let w = app.register("w", "m1").await;
    let delivered = wait_for(
        "delivered after two failures",
        Duration::from_secs(30),
        || async { hook.notifications().first().cloned() },
    )
    .await;
    let all = hook.all();
    assert_eq!(all.len(), 3, "two refused, then accepted");
    for r in &all {
        assert_eq!(
            r.json()["notifications"][0]["idempotency_key"],
            delivered["idempotency_key"]
        );
    }
    assert_eq!(delivered["incident"]["worker_id"], w.id.as_str());
    // The delivery is recorded (and counted) just after the receiver got it.
    let sent = "rollcall_notifications_total{channel=\"hook\",kind=\"webhook\",result=\"sent\",transition=\"opened\"} 1";
    wait_until(
        "the delivery is counted",
        Duration::from_secs(10),
        || async { app.get("/metrics", &app.admin).await.text.contains(sent) },
    )
    .await;
    let metrics = app.get("/metrics", &app.admin).await.text;
    assert!(
        metrics.contains(
            "rollcall_notifications_total{channel=\"hook\",kind=\"webhook\",result=\"failed\",transition=\"opened\"} 2"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn repeated_crashes_open_one_incident_and_clean_exits_do_not_count() {
    let hook = Receiver::start().await;
    let app = app_with(&hook, "10ms", "[[alert]]\nname = \"flaky\"\nkind = \"worker_crashes\"\ncrashes = 2\nwithin = \"1h\"\nseverity = \"warning\"\nchannels = [\"hook\"]\n").await;
    let body = json!({"name": "job", "machine": {"id": "m1"}, "stale_after_ms": 60_000});
    let exit = |code: u8| json!({"reason": "exited", "exit_code": code});
    let w = app.register_body(body.clone()).await;
    app.post(&format!("/v1/workers/{}/offline", w.id), &w.token, exit(3))
        .await
        .expect(200);
    let w = app.register_body(body.clone()).await;
    app.post(&format!("/v1/workers/{}/offline", w.id), &w.token, exit(0))
        .await
        .expect(200);
    // One crash and a clean exit: pending, nobody told.
    let pending = wait_for(
        "the first crash is counted",
        Duration::from_secs(10),
        || async { incidents(&app, "?status=pending").await.first().cloned() },
    )
    .await;
    assert_eq!(pending["kind"], "worker_crashes");
    assert_eq!(pending["details"]["crashes"].as_array().unwrap().len(), 1);
    let w = app.register_body(body.clone()).await;
    app.post(
        &format!("/v1/workers/{}/offline", w.id),
        &w.token,
        json!({"reason": "exited", "signal": 9}),
    )
    .await
    .expect(200);
    let opened = wait_for(
        "the second crash pages",
        Duration::from_secs(20),
        || async { hook.notifications().first().cloned() },
    )
    .await;
    assert_eq!(opened["incident"]["kind"], "worker_crashes");
    assert_eq!(opened["incident"]["severity"], "warning");
    assert_eq!(opened["incident"]["id"], pending["id"]);
    // A third crash is the same incident, not another page.
    let w = app.register_body(body).await;
    app.post(&format!("/v1/workers/{}/offline", w.id), &w.token, exit(1))
        .await
        .expect(200);
    wait_until(
        "the third crash is counted",
        Duration::from_secs(10),
        || async {
            let open = incidents(&app, "?status=open").await;
            open.len() == 1 && open[0]["details"]["crashes"].as_array().unwrap().len() == 3
        },
    )
    .await;
    assert_eq!(hook.notifications().len(), 1);
}

#[tokio::test]
async fn a_mass_failure_is_one_page_not_one_per_worker() {
    let hook = Receiver::start().await;
    let app = app_with(&hook, "2s", "[[alert]]\nname = \"down\"\nkind = \"worker_offline\"\nchannels = [\"hook\"]\n\
                 [[alert]]\nname = \"machine-down\"\nkind = \"machine_offline\"\nchannels = [\"hook\"]\n\
                 [[alert]]\nname = \"outage\"\nkind = \"mass_failure\"\npercent = 20\nwindow = \"10s\"\nchannels = [\"hook\"]\n").await;
    // 40 workers on 4 machines; the 20 on m0 and m1 stop beating at once.
    let mut live = Vec::new();
    let mut dying = Vec::new();
    for i in 0..40 {
        let machine = format!("m{}", i % 4);
        let body =
            json!({"name": format!("w{i}"), "machine": {"id": machine}, "stale_after_ms": 3_000});
        let w = app.register_body(body).await;
        if i % 4 < 2 {
            dying.push(w);
        } else {
            live.push(w);
        }
    }
    let keep = {
        let client = app.client.clone();
        let base = app.base.clone();
        let live: Vec<(String, String)> = live
            .iter()
            .map(|w| (w.id.clone(), w.token.clone()))
            .collect();
        tokio::spawn(async move {
            loop {
                for (id, token) in &live {
                    let _ = client
                        .post(format!("{base}/v1/workers/{id}/heartbeat"))
                        .bearer_auth(token)
                        .send()
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };
    let opened = wait_for(
        "the mass failure pages",
        Duration::from_secs(30),
        || async { hook.notifications().first().cloned() },
    )
    .await;
    assert_eq!(opened["incident"]["kind"], "mass_failure");
    // Every dying worker goes offline; the mass failure covers them all.
    wait_until(
        "all 20 are offline and covered",
        Duration::from_secs(30),
        || async {
            let open = incidents(&app, "?status=open&limit=1000").await;
            open.iter().any(|i| {
                i["kind"] == "mass_failure"
                    && i["details"]["covered"]
                        .as_array()
                        .is_some_and(|c| c.len() == 20)
            })
        },
    )
    .await;
    let open = incidents(&app, "?status=open&limit=1000").await;
    let mass = open
        .iter()
        .find(|i| i["kind"] == "mass_failure")
        .unwrap()
        .clone();
    let covered = open.iter().filter(|i| i["kind"] != "mass_failure").count();
    assert!(
        covered >= 20,
        "per-worker and per-machine incidents exist: {covered}"
    );
    assert!(open
        .iter()
        .filter(|i| i["kind"] != "mass_failure")
        .all(|i| i["inhibited_by"] == mass["id"]));
    assert_eq!(mass["details"]["machines"].as_array().unwrap().len(), 2);

    // They come back: the mass failure resolves, and everything it covered.
    for w in &dying {
        app.heartbeat(w).await;
    }
    let resolved = wait_for(
        "the resolve is delivered",
        Duration::from_secs(30),
        || async { hook.notifications().get(1).cloned() },
    )
    .await;
    assert_eq!(resolved["transition"], "resolved");
    assert_eq!(resolved["incident"]["id"], mass["id"]);
    wait_until("nothing is open", Duration::from_secs(10), || async {
        incidents(&app, "?status=open").await.is_empty()
    })
    .await;
    wait_until("the outbox is empty", Duration::from_secs(10), || async {
        app.get("/metrics", &app.admin)
            .await
            .text
            .contains("rollcall_outbox_pending 0")
    })
    .await;
    keep.abort();
    let sent = hook.notifications();
    assert_eq!(sent.len(), 2, "one opening and one resolve: {sent:#?}");
}

type Beating = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

/// Heartbeats the workers (id, token) in `beating`, as it is at each round,
/// in batches of 1,000 every 500 ms until aborted.
fn keep_beating(app: &TestApp, beating: Beating) -> tokio::task::JoinHandle<()> {
    let client = app.client.clone();
    let url = app.url("/v1/heartbeats");
    let admin = app.admin.clone();
    tokio::spawn(async move {
        loop {
            let workers = beating.lock().unwrap().clone();
            for chunk in workers.chunks(1_000) {
                let beats: Vec<Value> = chunk
                    .iter()
                    .map(|(id, token)| json!({"worker_id": id, "token": token}))
                    .collect();
                let _ = client
                    .post(&url)
                    .bearer_auth(&admin)
                    .json(&json!({ "heartbeats": beats }))
                    .send()
                    .await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_workers_failing_at_once_are_one_page_per_channel() {
    let hook = Receiver::start().await;
    let second = Receiver::start().await;
    let alerting = format!(
        "{}\n[[channel]]\nname = \"chat\"\nkind = \"slack\"\nurl = \"{}\"\ngroup_wait = \"3s\"\n\
         [[alert]]\nname = \"down\"\nkind = \"worker_offline\"\nchannels = [\"hook\", \"chat\"]\n\
         [[alert]]\nname = \"machine-down\"\nkind = \"machine_offline\"\nchannels = [\"hook\", \"chat\"]\n\
         [[alert]]\nname = \"outage\"\nkind = \"mass_failure\"\npercent = 20\nwindow = \"20s\"\nchannels = [\"hook\", \"chat\"]\n",
        webhook(&hook.url, "3s"),
        second.url
    );
    let app = spawn_app_with(|raw| with_alerting(raw, &alerting)).await;
    // 2,000 workers on 20 machines, each beating from its registration on;
    // then the 1,000 on the ten even machines stop at once.
    let beating = Beating::default();
    let keep = keep_beating(&app, beating.clone());
    let mut live = Vec::new();
    let mut dying = Vec::new();
    for i in 0..2_000 {
        let machine = format!("m{}", i % 20);
        let body = json!({"name": format!("w{i}"), "machine": {"id": machine},
                          "heartbeat_interval_ms": 500, "stale_after_ms": 3_000});
        let w = app.register_body(body).await;
        let pair = (w.id.clone(), w.token.clone());
        beating.lock().unwrap().push(pair.clone());
        if i % 2 == 0 {
            dying.push(pair);
        } else {
            live.push(pair);
        }
    }
    // A full round of beats reached every worker before the stop.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    *beating.lock().unwrap() = live.clone();
    assert!(
        incidents(&app, "").await.is_empty(),
        "nothing crashed while the fleet registered"
    );

    let opened = wait_for(
        "the mass failure pages",
        Duration::from_secs(60),
        || async { hook.notifications().first().cloned() },
    )
    .await;
    assert_eq!(opened["incident"]["kind"], "mass_failure");
    let path = format!(
        "/v1/incidents/{}",
        opened["incident"]["id"].as_str().unwrap()
    );
    let mass = wait_for(
        "all 1,000 are offline and covered",
        Duration::from_secs(60),
        || async {
            let mass = app.get(&path, &app.admin).await.expect(200).clone();
            let n = mass["details"]["covered"].as_array().map_or(0, Vec::len);
            (n == 1_000).then_some(mass)
        },
    )
    .await;
    assert_eq!(mass["status"], "open");
    assert_eq!(mass["details"]["machines"].as_array().unwrap().len(), 10);
    // Each of the 1,000 has its own incident, covered by the mass failure.
    let mut cursor = String::new();
    let mut inhibited = 0;
    loop {
        let page = app
            .get(
                &format!("/v1/incidents?status=open&limit=1000{cursor}"),
                &app.admin,
            )
            .await
            .expect(200)
            .clone();
        inhibited += page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["kind"] == "worker_offline" && i["inhibited_by"] == mass["id"])
            .count();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(inhibited, 1_000);

    // They come back: one resolve per channel.
    beating.lock().unwrap().extend(dying);
    for (what, r) in [("webhook", &hook), ("slack", &second)] {
        wait_until(what, Duration::from_secs(60), || async {
            r.all().len() >= 2
        })
        .await;
    }
    wait_until("nothing is open", Duration::from_secs(30), || async {
        incidents(&app, "?status=open").await.is_empty()
    })
    .await;
    wait_until("the outbox is empty", Duration::from_secs(30), || async {
        app.get("/metrics", &app.admin)
            .await
            .text
            .contains("rollcall_outbox_pending 0")
    })
    .await;
    keep.abort();
    let sent: Vec<(String, String)> = hook
        .notifications()
        .iter()
        .map(|n| {
            (
                n["transition"].as_str().unwrap().to_owned(),
                n["incident"]["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("opened".to_owned(), "mass_failure".to_owned()),
            ("resolved".to_owned(), "mass_failure".to_owned())
        ],
        "one opening and one resolve on the webhook"
    );
    assert_eq!(second.all().len(), 2, "one request each on Slack");
    let texts: Vec<String> = second
        .all()
        .iter()
        .map(|r| r.json()["text"].as_str().unwrap_or_default().to_owned())
        .collect();
    // It opened at 20 % of the 2,000 (not of those still live when the
    // alerter read the first crashes), and resolved covering all 1,000.
    assert!(
        texts[0].contains("opened") && texts[0].contains("of 2000 workers crashed"),
        "{texts:?}"
    );
    assert!(
        texts[1].contains("resolved") && texts[1].contains("1000 of 2000"),
        "{texts:?}"
    );
}

#[tokio::test]
async fn alert_endpoints_refuse_bad_input_and_change_nothing() {
    let app = spawn_app().await;
    let read = app.token("read").await;
    for q in ["?status=firing", "?cursor=nope", "?limit=0"] {
        let r = app.get(&format!("/v1/incidents{q}"), &app.admin).await;
        assert_eq!(r.status, 400, "{q}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_request");
    }
    let r = app
        .get("/v1/incidents/inc_01JDQ3Z6X8A1B2C3D4E5F6G7H8", &read)
        .await;
    assert_eq!(r.status, 404);
    let r = app
        .post(
            "/v1/incidents/inc_01JDQ3Z6X8A1B2C3D4E5F6G7H8/ack",
            &read,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 403);
    let r = app
        .post(
            "/v1/incidents/inc_01JDQ3Z6X8A1B2C3D4E5F6G7H8/ack",
            &app.admin,
            json!({"by": ""}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app
        .post(
            "/v1/incidents/inc_01JDQ3Z6X8A1B2C3D4E5F6G7H8/ack",
            &app.admin,
            json!({"by": "x".repeat(129)}),
        )
        .await;
    assert_eq!(r.status, 400);
    let r = app.get("/v1/alert-rules", &read).await;
    assert_eq!(r.expect(200)["items"], json!([]));
    assert!(incidents(&app, "").await.is_empty());
}

#[tokio::test]
async fn rules_made_through_the_api_page_and_a_deleted_one_resolves() {
    let hook = Receiver::start().await;
    let config_rule =
        "[[alert]]\nname = \"cfg\"\nkind = \"worker_crashes\"\ncrashes = 100\nchannels = [\"hook\"]\n";
    let mut app = app_with(&hook, "100ms", config_rule).await;
    let read = app.token("read").await;
    let rules = |r: Resp| r.expect(200)["items"].as_array().unwrap().clone();
    let listed = rules(app.get("/v1/alert-rules", &read).await);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "cfg");
    assert_eq!(listed[0]["source"], "config");

    // Refused, each with a 400 (409 for the config file's rule, 403 for a
    // read token), and nothing changes.
    let put = |name: &str, body: Value| {
        let app = &app;
        let path = format!("/v1/alert-rules/{name}");
        async move {
            app.send(
                reqwest::Method::PUT,
                &path,
                Some(&app.admin),
                Some(serde_json::to_vec(&body).unwrap()),
            )
            .await
        }
    };
    let bad = [
        (
            "down",
            json!({"kind": "nope", "channels": ["hook"]}),
            "kind",
        ),
        ("down", json!({"kind": "worker_offline"}), "channels"),
        (
            "down",
            json!({"kind": "worker_offline", "channels": ["nope"]}),
            "channels",
        ),
        (
            "down",
            json!({"kind": "mass_failure", "percent": 0, "channels": ["hook"]}),
            "percent",
        ),
        (
            "down",
            json!({"kind": "worker_offline", "crashes": 2, "channels": ["hook"]}),
            "crashes",
        ),
        (
            "down",
            json!({"kind": "worker_crashes", "within_ms": 0, "channels": ["hook"]}),
            "within_ms",
        ),
        (
            "down",
            json!({"kind": "worker_offline", "channels": ["hook"], "colour": "red"}),
            "colour",
        ),
        (
            "bad.name!",
            json!({"kind": "worker_offline", "channels": ["hook"]}),
            "name",
        ),
    ];
    for (name, body, names) in bad {
        let r = put(name, body.clone()).await;
        assert_eq!(r.status, 400, "{name} {body}: {:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_request");
        let message = r.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(names), "{body}: {message}");
    }
    let r = put(
        "cfg",
        json!({"kind": "worker_offline", "channels": ["hook"]}),
    )
    .await;
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert_eq!(
        app.delete("/v1/alert-rules/cfg", &app.admin).await.status,
        409
    );
    let r = app
        .send(
            reqwest::Method::PUT,
            "/v1/alert-rules/down",
            Some(&read),
            Some(br#"{"kind": "worker_offline", "channels": ["hook"]}"#.to_vec()),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(rules(app.get("/v1/alert-rules", &read).await).len(), 1);
    assert_eq!(app.get("/v1/alert-rules/down", &read).await.status, 404);

    // A crash before the rule exists: history a new rule never pages for.
    let before = app.register("before", "m0").await;
    wait_until(
        "the first worker is stale",
        Duration::from_secs(20),
        || async {
            app.get(&format!("/v1/workers/{}", before.id), &read)
                .await
                .expect(200)["status"]
                == "offline"
        },
    )
    .await;

    // Made, then replaced; it survives a restart.
    let body = json!({"kind": "worker_offline", "channels": ["hook"], "severity": "warning"});
    let made = put("down", body.clone()).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    assert_eq!(made.body["source"], "api");
    assert_eq!(made.body["for_ms"], 0);
    let made = put("down", body).await;
    assert_eq!(made.status, 200, "{:?}", made.body);
    app.stop().await;
    app.start().await;
    let got = app
        .get("/v1/alert-rules/down", &read)
        .await
        .expect(200)
        .clone();
    assert_eq!(got["severity"], "warning");
    assert_eq!(got["problem"], Value::Null);

    // It pages like a rule of the config file, and the log has the opening.
    let crashing = app.register("crashing", "m1").await;
    let opened = wait_for(
        "the opening is delivered",
        Duration::from_secs(20),
        || async { hook.notifications().first().cloned() },
    )
    .await;
    assert_eq!(opened["incident"]["rule"], "down");
    assert_eq!(opened["incident"]["worker_id"], crashing.id.as_str());
    let id = opened["incident"]["id"].as_str().unwrap().to_owned();
    let events = app
        .get("/v1/events?type=incident.opened", &read)
        .await
        .expect(200)["items"]
        .clone();
    assert_eq!(events.as_array().unwrap().len(), 1, "{events}");
    assert_eq!(events[0]["incident_id"], id.as_str());
    assert_eq!(events[0]["worker_id"], crashing.id.as_str());
    assert_eq!(events[0]["machine_id"], "m1");
    let offline_seq = app
        .get(
            &format!("/v1/events?worker_id={}&type=worker.offline", crashing.id),
            &read,
        )
        .await
        .expect(200)["items"][0]["seq"]
        .as_i64()
        .unwrap();
    assert!(
        events[0]["seq"].as_i64().unwrap() > offline_seq,
        "after its cause"
    );

    // Deleted: its open incident resolves, told to the channel and logged.
    assert_eq!(
        app.delete("/v1/alert-rules/down", &app.admin).await.status,
        204
    );
    let resolved = wait_for(
        "the resolve is delivered",
        Duration::from_secs(20),
        || async { hook.notifications().get(1).cloned() },
    )
    .await;
    assert_eq!(resolved["transition"], "resolved");
    assert_eq!(resolved["incident"]["id"], id.as_str());
    let logged = app
        .get("/v1/events?type=incident.resolved", &read)
        .await
        .expect(200)["items"]
        .clone();
    assert_eq!(logged[0]["incident_id"], id.as_str());
    assert_eq!(
        app.delete("/v1/alert-rules/down", &app.admin).await.status,
        404
    );
    assert_eq!(rules(app.get("/v1/alert-rules", &read).await).len(), 1);
    let down: Vec<Value> = incidents(&app, "")
        .await
        .into_iter()
        .filter(|i| i["rule"] == "down")
        .collect();
    assert_eq!(
        down.len(),
        1,
        "only the crash after the rule was made: {down:?}"
    );
    assert_ne!(down[0]["worker_id"], before.id.as_str());
}

/// The time from a worker's deadline to its notification's arrival at a
/// real receiver, for 1 and for 1,000 workers that stop at once (every
/// opening is its own incident: no mass-failure rule). A measurement, not a
/// check: run by hand, numbers in docs/PERFORMANCE.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check; run by hand"]
async fn measure_deadline_to_delivery() {
    for n in [1usize, 1000] {
        let hook = Receiver::start().await;
        let app = app_with(&hook, "1ms", DOWN).await;
        let mut deadlines = std::collections::HashMap::new();
        for i in 0..n {
            let body = json!({"name": format!("w{i}"), "machine": {"id": format!("m{}", i % 20)}, "stale_after_ms": 2_000});
            let w = app.register_body(body).await;
            deadlines.insert(w.id.clone(), w.deadline_ms());
        }
        wait_until(
            "every opening arrived",
            Duration::from_secs(120),
            || async { hook.notifications().len() >= n },
        )
        .await;
        let mut lags: Vec<i64> = hook
            .accepted()
            .iter()
            .flat_map(|r| {
                let at = r.received_ms;
                r.json()["notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |x| (at, x))
            })
            .map(|(at, x)| at - deadlines[x["incident"]["worker_id"].as_str().unwrap()])
            .collect();
        lags.sort_unstable();
        let p = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
        println!(
            "{n} crashes: deadline → delivered p50 {} ms, p99 {} ms, max {} ms ({} requests)",
            p(0.5),
            p(0.99),
            lags[lags.len() - 1],
            hook.accepted().len()
        );
    }
}
