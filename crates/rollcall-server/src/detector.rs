//! The detector: turns passed deadlines into `offline(stale)` transitions
//! within milliseconds.
//!
//! It sleeps until the engine's earliest deadline (or until an earlier one is
//! armed), claims every worker whose deadline has really passed, and hands
//! them to the transition writer, which commits them in batches. One step
//! ([`Detector::step`]) is callable on its own; [`Detector::run`] is the thin
//! loop around it.

use std::sync::Arc;
use std::time::Duration;

use rollcall_core::Timestamp;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::clock::Clock;
use crate::engine::Engine;
use crate::pause::PauseWatch;
use crate::writer::{Writer, MAX_BATCH};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Detector {
    engine: Arc<Engine>,
    writer: Writer,
    clock: Arc<dyn Clock>,
    pause: Arc<PauseWatch>,
}

/// The longest the detector sleeps without looking again; bounds the effect
/// of a wall-clock jump on a sleeping detector.
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl Detector {
    pub fn new(
        engine: Arc<Engine>,
        writer: Writer,
        clock: Arc<dyn Clock>,
        pause: Arc<PauseWatch>,
    ) -> Self {
        Detector {
            engine,
            writer,
            clock,
            pause,
        }
    }

    /// Claims every expired worker and submits its stale transition.
    /// Returns how many were submitted.
    pub async fn step(&self, now: Timestamp) -> usize {
        let mut total = 0;
        loop {
            let batch = self.engine.claim_expired(now, MAX_BATCH);
            let n = batch.len();
            if n > 0 {
                let late = batch
                    .iter()
                    .map(|e| now.diff_ms(e.deadline))
                    .max()
                    .unwrap_or(0);
                tracing::debug!(claimed = n, max_late_ms = late, "claimed expired workers");
            }
            for e in batch {
                let id = e.id.clone();
                if let Err(err) = self.writer.expire(e).await {
                    warn!(worker_id = %id, error = %err, "could not submit a stale transition");
                    self.engine.end_change(&id);
                }
            }
            total += n;
            if n < MAX_BATCH {
                return total;
            }
        }
    }

    /// Runs until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            // The detector may be the first to wake after a pause of the
            // whole server: it must not expire deadlines that passed while
            // nobody could look (see `pause`). The check grants the grace
            // before it returns.
            self.pause.check();
            let now = self.clock.now();
            self.step(now).await;
            let sleep = match self.engine.next_deadline() {
                // Wake just after the deadline: it has passed once the clock
                // is strictly beyond it.
                Some(d) => Duration::from_millis((d.diff_ms(now) + 1).max(0) as u64),
                None => MAX_SLEEP,
            }
            .min(MAX_SLEEP);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(sleep) => {}
                _ = self.engine.timer_changed() => {}
            }
        }
    }
}
