//! The real `rollcall serve` logs at debug level, as text and as JSON,
//! while every flow that carries a token runs against it — token creation,
//! registration and re-registration, single and batch heartbeats, every kind
//! of authentication failure, tokens in query strings and bodies, the admin
//! CLI, the agent — and no token, nor anything that starts like one, shows
//! up in its output. The same run checks that the logs do say what happened:
//! one debug line per transition (with the detection lag of a stale one),
//! one info line per committed batch, and the result of every scheduled
//! cleanup.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::StatusCode;
use rollcall_core::TokenKind;
use serde_json::{json, Value};

/// Every token prefix: nothing in the logs may start like a token.
const PREFIXES: [&str; 4] = [
    TokenKind::Admin.prefix(),
    TokenKind::Enroll.prefix(),
    TokenKind::Read.prefix(),
    TokenKind::Worker.prefix(),
];

/// The secrets a run has seen, to look for in the logs.
#[derive(Debug, Default)]
struct Secrets(Vec<String>);

impl Secrets {
    fn add(&mut self, s: &str) -> String {
        self.0.push(s.to_owned());
        s.to_owned()
    }

    /// Fails naming the line if `text` holds a secret, the random part of
    /// one, or a token prefix.
    #[track_caller]
    fn assert_absent(&self, what: &str, text: &str) {
        for line in text.lines() {
            for s in &self.0 {
                let random = PREFIXES.iter().find_map(|p| s.strip_prefix(p)).unwrap_or(s);
                assert!(
                    !line.contains(s.as_str()) && !line.contains(random),
                    "{what} holds a secret: {line}"
                );
            }
            for p in PREFIXES {
                assert!(
                    !line.contains(p),
                    "{what} holds something like a token ({p}…): {line}"
                );
            }
        }
    }
}

/// A request with a raw `Authorization` header; returns the status.
async fn with_auth(http: &reqwest::Client, method: &str, url: &str, auth: HeaderValue) -> u16 {
    http.request(method.parse().unwrap(), url)
        .header(AUTHORIZATION, auth)
        .send()
        .await
        .expect("an answer")
        .status()
        .as_u16()
}

/// Runs `rollcall ARGS` (an admin command) with `RUST_LOG=debug`; returns
/// its exit code, stdout and stderr.
async fn cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "debug");
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ROLLCALL_") {
            cmd.env_remove(&k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(START_TIMEOUT, cmd.stdin(Stdio::null()).output())
        .await
        .expect("the CLI ends")
        .expect("running the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every token-bearing flow against `server`, with `admin` as the admin
/// token. Returns the worker that went stale, for the log checks.
async fn exercise(
    server: &Server,
    admin: &str,
    metrics_token: &str,
    secrets: &mut Secrets,
) -> String {
    let url = &server.url;
    let http = http_client();
    let api = Api::new(url, admin);

    // Token creation and listing.
    let (status, enroll) = api
        .post("/v1/tokens", json!({"kind": "enroll", "name": "fleet"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{enroll}");
    let enroll = secrets.add(enroll["token"].as_str().unwrap());
    let (_, read) = api
        .post("/v1/tokens", json!({"kind": "read", "name": "viewer"}))
        .await;
    let read_id = read["id"].as_str().unwrap().to_owned();
    let read = secrets.add(read["token"].as_str().unwrap());
    let (_, short) = api
        .post(
            "/v1/tokens",
            json!({"kind": "read", "name": "short", "expires_in_ms": 1}),
        )
        .await;
    let expired = secrets.add(short["token"].as_str().unwrap());
    api.get_ok("/v1/tokens").await;

    // Registration, and again (the first worker token is rotated away).
    let by_enroll = Api::new(url, &enroll);
    let first = by_enroll
        .register_with(json!({"name": "w", "machine": {"id": "m"}, "stale_after_ms": 60_000}))
        .await;
    secrets.add(&first.token);
    let w = by_enroll
        .register_with(json!({"name": "w", "machine": {"id": "m"}, "stale_after_ms": 60_000}))
        .await;
    secrets.add(&w.token);
    let other = by_enroll
        .register_with(json!({"name": "other", "machine": {"id": "m"}, "stale_after_ms": 60_000}))
        .await;
    secrets.add(&other.token);
    let stale = by_enroll
        .register_with(
            json!({"name": "short-lived", "machine": {"id": "n"}, "stale_after_ms": 300}),
        )
        .await;
    secrets.add(&stale.token);

    // Heartbeats: single, accepted and refused.
    api.heartbeat(&w).await;
    let beat = |token: &str, id: &str| {
        let req = http
            .post(format!("{url}/v1/workers/{id}/heartbeat"))
            .bearer_auth(token);
        async move { req.send().await.expect("an answer").status() }
    };
    assert_eq!(beat(&first.token, &w.id).await, StatusCode::UNAUTHORIZED);
    assert_eq!(beat(&other.token, &w.id).await, StatusCode::FORBIDDEN);
    assert_eq!(beat(admin, &w.id).await, StatusCode::FORBIDDEN);
    let forged = secrets.add(&format!(
        "{}{}",
        TokenKind::Worker.prefix(),
        "0f".repeat(32)
    ));
    assert_eq!(beat(&forged, &w.id).await, StatusCode::UNAUTHORIZED);

    // A batch with good and bad entries, and one refused as a whole.
    let (status, body) = by_enroll
        .post(
            "/v1/heartbeats",
            json!({"heartbeats": [
                {"worker_id": w.id, "token": w.token},
                {"worker_id": other.id, "token": other.token},
                {"worker_id": w.id, "token": first.token},
                {"worker_id": w.id, "token": other.token},
                {"worker_id": w.id, "token": forged},
                {"worker_id": w.id, "token": admin},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = Api::new(url, &read)
        .post(
            "/v1/heartbeats",
            json!({"heartbeats": [{"worker_id": w.id, "token": w.token}]}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Authentication failures of every kind, in the Authorization header.
    api.http
        .delete(format!("{url}/v1/tokens/{read_id}"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("an answer");
    until_ms(ts(&short["expires_at"]) + 1).await;
    let unknown_admin = secrets.add(&format!("{}{}", TokenKind::Admin.prefix(), "ab".repeat(32)));
    let workers = format!("{url}/v1/workers");
    for (auth, want) in [
        (format!("Bearer {unknown_admin}"), 401),
        (format!("Bearer {expired}"), 401),
        (format!("Bearer {read}"), 401), // revoked
        (format!("Token {admin}"), 401),
        (admin.to_owned(), 401),
        (format!("Bearer {admin} {enroll}"), 401),
        (format!("Basic {enroll}"), 401),
        (format!("Bearer {enroll}"), 403),
    ] {
        let got = with_auth(
            &http,
            "GET",
            &workers,
            HeaderValue::from_str(&auth).unwrap(),
        )
        .await;
        assert_eq!(got, want, "GET /v1/workers with a bad header");
    }
    // Not UTF-8, around a real secret.
    let mut raw = b"Bearer \xff".to_vec();
    raw.extend_from_slice(admin.as_bytes());
    let got = with_auth(
        &http,
        "GET",
        &workers,
        HeaderValue::from_bytes(&raw).unwrap(),
    )
    .await;
    assert_eq!(got, 401);

    // Tokens where they do not belong: query strings, and bodies the
    // server refuses (their errors quote the values back to the client).
    for path in [
        format!("/v1/workers?token={admin}&access_token={enroll}"),
        format!("/v1/workers/{}/heartbeat?token={}", w.id, w.token),
        format!("/nowhere?token={admin}"),
        format!("/metrics?token={metrics_token}"),
        format!("/?token={read}"),
    ] {
        let resp = http
            .get(format!("{url}{path}"))
            .send()
            .await
            .expect("an answer");
        assert!(resp.status().is_client_error() || resp.status().is_success());
    }
    let (status, _) = api
        .post("/v1/tokens", json!({"kind": admin, "name": enroll}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = by_enroll
        .post(
            "/v1/workers",
            json!({"name": "x", "machine": {"id": "m"}, "labels": {"k": 1}, "heartbeat_interval_ms": admin, "token": w.token}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Metrics with its token, and with a wrong one.
    let scrape = |token: &str| {
        let req = http.get(format!("{url}/metrics")).bearer_auth(token);
        async move { req.send().await.expect("an answer").status() }
    };
    assert_eq!(scrape(metrics_token).await, StatusCode::OK);
    assert_eq!(scrape(&enroll).await, StatusCode::FORBIDDEN);
    assert_eq!(scrape(&expired).await, StatusCode::UNAUTHORIZED);

    // Drain, offline and delete with the worker's own token and admin's;
    // a deleted worker's token is refused.
    api.post(&format!("/v1/workers/{}/drain", other.id), json!({}))
        .await;
    Api::new(url, &other.token)
        .post(&format!("/v1/workers/{}/offline", other.id), json!({}))
        .await;
    api.http
        .delete(format!("{url}/v1/workers/{}", other.id))
        .bearer_auth(admin)
        .send()
        .await
        .expect("an answer");
    assert_eq!(
        beat(&other.token, &other.id).await,
        StatusCode::UNAUTHORIZED
    );

    // The admin CLI, with the token in a flag and in the environment.
    let (code, out, err) = cli(
        &[
            "tokens", "create", "--kind", "read", "--name", "cli", "--json", "--server", url,
        ],
        &[("ROLLCALL_TOKEN", admin)],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    secrets.add(
        serde_json::from_str::<Value>(&out).expect("JSON")["token"]
            .as_str()
            .unwrap(),
    );
    secrets.assert_absent("the CLI's stderr", &err);
    for args in [
        vec!["workers", "ls", "--server", url, "--token", admin],
        vec!["tokens", "ls", "--server", url, "--token", admin],
        vec!["cleanup", "stale", "--server", url, "--token", admin],
    ] {
        let (code, out, err) = cli(&args, &[]).await;
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        secrets.assert_absent("the CLI's output", &format!("{out}{err}"));
    }
    let (code, out, err) = cli(
        &["workers", "ls", "--server", url, "--token", &unknown_admin],
        &[],
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    secrets.assert_absent(
        "the CLI's output on a refused token",
        &format!("{out}{err}"),
    );

    // The agent: an enroll token in, a worker token from the server.
    let dir = data_dir();
    let go = dir.path().join("go");
    let script = format!("until [ -e '{}' ]; do sleep 0.05; done", go.display());
    let agent = tokio::process::Command::new(BIN)
        .args([
            "agent",
            "run",
            "--server",
            url,
            "--name",
            "agent-w",
            "--machine-id",
            "a",
        ])
        .args(["--", "sh", "-c", &script])
        .env("ROLLCALL_TOKEN", &enroll)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the agent");
    eventually(START_TIMEOUT, "the agent's worker to be online", || {
        let api = api.clone();
        async move {
            let page = api.get_ok("/v1/workers?machine_id=a").await;
            (page["items"][0]["status"] == "online").then_some(())
        }
    })
    .await;
    std::fs::write(&go, "").unwrap();
    let out = tokio::time::timeout(START_TIMEOUT, agent.wait_with_output())
        .await
        .expect("the agent ends with its command")
        .expect("the agent's output");
    assert!(out.status.success(), "{out:?}");
    secrets.assert_absent(
        "the agent's output",
        &format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    );

    // The short-lived worker goes stale.
    eventually(Duration::from_secs(10), "the stale transition", || {
        let api = api.clone();
        let id = stale.id.clone();
        async move { (api.worker(&id).await["offline_reason"] == "stale").then_some(()) }
    })
    .await;
    stale.id
}

/// Checks a finished server's output: no secret, and the lines that must
/// be there.
fn check_logs(server_out: &str, stale_id: &str, secrets: &Secrets, json: bool) {
    secrets.assert_absent("the server's output", server_out);
    if json {
        for line in server_out.lines() {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        }
    }
    let transition = server_out
        .lines()
        .find(|l| l.contains(stale_id) && l.contains("worker.offline"))
        .unwrap_or_else(|| panic!("no transition line for {stale_id}:\n{server_out}"));
    for field in ["stale", "session", "detection_lag_ms", "seq", "machine_id"] {
        assert!(transition.contains(field), "{field} missing: {transition}");
    }
    assert!(
        server_out.lines().any(|l| l.contains("machine.offline")),
        "machine transitions are logged too"
    );
    assert!(
        server_out
            .lines()
            .any(|l| l.contains("transitions committed") && l.contains("worker.offline(stale)")),
        "each committed batch is summed up in one line"
    );
    assert!(
        server_out
            .lines()
            .any(|l| l.contains("DEBUG") || l.contains("\"level\":\"DEBUG\"")),
        "the debug level was on"
    );
    for task in ["detect_stale_workers", "run_all_cleanup_tasks"] {
        let line = server_out
            .lines()
            .find(|l| l.contains(task) && !l.contains("\"api\"") && !l.contains("trigger"))
            .unwrap_or_else(|| panic!("no scheduled {task} line:\n{server_out}"));
        assert!(
            line.contains("marked_offline_count"),
            "{task} logs its result: {line}"
        );
    }
}

/// Waits until `server`'s stderr shows both scheduled cleanup tasks.
async fn scheduled_cleanups(server: &Server) {
    eventually(START_TIMEOUT, "scheduled cleanup runs", || {
        let err = server.stderr();
        let both = err.contains("\"run_all_cleanup_tasks\"")
            || err.contains("task=\"run_all_cleanup_tasks\"");
        async move { both.then_some(()) }
    })
    .await;
}

const SCHEDULE: &[&str] = &["--sweep-interval", "300ms", "--cleanup-interval", "500ms"];

/// Text logs at debug level, with the configured admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_text_logs_at_debug_level() {
    let dir = data_dir();
    let mut secrets = Secrets::default();
    secrets.add(ADMIN);
    let metrics_token = secrets.add("metrics-secret-5c1e0a7b9d2f4e68");
    let mut server = Serve::new(dir.path())
        .args(SCHEDULE)
        .env("RUST_LOG", "debug")
        .env("ROLLCALL_METRICS_TOKEN", &metrics_token)
        .spawn()
        .await;
    let stale_id = exercise(&server, ADMIN, &metrics_token, &mut secrets).await;
    scheduled_cleanups(&server).await;
    let (status, _) = server.stop_with("TERM").await;
    assert!(status.success(), "{status}");
    let out = format!("{}{}", server.stdout_after_line().await, server.stderr());
    check_logs(&out, &stale_id, &secrets, false);
}

/// JSON logs at debug level, with a generated admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_reaches_the_json_logs_at_debug_level() {
    let dir = data_dir();
    let mut secrets = Secrets::default();
    let metrics_token = secrets.add("metrics-secret-0d9b3c7e1a5f2468");
    let mut server = Serve::new(dir.path())
        .without_admin_token()
        .args(SCHEDULE)
        .args(&["--log-format", "json"])
        .env("RUST_LOG", "debug")
        .env("ROLLCALL_METRICS_TOKEN", &metrics_token)
        .spawn()
        .await;
    let admin = std::fs::read_to_string(dir.path().join("admin.token"))
        .expect("the generated admin token")
        .trim()
        .to_owned();
    secrets.add(&admin);
    let stale_id = exercise(&server, &admin, &metrics_token, &mut secrets).await;
    scheduled_cleanups(&server).await;
    let (status, _) = server.stop_with("TERM").await;
    assert!(status.success(), "{status}");
    let out = format!("{}{}", server.stdout_after_line().await, server.stderr());
    check_logs(&out, &stale_id, &secrets, true);
}
