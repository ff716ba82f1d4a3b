//! Alerting against real processes: a notification pending when rollcall
//! is killed with SIGKILL is delivered after the restart (at least once,
//! with the same idempotency key), a real Prometheus Alertmanager receives
//! and resolves the alert, and a bad rule or channel stops start-up with
//! exit code 2 naming the key.

mod common;
#[path = "../../rollcall-server/tests/common/receiver.rs"]
mod receiver;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use receiver::Receiver;
use reqwest::StatusCode;
use serde_json::Value;

/// Fast liveness for the tests: stale half a second after the last beat.
const TIMINGS: &str = "heartbeat_interval = \"100ms\"\nstale_after = \"500ms\"\n";

fn config(dir: &Path, channel: &str, rule_extra: &str) -> std::path::PathBuf {
    write_file(
        dir,
        "rollcall.toml",
        &format!(
            "{TIMINGS}\n{channel}\n[[alert]]\nname = \"down\"\nkind = \"worker_offline\"\nchannels = [\"out\"]\n{rule_extra}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_pending_at_sigkill_is_delivered_after_the_restart() {
    let hook = Receiver::start().await;
    // Refuses everything until told otherwise.
    hook.fail_next(usize::MAX);
    let dir = data_dir();
    let file = config(
        dir.path(),
        &format!(
            "[[channel]]\nname = \"out\"\nkind = \"webhook\"\nurl = \"{}\"\nsecret = \"k3v9-Qz7u-2Lr8-Wm4x-Ty6p\"\ngroup_wait = \"10ms\"\n",
            hook.url
        ),
        "",
    );
    let serve = Serve::new(dir.path()).args(&["--config", file.to_str().unwrap()]);
    let mut server = serve.spawn().await;
    let w = server.admin().register("doomed", "m1").await;
    // It never beats: stale, an incident, a notification the receiver refuses.
    eventually(
        Duration::from_secs(20),
        "a delivery was attempted",
        || async { (!hook.all().is_empty()).then_some(()) },
    )
    .await;
    server.kill9().await;
    let refused: Vec<Value> = hook.all().iter().map(|r| r.json()).collect();
    let key = refused[0]["notifications"][0]["idempotency_key"].clone();
    assert_eq!(
        refused[0]["notifications"][0]["incident"]["worker_id"],
        w.id.as_str()
    );

    hook.fail_next(0);
    let server = serve.spawn().await;
    let delivered = eventually(
        Duration::from_secs(30),
        "delivered after the restart",
        || async { hook.notifications().first().cloned() },
    )
    .await;
    assert_eq!(delivered["idempotency_key"], key);
    // Each incident transition arrived; duplicates only ever with the same key.
    let keys: BTreeSet<String> = hook
        .all()
        .iter()
        .flat_map(|r| {
            r.json()["notifications"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|n| n["idempotency_key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let open = server.admin().get_ok("/v1/incidents?status=open").await;
    assert_eq!(open["items"].as_array().unwrap().len(), 1);
}

/// A free port on 127.0.0.1 (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const ALERTMANAGER: &str = "prometheus-alertmanager";

fn have_alertmanager() -> bool {
    std::process::Command::new(ALERTMANAGER)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_receives_the_alert_and_its_resolve() {
    if !have_alertmanager() {
        assert!(
            std::env::var_os("ROLLCALL_REQUIRE_ALERTMANAGER").is_none(),
            "ROLLCALL_REQUIRE_ALERTMANAGER is set but {ALERTMANAGER} is not installed"
        );
        eprintln!("skipped: {ALERTMANAGER} is not installed (Debian: prometheus-alertmanager)");
        return;
    }
    let dir = data_dir();
    let am_dir = data_dir();
    let am_config = write_file(
        am_dir.path(),
        "alertmanager.yml",
        "route:\n  receiver: sink\nreceivers:\n  - name: sink\n",
    );
    let port = free_port();
    let am_url = format!("http://127.0.0.1:{port}");
    let _am = tokio::process::Command::new(ALERTMANAGER)
        .arg(format!("--config.file={}", am_config.display()))
        .arg(format!("--storage.path={}", am_dir.path().display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting Alertmanager");
    let http = http_client();
    eventually(Duration::from_secs(30), "Alertmanager is ready", || async {
        let r = http.get(format!("{am_url}/-/ready")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;

    let file = config(
        dir.path(),
        &format!(
            "[[channel]]\nname = \"out\"\nkind = \"alertmanager\"\nurl = \"{am_url}/api/v2/alerts\"\ngroup_wait = \"10ms\"\n"
        ),
        "severity = \"page\"\n",
    );
    let server = Serve::new(dir.path())
        .args(&["--config", file.to_str().unwrap()])
        .spawn()
        .await;
    let api = server.admin();
    let w = api.register("doomed", "m1").await;
    let alert = eventually(
        Duration::from_secs(30),
        "the alert is in Alertmanager",
        || async {
            let alerts: Value = http
                .get(format!("{am_url}/api/v2/alerts"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            alerts
                .as_array()?
                .iter()
                .find(|a| a["labels"]["worker"] == w.id.as_str())
                .cloned()
        },
    )
    .await;
    assert_eq!(alert["labels"]["alertname"], "down");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["labels"]["machine"], "m1");
    assert_eq!(alert["status"]["state"], "active");

    // The worker is back: the alert ends.
    api.heartbeat(&w).await;
    eventually(Duration::from_secs(30), "the alert is resolved", || async {
        let alerts: Value = http
            .get(format!("{am_url}/api/v2/alerts"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (!alerts
            .as_array()?
            .iter()
            .any(|a| a["labels"]["worker"] == w.id.as_str()))
        .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rule_or_channel_exits_2_naming_the_key() {
    let dir = data_dir();
    let hook = "[[channel]]\nname = \"out\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"k3v9-Qz7u-2Lr8-Wm4x-Ty6p\"\n";
    let cases = [
        ("[[channel]]\nname = \"out\"\nkind = \"pager\"\nurl = \"http://x/\"\n", "channel[0].kind"),
        ("[[channel]]\nname = \"out\"\nkind = \"webhook\"\nurl = \"http://x/\"\nsecret = \"aaaaaaaaaaaaaaaaaaaa\"\n", "channel[0].secret"),
        ("[[channel]]\nname = \"out\"\nkind = \"slack\"\nurl = \"ftp://x/\"\n", "channel[0].url"),
        (&*format!("{hook}[[alert]]\nname = \"a\"\nkind = \"worker_offline\"\nchannels = [\"nope\"]\n"), "alert[0].channels"),
        (&*format!("{hook}[[alert]]\nname = \"a\"\nkind = \"mass_failure\"\npercent = 0\nchannels = [\"out\"]\n"), "alert[0].percent"),
        (&*format!("{hook}[[alert]]\nname = \"a\"\nkind = \"worker_offline\"\ncrashes = 2\nchannels = [\"out\"]\n"), "alert[0].crashes"),
        (&*format!("{hook}[[alert]]\nname = \"a\"\nkind = \"worker_crashes\"\nwithin = \"soon\"\nchannels = [\"out\"]\n"), "alert[0].within"),
    ];
    for (i, (toml, key)) in cases.iter().enumerate() {
        let file = write_file(dir.path(), &format!("bad{i}.toml"), toml);
        let out = Serve::new(dir.path())
            .args(&["--config", file.to_str().unwrap()])
            .run_to_exit()
            .await;
        assert_eq!(out.status.code(), Some(2), "{toml}\n{}", out.stderr);
        assert!(
            out.stderr.contains(&format!("`{key}`")),
            "{key}: {}",
            out.stderr
        );
        // The secret is never printed.
        assert!(!out.stderr.contains("k3v9-Qz7u"), "{}", out.stderr);
    }
}

/// Runs the CLI against `server` with the admin token: (exit code, stdout,
/// stderr).
fn cli(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(BIN)
        .args(args)
        .env("ROLLCALL_SERVER", server)
        .env("ROLLCALL_TOKEN", ADMIN)
        .stdin(Stdio::null())
        .output()
        .expect("rollcall runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_made_listed_and_deleted_from_the_command_line() {
    let dir = data_dir();
    let file = config(
        dir.path(),
        "[[channel]]\nname = \"out\"\nkind = \"webhook\"\nurl = \"http://127.0.0.1:9/\"\nsecret = \"k3v9-Qz7u-2Lr8-Wm4x-Ty6p\"\n",
        "",
    );
    let server = Serve::new(dir.path())
        .args(&["--config", file.to_str().unwrap()])
        .spawn()
        .await;
    let url = server.url.clone();
    let put = [
        "alerts",
        "rules",
        "put",
        "gpu-down",
        "--kind",
        "worker_offline",
        "--for",
        "1m",
        "--select",
        "queue=gpu",
        "--channel",
        "out",
    ];
    let (code, out, err) = cli(&url, &put);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = cli(&url, &["alerts", "rules", "ls", "--json"]);
    assert_eq!(code, 0, "{err}");
    let rules: Value = serde_json::from_str(&out).unwrap();
    let names: Vec<(&str, &str)> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap(), r["source"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("down", "config"), ("gpu-down", "api")]);
    assert_eq!(rules[1]["for_ms"], 60_000);
    assert_eq!(rules[1]["select"]["queue"], "gpu");
    let (code, out, _) = cli(&url, &["alerts", "rules", "ls"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("gpu-down") && out.contains("queue=gpu"),
        "{out}"
    );

    // Refused by the server (exit 1, its message), or by the CLI (exit 2).
    let (code, _, err) = cli(
        &url,
        &[
            "alerts",
            "rules",
            "put",
            "x",
            "--kind",
            "mass_failure",
            "--percent",
            "0",
            "--channel",
            "out",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("percent"), "{err}");
    let (code, _, err) = cli(
        &url,
        &[
            "alerts",
            "rules",
            "put",
            "x",
            "--kind",
            "worker_offline",
            "--for",
            "soon",
            "--channel",
            "out",
        ],
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = cli(&url, &["alerts", "rules", "rm", "down"]);
    assert_eq!(code, 1, "a rule of the config file: {err}");

    let (code, _, err) = cli(&url, &["alerts", "rules", "rm", "gpu-down"]);
    assert_eq!(code, 0, "{err}");
    // `rollcall incidents` lists without `ls`, too.
    let (code, out, err) = cli(&url, &["incidents", "--open", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        serde_json::json!([])
    );
    let (code, _, _) = cli(&url, &["alerts", "rules", "rm", "gpu-down"]);
    assert_eq!(code, 4, "not found");
}
