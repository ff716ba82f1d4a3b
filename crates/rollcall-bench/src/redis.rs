//! The Redis baseline: what many teams use for heartbeats instead, a
//! `SET key value EX ttl` per heartbeat, measured with `redis-benchmark`
//! at the same concurrency.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// What one `redis-benchmark` run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RedisRun {
    /// Commands per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `redis-benchmark` with `SET hb:<random> online EX 90` over
/// `connections` connections, `pipeline` commands per round trip.
pub fn run(
    url: &str,
    connections: usize,
    requests: usize,
    pipeline: usize,
    keys: usize,
) -> Result<RedisRun> {
    let (host, port) = url.rsplit_once(':').context("--redis must be HOST:PORT")?;
    let out = Command::new("redis-benchmark")
        .args(["-h", host, "-p", port, "--csv", "-c"])
        .arg(connections.to_string())
        .arg("-n")
        .arg(requests.to_string())
        .arg("-P")
        .arg(pipeline.to_string())
        .arg("-r")
        .arg(keys.to_string())
        .args(["SET", "hb:__rand_int__", "online", "EX", "90"])
        .output()
        .context("running redis-benchmark (is it installed?)")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

/// Parses the `--csv` output: a header line, then
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"`.
fn parse(csv: &str) -> Result<RedisRun> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .context("empty redis-benchmark output")?
        .split(',')
        .map(|f| f.trim_matches('"').to_owned())
        .collect();
    let row: Vec<String> = lines
        .next_back()
        .context("no result row from redis-benchmark")?
        .split("\",\"")
        .map(|f| f.trim_matches('"').to_owned())
        .collect();
    let field = |name: &str| -> Result<f64> {
        let i = header
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("no {name} column in {csv:?}"))?;
        row.get(i)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("bad {name} in {csv:?}"))
    };
    Ok(RedisRun {
        rps: field("rps")?,
        p50_ms: field("p50_latency_ms")?,
        p99_ms: field("p99_latency_ms")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_csv() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                   \"SET hb:__rand_int__ online EX 90\",\"25348.54\",\"0.260\",\"0.016\",\"0.071\",\"0.415\",\"5.103\",\"16.079\"\n";
        let r = parse(csv).unwrap();
        assert_eq!(r.rps, 25348.54);
        assert_eq!(r.p50_ms, 0.071);
        assert_eq!(r.p99_ms, 5.103);
    }
}
