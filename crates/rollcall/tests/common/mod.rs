//! Harness for process-level tests of the real `rollcall` binary.
//!
//! [`Serve`] builds a `rollcall serve` command (port 0, a data dir, a known
//! admin token, no `ROLLCALL_*` leaking in from the environment);
//! [`Serve::spawn`] starts it and waits, with a deadline, for the
//! `rollcall listening on http://ADDR` line. stderr goes to a file, stdout
//! after that line is drained into a buffer, so no pipe ever fills up. A
//! [`Server`] is killed (SIGKILL) when dropped, also when a test panics.
//!
//! [`Api`] is a small JSON client; [`Pulse`] keeps one worker heartbeating
//! (a tokio task, or a real `sh` + `curl` process) against a base URL that
//! the test can move when the server restarts on a new port.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use rollcall_core::Timestamp;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_rollcall");

/// The admin token the tests configure through `ROLLCALL_ADMIN_TOKEN`.
pub const ADMIN: &str = "rc_admin_e2e-test-token-0123456789abcdef";

/// How long a server may take to print its listening line (a debug build on
/// a busy two-core machine).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a signalled server may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The wall clock in milliseconds since the epoch: the same clock the server
/// stamps its times with.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Parses an RFC 3339 timestamp of the API into epoch milliseconds.
pub fn ts(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("expected a timestamp string, got {v}"));
    Timestamp::parse_rfc3339(s)
        .unwrap_or_else(|| panic!("not an RFC 3339 timestamp: {s:?}"))
        .as_millis()
}

/// Polls `check` every 25 ms until it returns `Some`, or panics after
/// `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Sleeps until the wall clock has passed `t_ms` (epoch milliseconds).
pub async fn until_ms(t_ms: i64) {
    loop {
        let left = t_ms - now_ms();
        if left < 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(left.clamp(1, 50) as u64)).await;
    }
}

/// A `rollcall serve` command line.
#[derive(Debug, Clone)]
pub struct Serve {
    args: Vec<String>,
    env: Vec<(String, String)>,
    with_admin: bool,
}

impl Serve {
    /// `rollcall serve --listen 127.0.0.1:0 --data-dir DIR`, with
    /// `ROLLCALL_ADMIN_TOKEN` set to [`ADMIN`].
    pub fn new(data_dir: &Path) -> Self {
        Serve {
            args: vec![
                "serve".into(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
            ],
            env: Vec::new(),
            with_admin: true,
        }
    }

    /// Only `rollcall serve`: no listen address, no data dir, no token.
    pub fn bare() -> Self {
        Serve {
            args: vec!["serve".into()],
            env: Vec::new(),
            with_admin: false,
        }
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Without `ROLLCALL_ADMIN_TOKEN`: the server generates one.
    pub fn without_admin_token(mut self) -> Self {
        self.with_admin = false;
        self
    }

    /// Spawns the command with the given stdout, stderr to a temp file,
    /// without waiting for anything. The child is killed when dropped.
    pub fn spawn_raw(&self, stdout: Stdio) -> (Child, tempfile::NamedTempFile) {
        let stderr = tempfile::NamedTempFile::new().expect("a temp file for stderr");
        let mut cmd = self.command(stderr.reopen().expect("reopening the stderr file"));
        cmd.stdout(stdout);
        let child = cmd.spawn().expect("spawning rollcall");
        (child, stderr)
    }

    fn command(&self, stderr: std::fs::File) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args);
        // Nothing from the test runner's environment may change the result.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ROLLCALL_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("RUST_LOG", "info");
        if self.with_admin {
            cmd.env("ROLLCALL_ADMIN_TOKEN", ADMIN);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        cmd
    }

    /// Starts the server and waits for its listening line.
    pub async fn spawn(&self) -> Server {
        let stderr = tempfile::NamedTempFile::new().expect("a temp file for stderr");
        let spawned_at_ms = now_ms();
        let mut child = self
            .command(stderr.reopen().expect("reopening the stderr file"))
            .spawn()
            .expect("spawning rollcall");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let read = tokio::time::timeout(START_TIMEOUT, stdout.read_line(&mut line)).await;
        let ready_at_ms = now_ms();
        let stderr_text = || std::fs::read_to_string(stderr.path()).unwrap_or_default();
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) => {
                let status = child.wait().await;
                panic!(
                    "rollcall exited ({status:?}) before its listening line; stderr:\n{}",
                    stderr_text()
                );
            }
            Ok(Err(e)) => panic!("reading rollcall's stdout: {e}; stderr:\n{}", stderr_text()),
            Err(_) => panic!(
                "no listening line within {START_TIMEOUT:?}; stderr:\n{}",
                stderr_text()
            ),
        }
        let line = line.trim_end_matches('\n').to_owned();
        let addr: SocketAddr = line
            .strip_prefix("rollcall listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first stdout line: {line:?}"));
        // Drain the rest of stdout so the pipe never fills up.
        let rest = Arc::new(Mutex::new(String::new()));
        let sink = rest.clone();
        let drain = tokio::spawn(async move {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf).await;
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf));
        });
        Server {
            child,
            addr,
            url: format!("http://{addr}"),
            line,
            spawned_at_ms,
            ready_at_ms,
            stdout_rest: rest,
            drain: Some(drain),
            stderr,
        }
    }

    /// Runs a command that is expected to exit on its own (for example on
    /// a configuration error).
    pub async fn run_to_exit(&self) -> Exited {
        let stderr = tempfile::NamedTempFile::new().expect("a temp file for stderr");
        let mut child = self
            .command(stderr.reopen().expect("reopening the stderr file"))
            .spawn()
            .expect("spawning rollcall");
        let mut stdout = child.stdout.take().expect("piped stdout");
        let run = async {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out).await;
            let status = child.wait().await.expect("waiting for rollcall");
            (status, out)
        };
        let (status, out) = tokio::time::timeout(START_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "`rollcall {}` (env {:?}) did not exit within {START_TIMEOUT:?}; stderr:\n{}",
                    self.args.join(" "),
                    self.env,
                    std::fs::read_to_string(stderr.path()).unwrap_or_default()
                )
            });
        Exited {
            status,
            stdout: String::from_utf8_lossy(&out).into_owned(),
            stderr: std::fs::read_to_string(stderr.path()).unwrap_or_default(),
        }
    }
}

/// How a command ended.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running `rollcall serve`; killed with SIGKILL when dropped.
#[derive(Debug)]
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// `http://ADDR`.
    pub url: String,
    /// The listening line, without its newline.
    pub line: String,
    /// Wall clock just before spawning.
    pub spawned_at_ms: i64,
    /// Wall clock just after the listening line was read.
    pub ready_at_ms: i64,
    stdout_rest: Arc<Mutex<String>>,
    drain: Option<JoinHandle<()>>,
    stderr: tempfile::NamedTempFile,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the server is still running")
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// An admin client for this server.
    pub fn admin(&self) -> Api {
        Api::new(&self.url, ADMIN)
    }

    /// Sends a signal (`TERM`, `INT`, …) with kill(1).
    pub async fn signal(&self, sig: &str) {
        let pid = self.pid();
        let status = Command::new("sh")
            .args(["-c", &format!("kill -s {sig} {pid}")])
            .status()
            .await
            .expect("running kill");
        assert!(status.success(), "kill -s {sig} {pid} failed: {status}");
    }

    /// `kill -9`, and reaps it.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("SIGKILL");
        self.child.wait().await.expect("reaping the server");
    }

    /// Waits for the process to exit, at most `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(s) => s.expect("waiting for the server"),
            Err(_) => panic!(
                "rollcall did not exit within {timeout:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }

    /// Sends `sig`, waits for the exit and returns the status and the time
    /// it took.
    pub async fn stop_with(&mut self, sig: &str) -> (ExitStatus, Duration) {
        let t = Instant::now();
        self.signal(sig).await;
        let status = self.wait_exit(EXIT_TIMEOUT).await;
        (status, t.elapsed())
    }

    /// Everything written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap_or_default()
    }

    /// stdout after the listening line; complete once the process exited.
    pub async fn stdout_after_line(&mut self) -> String {
        if let Some(d) = self.drain.take() {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = tokio::time::timeout(Duration::from_secs(5), d).await;
            } else {
                self.drain = Some(d);
            }
        }
        self.stdout_rest.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if let Some(d) = self.drain.take() {
            d.abort();
        }
    }
}

/// A JSON client for one server and token.
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct Registered {
    pub id: String,
    pub token: String,
    pub worker: Value,
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client")
}

impl Api {
    pub fn new(base: &str, token: &str) -> Self {
        Api {
            http: http_client(),
            base: base.to_owned(),
            token: token.to_owned(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("an HTTP response");
        let status = resp.status();
        let text = resp.text().await.expect("a response body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
    }

    /// GET that must answer 200.
    pub async fn get_ok(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    /// Registers `name` on `machine`, asking for no intervals of its own.
    pub async fn register(&self, name: &str, machine: &str) -> Registered {
        self.register_with(json!({"name": name, "machine": {"id": machine}}))
            .await
    }

    pub async fn register_with(&self, body: Value) -> Registered {
        let (status, body) = self.post("/v1/workers", body).await;
        assert!(
            status == StatusCode::CREATED || status == StatusCode::OK,
            "registration: {status} {body}"
        );
        Registered {
            id: body["worker"]["id"].as_str().expect("worker.id").to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
            worker: body["worker"].clone(),
        }
    }

    pub async fn worker(&self, id: &str) -> Value {
        self.get_ok(&format!("/v1/workers/{id}")).await
    }

    pub async fn machine(&self, id: &str) -> Value {
        self.get_ok(&format!("/v1/machines/{id}")).await
    }

    /// Every event matching `filter` (e.g. `type=worker.offline`), oldest
    /// first, following the cursor.
    pub async fn events(&self, filter: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0i64;
        loop {
            let page = self
                .get_ok(&format!("/v1/events?limit=1000&after={after}&{filter}"))
                .await;
            let items = page["items"].as_array().expect("items").clone();
            out.extend(items);
            match &page["next_cursor"] {
                Value::Null => return out,
                c => {
                    after = c
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .or_else(|| c.as_i64())
                        .unwrap_or_else(|| panic!("bad next_cursor {c}"));
                }
            }
        }
    }

    /// One heartbeat with a worker's own token; must answer 200.
    pub async fn heartbeat(&self, w: &Registered) -> Value {
        let resp = self
            .http
            .post(format!("{}/v1/workers/{}/heartbeat", self.base, w.id))
            .bearer_auth(&w.token)
            .send()
            .await
            .expect("a heartbeat response");
        let status = resp.status();
        let body: Value = resp.json().await.expect("a JSON heartbeat answer");
        assert_eq!(status, StatusCode::OK, "heartbeat of {}: {body}", w.id);
        body
    }
}

/// A base URL that heartbeat tasks follow across restarts.
#[derive(Debug, Clone)]
pub struct Target(Arc<RwLock<String>>);

impl Target {
    pub fn new(url: &str) -> Self {
        Target(Arc::new(RwLock::new(url.to_owned())))
    }

    pub fn set(&self, url: &str) {
        *self.0.write().unwrap() = url.to_owned();
    }

    pub fn get(&self) -> String {
        self.0.read().unwrap().clone()
    }
}

/// What a heartbeat task has seen.
#[derive(Debug, Clone, Default)]
pub struct PulseStats {
    /// Heartbeats answered 200.
    pub acks: u64,
    /// Requests that got no answer (server down, connection refused).
    pub unreachable: u64,
    /// Answers other than 200, with their status and body.
    pub refused: Vec<String>,
    /// Local time the last 200 arrived.
    pub last_ack_ms: Option<i64>,
    /// `deadline_at` of the last 200.
    pub last_deadline_ms: Option<i64>,
    /// Any 200 that said `"resumed": true`.
    pub resumed: bool,
    /// Sessions seen in answers.
    pub sessions: Vec<u64>,
}

/// One worker heartbeating, until stopped.
#[derive(Debug)]
pub enum Pulse {
    Task {
        task: JoinHandle<()>,
        stats: Arc<Mutex<PulseStats>>,
    },
    /// A real process (`sh` looping over `curl`) in its own process group.
    Process { child: Child },
}

impl Pulse {
    /// A tokio task heartbeating `w` every `every` against `target`,
    /// tolerant of connection errors while the server is down.
    pub fn task(target: &Target, w: &Registered, every: Duration) -> Self {
        let stats = Arc::new(Mutex::new(PulseStats::default()));
        let (target, id, token, s) = (target.clone(), w.id.clone(), w.token.clone(), stats.clone());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("an HTTP client");
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let url = format!("{}/v1/workers/{id}/heartbeat", target.get());
                match http.post(url).bearer_auth(&token).send().await {
                    Ok(resp) => {
                        let status = resp.status();
                        let body: Value = resp.json().await.unwrap_or(Value::Null);
                        let mut s = s.lock().unwrap();
                        if status == StatusCode::OK {
                            s.acks += 1;
                            s.last_ack_ms = Some(now_ms());
                            s.last_deadline_ms = Some(ts(&body["deadline_at"]));
                            s.resumed |= body["resumed"] == Value::Bool(true);
                            if let Some(n) = body["session"].as_u64() {
                                if s.sessions.last() != Some(&n) {
                                    s.sessions.push(n);
                                }
                            }
                        } else {
                            s.refused.push(format!("{status} {body}"));
                        }
                    }
                    Err(_) => s.lock().unwrap().unreachable += 1,
                }
            }
        });
        Pulse::Task { task, stats }
    }

    /// Whether `curl` is available for [`Pulse::process`].
    pub fn have_curl() -> bool {
        std::process::Command::new("curl")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A real worker process: `sh` heartbeating `w` with `curl` every
    /// `every`, in its own process group so [`Pulse::stop`] can kill -9 it
    /// with its children.
    pub fn process(base: &str, w: &Registered, every: Duration) -> Self {
        let script = format!(
            "while :; do curl -fsS -m 2 -o /dev/null -X POST \
             -H \"Authorization: Bearer $RC_TOKEN\" \"$RC_URL\" || true; sleep {}; done",
            every.as_secs_f64()
        );
        let child = Command::new("sh")
            .args(["-c", &script])
            .env("RC_TOKEN", &w.token)
            .env("RC_URL", format!("{base}/v1/workers/{}/heartbeat", w.id))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("spawning a worker process");
        Pulse::Process { child }
    }

    pub fn stats(&self) -> PulseStats {
        match self {
            Pulse::Task { stats, .. } => stats.lock().unwrap().clone(),
            Pulse::Process { .. } => PulseStats::default(),
        }
    }

    /// Stops heartbeating at once: aborts the task, or kill -9s the
    /// process group.
    pub async fn stop(&mut self) {
        match self {
            Pulse::Task { task, .. } => {
                task.abort();
                let _ = (&mut *task).await;
            }
            Pulse::Process { child } => {
                kill_group(child);
                let _ = child.start_kill();
                tokio::time::timeout(EXIT_TIMEOUT, child.wait())
                    .await
                    .expect("the worker process dies on kill -9")
                    .expect("reaping the worker process");
            }
        }
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        match self {
            Pulse::Task { task, .. } => task.abort(),
            Pulse::Process { child } => kill_group(child),
        }
    }
}

/// kill -9 the process group led by `child` (it and every process it
/// started).
fn kill_group(child: &Child) {
    if let Some(pid) = child.id() {
        let status = std::process::Command::new("sh")
            .args(["-c", &format!("kill -9 -{pid}")])
            .status();
        assert!(
            std::thread::panicking() || status.as_ref().is_ok_and(|s| s.success()),
            "kill -9 -{pid}: {status:?}"
        );
    }
}

/// A fresh data directory.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}

/// A file in `dir` with `text`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("writing a file");
    p
}
