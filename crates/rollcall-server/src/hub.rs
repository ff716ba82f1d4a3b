//! The event hub: committed events fan out to whoever listens (the SSE
//! stream, metrics, alerts). Only the transition writer publishes, and only
//! after the transaction that recorded the events has committed.

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
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Hub { tx }
    }

    /// Publishes committed events, in `seq` order.
    pub fn publish(&self, events: impl IntoIterator<Item = EventRecord>) {
        for e in events {
            // No subscribers is fine: the log has everything.
            let _ = self.tx.send(Arc::new(e));
        }
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.tx.subscribe()
    }
}
