//! The event hub: committed events fan out to whoever listens (the SSE
//! stream, metrics, alerts). Only the transition writer publishes, and only
//! after the transaction that recorded the events has committed.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use rollcall_store::EventRecord;
use tokio::sync::broadcast;

/// How many events a slow subscriber may fall behind before it is told it
/// lagged (it then resumes from the log by `seq`).
const CAPACITY: usize = 16_384;

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Hub {
    tx: broadcast::Sender<Arc<EventRecord>>,
    /// The `seq` of the last event published (or known to be in the log).
    last: Arc<AtomicI64>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Hub {
            tx,
            last: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Publishes committed events, in `seq` order.
    pub fn publish(&self, events: impl IntoIterator<Item = EventRecord>) {
        for e in events {
            self.last.fetch_max(e.seq, Ordering::AcqRel);
            // No subscribers is fine: the log has everything.
            let _ = self.tx.send(Arc::new(e));
        }
    }

    /// The `seq` of the last event published, or marked with
    /// [`Hub::mark_published`].
    pub fn last_seq(&self) -> i64 {
        self.last.load(Ordering::Acquire)
    }

    /// Records that every event up to `seq` is accounted for without
    /// publishing it (what was in the log before this process started).
    pub fn mark_published(&self, seq: i64) {
        self.last.fetch_max(seq, Ordering::AcqRel);
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.tx.subscribe()
    }
}
