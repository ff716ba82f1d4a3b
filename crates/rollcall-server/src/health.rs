//! Whether the store can still make changes durable.
//!
//! Every write the server sends to the store (transition commits, the
//! write-behind flush, token changes, cleanup, readiness probes) goes
//! through [`Watched`], which reports its outcome to [`StoreHealth`]. A
//! failure starts an *incident*: one error line names its cause, the
//! `rollcall_store_writable` gauge drops to 0 and `/readyz` answers 503 with
//! the reason. The incident ends with the next write that succeeds (one
//! info line with its length and how many writes failed in it). Nothing in
//! here decides what a failed write means for the caller: the writer
//! refuses or retries what it carried (see `writer.rs`).
//!
//! A write refused because this replica is not the active one
//! ([`StoreError::Fenced`]) says nothing about the store and is not counted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use rollcall_core::{MachineId, MachineStatus, Timestamp, TokenId, WorkerId};
use rollcall_store::{
    CommitResult, EventFilter, EventRecord, HeartbeatMark, MachineRecord, Page, Result, Store,
    StoreError, TokenRecord, WorkerFilter, WorkerRecord, WorkerWrite,
};
use tracing::{error, info};

use crate::metrics::Metrics;

/// How long a readiness probe's answer is reused: `/readyz` polled in a
/// loop costs at most one small commit per interval.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A run of failed writes.
#[derive(Debug, Clone)]
struct Incident {
    since: Instant,
    failures: u64,
    /// The operation and error of the latest failure.
    last: String,
}

#[derive(Debug, Default)]
struct State {
    incident: Option<Incident>,
    /// When the last write (of any kind) finished, and whether it failed.
    last_write: Option<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub struct StoreHealth {
    state: Mutex<State>,
    /// One probe at a time; holds when the last one ran.
    probing: tokio::sync::Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl StoreHealth {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        StoreHealth {
            state: Mutex::new(State::default()),
            probing: tokio::sync::Mutex::new(None),
            metrics,
        }
    }

    /// Records a failed write of `op`.
    pub fn failed(&self, op: &'static str, e: &StoreError) {
        let mut s = self.state.lock();
        s.last_write = Some(Instant::now());
        let last = format!("{op}: {e}");
        match &mut s.incident {
            Some(i) => {
                i.failures += 1;
                tracing::debug!(op, error = %e, failures = i.failures, "store write failed again");
                i.last = last;
                self.metrics.store_write_failed(false);
            }
            None => {
                error!(
                    op,
                    error = %e,
                    "the store cannot commit: changes are refused with 503 and expiries wait \
                     until it can again (heartbeats of live workers are still taken)"
                );
                s.incident = Some(Incident {
                    since: Instant::now(),
                    failures: 1,
                    last,
                });
                self.metrics.store_write_failed(true);
            }
        }
    }

    /// Records a write that committed.
    pub fn succeeded(&self) {
        let mut s = self.state.lock();
        s.last_write = Some(Instant::now());
        if let Some(i) = s.incident.take() {
            info!(
                after_ms = i.since.elapsed().as_millis() as u64,
                failed_writes = i.failures,
                "the store commits again"
            );
            self.metrics.store_write_succeeded();
        }
    }

    /// Why the store cannot commit now, if it cannot: the latest failure
    /// and how long the incident has lasted.
    pub fn failing(&self) -> Option<String> {
        self.state.lock().incident.as_ref().map(|i| {
            format!(
                "the store cannot commit (for {} ms, {} failed writes): {}",
                i.since.elapsed().as_millis(),
                i.failures,
                i.last
            )
        })
    }

    /// Proves the store writable unless a write finished within
    /// [`PROBE_INTERVAL`]: commits a probe (at most one at a time and one
    /// per interval). Returns [`StoreHealth::failing`] afterwards.
    pub async fn check(&self, store: &dyn Store, now: Timestamp) -> Option<String> {
        let mut last_probe = self.probing.lock().await;
        let recent = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < PROBE_INTERVAL);
        if !recent(*last_probe) && !recent(self.state.lock().last_write) {
            // `store` is the watched one: the outcome is recorded.
            let _ = store.probe_write(now).await;
            *last_probe = Some(Instant::now());
        }
        drop(last_probe);
        self.failing()
    }
}

/// A [`Store`] whose writes report to a [`StoreHealth`].
#[derive(Debug)]
pub struct Watched {
    inner: Arc<dyn Store>,
    health: Arc<StoreHealth>,
}

impl Watched {
    pub fn new(inner: Arc<dyn Store>, health: Arc<StoreHealth>) -> Self {
        Watched { inner, health }
    }

    fn record<T>(&self, op: &'static str, r: Result<T>) -> Result<T> {
        match &r {
            Ok(_) => self.health.succeeded(),
            Err(StoreError::Fenced) => {}
            Err(e) => self.health.failed(op, e),
        }
        r
    }
}

#[async_trait]
impl Store for Watched {
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }

    async fn shutdown(&self) -> Result<()> {
        self.inner.shutdown().await
    }

    async fn probe_write(&self, at: Timestamp) -> Result<()> {
        let r = self.inner.probe_write(at).await;
        self.record("probe", r)
    }

    async fn load_workers(&self) -> Result<Vec<WorkerRecord>> {
        self.inner.load_workers().await
    }

    async fn commit(&self, writes: Vec<WorkerWrite>) -> Result<CommitResult> {
        let r = self.inner.commit(writes).await;
        self.record("commit", r)
    }

    async fn reconcile_machines(&self, at: Timestamp) -> Result<Vec<EventRecord>> {
        let r = self.inner.reconcile_machines(at).await;
        self.record("reconcile machines", r)
    }

    async fn flush_heartbeats(&self, marks: &[HeartbeatMark]) -> Result<()> {
        let r = self.inner.flush_heartbeats(marks).await;
        if marks.is_empty() {
            // Wrote nothing: proves nothing either way.
            return r;
        }
        self.record("flush heartbeat times", r)
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        self.inner.get_worker(id).await
    }

    async fn list_workers(
        &self,
        filter: &WorkerFilter,
        after: Option<&WorkerId>,
        limit: usize,
    ) -> Result<Page<WorkerRecord>> {
        self.inner.list_workers(filter, after, limit).await
    }

    async fn get_machine(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        self.inner.get_machine(id).await
    }

    async fn list_machines(
        &self,
        status: Option<MachineStatus>,
        after: Option<&MachineId>,
        limit: usize,
    ) -> Result<Page<MachineRecord>> {
        self.inner.list_machines(status, after, limit).await
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: usize,
    ) -> Result<Page<EventRecord>> {
        self.inner.list_events(filter, after, limit).await
    }

    async fn last_seq(&self) -> Result<i64> {
        self.inner.last_seq().await
    }

    async fn insert_token(&self, token: &TokenRecord) -> Result<()> {
        let r = self.inner.insert_token(token).await;
        self.record("insert token", r)
    }

    async fn list_tokens(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Page<TokenRecord>> {
        self.inner.list_tokens(after, limit).await
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.inner.all_tokens().await
    }

    async fn delete_token(&self, id: &TokenId) -> Result<bool> {
        let r = self.inner.delete_token(id).await;
        self.record("delete token", r)
    }

    async fn touch_tokens(&self, uses: &[(TokenId, Timestamp)]) -> Result<()> {
        let r = self.inner.touch_tokens(uses).await;
        if uses.is_empty() {
            return r;
        }
        self.record("record token use", r)
    }

    async fn delete_expired_tokens(&self, now: Timestamp) -> Result<Vec<TokenId>> {
        let r = self.inner.delete_expired_tokens(now).await;
        self.record("delete expired tokens", r)
    }

    async fn offline_workers_since(&self, before: Timestamp) -> Result<Vec<WorkerRecord>> {
        self.inner.offline_workers_since(before).await
    }

    async fn forget_empty_machines(&self) -> Result<u64> {
        let r = self.inner.forget_empty_machines().await;
        self.record("forget empty machines", r)
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64> {
        let r = self.inner.prune_events(before).await;
        self.record("prune events", r)
    }

    async fn begin_observation(&self, at: Timestamp) -> Result<()> {
        let r = self.inner.begin_observation(at).await;
        self.record("begin observation", r)
    }

    async fn extend_observation(&self, start: Timestamp, at: Timestamp) -> Result<()> {
        let r = self.inner.extend_observation(start, at).await;
        self.record("extend observation", r)
    }

    async fn observations(&self) -> Result<Vec<rollcall_core::health::Observation>> {
        self.inner.observations().await
    }

    async fn health_spans(
        &self,
        of: rollcall_store::SpansOf<'_>,
        window: rollcall_core::health::Window,
    ) -> Result<Vec<rollcall_store::HealthSpan>> {
        self.inner.health_spans(of, window).await
    }

    async fn fleet_health(
        &self,
        query: &rollcall_store::FleetQuery,
    ) -> Result<rollcall_store::FleetSummary> {
        self.inner.fleet_health(query).await
    }

    async fn prune_health(&self, before: Timestamp) -> Result<u64> {
        let r = self.inner.prune_health(before).await;
        self.record("prune health history", r)
    }

    async fn alert_cursor(&self) -> Result<i64> {
        self.inner.alert_cursor().await
    }

    async fn commit_alerts(
        &self,
        step: &rollcall_store::AlertCommit,
    ) -> Result<Option<Vec<EventRecord>>> {
        let r = self.inner.commit_alerts(step).await;
        self.record("commit incidents", r)
    }

    async fn current_incidents(&self) -> Result<Vec<rollcall_store::IncidentRecord>> {
        self.inner.current_incidents().await
    }

    async fn list_incidents(
        &self,
        status: Option<rollcall_store::IncidentStatus>,
        before: Option<&rollcall_core::IncidentId>,
        limit: usize,
    ) -> Result<Page<rollcall_store::IncidentRecord>> {
        self.inner.list_incidents(status, before, limit).await
    }

    async fn get_incident(
        &self,
        id: &rollcall_core::IncidentId,
    ) -> Result<Option<rollcall_store::IncidentRecord>> {
        self.inner.get_incident(id).await
    }

    async fn ack_incident(
        &self,
        id: &rollcall_core::IncidentId,
        at: Timestamp,
        by: &str,
    ) -> Result<Option<rollcall_store::IncidentRecord>> {
        let r = self.inner.ack_incident(id, at, by).await;
        self.record("acknowledge an incident", r)
    }

    async fn due_notifications(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<rollcall_store::Notification>> {
        self.inner.due_notifications(now, limit).await
    }

    async fn record_attempt(
        &self,
        id: i64,
        at: Timestamp,
        attempt: &rollcall_store::Attempt,
    ) -> Result<()> {
        let r = self.inner.record_attempt(id, at, attempt).await;
        self.record("record a delivery", r)
    }

    async fn outbox_stats(&self) -> Result<rollcall_store::OutboxStats> {
        self.inner.outbox_stats().await
    }

    async fn list_alert_rules(&self) -> Result<Vec<rollcall_store::StoredRule>> {
        self.inner.list_alert_rules().await
    }

    async fn put_alert_rule(&self, rule: &rollcall_store::StoredRule) -> Result<bool> {
        let r = self.inner.put_alert_rule(rule).await;
        self.record("store an alert rule", r)
    }

    async fn delete_alert_rule(&self, name: &str) -> Result<bool> {
        let r = self.inner.delete_alert_rule(name).await;
        self.record("delete an alert rule", r)
    }
}
