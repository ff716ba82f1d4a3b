//! README.md's walkthrough ("Watch a worker die"), executed as written.
//!
//! The `sh` blocks of that section are run, in order, by bash in a
//! directory whose `rollcall-data` is the data directory of a real server
//! that generated its own admin token — exactly what a newcomer has after
//! `cargo run -- serve`. Only the server's address is changed (it listens on
//! a free port). Every answer the blocks print is then checked against what
//! the README's comments promise.
//!
//! The blocks need `curl` and `jq`; without them the test says it is skipped
//! (`SKIPPED …`), unless `ROLLCALL_REQUIRE_README_TOOLS=1` (CI sets it).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::Serve;
use serde_json::Value;

const README: &str = include_str!("../../../README.md");

/// The address the README's commands use.
const README_URL: &str = "http://127.0.0.1:7373";

/// The `sh` code blocks of the section that starts with `heading`, in order.
fn sh_blocks(markdown: &str, heading: &str) -> Vec<String> {
    let start = markdown
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("README.md has no section {heading:?}"));
    let section = &markdown[start + heading.len() + 2..];
    let end = section.find("\n## ").unwrap_or(section.len());
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section[..end].lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unclosed code block in {heading:?}");
    blocks
}

/// Whether `tool` runs.
fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Every JSON value in `text`, in order (curl prints bodies without a
/// newline, so values may touch).
fn json_values(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| {
            panic!("the walkthrough printed something that is not JSON ({e}):\n{text}")
        })
}

#[tokio::test]
async fn readme_walkthrough_runs_as_written() {
    let missing: Vec<&str> = ["bash", "curl", "jq"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !missing.is_empty() {
        assert!(
            std::env::var("ROLLCALL_REQUIRE_README_TOOLS").as_deref() != Ok("1"),
            "ROLLCALL_REQUIRE_README_TOOLS=1 but {missing:?} cannot run"
        );
        rollcall_store::testing::skip(&format!(
            "README's walkthrough needs {missing:?} (apt-get install curl jq)"
        ));
        return;
    }

    let blocks = sh_blocks(README, "## Watch a worker die");
    assert_eq!(blocks.len(), 2, "the walkthrough and the enroll token");
    assert!(blocks[0].contains(README_URL), "{}", blocks[0]);

    let home = common::data_dir();
    let data = home.path().join("rollcall-data");
    let server = Serve::new(&data).without_admin_token().spawn().await;
    let script = format!(
        "set -euo pipefail\n{}",
        blocks.concat().replace(README_URL, &server.url)
    );
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg("-c").arg(&script).current_dir(home.path());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ROLLCALL_") {
            cmd.env_remove(&k);
        }
    }
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        cmd.stdin(Stdio::null()).kill_on_drop(true).output(),
    )
    .await
    .expect("the walkthrough finishes within 60 s (the worker goes stale after 3 s)")
    .expect("running bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the walkthrough failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let answers = json_values(&stdout);
    assert_eq!(answers.len(), 7, "{answers:#?}");
    let [reg, beat, stale, events, resumed, goodbye, enroll] = &answers[..] else {
        unreachable!()
    };

    // Registered: online, with its token.
    assert_eq!(reg["worker"]["status"], "online", "{reg}");
    assert_eq!(reg["worker"]["name"], "render-1", "{reg}");
    assert!(reg["worker"]["deadline_at"].is_string(), "{reg}");
    assert!(
        reg["token"].as_str().unwrap().starts_with("rc_worker_"),
        "{reg}"
    );
    let wid = reg["worker"]["id"].as_str().unwrap();

    assert_eq!(beat["status"], "online", "{beat}");
    assert_eq!(beat["session"], 1, "{beat}");
    assert_eq!(beat["resumed"], false, "{beat}");

    assert_eq!(stale["id"], wid, "{stale}");
    assert_eq!(stale["status"], "offline", "{stale}");
    assert_eq!(stale["offline_reason"], "stale", "{stale}");

    // The events of host-a, as the comment lists them.
    let items = events["items"].as_array().expect("an event page");
    let kinds: Vec<&str> = items.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "worker.registered",
            "worker.online",
            "machine.online",
            "worker.offline",
            "machine.offline"
        ],
        "{events}"
    );
    let offline = &items[3];
    assert_eq!(offline["worker_id"], wid, "{offline}");
    assert_eq!(offline["reason"], "stale", "{offline}");
    assert!(offline["detection_lag_ms"].is_u64(), "{offline}");
    assert!(
        items.iter().all(|e| e["machine_id"] == "host-a"),
        "{events}"
    );

    assert_eq!(resumed["status"], "online", "{resumed}");
    assert_eq!(resumed["session"], 2, "{resumed}");
    assert_eq!(resumed["resumed"], true, "{resumed}");

    assert_eq!(goodbye["status"], "offline", "{goodbye}");
    assert_eq!(goodbye["offline_reason"], "shutdown", "{goodbye}");

    assert_eq!(enroll["kind"], "enroll", "{enroll}");
    assert_eq!(enroll["name"], "fleet-a", "{enroll}");
    assert!(
        enroll["token"].as_str().unwrap().starts_with("rc_enroll_"),
        "{enroll}"
    );
    assert!(enroll["expires_at"].is_null(), "{enroll}");

    // The filter the comment mentions: the worker's own events only.
    let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let api = common::Api::new(&server.url, admin.trim());
    let own = api.events(&format!("worker_id={wid}")).await;
    assert!(!own.is_empty());
    assert!(own.iter().all(|e| e["worker_id"] == wid), "{own:?}");
}
