//! End-to-end tests of the real `rollcall serve` process: the listening
//! line, restarts (kill -9 and graceful), the restart grace, the database
//! lock, configuration layering and errors, signals, the generated admin
//! token, and the "kill -9 a worker" scenario.
//!
//! Every wait is a poll with a deadline; every time bound is generous
//! (a debug build on a busy two-core machine) but still fails when the
//! behaviour breaks.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// Short timings for liveness tests.
const FAST: &[&str] = &[
    "--heartbeat-interval",
    "100ms",
    "--stale-after",
    "500ms",
    "--flush-interval",
    "200ms",
];

/// The slack invariant 2 (ARCHITECTURE.md) allows between a deadline and the
/// stale mark.
const SLACK_MS: i64 = 1000;

fn ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["worker_id"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}({}/{})",
                e["type"].as_str().unwrap_or("?"),
                e["worker_id"].as_str().unwrap_or("-"),
                e["reason"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

/// 1. The listening line is the only stdout output, it carries the real
/// port, and the server answers there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_line_is_the_only_stdout_and_has_the_real_port() {
    let dir = data_dir();
    let mut server = Serve::new(dir.path()).spawn().await;
    assert_eq!(
        server.line,
        format!("rollcall listening on http://{}", server.addr)
    );
    assert!(server.addr.ip().is_loopback());
    assert_ne!(server.addr.port(), 0, "the line must carry the bound port");

    let resp = reqwest::get(format!("{}/healthz", server.url))
        .await
        .expect("/healthz answers on the announced address");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap().trim(), "ok");
    let (status, _) = server.admin().get("/v1/workers").await;
    assert_eq!(status, StatusCode::OK);

    let (status, _) = server.stop_with("TERM").await;
    assert!(status.success(), "{status}; stderr:\n{}", server.stderr());
    let rest = server.stdout_after_line().await;
    assert_eq!(rest, "", "stdout must hold only the listening line");
    assert!(
        !server.stderr().is_empty(),
        "logs go to stderr, and there are some"
    );
}

/// 1b. A supervisor may send SIGTERM the moment it reads the listening
/// line: the handlers must be in place by then, or the signal kills the
/// process without the graceful shutdown. Made deterministic by handing the
/// server a stdout pipe that is already full, so it blocks writing the line
/// while the signal arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_before_the_listening_line_is_written_is_graceful() {
    use tokio::io::AsyncReadExt;

    let dir = data_dir();
    let (tx, mut rx) = tokio::net::unix::pipe::pipe().expect("a pipe");
    // Once it is writable, WouldBlock means the pipe really is full.
    tx.writable().await.expect("a writable pipe");
    let mut filled = 0;
    loop {
        match tx.try_write(&[b'x'; 4096]) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    assert!(
        filled >= 4096,
        "a pipe holds at least a page, took {filled}"
    );
    let stdout = tx.into_blocking_fd().expect("a blocking write end");
    let (mut child, stderr) = Serve::new(dir.path()).spawn_raw(stdout.into());
    let stderr_text = || std::fs::read_to_string(stderr.path()).unwrap_or_default();
    // Start-up has reached the store and the engine; the listening line
    // cannot be out yet (the pipe is full).
    eventually(START_TIMEOUT, "start-up to load the workers", || {
        let done = stderr_text().contains("loaded workers");
        async move { done.then_some(()) }
    })
    .await;
    let pid = child.id().expect("running");
    let status = tokio::process::Command::new("sh")
        .args(["-c", &format!("kill -s TERM {pid}")])
        .status()
        .await
        .unwrap();
    assert!(status.success());

    let mut out = Vec::new();
    tokio::time::timeout(EXIT_TIMEOUT, rx.read_to_end(&mut out))
        .await
        .expect("stdout closes")
        .expect("reading stdout");
    let status = tokio::time::timeout(EXIT_TIMEOUT, child.wait())
        .await
        .expect("rollcall exits")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "graceful exit, not death by signal: {status}; stderr:\n{}",
        stderr_text()
    );
    let line = String::from_utf8_lossy(&out[filled..]).into_owned();
    assert!(
        line.starts_with("rollcall listening on http://127.0.0.1:"),
        "{line:?}"
    );
}

/// 2. Invariants 1 and 6 (ARCHITECTURE.md): kill -9 the server while 20
/// workers heartbeat, restart it on the same data dir (new port), and none
/// of them is ever marked offline; workers that then stop do go stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_marks_no_heartbeating_worker_offline() {
    let dir = data_dir();
    // The sweep runs often too: invariant 1 holds "while a sweep runs".
    let serve = Serve::new(dir.path())
        .args(FAST)
        .args(&["--sweep-interval", "300ms"]);
    let mut first = serve.spawn().await;
    let api = first.admin();
    let mut workers = Vec::new();
    for i in 0..20 {
        workers.push(
            api.register(&format!("w{i}"), &format!("host-{}", i % 4))
                .await,
        );
    }
    for w in &workers {
        assert_eq!(w.worker["heartbeat_interval_ms"], 100);
        assert_eq!(w.worker["stale_after_ms"], 500);
    }
    let target = Target::new(&first.url);
    let mut pulses: Vec<Pulse> = workers
        .iter()
        .map(|w| Pulse::task(&target, w, Duration::from_millis(100)))
        .collect();
    eventually(
        Duration::from_secs(10),
        "3 heartbeats of every worker",
        || {
            let ok = pulses.iter().all(|p| p.stats().acks >= 3);
            async move { ok.then_some(()) }
        },
    )
    .await;

    first.kill9().await;
    let killed_at = now_ms();
    let acks_before: Vec<u64> = pulses.iter().map(|p| p.stats().acks).collect();
    // Down for longer than stale_after: every deadline the old process set
    // (at most killed_at + stale_after) has passed, so only the restart
    // grace can keep the workers online.
    until_ms(killed_at + 500 + 100).await;
    let second = serve.spawn().await;
    assert_ne!(second.url, first.url, "a fresh port-0 bind");
    target.set(&second.url);
    let api = second.admin();

    // Heartbeats go on against the new process for a couple of seconds
    // (four stale_after periods), and every worker gets several through.
    let until = second.ready_at_ms + 2000;
    eventually(
        Duration::from_secs(15),
        "2 s of heartbeats after the restart",
        || {
            let ok = now_ms() > until
                && pulses
                    .iter()
                    .zip(&acks_before)
                    .all(|(p, before)| p.stats().acks >= before + 5);
            async move { ok.then_some(()) }
        },
    )
    .await;

    let offline = api.events("type=worker.offline").await;
    assert!(
        offline.is_empty(),
        "no worker may be marked offline across a restart: {:?}",
        kinds(&offline)
    );
    let machines_offline = api.events("type=machine.offline").await;
    assert!(
        machines_offline.is_empty(),
        "{:?}",
        kinds(&machines_offline)
    );
    for (w, p) in workers.iter().zip(&pulses) {
        let got = api.worker(&w.id).await;
        assert_eq!(got["status"], "online", "{got}");
        assert_eq!(got["session"], 1, "no resume, no new session: {got}");
        let s = p.stats();
        assert!(!s.resumed, "no heartbeat resumed {}: {s:?}", w.id);
        assert!(s.refused.is_empty(), "heartbeats refused: {:?}", s.refused);
        assert!(
            s.unreachable > 0,
            "it kept trying while the server was down"
        );
    }
    let online = api.get_ok("/v1/workers?status=online&limit=1000").await;
    assert_eq!(online["items"].as_array().unwrap().len(), 20);

    // The test can fail: the first five stop, and they do go stale.
    let mut last_deadline = std::collections::HashMap::new();
    for p in pulses.iter_mut().take(5) {
        p.stop().await;
    }
    for (w, p) in workers.iter().zip(&pulses).take(5) {
        last_deadline.insert(w.id.clone(), p.stats().last_deadline_ms.unwrap());
    }
    let stopped: Vec<String> = workers.iter().take(5).map(|w| w.id.clone()).collect();
    let offline = eventually(
        Duration::from_secs(10),
        "the stopped workers going stale",
        || {
            let api = api.clone();
            async move {
                let ev = api.events("type=worker.offline").await;
                (ev.len() >= 5).then_some(ev)
            }
        },
    )
    .await;
    let mut marked = ids(&offline);
    marked.sort();
    let mut expected = stopped.clone();
    expected.sort();
    assert_eq!(
        marked,
        expected,
        "exactly the stopped ones: {:?}",
        kinds(&offline)
    );
    for e in &offline {
        assert_eq!(e["reason"], "stale", "{e}");
        let id = e["worker_id"].as_str().unwrap();
        let deadline = last_deadline[id];
        let at = ts(&e["at"]);
        assert!(at > deadline, "not before its deadline: {e}");
        assert!(
            at <= deadline + SLACK_MS,
            "stale within 1 s of the deadline {deadline}: {e}"
        );
    }
    for w in workers.iter().skip(5) {
        assert_eq!(api.worker(&w.id).await["status"], "online");
    }
}

/// 3. Invariant 6 (ARCHITECTURE.md): after a downtime longer than
/// stale_after, every online worker gets a full stale_after from the
/// restart; heartbeats keep it online; one that never beats goes stale after
/// its grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_grace_after_a_long_downtime() {
    const STALE: i64 = 1000;
    let dir = data_dir();
    let serve = Serve::new(dir.path()).args(&[
        "--heartbeat-interval",
        "200ms",
        "--stale-after",
        "1s",
        "--flush-interval",
        "200ms",
    ]);
    let mut first = serve.spawn().await;
    let api = first.admin();
    let beating = api.register("beating", "host-g").await;
    let silent = api.register("silent", "host-g").await;
    let mut last_deadline = 0;
    for w in [&beating, &silent] {
        let hb = api.heartbeat(w).await;
        last_deadline = last_deadline.max(ts(&hb["deadline_at"]));
    }
    let (status, _) = first.stop_with("TERM").await;
    assert!(status.success(), "{status}");

    // Down for longer than stale_after past every deadline.
    until_ms(last_deadline + 200).await;

    let second = serve.spawn().await;
    let api = second.admin();
    for w in [&beating, &silent] {
        let got = api.worker(&w.id).await;
        assert_eq!(got["status"], "online", "kept online by the grace: {got}");
        let deadline = ts(&got["deadline_at"]);
        assert!(
            deadline >= second.spawned_at_ms + STALE,
            "the grace counts from the restart: deadline {deadline}, spawned at {}: {got}",
            second.spawned_at_ms
        );
        assert!(
            deadline <= second.ready_at_ms + STALE,
            "one stale_after from the restart, not more: {got}"
        );
    }
    let silent_deadline = ts(&api.worker(&silent.id).await["deadline_at"]);
    let offline = api.events("type=worker.offline").await;
    assert!(offline.is_empty(), "{:?}", kinds(&offline));

    let target = Target::new(&second.url);
    let pulse = Pulse::task(&target, &beating, Duration::from_millis(200));

    // The silent one goes stale once its grace is over, and not before.
    let event = eventually(
        Duration::from_secs(10),
        "the silent worker going stale",
        || {
            let api = api.clone();
            let id = silent.id.clone();
            async move {
                api.events(&format!("type=worker.offline&worker_id={id}"))
                    .await
                    .into_iter()
                    .next()
            }
        },
    )
    .await;
    assert_eq!(event["reason"], "stale", "{event}");
    let at = ts(&event["at"]);
    assert!(at > silent_deadline, "not before its grace ended: {event}");
    assert!(at <= silent_deadline + SLACK_MS, "{event}");

    // The beating one outlives its grace by two heartbeats and more.
    until_ms(second.ready_at_ms + STALE + 600).await;
    let got = api.worker(&beating.id).await;
    assert_eq!(got["status"], "online", "{got}");
    assert_eq!(got["session"], 1, "{got}");
    let s = pulse.stats();
    assert!(s.acks >= 3 && !s.resumed && s.refused.is_empty(), "{s:?}");
    let offline = api
        .events(&format!("type=worker.offline&worker_id={}", beating.id))
        .await;
    assert!(offline.is_empty(), "{:?}", kinds(&offline));
    assert_eq!(api.machine("host-g").await["status"], "online");
}

/// 4. One process per database: a second `rollcall serve` on the same data
/// dir fails clearly, and the first keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    let dir = data_dir();
    let serve = Serve::new(dir.path());
    let first = serve.spawn().await;
    let api = first.admin();
    let w = api.register("w", "host-l").await;

    let second = serve.run_to_exit().await;
    assert!(!second.status.success(), "{second:?}");
    assert_ne!(second.status.code(), Some(0));
    assert_eq!(second.stdout, "", "no listening line: {second:?}");
    let err = second.stderr.to_lowercase();
    assert!(
        err.contains("in use") || err.contains("lock"),
        "stderr should say the database is in use/locked:\n{}",
        second.stderr
    );

    let resp = reqwest::get(format!("{}/healthz", first.url))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let hb = api.heartbeat(&w).await;
    assert_eq!(hb["status"], "online");
    assert_eq!(api.worker(&w.id).await["status"], "online");
    api.register("w2", "host-l").await;
}

/// 5a. Invalid configuration stops start-up with exit code 2 and names the
/// key, whether it came from a flag, the environment or the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_config_exits_2_naming_the_key() {
    let dir = data_dir();
    let unknown = write_file(dir.path(), "unknown.toml", "stale_afterr = \"1s\"\n");
    let zero_flush = write_file(dir.path(), "zero.toml", "flush_interval = \"0s\"\n");
    let cases: Vec<(&str, Serve, &str)> = vec![
        (
            "flags",
            Serve::new(dir.path()).args(&["--stale-after", "10s", "--heartbeat-interval", "6s"]),
            "stale_after",
        ),
        (
            "env",
            Serve::new(dir.path()).env("ROLLCALL_SWEEP_INTERVAL", "soon"),
            "sweep_interval",
        ),
        (
            "unknown key in file",
            Serve::new(dir.path()).args(&["--config", unknown.to_str().unwrap()]),
            "stale_afterr",
        ),
        (
            "zero duration in file",
            Serve::new(dir.path()).args(&["--config", zero_flush.to_str().unwrap()]),
            "flush_interval",
        ),
        (
            "file via env",
            Serve::new(dir.path()).env("ROLLCALL_CONFIG", zero_flush.to_str().unwrap()),
            "flush_interval",
        ),
        (
            "bad listen",
            Serve::bare()
                .args(&["--data-dir", dir.path().to_str().unwrap()])
                .env("ROLLCALL_LISTEN", "nowhere"),
            "listen",
        ),
        (
            "weak admin token",
            Serve::new(dir.path()).env("ROLLCALL_ADMIN_TOKEN", "aaaaaaaaaaaaaaaa"),
            "admin_token",
        ),
        (
            "weak metrics token",
            Serve::new(dir.path()).env("ROLLCALL_METRICS_TOKEN", "x"),
            "metrics_token",
        ),
        (
            "zero max_connections",
            Serve::new(dir.path()).args(&["--max-connections", "0"]),
            "max_connections",
        ),
    ];
    let runs = cases.iter().map(|(_, s, _)| s.run_to_exit());
    let results = futures::future::join_all(runs).await;
    for ((what, _, key), out) in cases.iter().zip(results) {
        assert_eq!(out.status.code(), Some(2), "{what}: {out:?}");
        assert_eq!(out.stdout, "", "{what}: no listening line: {out:?}");
        assert!(
            out.stderr.contains(key),
            "{what}: stderr must name `{key}`:\n{}",
            out.stderr
        );
    }
    assert!(
        !dir.path().join("rollcall.db").exists(),
        "nothing is opened before the config is valid"
    );
}

/// 5b. Precedence flags > env > file > defaults, observed through the
/// heartbeat interval a worker gets when it asks for none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_precedence_flags_over_env_over_file() {
    let conf = data_dir();
    let file = write_file(
        conf.path(),
        "rollcall.toml",
        "heartbeat_interval = \"1s\"\n",
    );
    let file = file.to_str().unwrap();
    let case = |what, args, env, heartbeat_ms, stale_after_ms| Intervals {
        what,
        args,
        env,
        heartbeat_ms,
        stale_after_ms,
    };
    let cases = [
        case(
            "flag over env over file",
            vec!["--config", file, "--heartbeat-interval", "3s"],
            vec![("ROLLCALL_HEARTBEAT_INTERVAL", "2s")],
            3000,
            9000,
        ),
        case(
            "env over file",
            vec!["--config", file],
            vec![("ROLLCALL_HEARTBEAT_INTERVAL", "2s")],
            2000,
            6000,
        ),
        case(
            "file over defaults",
            vec!["--config", file],
            vec![],
            1000,
            3000,
        ),
        case("defaults", vec![], vec![], 30_000, 90_000),
        case(
            "only stale_after: heartbeat is a third",
            vec!["--stale-after", "1500ms"],
            vec![],
            500,
            1500,
        ),
        case(
            "only stale_after, from env",
            vec![],
            vec![("ROLLCALL_STALE_AFTER", "12s")],
            4000,
            12_000,
        ),
    ];
    futures::future::join_all(cases.iter().map(Intervals::check)).await;
}

/// A configuration and the intervals a worker that asks for none gets.
struct Intervals<'a> {
    what: &'a str,
    args: Vec<&'a str>,
    env: Vec<(&'a str, &'a str)>,
    heartbeat_ms: u64,
    stale_after_ms: u64,
}

impl Intervals<'_> {
    async fn check(&self) {
        let dir = data_dir();
        let mut serve = Serve::new(dir.path()).args(&self.args);
        for (k, v) in &self.env {
            serve = serve.env(k, v);
        }
        let server = serve.spawn().await;
        let w = server.admin().register("w", "host-c").await;
        let what = self.what;
        assert_eq!(
            w.worker["heartbeat_interval_ms"], self.heartbeat_ms,
            "{what}: {}",
            w.worker
        );
        assert_eq!(
            w.worker["stale_after_ms"], self.stale_after_ms,
            "{what}: {}",
            w.worker
        );
    }
}

/// 6. SIGTERM and SIGINT shut down gracefully and promptly (exit 0), flush
/// the heartbeat times accepted before the signal, and mark no worker
/// offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_shut_down_gracefully_and_flush_heartbeats() {
    const STALE: i64 = 10_000;
    let dir = data_dir();
    // Nothing is written behind on schedule: only the shutdown flush can
    // have stored the heartbeat times.
    let serve = Serve::new(dir.path()).args(&[
        "--flush-interval",
        "1h",
        "--heartbeat-interval",
        "2s",
        "--stale-after",
        "10s",
    ]);
    let mut server = serve.spawn().await;
    let api = server.admin();
    let w = api.register("w", "host-s").await;
    let registered_at = ts(&w.worker["registered_at"]);
    for sig in ["TERM", "INT"] {
        // A few heartbeats, at least one millisecond after registration.
        until_ms(registered_at + 5).await;
        let mut last = Value::Null;
        for _ in 0..3 {
            last = server.admin().heartbeat(&w).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answered_at = now_ms();
        let beat_at = ts(&last["deadline_at"]) - STALE;
        assert!(
            beat_at <= answered_at && beat_at >= answered_at - 5000,
            "{last}"
        );

        let (status, took) = server.stop_with(sig).await;
        assert_eq!(
            status.code(),
            Some(0),
            "SIG{sig}: {status}; stderr:\n{}",
            server.stderr()
        );
        assert!(took < Duration::from_secs(5), "SIG{sig} took {took:?}");
        assert!(!server.stderr().contains("panicked"), "{}", server.stderr());

        server = serve.spawn().await;
        let api = server.admin();
        let got = api.worker(&w.id).await;
        assert_eq!(
            got["last_heartbeat_at"]
                .as_str()
                .map(|_| ts(&got["last_heartbeat_at"])),
            Some(beat_at),
            "SIG{sig}: the last heartbeat before the signal was flushed: {got}"
        );
        assert_eq!(got["status"], "online", "SIG{sig}: {got}");
        assert_eq!(got["session"], 1, "{got}");
        let offline = api.events("type=worker.offline").await;
        assert!(offline.is_empty(), "SIG{sig}: {:?}", kinds(&offline));
        let offline = api.events("type=machine.offline").await;
        assert!(offline.is_empty(), "SIG{sig}: {:?}", kinds(&offline));
        assert_eq!(api.machine("host-s").await["status"], "online");
    }
    let (status, _) = server.stop_with("TERM").await;
    assert_eq!(status.code(), Some(0));
}

/// 7. Without ROLLCALL_ADMIN_TOKEN the first start generates one into
/// <data_dir>/admin.token (0600) and never prints it; later starts keep it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_admin_token_is_private_and_kept() {
    use std::os::unix::fs::PermissionsExt;

    let dir = data_dir();
    let serve = Serve::new(dir.path())
        .without_admin_token()
        .env("RUST_LOG", "debug");
    let path = dir.path().join("admin.token");
    let mut first_text = String::new();
    for start in 0..2 {
        let mut server = serve.spawn().await;
        let text = std::fs::read_to_string(&path).expect("admin.token exists");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "start {start}: mode {mode:o}");
        let token = text.trim().to_owned();
        assert!(
            token.starts_with("rc_admin_") && token.len() > 20,
            "{token:?}"
        );
        if start == 0 {
            first_text = text.clone();
        } else {
            assert_eq!(text, first_text, "a second start does not regenerate it");
        }

        let api = Api::new(&server.url, &token);
        let (status, body) = api
            .post(
                "/v1/tokens",
                json!({"kind": "read", "name": format!("r{start}")}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "start {start}: {body}");
        api.register(&format!("w{start}"), "host-t").await;
        assert_eq!(api.get("/v1/workers").await.0, StatusCode::OK);
        let wrong = Api::new(&server.url, "rc_admin_not-the-generated-one-000000");
        assert_eq!(wrong.get("/v1/workers").await.0, StatusCode::UNAUTHORIZED);
        let (status, _) = Api::new(&server.url, ADMIN).get("/v1/workers").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "no configured token here");

        let (status, _) = server.stop_with("TERM").await;
        assert!(status.success());
        let stdout = server.stdout_after_line().await;
        let stderr = server.stderr();
        for (name, out) in [
            ("line", &server.line),
            ("stdout", &stdout),
            ("stderr", &stderr),
        ] {
            assert!(
                !out.contains(&token),
                "start {start}: the token is in {name}"
            );
        }
        if start == 0 {
            assert!(
                stderr.contains("admin.token"),
                "the first start logs the file's path:\n{stderr}"
            );
        }
    }
}

/// 8. The "kill -9 a worker" scenario: two worker processes on one
/// machine; kill -9 one, the machine stays online; kill -9 the other, the
/// machine goes offline within stale_after + 1 s of its last heartbeat,
/// after the worker's stale mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_machines_workers_takes_the_machine_offline() {
    const STALE: i64 = 500;
    let dir = data_dir();
    let server = Serve::new(dir.path()).args(FAST).spawn().await;
    let api = server.admin();
    let a = api.register("a", "host-m").await;
    let b = api.register("b", "host-m").await;
    let target = Target::new(&server.url);
    // A real worker process when curl is there; a task otherwise.
    let mut pulse_a = if Pulse::have_curl() {
        Pulse::process(&server.url, &a, Duration::from_millis(100))
    } else {
        Pulse::task(&target, &a, Duration::from_millis(100))
    };
    let mut pulse_b = Pulse::task(&target, &b, Duration::from_millis(100));
    for w in [&a, &b] {
        eventually(Duration::from_secs(10), "the workers heartbeating", || {
            let api = api.clone();
            let id = w.id.clone();
            async move {
                let got = api.worker(&id).await;
                got["last_heartbeat_at"].is_string().then_some(())
            }
        })
        .await;
    }

    let last_heartbeat_of_stale = |id: String| {
        let api = api.clone();
        async move {
            let got = eventually(
                Duration::from_secs(10),
                "a killed worker going stale",
                || {
                    let api = api.clone();
                    let id = id.clone();
                    async move {
                        let got = api.worker(&id).await;
                        (got["status"] == "offline").then_some(got)
                    }
                },
            )
            .await;
            assert_eq!(got["offline_reason"], "stale", "{got}");
            ts(&got["last_heartbeat_at"])
        }
    };

    pulse_a.stop().await;
    let a_last = last_heartbeat_of_stale(a.id.clone()).await;
    let machine = api.machine("host-m").await;
    assert_eq!(machine["status"], "online", "b still lives: {machine}");
    assert_eq!(machine["workers_online"], 1, "{machine}");
    assert_eq!(api.worker(&b.id).await["status"], "online");

    pulse_b.stop().await;
    let b_last = last_heartbeat_of_stale(b.id.clone()).await;
    let machine = eventually(Duration::from_secs(5), "the machine offline", || {
        let api = api.clone();
        async move {
            let m = api.machine("host-m").await;
            (m["status"] == "offline").then_some(m)
        }
    })
    .await;
    assert_eq!(machine["workers_online"], 0, "{machine}");

    let events = api.events("machine_id=host-m").await;
    let find = |ty: &str, worker: Option<&str>| {
        events
            .iter()
            .position(|e| {
                e["type"] == ty && worker.is_none_or(|w| e["worker_id"].as_str() == Some(w))
            })
            .unwrap_or_else(|| panic!("no {ty} {worker:?} in {:?}", kinds(&events)))
    };
    let a_off = find("worker.offline", Some(&a.id));
    let b_off = find("worker.offline", Some(&b.id));
    let m_off = find("machine.offline", None);
    assert!(
        a_off < b_off && b_off < m_off,
        "worker.offline(a) → worker.offline(b) → machine.offline: {:?}",
        kinds(&events)
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "machine.offline")
            .count(),
        1,
        "{:?}",
        kinds(&events)
    );
    for (i, last) in [(a_off, a_last), (b_off, b_last), (m_off, b_last)] {
        let e = &events[i];
        if e["type"] == "worker.offline" {
            assert_eq!(e["reason"], "stale", "{e}");
        }
        let at = ts(&e["at"]);
        assert!(at > last + STALE, "not before the deadline: {e}");
        assert!(
            at <= last + STALE + SLACK_MS,
            "within stale_after + 1 s of the last heartbeat {last}: {e}"
        );
    }
}
