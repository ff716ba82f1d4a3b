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
        let bin = match bin {
            Some(b) => b,
            None => sibling("rollcall")?,
        };
        let dir = tempfile::tempdir()?;
        let admin = format!("rc_admin_bench_{:032x}", rand::random::<u128>());
        let mut cmd = Command::new(&bin);
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path())
            .args(extra)
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
                .pool_max_idle_per_host(128)
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

    /// The server's resident set size, from /proc.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self
            .proc
            .child
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .context("no VmRSS")
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

    /// Registers `n` workers over `concurrency` parallel requests.
    pub async fn register_many(
        &self,
        n: usize,
        concurrency: usize,
        stale_after_ms: u64,
        heartbeat_ms: Option<u64>,
    ) -> Result<Vec<Registered>> {
        use futures::StreamExt;
        let results: Vec<Result<Registered>> = futures::stream::iter(0..n)
            .map(|i| async move {
                let mut body = json!({
                    "name": format!("bench-{i}"),
                    "machine": {"id": format!("bench-host-{}", i % 100)},
                    "stale_after_ms": stale_after_ms,
                });
                if let Some(h) = heartbeat_ms {
                    body["heartbeat_interval_ms"] = json!(h);
                }
                let v = self
                    .call(
                        reqwest::Method::POST,
                        "/v1/workers",
                        &self.admin,
                        Some(body),
                    )
                    .await?;
                Ok(Registered {
                    id: v["worker"]["id"].as_str().context("no id")?.to_owned(),
                    token: v["token"].as_str().context("no token")?.to_owned(),
                })
            })
            .buffered(concurrency)
            .collect()
            .await;
        results.into_iter().collect()
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

    /// Sends one batch heartbeat; fails if any entry failed. Returns how
    /// many workers it resumed.
    pub async fn batch_heartbeat(&self, enroll: &str, workers: Vec<Registered>) -> Result<usize> {
        let beats: Vec<Value> = workers
            .iter()
            .map(|w| json!({"worker_id": w.id, "token": w.token}))
            .collect();
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/heartbeats",
                enroll,
                Some(json!({"heartbeats": beats})),
            )
            .await?;
        let failed = v["results"]
            .as_array()
            .map(|r| r.iter().filter(|x| x["ok"] != json!(true)).count())
            .unwrap_or(usize::MAX);
        if failed > 0 {
            bail!("{failed} heartbeats of a batch failed");
        }
        Ok(v["results"]
            .as_array()
            .map(|r| r.iter().filter(|x| x["resumed"] == json!(true)).count())
            .unwrap_or(0))
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

    /// Every `worker.offline` event after `after`.
    pub async fn offline_events(&self, after: i64) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut cursor = after;
        loop {
            let v = self
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/events?after={cursor}&limit=1000&type=worker.offline"),
                    &self.admin,
                    None,
                )
                .await?;
            let items = v["items"].as_array().cloned().unwrap_or_default();
            if let Some(last) = items.last() {
                cursor = last["seq"].as_i64().unwrap_or(cursor);
            }
            out.extend(items);
            if v["next_cursor"].is_null() {
                return Ok(out);
            }
        }
    }

    /// How many workers are online.
    pub async fn count_online(&self) -> Result<usize> {
        let mut n = 0;
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/v1/workers?status=online&limit=1000&cursor={c}"),
                None => "/v1/workers?status=online&limit=1000".to_owned(),
            };
            let v = self
                .call(reqwest::Method::GET, &path, &self.admin, None)
                .await?;
            n += v["items"].as_array().map(|i| i.len()).unwrap_or(0);
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
