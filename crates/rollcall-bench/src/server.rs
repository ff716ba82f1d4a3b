//! Starting the servers under test as separate processes, and the HTTP calls
//! the benchmarks make besides the load itself.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

/// A registered worker.
#[derive(Debug, Clone)]
pub struct Registered {
    pub id: String,
    pub token: String,
}

fn sibling(name: &str) -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("no parent directory")?;
    Ok(dir.join(name))
}

/// Spawns `cmd` and waits for its `… listening on http://ADDR` line.
fn spawn_listening(mut cmd: Command) -> Result<(Child, SocketAddr)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create("/tmp/bench-server.log")?)
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?;
    Ok((child, addr))
}

/// The `rollcall` server under test.
#[derive(Debug, Clone)]
pub struct Rollcall {
    pub addr: SocketAddr,
    pub admin: String,
    http: reqwest::Client,
    proc: Arc<Proc>,
}

#[derive(Debug)]
struct Proc {
    child: std::sync::Mutex<Child>,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Rollcall {
    /// Starts `rollcall serve` on a free port with a fresh data directory.
    pub async fn start(bin: Option<PathBuf>, extra: &[&str]) -> Result<Self> {
        let admin = format!("rc_admin_bench_{:032x}", rand::random::<u128>());
        Self::start_with_admin(bin, extra, &admin).await
    }

    /// Like [`Rollcall::start`], with a given admin token (replicas of one
    /// deployment share theirs).
    pub async fn start_with_admin(
        bin: Option<PathBuf>,
        extra: &[&str],
        admin: &str,
    ) -> Result<Self> {
        let bin = match bin {
            Some(b) => b,
            None => sibling("rollcall")?,
        };
        let dir = tempfile::tempdir()?;
        let admin = admin.to_owned();
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            // Extra server flags for experiments, e.g. `--flush-interval 1h`.
            .args(
                std::env::var("BENCH_SERVER_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env("ROLLCALL_ADMIN_TOKEN", &admin)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or("warn".into()),
            );
        let (child, addr) = spawn_listening(cmd)?;
        Ok(Rollcall {
            addr,
            admin,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .tcp_nodelay(true)
                .build()?,
            proc: Arc::new(Proc {
                child: std::sync::Mutex::new(child),
                _dir: dir,
            }),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The server's process id.
    pub fn pid(&self) -> Result<u32> {
        Ok(self
            .proc
            .child
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .id())
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.proc.child.lock().map_err(|_| anyhow!("poisoned"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// The server's memory and CPU, from /proc.
    pub fn stats(&self) -> Result<ProcStats> {
        ProcStats::read(self.pid()?)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        Ok(if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)?
        })
    }

    /// Registers `n` workers over `concurrency` parallel requests, spread
    /// over 100 machines. The writer commits concurrent registrations
    /// together, so more requests in flight mean fewer, larger
    /// transactions. Prints progress to stderr every 10 %.
    pub async fn register_many(
        &self,
        n: usize,
        concurrency: usize,
        stale_after_ms: u64,
        heartbeat_ms: Option<u64>,
    ) -> Result<Vec<Registered>> {
        use futures::StreamExt;
        let started = std::time::Instant::now();
        let mut out = Vec::with_capacity(n);
        let mut results = futures::stream::iter(0..n)
            .map(|i| async move {
                let mut body = json!({
                    "name": format!("bench-{i}"),
                    "machine": {"id": format!("bench-host-{}", i % 100)},
                    "stale_after_ms": stale_after_ms,
                });
                if let Some(h) = heartbeat_ms {
                    body["heartbeat_interval_ms"] = json!(h);
                }
                let resp = self
                    .http
                    .post(self.url("/v1/workers"))
                    .bearer_auth(&self.admin)
                    .json(&body)
                    .send()
                    .await?;
                let status = resp.status();
                let bytes = resp.bytes().await?;
                if !status.is_success() {
                    bail!("registering: {status}: {}", String::from_utf8_lossy(&bytes));
                }
                #[derive(serde::Deserialize)]
                struct W {
                    id: String,
                }
                #[derive(serde::Deserialize)]
                struct R {
                    worker: W,
                    token: String,
                }
                let r: R = serde_json::from_slice(&bytes)?;
                Ok(Registered {
                    id: r.worker.id,
                    token: r.token,
                })
            })
            .buffer_unordered(concurrency);
        let step = (n / 10).max(1);
        while let Some(r) = results.next().await {
            out.push(r?);
            if out.len() % step == 0 {
                eprintln!(
                    "  registered {}/{n} ({:.0}/s)",
                    out.len(),
                    out.len() as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        Ok(out)
    }

    /// POSTs a JSON body and returns the answer's bytes; fails on non-2xx.
    pub async fn post_raw(&self, path: &str, token: &str, body: Value) -> Result<bytes::Bytes> {
        let resp = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }

    /// Creates a token of a kind, returning the secret.
    pub async fn create_token(&self, kind: &str) -> Result<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/tokens",
                &self.admin,
                Some(json!({"kind": kind, "name": "bench"})),
            )
            .await?;
        Ok(v["token"].as_str().context("no token")?.to_owned())
    }

    /// The largest event seq so far.
    pub async fn last_seq(&self) -> Result<i64> {
        let mut after = 0;
        loop {
            let v = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/events?after={after}&limit=1000"),
                    &self.admin,
                    None,
                )
                .await?;
            if let Some(last) = v["items"].as_array().and_then(|i| i.last()) {
                after = last["seq"].as_i64().unwrap_or(after);
            }
            if v["next_cursor"].is_null() {
                return Ok(after);
            }
        }
    }

    /// How many workers are online or draining, summed over machines.
    pub async fn count_online(&self) -> Result<u64> {
        let mut n = 0;
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/machines?limit=1000&cursor={c}"),
                None => "/v1/machines?limit=1000".to_owned(),
            };
            let v = self
                .call(reqwest::Method::GET, &path, &self.admin, None)
                .await?;
            for m in v["items"].as_array().into_iter().flatten() {
                n += m["workers_online"].as_u64().unwrap_or(0);
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => return Ok(n),
            }
        }
    }
}

/// The do-nothing baseline server, in its own process like rollcall.
#[derive(Debug)]
pub struct Baseline {
    pub addr: SocketAddr,
    child: Child,
}

impl Baseline {
    pub async fn start() -> Result<Self> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("baseline-server");
        let (child, addr) = spawn_listening(cmd)?;
        Ok(Baseline { addr, child })
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers every `POST /noop/{i}` with a small JSON body, doing nothing
/// else: the most any HTTP service on axum can do on this machine.
pub async fn baseline_server() -> Result<()> {
    use axum::routing::post;
    let app = axum::Router::new().route(
        "/noop/{i}",
        post(|| async {
            axum::Json(json!({"status": "online", "session": 1, "resumed": false,
                "deadline_at": "2026-01-01T00:00:00.000Z", "heartbeat_interval_ms": 30000}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("baseline listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

/// The `q` quantile of sorted values.
pub fn percentile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Memory and CPU of a process, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcStats {
    /// Resident set size now.
    pub rss_kib: u64,
    /// The largest resident set size so far.
    pub hwm_kib: u64,
    /// User plus system CPU time since the process started.
    pub cpu_s: f64,
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

impl ProcStats {
    pub fn read(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = |key: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .with_context(|| format!("no {key} in /proc/{pid}/status"))
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces), from field 3.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/pid/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15, i.e. 11 and 12 after field 3.
        let ticks: u64 = fields
            .get(11)
            .and_then(|u| u.parse::<u64>().ok())
            .zip(fields.get(12).and_then(|s| s.parse::<u64>().ok()))
            .map(|(u, s)| u + s)
            .context("no utime/stime in /proc/pid/stat")?;
        Ok(ProcStats {
            rss_kib: kib("VmRSS:")?,
            hwm_kib: kib("VmHWM:")?,
            cpu_s: ticks as f64 / clock_ticks(),
        })
    }
}

/// The 1, 5 and 15 minute load averages (what `uptime` prints).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
