//! End-to-end tests of `rollcall agent run` and the admin CLI, against the
//! real `rollcall` binary: the "kill -9 a supervised worker" scenario, exit
//! code propagation, signal forwarding, a server restart under a running
//! agent, re-registration after a 401, a child that starts while the server
//! is down, and the CLI's JSON output and exit codes.
//!
//! Every wait is a poll with a deadline; bounds are generous (a debug build
//! on a busy two-core machine). Every process is killed by a Drop guard.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rollcall");
const ADMIN: &str = "rc_admin_agent_tests_0123456789abcdef";
/// A generous bound for anything that should happen "at once".
const SOON: Duration = Duration::from_secs(10);

/// A child process killed on drop.
struct Proc {
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("kill runs")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// Waits for the process to exit, up to `limit`.
    fn wait_for_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "process {} did not exit within {limit:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `rollcall serve` process with the fast timings.
struct Server {
    proc: Proc,
    url: String,
    port: u16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_server(dir: &Path, port: u16) -> Server {
    start_server_with(dir, port, Some(ADMIN))
}

/// A server with `admin` as its configured admin token, or none: then it
/// generates one into `<dir>/admin.token`.
fn start_server_with(dir: &Path, port: u16, admin: Option<&str>) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("ROLLCALL_ADMIN_TOKEN");
    if let Some(a) = admin {
        cmd.env("ROLLCALL_ADMIN_TOKEN", a);
    }
    let mut child = cmd
        .args(["serve", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .args([
            "--heartbeat-interval",
            "100ms",
            "--stale-after",
            "500ms",
            "--sweep-interval",
            "1s",
        ])
        .env_remove("ROLLCALL_SERVER")
        .env_remove("ROLLCALL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("rollcall serve starts");
    let stdout = child.stdout.take().unwrap();
    let proc = Proc { child };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        if let Some(Ok(line)) = lines.next() {
            let _ = tx.send(line);
        }
        for _ in lines {} // keep the pipe drained
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server prints its listening line");
    let addr: SocketAddr = line
        .strip_prefix("rollcall listening on http://")
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
        .parse()
        .unwrap();
    Server {
        proc,
        url: format!("http://{addr}"),
        port: addr.port(),
    }
}

impl Server {
    fn start(dir: &Path) -> Server {
        start_server(dir, 0)
    }

    /// Stops the server and waits until the port is closed.
    fn stop(mut self) -> u16 {
        self.proc.signal("KILL");
        self.proc.wait_for_exit(SOON);
        self.port
    }
}

/// Runs the CLI to completion: (exit code, stdout, stderr).
fn cli(server: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("ROLLCALL_SERVER", server)
        .env("ROLLCALL_TOKEN", token)
        .stdin(Stdio::null())
        .output()
        .expect("rollcall runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the CLI in `cwd` with `token` as ROLLCALL_TOKEN, or with no token
/// from the environment at all: (exit code, stdout, stderr).
fn cli_in(cwd: &Path, server: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(cwd)
        .env("ROLLCALL_SERVER", server)
        .env_remove("ROLLCALL_TOKEN")
        .env_remove("ROLLCALL_DATA_DIR");
    if let Some(t) = token {
        cmd.env("ROLLCALL_TOKEN", t);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("rollcall runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn cli_json(server: &str, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.push("--json");
    let (code, out, err) = cli(server, ADMIN, &full);
    assert_eq!(code, 0, "rollcall {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn enroll_token(server: &str) -> String {
    let v = cli_json(
        server,
        &["tokens", "create", "--kind", "enroll", "--name", "agents"],
    );
    v["token"].as_str().unwrap().to_owned()
}

fn agent(server: &str, token: &str, name: &str, machine: &str, cmd: &[&str]) -> Proc {
    agent_with(server, token, name, machine, &[], cmd)
}

fn agent_with(
    server: &str,
    token: &str,
    name: &str,
    machine: &str,
    flags: &[&str],
    cmd: &[&str],
) -> Proc {
    let child = Command::new(BIN)
        .args(["agent", "run", "--server", server, "--token", token])
        .args(["--name", name, "--machine-id", machine])
        .args(flags)
        .arg("--")
        .args(cmd)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rollcall agent starts");
    Proc { child }
}

/// Polls `f` until it returns Some, up to `limit`.
fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The worker called `name` on `machine`, if any (newest first).
fn find_worker(server: &str, name: &str, machine: &str) -> Option<Value> {
    let (code, out, _) = cli(
        server,
        ADMIN,
        &["workers", "ls", "--machine-id", machine, "--json"],
    );
    if code != 0 {
        return None;
    }
    let list: Value = serde_json::from_str(&out).ok()?;
    list.as_array()?.iter().find(|w| w["name"] == name).cloned()
}

fn worker(server: &str, id: &str) -> Option<Value> {
    let (code, out, _) = cli(server, ADMIN, &["workers", "show", id, "--json"]);
    if code != 0 {
        return None;
    }
    serde_json::from_str(&out).ok()
}

fn machine_status(server: &str, id: &str) -> Option<String> {
    let (code, out, _) = cli(server, ADMIN, &["machines", "show", id, "--json"]);
    if code != 0 {
        return None;
    }
    let v: Value = serde_json::from_str(&out).ok()?;
    v["status"].as_str().map(String::from)
}

fn wait_online(server: &str, name: &str, machine: &str) -> Value {
    wait_for(&format!("{name} online"), SOON, || {
        find_worker(server, name, machine).filter(|w| w["status"] == "online")
    })
}

fn wait_offline(server: &str, id: &str, reason: &str, limit: Duration) -> Value {
    wait_for(&format!("{id} offline ({reason})"), limit, || {
        worker(server, id).filter(|w| w["status"] == "offline" && w["offline_reason"] == reason)
    })
}

/// The pids of `pid`'s children.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let path: PathBuf = t.path().join("children");
        if let Ok(s) = std::fs::read_to_string(path) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purposes.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn events(server: &str) -> Vec<Value> {
    let (code, out, err) = cli(server, ADMIN, &["events", "tail", "--json"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect()
}

/// (a) kill -9 the child → offline (exited) at once, agent exits 137;
/// (b) kill -9 the agent → the child dies too, the worker goes stale and,
/// being the machine's last worker, the machine goes offline.
#[test]
fn kill_child_then_kill_agent() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();
    let token = enroll_token(&url);

    // (a)
    let mut a = agent(&url, &token, "sleeper", "host-a", &["sleep", "60"]);
    let w = wait_online(&url, "sleeper", "host-a");
    let id = w["id"].as_str().unwrap().to_owned();
    assert_eq!(machine_status(&url, "host-a").as_deref(), Some("online"));
    let child = wait_for("the agent's child", SOON, || {
        children(a.pid()).first().copied()
    });
    assert!(Command::new("kill")
        .args(["-KILL", &child.to_string()])
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let status = a.wait_for_exit(SOON);
    assert_eq!(status.code(), Some(137), "128 + SIGKILL");
    wait_offline(&url, &id, "exited", SOON);
    // The agent marks it offline before exiting; no sweep is involved.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(machine_status(&url, "host-a").as_deref(), Some("offline"));

    // (b)
    let mut b = agent(&url, &token, "orphan", "host-b", &["sleep", "60"]);
    let w = wait_online(&url, "orphan", "host-b");
    let id = w["id"].as_str().unwrap().to_owned();
    let stale_after = Duration::from_millis(w["stale_after_ms"].as_u64().unwrap());
    let child = wait_for("the agent's child", SOON, || {
        children(b.pid()).first().copied()
    });
    b.signal("KILL");
    b.wait_for_exit(SOON);
    let killed = Instant::now();
    wait_for("the child to die with its agent", SOON, || {
        (!alive(child)).then_some(())
    });
    wait_offline(&url, &id, "stale", stale_after + Duration::from_secs(5));
    // The detection bound (invariant 2), with room for the CLI polling itself
    // on a loaded machine.
    assert!(
        killed.elapsed() < stale_after + Duration::from_secs(4),
        "stale after {:?}",
        killed.elapsed()
    );
    assert_eq!(machine_status(&url, "host-b").as_deref(), Some("offline"));
    // Measured by the server: marked stale within 1 s of the deadline
    // (last heartbeat + stale_after).
    let stale = events(&url)
        .into_iter()
        .find(|e| e["type"] == "worker.offline" && e["worker_id"] == id.as_str())
        .expect("a worker.offline event");
    assert_eq!(stale["reason"], "stale", "{stale}");
    let lag = stale["detection_lag_ms"].as_u64().expect("a detection lag");
    assert!(lag <= 1000, "detection lag {lag} ms");
    drop(server);
}

/// (c) exit code propagation and (d) SIGTERM forwarding.
#[test]
fn exit_code_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();
    let token = enroll_token(&url);

    // (c): wait until registered, then let the child exit with 7.
    let flag = dir.path().join("go");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exit 7",
        flag.display()
    );
    let mut c = agent(&url, &token, "seven", "host-c", &["sh", "-c", &script]);
    let w = wait_online(&url, "seven", "host-c");
    std::fs::write(&flag, b"").unwrap();
    assert_eq!(c.wait_for_exit(SOON).code(), Some(7));
    wait_offline(&url, w["id"].as_str().unwrap(), "exited", SOON);

    // (d): SIGTERM to the agent reaches the child (sleep dies of it: 143)
    // and the worker says "shutdown".
    let mut d = agent(&url, &token, "termed", "host-d", &["sleep", "60"]);
    let w = wait_online(&url, "termed", "host-d");
    let child = wait_for("the agent's child", SOON, || {
        children(d.pid()).first().copied()
    });
    d.signal("TERM");
    assert_eq!(d.wait_for_exit(SOON).code(), Some(143), "128 + SIGTERM");
    assert!(!alive(child));
    wait_offline(&url, w["id"].as_str().unwrap(), "shutdown", SOON);
    drop(server);
}

/// (e) The server is away for longer than stale_after; back on the same
/// data dir and port, the agent's heartbeats keep the same worker and
/// session, with no worker.offline event.
#[test]
fn server_restart_keeps_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = start_server(dir.path(), port);
    let url = server.url.clone();
    let token = enroll_token(&url);

    let mut a = agent(&url, &token, "steady", "host-e", &["sleep", "60"]);
    let w = wait_online(&url, "steady", "host-e");
    let id = w["id"].as_str().unwrap().to_owned();
    let session = w["session"].as_u64().unwrap();

    server.stop();
    std::thread::sleep(Duration::from_millis(1500)); // > stale_after (500ms), on purpose
    let server = start_server(dir.path(), port);
    // Well past the restart grace: heartbeats must have resumed.
    std::thread::sleep(Duration::from_millis(2000));
    let w = worker(&url, &id).expect("the same worker");
    assert_eq!(w["status"], "online", "{w}");
    assert_eq!(w["session"].as_u64(), Some(session), "{w}");
    let offline: Vec<Value> = events(&url)
        .into_iter()
        .filter(|e| e["type"] == "worker.offline")
        .collect();
    assert!(offline.is_empty(), "{offline:?}");
    assert!(a.child.try_wait().unwrap().is_none(), "the agent runs on");
    drop(server);
}

/// (f) An admin deletes the worker: the agent's token gets 401 and it
/// registers again (a new record for the same name).
#[test]
fn deleted_worker_registers_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();
    let token = enroll_token(&url);

    let _a = agent_with(
        &url,
        &token,
        "phoenix",
        "host-f",
        &["--heartbeat-interval", "200ms", "--label", "queue=gpu"],
        &["sleep", "60"],
    );
    let w = wait_online(&url, "phoenix", "host-f");
    assert_eq!(w["heartbeat_interval_ms"], 200, "{w}");
    assert_eq!(w["labels"]["queue"], "gpu", "{w}");
    let id = w["id"].as_str().unwrap().to_owned();
    let (code, _, err) = cli(&url, ADMIN, &["workers", "rm", &id]);
    assert_eq!(code, 0, "{err}");
    let again = wait_for("a new registration", SOON, || {
        find_worker(&url, "phoenix", "host-f")
            .filter(|w| w["status"] == "online" && w["id"] != id.as_str())
    });
    assert_ne!(again["id"], id.as_str());
    drop(server);
}

/// (g) The child starts while the server is down; once a server comes up
/// on that port the worker registers.
#[test]
fn child_starts_while_the_server_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let marker = dir.path().join("started");
    let script = format!("touch '{}'; exec sleep 60", marker.display());
    let _a = agent(
        &url,
        ADMIN, // admin may register too; no server exists yet to make a token
        "early",
        "host-g",
        &["sh", "-c", &script],
    );
    wait_for("the child's side effect", SOON, || {
        marker.exists().then_some(())
    });

    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let server = start_server(&data, port);
    wait_online(&server.url, "early", "host-g");
}

/// `tokens create --machine --label`: a scoped enroll token, shown by
/// `tokens ls`; its agent registers inside the scope only.
#[test]
fn cli_creates_scoped_enroll_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();
    let created = cli_json(
        &url,
        &[
            "tokens",
            "create",
            "--kind",
            "enroll",
            "--name",
            "gpus",
            "--machine",
            "gpu-*",
            "--machine",
            "render",
            "--label",
            "pool=gpu",
        ],
    );
    let scope = serde_json::json!({"machines": ["gpu-*", "render"], "labels": {"pool": "gpu"}});
    assert_eq!(created["scope"], scope, "{created}");
    let listed = cli_json(&url, &["tokens", "ls"]);
    let t = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == created["id"])
        .unwrap();
    assert_eq!(t["scope"], scope);
    let (code, table, err) = cli(&url, ADMIN, &["tokens", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(table.lines().next().unwrap().ends_with("SCOPE"), "{table}");
    assert!(
        table.contains("machines gpu-*,render; labels pool=gpu"),
        "{table}"
    );

    // Usage errors (2), before anything is sent.
    for args in [
        &["--kind", "read", "--name", "r", "--machine", "gpu-*"][..],
        &["--kind", "enroll", "--name", "e", "--machine", "gpu?"],
        &["--kind", "enroll", "--name", "e", "--label", "pool"],
        &[
            "--kind", "enroll", "--name", "e", "--label", "a=1", "--label", "a=2",
        ],
    ] {
        let mut full = vec!["tokens", "create"];
        full.extend_from_slice(args);
        let (code, _, err) = cli(&url, ADMIN, &full);
        assert_eq!(code, 2, "{args:?}: {err}");
    }

    // An agent with the scoped token registers inside the scope.
    let gpus = created["token"].as_str().unwrap();
    let _inside = agent_with(
        &url,
        gpus,
        "w1",
        "gpu-1",
        &["--label", "pool=gpu"],
        &["sleep", "30"],
    );
    wait_online(&url, "w1", "gpu-1");
}

/// The admin CLI: JSON that parses, tokens create/ls, and the exit codes.
#[test]
fn cli_json_and_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();

    let list = cli_json(&url, &["workers", "ls"]);
    assert!(list.as_array().is_some(), "{list}");

    let created = cli_json(
        &url,
        &["tokens", "create", "--kind", "read", "--name", "dash"],
    );
    let tid = created["id"].as_str().unwrap().to_owned();
    assert!(created["token"].as_str().unwrap().starts_with("rc_read_"));
    let tokens = cli_json(&url, &["tokens", "ls"]);
    assert!(
        tokens
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == tid.as_str()),
        "{tokens}"
    );
    let (code, table, _) = cli(&url, ADMIN, &["tokens", "ls"]);
    assert_eq!(code, 0);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("dash"), "{table}");
    assert!(
        !table.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    // A wrong token: 3, one line, no panic.
    let (code, out, err) = cli(&url, "rc_admin_wrong", &["workers", "ls"]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A read token may not create tokens: forbidden is 3 too.
    let read = created["token"].as_str().unwrap();
    let (code, _, err) = cli(&url, read, &["tokens", "ls"]);
    assert_eq!(code, 3, "{err}");

    // Not found: 4.
    let (code, _, err) = cli(
        &url,
        ADMIN,
        &["workers", "show", "wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H8"],
    );
    assert_eq!(code, 4, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    let (code, _, err) = cli(&url, ADMIN, &["tokens", "rm", &tid]);
    assert_eq!(code, 0, "{err}");

    // Unreachable: 5.
    let port = server.stop();
    let (code, _, err) = cli(
        &format!("http://127.0.0.1:{port}"),
        ADMIN,
        &["workers", "ls"],
    );
    assert_eq!(code, 5, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// The remaining admin commands against a live worker: drain, offline,
/// machines, cleanup, and `events tail --follow` seeing events as they
/// happen.
#[test]
fn admin_commands_against_a_live_worker() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();
    let token = enroll_token(&url);

    let mut follow = Proc {
        child: Command::new(BIN)
            .args(["events", "tail", "--follow", "--json"])
            .env("ROLLCALL_SERVER", &url)
            .env("ROLLCALL_TOKEN", ADMIN)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    };
    let stdout = follow.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });

    let _a = agent(&url, &token, "target", "host-h", &["sleep", "60"]);
    let w = wait_online(&url, "target", "host-h");
    let id = w["id"].as_str().unwrap().to_owned();

    let drained = cli_json(&url, &["workers", "drain", &id]);
    assert_eq!(drained["status"], "draining", "{drained}");
    // The follower sees the drain as it happens.
    let deadline = Instant::now() + SOON;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = rx
            .recv_timeout(left)
            .expect("events tail --follow prints the drain");
        if e["type"] == "worker.draining" && e["worker_id"] == id.as_str() {
            break;
        }
    }
    follow.signal("INT");

    let (code, table, err) = cli(&url, ADMIN, &["workers", "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("draining"), "{table}");

    let machines = cli_json(&url, &["machines", "ls"]);
    assert!(
        machines
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "host-h"),
        "{machines}"
    );
    let m = cli_json(&url, &["machines", "show", "host-h"]);
    assert_eq!(m["workers"][0]["id"], id.as_str(), "{m}");

    let off = cli_json(&url, &["workers", "offline", &id]);
    assert_eq!(off["status"], "offline", "{off}");
    assert_eq!(off["offline_reason"], "shutdown", "{off}");

    let stale = cli_json(&url, &["cleanup", "stale"]);
    assert_eq!(stale["success"], true, "{stale}");
    let all = cli_json(&url, &["cleanup", "all"]);
    assert_eq!(all["success"], true, "{all}");
    drop(server);
}

/// Without --token or ROLLCALL_TOKEN the CLI uses the admin token the
/// server generated in its data directory (./rollcall-data, or
/// --data-dir), and without any it says where a token goes.
#[test]
fn cli_finds_the_generated_admin_token() {
    let home = tempfile::tempdir().unwrap();
    let data = home.path().join("rollcall-data");
    let server = start_server_with(&data, 0, None);
    let url = server.url.clone();
    wait_for("the generated admin token", SOON, || {
        data.join("admin.token").exists().then_some(())
    });

    // Where the server runs: ./rollcall-data/admin.token.
    let (code, out, err) = cli_in(home.path(), &url, None, &["workers", "ls", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        serde_json::from_str::<Value>(&out).unwrap().is_array(),
        "{out}"
    );

    // Elsewhere: no token, one line naming both ways to give one; nothing
    // is sent.
    let elsewhere = tempfile::tempdir().unwrap();
    let (code, out, err) = cli_in(elsewhere.path(), &url, None, &["workers", "ls"]);
    assert_eq!(code, 3, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("--token") && err.contains("ROLLCALL_TOKEN"),
        "{err}"
    );
    assert!(err.contains("--data-dir"), "{err}");

    // Elsewhere, pointed at the data directory.
    let data_arg = data.display().to_string();
    let (code, _, err) = cli_in(
        elsewhere.path(),
        &url,
        None,
        &["tokens", "ls", "--data-dir", &data_arg],
    );
    assert_eq!(code, 0, "{err}");

    // A given token wins over the file.
    let (code, _, err) = cli_in(
        home.path(),
        &url,
        Some("rc_admin_wrong"),
        &["workers", "ls"],
    );
    assert_eq!(code, 3, "{err}");

    // A stale file: 401, and the message says where the token came from.
    let stale = tempfile::tempdir().unwrap();
    std::fs::create_dir(stale.path().join("rollcall-data")).unwrap();
    std::fs::write(
        stale.path().join("rollcall-data/admin.token"),
        "rc_admin_from_an_old_server_0000000000\n",
    )
    .unwrap();
    let (code, _, err) = cli_in(stale.path(), &url, None, &["workers", "ls"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("admin.token"), "{err}");
}

/// Worker commands take a name or MACHINE/NAME as well as an id; a name on
/// several machines is refused with the candidates listed. `workers
/// offline` on a worker whose process still runs says that its next
/// heartbeat brings it back, and it does.
#[test]
fn worker_commands_accept_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();
    let token = enroll_token(&url);
    let agent_a = agent(&url, &token, "render-1", "host-a", &["sleep", "60"]);
    let _b = agent(&url, &token, "render-1", "host-b", &["sleep", "60"]);
    let _c = agent(&url, &token, "solo", "host-b", &["sleep", "60"]);
    let a = wait_online(&url, "render-1", "host-a");
    let b = wait_online(&url, "render-1", "host-b");
    let solo = wait_online(&url, "solo", "host-b");

    // A unique name.
    let shown = cli_json(&url, &["workers", "show", "solo"]);
    assert_eq!(shown["id"], solo["id"], "{shown}");
    // MACHINE/NAME.
    let shown = cli_json(&url, &["workers", "show", "host-a/render-1"]);
    assert_eq!(shown["id"], a["id"], "{shown}");
    // Ambiguous: usage error listing both.
    let (code, out, err) = cli(&url, ADMIN, &["workers", "show", "render-1"]);
    assert_eq!(code, 2, "{err}");
    assert_eq!(out, "");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    for w in [&a, &b] {
        assert!(err.contains(w["id"].as_str().unwrap()), "{err}");
    }
    assert!(
        err.contains("host-a/render-1") && err.contains("host-b/render-1"),
        "{err}"
    );
    // Unknown names and machines: not found.
    let (code, _, err) = cli(&url, ADMIN, &["workers", "show", "nobody"]);
    assert_eq!(code, 4, "{err}");
    let (code, _, err) = cli(&url, ADMIN, &["workers", "drain", "host-z/render-1"]);
    assert_eq!(code, 4, "{err}");
    // Names where ids were taken: drain, offline, rm.
    let drained = cli_json(&url, &["workers", "drain", "host-b/render-1"]);
    assert_eq!(drained["status"], "draining", "{drained}");
    assert_eq!(drained["id"], b["id"]);

    let (code, out, err) = cli(&url, ADMIN, &["workers", "offline", "solo"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("offline"), "{out}");
    assert!(
        err.contains("next heartbeat") && err.contains("drain") && err.contains("rm"),
        "{err}"
    );
    // As the note says: the agent still runs, so the worker comes back.
    let id = solo["id"].as_str().unwrap();
    wait_for("solo back online", SOON, || {
        worker(&url, id)
            .filter(|w| w["status"] == "online" && w["session"].as_u64() > solo["session"].as_u64())
    });

    // Its agent stopped first: a running one would register it again.
    drop(agent_a);
    let (code, out, err) = cli(&url, ADMIN, &["workers", "rm", "host-a/render-1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(a["id"].as_str().unwrap()), "{out}");
    // Now the name is unique again.
    let shown = cli_json(&url, &["workers", "show", "render-1"]);
    assert_eq!(shown["id"], b["id"], "{shown}");
}

/// The `worker.offline` events of worker `id`, decoded by the Rust client
/// (so its classification is the one under test too).
fn offline_events(server: &str, id: &str) -> Vec<rollcall_client::Event> {
    events(server)
        .into_iter()
        .filter(|e| e["type"] == "worker.offline" && e["worker_id"] == id)
        .map(|e| serde_json::from_value(e.clone()).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect()
}

/// `GET path` over plain HTTP/1.0: the body.
fn http_get(server: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = server.strip_prefix("http://").expect("an http:// URL");
    let mut conn = std::net::TcpStream::connect(addr).expect("the server accepts");
    conn.set_read_timeout(Some(SOON)).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    body.to_owned()
}

/// Crash classification end to end, with real agents and real children:
/// exit 0 (graceful), exit 3 and `kill -9` of the child (crashes of kind
/// `exited`, with the code or the signal on the event), SIGTERM to the
/// agent (a graceful `shutdown`), `kill -9` of the agent (`stale` by the
/// deadline) and an agent started again under the same name while its
/// worker still looked live (the old session ends `replaced`). The offline
/// counters of `/metrics` agree.
#[test]
fn every_end_of_an_agent_is_classified() {
    use rollcall_client::{CrashKind, EventReason, ExitStatus, OfflineClass};

    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url.clone();
    let token = enroll_token(&url);
    let host = "host-crashes";

    // The one offline of a worker, once it is there.
    let the_offline = |id: &str| -> rollcall_client::Event {
        let mut offlines = wait_for(&format!("the offline of {id}"), SOON, || {
            let offlines = offline_events(&url, id);
            (!offlines.is_empty()).then_some(offlines)
        });
        assert_eq!(offlines.len(), 1, "{offlines:?}");
        offlines.remove(0)
    };
    // A child that waits until its worker is online, then exits with `code`.
    let exits_with = |name: &str, code: u8| -> (String, std::process::ExitStatus) {
        let flag = dir.path().join(format!("go-{name}"));
        let script = format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done; exit {code}",
            flag.display()
        );
        let mut a = agent(&url, &token, name, host, &["sh", "-c", &script]);
        let w = wait_online(&url, name, host);
        std::fs::write(&flag, b"").unwrap();
        let status = a.wait_for_exit(SOON);
        (w["id"].as_str().unwrap().to_owned(), status)
    };

    // exit 0: graceful.
    let (id, status) = exits_with("exit-zero", 0);
    assert_eq!(status.code(), Some(0));
    let e = the_offline(&id);
    assert_eq!(e.reason, Some(EventReason::Exited), "{e:?}");
    assert_eq!((e.exit_code, e.signal), (Some(0), None));
    assert_eq!(e.exit_status(), Some(ExitStatus::Code(0)));
    assert_eq!(
        (e.offline_class(), e.crash_kind()),
        (Some(OfflineClass::Graceful), None)
    );

    // exit 3: a crash, with its code.
    let (id, status) = exits_with("exit-three", 3);
    assert_eq!(status.code(), Some(3));
    let e = the_offline(&id);
    assert_eq!(e.reason, Some(EventReason::Exited), "{e:?}");
    assert_eq!((e.exit_code, e.signal), (Some(3), None));
    assert_eq!(
        (e.offline_class(), e.crash_kind()),
        (Some(OfflineClass::Crash), Some(CrashKind::Exited))
    );

    // The CLI's event lines say it too.
    let (code, text, err) = cli(&url, ADMIN, &["events", "tail"]);
    assert_eq!(code, 0, "{err}");
    let line = text
        .lines()
        .find(|l| l.contains("worker.offline") && l.contains(id.as_str()))
        .unwrap_or_else(|| panic!("no offline line for {id} in:\n{text}"));
    for part in ["reason=exited", "exit_code=3", "class=crash"] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }

    // kill -9 of the child: a crash, with its signal.
    let mut a = agent(&url, &token, "child-killed", host, &["sleep", "600"]);
    let w = wait_online(&url, "child-killed", host);
    let child = wait_for("the agent's child", SOON, || {
        children(a.pid()).first().copied()
    });
    assert!(Command::new("kill")
        .args(["-KILL", &child.to_string()])
        .status()
        .unwrap()
        .success());
    assert_eq!(a.wait_for_exit(SOON).code(), Some(137), "128 + SIGKILL");
    let e = the_offline(w["id"].as_str().unwrap());
    assert_eq!(e.reason, Some(EventReason::Exited), "{e:?}");
    assert_eq!((e.exit_code, e.signal), (None, Some(9)));
    assert_eq!(e.exit_status(), Some(ExitStatus::Signal(9)));
    assert_eq!(
        (e.offline_class(), e.crash_kind()),
        (Some(OfflineClass::Crash), Some(CrashKind::Exited))
    );

    // SIGTERM to the agent: forwarded, the child dies of it (143), and the
    // stop it was asked for is a graceful shutdown, with no exit status.
    let mut a = agent(&url, &token, "agent-termed", host, &["sleep", "600"]);
    let w = wait_online(&url, "agent-termed", host);
    wait_for("the agent's child", SOON, || {
        children(a.pid()).first().copied()
    });
    a.signal("TERM");
    assert_eq!(a.wait_for_exit(SOON).code(), Some(143));
    let e = the_offline(w["id"].as_str().unwrap());
    assert_eq!(e.reason, Some(EventReason::Shutdown), "{e:?}");
    assert_eq!(e.exit_status(), None);
    assert_eq!(
        (e.offline_class(), e.crash_kind()),
        (Some(OfflineClass::Graceful), None)
    );

    // kill -9 of the agent: nothing is sent, the child dies with it, and
    // the worker is marked stale at its deadline.
    let mut a = agent(&url, &token, "agent-lost", host, &["sleep", "600"]);
    let w = wait_online(&url, "agent-lost", host);
    let id = w["id"].as_str().unwrap().to_owned();
    let stale_after = Duration::from_millis(w["stale_after_ms"].as_u64().unwrap());
    let child = wait_for("the agent's child", SOON, || {
        children(a.pid()).first().copied()
    });
    a.signal("KILL");
    a.wait_for_exit(SOON);
    wait_for("the child to die with its agent", SOON, || {
        (!alive(child)).then_some(())
    });
    wait_offline(&url, &id, "stale", stale_after + SOON);
    let e = the_offline(&id);
    assert_eq!(e.reason, Some(EventReason::Stale), "{e:?}");
    assert!(e.detection_lag_ms.is_some(), "{e:?}");
    assert_eq!(e.exit_status(), None);
    assert_eq!(
        (e.offline_class(), e.crash_kind()),
        (Some(OfflineClass::Crash), Some(CrashKind::Stale))
    );

    // kill -9 of an agent, then the same agent again before the worker's
    // deadline (a minute: heartbeat every 20 s): the server ends the old
    // session as replaced.
    let slow = ["--heartbeat-interval", "20s"];
    let mut a = agent_with(
        &url,
        &token,
        "agent-restarted",
        host,
        &slow,
        &["sleep", "600"],
    );
    let w = wait_online(&url, "agent-restarted", host);
    let id = w["id"].as_str().unwrap().to_owned();
    let session = w["session"].as_u64().unwrap();
    assert_eq!(w["stale_after_ms"], 60_000, "{w}");
    let child = wait_for("the agent's child", SOON, || {
        children(a.pid()).first().copied()
    });
    a.signal("KILL");
    a.wait_for_exit(SOON);
    wait_for("the child to die with its agent", SOON, || {
        (!alive(child)).then_some(())
    });
    let before = worker(&url, &id).expect("the worker");
    assert_eq!(
        (before["status"].as_str(), before["session"].as_u64()),
        (Some("online"), Some(session)),
        "still live when its agent comes back: {before}"
    );
    let mut b = agent_with(
        &url,
        &token,
        "agent-restarted",
        host,
        &slow,
        &["sleep", "600"],
    );
    let again = wait_for("the restarted agent's session", SOON, || {
        worker(&url, &id)
            .filter(|w| w["status"] == "online" && w["session"].as_u64() > Some(session))
    });
    assert_eq!(again["session"].as_u64(), Some(session + 1), "{again}");
    let e = the_offline(&id);
    assert_eq!(e.reason, Some(EventReason::Replaced), "{e:?}");
    assert_eq!(e.session, Some(session), "the old session ended: {e:?}");
    assert_eq!(
        (e.offline_class(), e.crash_kind()),
        (Some(OfflineClass::Crash), Some(CrashKind::Replaced))
    );
    // The restarted agent stops cleanly.
    b.signal("TERM");
    assert_eq!(b.wait_for_exit(SOON).code(), Some(143));
    wait_offline(&url, &id, "shutdown", SOON);

    // The counters saw the same ends (each once the offline was committed).
    let metrics = http_get(&url, "/metrics");
    for (class, kind, n) in [
        ("graceful", "shutdown", 2),
        ("graceful", "exited", 1),
        ("crash", "exited", 2),
        ("crash", "stale", 1),
        ("crash", "replaced", 1),
        ("administrative", "revoked", 0),
    ] {
        let series =
            format!("rollcall_worker_offlines_total{{class=\"{class}\",kind=\"{kind}\"}} {n}");
        assert!(
            metrics.lines().any(|l| l == series),
            "no line {series:?} in:\n{}",
            metrics
                .lines()
                .filter(|l| l.contains("offlines"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    drop(server);
}
