//! The no-data rule of the health history against the real binary: time
//! when no server ran (`kill -9`, then a restart) is no data — never
//! downtime — while a worker seen alive across the restart has no gap in its
//! status.

mod common;

use std::time::Duration;

use common::*;
use rollcall_core::health::Observations;
use rollcall_core::Timestamp;
use rollcall_store::Store;

fn rfc(ms: i64) -> String {
    Timestamp::from_millis(ms).to_rfc3339()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_leaves_no_data_not_downtime() {
    let dir = data_dir();
    let serve = Serve::new(dir.path()).args(&["--heartbeat-interval", "10s"]);
    let mut first = serve.spawn().await;
    let api = first.admin();
    // stale_after of a minute: alive across the restart by the grace alone.
    let w = api
        .register_with(
            serde_json::json!({"name": "a", "machine": {"id": "m1"}, "stale_after_ms": 60_000}),
        )
        .await;
    let registered = ts(&w.worker["registered_at"]);
    // Let the server extend its observation past the registration.
    until_ms(registered + 1_500).await;
    first.kill9().await;
    let killed_at = now_ms();
    until_ms(killed_at + 2_000).await;
    let mut second = serve.spawn().await;
    let api = second.admin();
    let to = second.ready_at_ms + 500;
    until_ms(to + 1).await;

    let q = format!("from={}&to={}", encode(&rfc(registered)), encode(&rfc(to)));
    let h = api
        .get_ok(&format!("/v1/workers/{}/health?{q}", w.id))
        .await;
    let m = api.get_ok(&format!("/v1/machines/m1/health?{q}")).await;
    let f = api.get_ok(&format!("/v1/health?{q}")).await;
    let worker = api.worker(&w.id).await;
    assert_eq!(worker["status"], "online", "{worker}");
    assert_eq!(worker["session"], 1, "no gap in its status: {worker}");
    for v in [&h, &m, &f] {
        // The worker never went down; the server's absence is no data.
        assert_eq!(v["down_ms"], 0, "{v}");
        assert_eq!(v["availability"], 1.0, "{v}");
        assert_eq!(v["crashes"]["total"], 0, "{v}");
        let no_data = v["no_data_ms"].as_i64().unwrap();
        let observed = v["observed_ms"].as_i64().unwrap();
        assert_eq!(no_data + observed, to - registered, "{v}");
        // The first server observed nothing after it was killed, the second
        // nothing before it was spawned.
        assert!(no_data >= second.spawned_at_ms - killed_at, "{v}");
    }

    // Exactly the gap between the two observations the servers recorded.
    second.signal("TERM").await;
    second.wait_exit(EXIT_TIMEOUT).await;
    let store = rollcall_store::sqlite::SqliteStore::open(&format!(
        "sqlite://{}",
        dir.path().join("rollcall.db").display()
    ))
    .await
    .unwrap();
    let rows = store.observations().await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows[0].end.as_millis() <= killed_at, "{rows:?}");
    assert!(
        rows[1].start.as_millis() >= second.spawned_at_ms,
        "{rows:?}"
    );
    let obs = Observations::new(rows, None);
    let expected = obs.no_data(
        Timestamp::from_millis(registered),
        Timestamp::from_millis(to),
    );
    assert_eq!(h["no_data_ms"], expected);
    assert_eq!(m["no_data_ms"], expected);
}

fn encode(s: &str) -> String {
    s.replace(':', "%3A")
}

/// Runs the admin CLI against `server`: (exit code, stdout, stderr).
fn cli(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("ROLLCALL_SERVER", server)
        .env("ROLLCALL_TOKEN", ADMIN)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("rollcall runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `rollcall health` and the health lines of `machines show` and
/// `workers show`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_answers_which_machines_crash_most() {
    let dir = data_dir();
    let server = Serve::new(dir.path()).spawn().await;
    let api = server.admin();
    let body = |name: &str, machine: &str| serde_json::json!({"name": name, "machine": {"id": machine}, "stale_after_ms": 60_000});
    let flaky = api.register_with(body("flaky", "host-bad")).await;
    let _calm = api.register_with(body("calm", "host-good")).await;
    // flaky crashes twice (exit 3, then killed by signal 9), comes back each time.
    for exit in [
        serde_json::json!({"reason": "exited", "exit_code": 3}),
        serde_json::json!({"reason": "exited", "signal": 9}),
    ] {
        let w = Api::new(&server.url, &flaky.token);
        let (status, body) = w
            .post(&format!("/v1/workers/{}/offline", flaky.id), exit)
            .await;
        assert!(status.is_success(), "{body}");
        let (status, body) = w
            .post(
                &format!("/v1/workers/{}/heartbeat", flaky.id),
                serde_json::json!({}),
            )
            .await;
        assert!(status.is_success(), "{body}");
        let session = body["session"].as_u64().unwrap();
        eventually(Duration::from_secs(10), "the resume", || async {
            let v = api.worker(&flaky.id).await;
            (v["status"] == "online" && v["session"] == session).then_some(())
        })
        .await;
    }

    let (code, out, err) = cli(
        &server.url,
        &["health", "--window", "1h", "--top", "10", "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["workers"], 2);
    assert_eq!(v["crashes"]["exited"], 2);
    assert_eq!(v["top_machines_by_crashes"][0]["machine_id"], "host-bad");
    assert_eq!(v["top_machines_by_crashes"][0]["crashes"]["total"], 2);
    assert_eq!(v["top_machines_by_crashes"].as_array().unwrap().len(), 1);
    assert_eq!(v["top_workers_by_crashes"][0]["name"], "flaky");

    let (code, out, err) = cli(&server.url, &["health", "--top", "10"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Machines with the most crashes:"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("host-bad"))
        .unwrap_or_else(|| panic!("host-bad is ranked: {out}"));
    assert!(line.contains(" 2 "), "{line}");
    assert!(line.contains("0/0/2"), "{line}");
    assert!(
        out.contains("2 crashes (0 stale, 0 replaced, 2 exited)"),
        "{out}"
    );

    let (code, out, err) = cli(&server.url, &["machines", "show", "host-bad"]);
    assert_eq!(code, 0, "{err}");
    let h24 = out
        .lines()
        .find(|l| l.starts_with("health 24h"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        h24.contains("2 crashes (0 stale, 0 replaced, 2 exited)"),
        "{h24}"
    );
    assert!(h24.contains("MTBF"), "{h24}");
    assert!(h24.contains("last crash"), "{h24}");
    assert!(out.lines().any(|l| l.starts_with("health 30d")), "{out}");

    let (code, out, err) = cli(&server.url, &["workers", "show", "host-good/calm"]);
    assert_eq!(code, 0, "{err}");
    let h24 = out
        .lines()
        .find(|l| l.starts_with("health 24h"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(h24.contains("100.00% available, no crashes"), "{h24}");

    // A bad window is the server's 400: exit code 1, one line.
    let (code, _, err) = cli(&server.url, &["health", "--window", "7w"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}
