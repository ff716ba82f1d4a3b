//! `GET /v1/summary`: the fleet's counts and its machines and workers in
//! problem order, paged and filtered on the server, against the real server
//! (both stores: see `common`).

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn ids(list: &Value, key: &str) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i[key].as_str().unwrap().to_owned())
        .collect()
}

/// A small fleet in every condition:
///
/// - `m-ok`: a1, a2 online (queue=gpu; the machine has zone=eu-1);
/// - `m-deg`: b1 online, b2 draining;
/// - `m-fail`: c1 online, c2 offline (`exited`);
/// - `m-off`: d1 offline (`shutdown`);
/// - `m-stale`: e1 offline (`stale`).
struct Fleet {
    app: TestApp,
    names: Vec<(String, String)>,
}

impl Fleet {
    fn id(&self, name: &str) -> String {
        self.names
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, id)| id.clone())
            .unwrap()
    }

    fn name(&self, id: &str) -> String {
        self.names
            .iter()
            .find(|(_, i)| i == id)
            .map(|(n, _)| n.clone())
            .unwrap()
    }

    fn names_of(&self, list: &Value) -> Vec<String> {
        ids(list, "id").iter().map(|id| self.name(id)).collect()
    }

    async fn summary(&self, query: &str) -> Value {
        self.app
            .get(&format!("/v1/summary{query}"), &self.app.admin)
            .await
            .expect(200)
            .clone()
    }
}

async fn fleet() -> Fleet {
    let app = spawn_app().await;
    let mut names = Vec::new();
    let reg = |name: &str, machine: Value, labels: Value, stale_after_ms: u64| {
        let body = json!({"name": name, "machine": machine, "labels": labels,
                          "stale_after_ms": stale_after_ms});
        let app = &app;
        async move { app.register_body(body).await }
    };
    let ok = json!({"id": "m-ok", "hostname": "ok.example", "labels": {"zone": "eu-1"}});
    let a1 = reg("a1", ok.clone(), json!({"queue": "gpu"}), 600_000).await;
    let a2 = reg("a2", ok, json!({"queue": "gpu"}), 600_000).await;
    let b1 = reg("b1", json!({"id": "m-deg"}), json!({}), 600_000).await;
    let b2 = reg("b2", json!({"id": "m-deg"}), json!({}), 600_000).await;
    let c1 = reg("c1", json!({"id": "m-fail"}), json!({}), 600_000).await;
    let c2 = reg("c2", json!({"id": "m-fail"}), json!({}), 600_000).await;
    let d1 = reg("d1", json!({"id": "m-off"}), json!({}), 600_000).await;
    let drained = app
        .post(
            &format!("/v1/workers/{}/drain", b2.id),
            &b2.token,
            json!({}),
        )
        .await
        .expect(200)
        .clone();
    // Distinct instants, so that the order by recency is known.
    sleep_until_ms(ts(&drained["status_changed_at"]) + 2).await;
    app.offline(&c2, "exited").await;
    app.offline(&d1, "shutdown").await;
    // Registered last, so that its stale transition is the newest change.
    let e1 = reg("e1", json!({"id": "m-stale"}), json!({}), 300).await;
    for (n, r) in [
        ("a1", &a1),
        ("a2", &a2),
        ("b1", &b1),
        ("b2", &b2),
        ("c1", &c1),
        ("c2", &c2),
        ("d1", &d1),
        ("e1", &e1),
    ] {
        names.push((n.to_owned(), r.id.clone()));
    }
    // The summary reads the engine, which installs a stale transition just
    // after the store has it, and publishes its event just after that:
    // wait for the summary itself to show both.
    wait_until("e1 is marked stale", Duration::from_secs(10), || async {
        let s = app.get("/v1/summary?machine_id=m-stale", &app.admin).await;
        let last = app.events().await.last().unwrap()["seq"].clone();
        s.body["workers"]["items"][0]["offline_reason"] == "stale" && s.body["seq"] == last
    })
    .await;
    Fleet { app, names }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_counts_the_fleet_and_lists_problems_first() {
    let f = fleet().await;
    let s = f.summary("").await;
    for key in ["seq", "at", "counts", "matching", "machines", "workers"] {
        assert!(s.get(key).is_some(), "no {key} in {s}");
    }
    assert_eq!(
        s["counts"],
        json!({
            "workers": {"total": 8, "online": 4, "draining": 1, "offline": 3, "failed": 2},
            "offline_reasons": {"shutdown": 1, "stale": 1, "exited": 1, "replaced": 0, "revoked": 0},
            "machines": {"total": 5, "online": 3, "offline": 2, "degraded": 2},
        })
    );
    assert_eq!(s["matching"], json!({"workers": 8, "machines": 5}));
    // Every event up to `seq` is reflected: the stale one is in it.
    let events = f.app.events().await;
    assert_eq!(s["seq"], events.last().unwrap()["seq"]);

    // Machines: offline ones (newest change first), degraded ones (newest
    // change first), then the rest by id.
    assert_eq!(
        ids(&s["machines"], "id"),
        ["m-stale", "m-off", "m-fail", "m-deg", "m-ok"]
    );
    assert!(s["machines"]["next_cursor"].is_null());
    let by_id = |id: &str| {
        s["machines"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()
            .clone()
    };
    let ok = by_id("m-ok");
    assert_eq!(ok["hostname"], "ok.example");
    assert_eq!(ok["labels"], json!({"zone": "eu-1"}));
    assert_eq!(ok["status"], "online");
    assert_eq!(ok["condition"], "ok");
    assert_eq!(ok["workers"], json!([]), "machine_workers defaults to 0");
    assert_eq!(ok["workers_more"], true);
    let fail = by_id("m-fail");
    assert_eq!(
        (
            &fail["condition"],
            &fail["workers_total"],
            &fail["workers_online"],
            &fail["workers_draining"],
            &fail["workers_offline"],
            &fail["workers_failed"],
            &fail["workers_matching"]
        ),
        (
            &json!("degraded"),
            &json!(2),
            &json!(1),
            &json!(0),
            &json!(1),
            &json!(1),
            &json!(2)
        )
    );
    assert_eq!(by_id("m-deg")["workers_draining"], 1);
    assert_eq!(by_id("m-deg")["condition"], "degraded");
    let stale = by_id("m-stale");
    assert_eq!(
        (&stale["status"], &stale["condition"]),
        (&json!("offline"), &json!("offline"))
    );
    assert!(stale["hostname"].is_null());
    assert_eq!(
        stale["last_change_at"],
        f.app.worker(&f.id("e1")).await["status_changed_at"]
    );

    // Workers: failed (newest first), draining, stopped, then online ones
    // by machine and name.
    assert_eq!(
        f.names_of(&s["workers"]),
        ["e1", "c2", "b2", "d1", "b1", "c1", "a1", "a2"]
    );
    let e1 = &s["workers"]["items"][0];
    assert_eq!(e1, &f.app.worker(&f.id("e1")).await, "the Worker object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_pages_both_lists_with_cursors() {
    let f = fleet().await;
    let mut machines = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=2&workers_limit=0&cursor={}", encode(c)),
            None => "?limit=2&workers_limit=0".into(),
        };
        let s = f.summary(&q).await;
        assert_eq!(s["workers"], json!({"items": [], "next_cursor": null}));
        machines.extend(ids(&s["machines"], "id"));
        pages += 1;
        match s["machines"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(machines, ["m-stale", "m-off", "m-fail", "m-deg", "m-ok"]);

    let mut workers = Vec::new();
    let mut cursor: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let q = match &cursor {
            Some(c) => format!("?limit=1&workers_limit=3&workers_cursor={}", encode(c)),
            None => "?limit=1&workers_limit=3".into(),
        };
        let s = f.summary(&q).await;
        assert_eq!(
            ids(&s["machines"], "id"),
            ["m-stale"],
            "the first machine page"
        );
        sizes.push(s["workers"]["items"].as_array().unwrap().len());
        workers.extend(f.names_of(&s["workers"]));
        match s["workers"]["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(sizes, [3, 3, 2]);
    assert_eq!(workers, ["e1", "c2", "b2", "d1", "b1", "c1", "a1", "a2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_filters_on_the_server() {
    let f = fleet().await;

    let s = f.summary("?status=online").await;
    assert_eq!(s["matching"], json!({"workers": 4, "machines": 3}));
    assert_eq!(ids(&s["machines"], "id"), ["m-fail", "m-deg", "m-ok"]);
    assert_eq!(f.names_of(&s["workers"]), ["b1", "c1", "a1", "a2"]);
    assert_eq!(s["counts"]["workers"]["total"], 8, "counts are the fleet's");

    // Search terms: labels, machine ids, hostnames; all must occur.
    let s = f.summary("?q=GPU").await;
    assert_eq!(f.names_of(&s["workers"]), ["a1", "a2"]);
    assert_eq!(ids(&s["machines"], "id"), ["m-ok"]);
    assert_eq!(s["machines"]["items"][0]["workers_matching"], 2);
    assert_eq!(s["machines"]["items"][0]["workers_total"], 2);
    let s = f.summary("?q=ok.example%20a2").await;
    assert_eq!(f.names_of(&s["workers"]), ["a2"]);
    let s = f.summary("?q=m-fail%20c2").await;
    assert_eq!(f.names_of(&s["workers"]), ["c2"]);
    // An id matches from its start (any case), not anywhere inside it.
    let id = f.id("b2");
    let s = f.summary(&format!("?q={}", id[..20].to_lowercase())).await;
    assert_eq!(f.names_of(&s["workers"]), ["b2"]);
    let s = f.summary(&format!("?q={}", &id[5..])).await;
    assert_eq!(s["matching"]["workers"], 0, "a term inside an id");
    let s = f.summary("?q=nothing-like-this").await;
    assert_eq!(s["matching"], json!({"workers": 0, "machines": 0}));
    assert_eq!(s["machines"]["items"], json!([]));

    // Labels: the worker's own or its machine's.
    let s = f.summary("?label=zone=eu-1").await;
    assert_eq!(f.names_of(&s["workers"]), ["a1", "a2"]);
    let s = f.summary("?label=queue=gpu&label=zone=eu-1").await;
    assert_eq!(s["matching"]["workers"], 2);
    let s = f.summary("?label=queue=gpu&label=zone=us-1").await;
    assert_eq!(s["matching"]["workers"], 0);

    // One machine, with its workers in problem order.
    let s = f.summary("?machine_id=m-deg").await;
    assert_eq!(ids(&s["machines"], "id"), ["m-deg"]);
    assert_eq!(f.names_of(&s["workers"]), ["b2", "b1"]);

    // Each machine's first matching workers.
    let s = f.summary("?machine_workers=1&workers_limit=0").await;
    let firsts: Vec<(String, Vec<String>, bool)> = s["machines"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let ws = m["workers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| f.name(w["id"].as_str().unwrap()))
                .collect();
            (
                m["id"].as_str().unwrap().to_owned(),
                ws,
                m["workers_more"].as_bool().unwrap(),
            )
        })
        .collect();
    let want = |m: &str, w: &str, more: bool| (m.to_owned(), vec![w.to_owned()], more);
    assert_eq!(
        firsts,
        [
            want("m-stale", "e1", false),
            want("m-off", "d1", false),
            want("m-fail", "c2", true),
            want("m-deg", "b2", true),
            want("m-ok", "a1", true),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_refuses_bad_parameters_and_other_tokens() {
    let app = spawn_app().await;
    app.register("w", "m").await;
    for q in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "workers_limit=1001",
        "workers_limit=-1",
        "machine_workers=1001",
        "status=stale",
        "label=novalue",
        "label==v",
        "machine_id=not%20an%20id",
        "cursor=garbage",
        "cursor=9:0:m",
        "workers_cursor=1:2:m/n",
        "workers_cursor=x",
        "limit=1&limit=2",
        &format!("q={}", "x".repeat(257)),
    ] {
        let r = app.get(&format!("/v1/summary?{q}"), &app.admin).await;
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert_eq!(r.body["error"]["code"], "invalid_request", "{q}");
        assert!(r.body["error"]["message"].as_str().unwrap().len() > 5);
    }
    let read = app.token("read").await;
    app.get("/v1/summary", &read).await.expect(200);
    let enroll = app.token("enroll").await;
    let r = app.get("/v1/summary", &enroll).await;
    assert_eq!(r.body["error"]["code"], "forbidden");
    r.expect(403);
    let r = app.get("/v1/summary", "rc_read_unknown").await;
    assert_eq!(r.body["error"]["code"], "unauthorized");
    r.expect(401);
    // The permission is checked before the parameters.
    app.get("/v1/summary?limit=0", &enroll).await.expect(403);

    let doc = app
        .get("/openapi.json", &app.admin)
        .await
        .expect(200)
        .clone();
    let op = &doc["paths"]["/v1/summary"]["get"];
    assert_eq!(op["operationId"], "summary_get");
    let params: Vec<&str> = op["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    for p in [
        "status",
        "q",
        "label",
        "machine_id",
        "limit",
        "cursor",
        "workers_limit",
    ] {
        assert!(params.contains(&p), "{p} in {params:?}");
    }
}
