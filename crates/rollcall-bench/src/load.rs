//! The load loops: C keep-alive HTTP/1.1 connections, each sending requests
//! back to back over its share of the targets, for a fixed time. Every
//! request is timed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// One request to send repeatedly.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: String,
    /// The whole `Authorization` header value.
    pub auth: String,
    pub body: Bytes,
    /// Worker heartbeats this request carries (1 for a single heartbeat).
    pub beats: u64,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Requests answered 2xx with every entry accepted.
    pub ok: u64,
    /// Worker heartbeats in those requests.
    pub beats: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency of every request, sorted.
    pub latencies: Vec<Duration>,
}

impl Outcome {
    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Worker heartbeats per second.
    pub fn beat_rate(&self) -> f64 {
        self.beats as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }
}

struct Conn {
    ok: u64,
    beats: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

/// Whether a response body reports a failed entry. A batch answer lists one
/// result per entry; a failed one carries `"ok":false`. The body is scanned,
/// not parsed, so the client spends its time sending.
fn has_failed_entry(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"\"ok\":false").is_some()
}

async fn connection(addr: SocketAddr, targets: Vec<Target>, until: Instant) -> Result<Conn> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let host = addr.to_string();
    let mut c = Conn {
        ok: 0,
        beats: 0,
        errors: 0,
        latencies: Vec::new(),
    };
    let mut i = 0usize;
    while Instant::now() < until {
        let t = &targets[i % targets.len()];
        i += 1;
        let mut req = Request::post(&t.path)
            .header("host", &host)
            .header("authorization", &t.auth);
        if !t.body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(t.body.clone()))?;
        let started = Instant::now();
        send.ready().await?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        c.latencies.push(started.elapsed());
        if status.is_success() && !has_failed_entry(&body) {
            c.ok += 1;
            c.beats += t.beats;
        } else {
            c.errors += 1;
            if c.errors == 1 {
                eprintln!(
                    "first failed request: {status}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                );
            }
        }
    }
    Ok(c)
}

/// Runs the load for `duration` over `connections` connections; connection
/// `c` takes targets `c`, `c + connections`, ….
pub async fn run(
    addr: SocketAddr,
    targets: &[Target],
    connections: usize,
    duration: Duration,
) -> Result<Outcome> {
    if targets.len() < connections {
        bail!(
            "{} targets for {connections} connections: every connection needs one",
            targets.len()
        );
    }
    let started = Instant::now();
    let until = started + duration;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let share: Vec<Target> = targets
            .iter()
            .skip(c)
            .step_by(connections)
            .cloned()
            .collect();
        tasks.push(tokio::spawn(connection(addr, share, until)));
    }
    let mut out = Outcome {
        ok: 0,
        beats: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let c = t.await??;
        out.ok += c.ok;
        out.beats += c.beats;
        out.errors += c.errors;
        out.latencies.extend(c.latencies);
    }
    out.elapsed = started.elapsed();
    out.latencies.sort_unstable();
    Ok(out)
}
