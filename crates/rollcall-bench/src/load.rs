//! The load loop: C keep-alive HTTP/1.1 connections, each sending requests
//! back to back over its share of the targets, for a fixed time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;

/// One request to send repeatedly.
#[derive(Debug, Clone)]
pub struct Target {
    pub path: String,
    pub token: String,
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Sorted latencies of a sample of requests.
    pub latencies: Vec<Duration>,
}

impl Outcome {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn p(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * q).round() as usize;
        self.latencies[i]
    }
}

async fn connection(
    addr: SocketAddr,
    targets: Vec<Target>,
    until: Instant,
) -> Result<(u64, u64, Vec<Duration>)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let host = addr.to_string();
    let (mut ok, mut errors) = (0u64, 0u64);
    let mut latencies = Vec::new();
    let mut i = 0usize;
    while Instant::now() < until {
        let t = &targets[i % targets.len()];
        i += 1;
        let req = Request::post(&t.path)
            .header("host", &host)
            .header("authorization", format!("Bearer {}", t.token))
            .body(Empty::<Bytes>::new())?;
        let started = Instant::now();
        send.ready().await?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        resp.into_body().collect().await?;
        if status.is_success() {
            ok += 1;
        } else {
            errors += 1;
        }
        // Every 16th request is timed, enough for the quantiles.
        if i.is_multiple_of(16) {
            latencies.push(started.elapsed());
        }
    }
    Ok((ok, errors, latencies))
}

/// Runs the load for `duration` over `connections` connections.
pub async fn run(
    addr: SocketAddr,
    targets: &[Target],
    connections: usize,
    duration: Duration,
) -> Result<Outcome> {
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
        errors: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for t in tasks {
        let (ok, errors, lat) = t.await??;
        out.ok += ok;
        out.errors += errors;
        out.latencies.extend(lat);
    }
    out.elapsed = started.elapsed();
    out.latencies.sort_unstable();
    Ok(out)
}
