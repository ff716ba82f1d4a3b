//! Write-behind of heartbeat times (and token last-use times).
//!
//! Heartbeats are taken in memory; every `flush_interval` the times that
//! changed are written to the store in one transaction, for display and for
//! restarts. Nothing relies on the stored time being fresher than that: the
//! engine holds the truth while it runs, and a restart grants a full grace
//! period anyway.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rollcall_store::Store;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::auth::Tokens;
use crate::engine::Engine;
use crate::metrics::Metrics;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Flusher {
    engine: Arc<Engine>,
    tokens: Arc<Tokens>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Flusher {
    pub fn new(
        engine: Arc<Engine>,
        tokens: Arc<Tokens>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Flusher {
            engine,
            tokens,
            store,
            metrics,
        }
    }

    /// Writes everything pending; returns how many heartbeat times.
    pub async fn step(&self) -> usize {
        let started = Instant::now();
        let marks = self.engine.take_dirty();
        let n = marks.len();
        let mut ok = true;
        let mut written = n;
        if let Err(e) = self.store.flush_heartbeats(&marks).await {
            ok = false;
            written = 0;
            // Logged once per incident by the store's health watch.
            debug!(error = %e, marks = n, "writing heartbeat times behind failed; will retry");
            self.engine.restore_dirty(&marks);
        }
        let uses = self.tokens.take_uses();
        if let Err(e) = self.store.touch_tokens(&uses).await {
            ok = false;
            debug!(error = %e, "writing token last-use times failed; will retry");
            self.tokens.restore_uses(uses);
        }
        self.metrics.flushed(written, started.elapsed(), ok);
        n
    }

    /// Runs every `interval` until `stop` is cancelled, then flushes once more.
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => { self.step().await; }
            }
        }
        self.step().await;
    }
}
