//! # rollcall-store
//!
//! rollcall's durable state behind one narrow trait, [`Store`]: workers,
//! machines, the event log and API tokens. The store is the source of truth;
//! the server's liveness engine keeps only the freshness of heartbeats in
//! memory and writes *changes of state* here, in batches.
//!
//! ## Layout
//!
//! - [`records`]: the typed rows; `rows` turns database rows into them, for
//!   both backends.
//! - [`sqlite`]: the embedded default (WAL, one process per file), with
//!   `sqlite_batch`, its multi-row fast path, and [`sqlite::backup`], a
//!   consistent copy taken while a server writes; migrations in
//!   `migrations/sqlite`.
//! - [`postgres`]: several replicas on one database, with `postgres::batch`
//!   (a batch as statements over arrays) and [`postgres::ha`] (the leader
//!   lock, the epoch fence, LISTEN/NOTIFY); migrations in
//!   `migrations/postgres`.
//! - `testing` (feature `testing`): a scratch PostgreSQL database per test.
//!
//! ## Guarantees every implementation gives
//!
//! - [`Store::commit`] applies a batch in one transaction: each write only if
//!   the worker still has the status and session it expects; the events of
//!   applied writes; and, for every machine the batch touched, its derived
//!   status (`online` iff one of its workers is online or draining) with a
//!   `machine.*` event when it changed.
//! - Event `seq` is strictly increasing in commit order and never reused,
//!   even after pruning.
//! - `last_heartbeat_at` is only ever moved forward, and only within the
//!   session it was measured in.

pub mod alerts;
pub mod history;
pub mod postgres;
pub mod records;
mod rows;
pub mod sqlite;
mod sqlite_backup;
mod sqlite_batch;
#[cfg(feature = "testing")]
pub mod testing;

use async_trait::async_trait;
use rollcall_core::{IncidentId, MachineId, MachineStatus, Timestamp, TokenId, WorkerId};
use thiserror::Error;

pub use alerts::{
    AlertCommit, Attempt, IncidentEvent, IncidentRecord, IncidentStatus, NewNotification,
    Notification, OutboxStats, StoredRule,
};
pub use history::{FleetQuery, FleetSummary, HealthSpan};
pub use records::*;

use rollcall_core::health::{Observation, Window};

/// Errors from the store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row held something this version cannot read.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Another process holds this database.
    #[error("{0}")]
    Locked(String),
    /// A fenced write of a replica that is not (or no longer) the active one
    /// (see [`postgres::PgStore::fence_writes`]). Nothing was written.
    #[error("this replica is not the active one: the write was refused")]
    Fenced,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage contract. See the crate docs for the guarantees.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Answers when the database does.
    async fn ping(&self) -> Result<()>;

    /// Commits a one-row write transaction: proof that the store can still
    /// make a change durable (a full disk or an I/O error fails it), where
    /// [`Store::ping`] only proves that it answers. For readiness checks.
    async fn probe_write(&self, at: Timestamp) -> Result<()>;

    /// Called once at a clean shutdown, when nothing writes any more: leaves
    /// the database complete on its own and releases it. SQLite checkpoints
    /// its WAL into the main file (truncating the WAL) and closes its
    /// connections, so `rollcall.db` alone holds every commit. The default
    /// does nothing.
    async fn shutdown(&self) -> Result<()> {
        Ok(())
    }

    /// Every worker, for loading the liveness engine at start-up.
    async fn load_workers(&self) -> Result<Vec<WorkerRecord>>;

    /// Applies a batch of conditional writes in one transaction.
    async fn commit(&self, writes: Vec<WorkerWrite>) -> Result<CommitResult>;

    /// Re-derives every machine's status from its workers and records a
    /// `machine.*` event for each that was wrong (rows edited from outside).
    async fn reconcile_machines(&self, at: Timestamp) -> Result<Vec<EventRecord>>;

    /// Writes heartbeat times behind; marks of an ended session are ignored.
    async fn flush_heartbeats(&self, marks: &[HeartbeatMark]) -> Result<()>;

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>>;
    async fn list_workers(
        &self,
        filter: &WorkerFilter,
        after: Option<&WorkerId>,
        limit: usize,
    ) -> Result<Page<WorkerRecord>>;

    async fn get_machine(&self, id: &MachineId) -> Result<Option<MachineRecord>>;
    async fn list_machines(
        &self,
        status: Option<MachineStatus>,
        after: Option<&MachineId>,
        limit: usize,
    ) -> Result<Page<MachineRecord>>;

    /// Events with `seq > after`, oldest first.
    async fn list_events(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: usize,
    ) -> Result<Page<EventRecord>>;
    /// The largest `seq` ever assigned (0 if none).
    async fn last_seq(&self) -> Result<i64>;

    async fn insert_token(&self, token: &TokenRecord) -> Result<()>;
    async fn list_tokens(&self, after: Option<&TokenId>, limit: usize)
        -> Result<Page<TokenRecord>>;
    async fn all_tokens(&self) -> Result<Vec<TokenRecord>>;
    /// Whether a token was deleted.
    async fn delete_token(&self, id: &TokenId) -> Result<bool>;
    /// Records when tokens were last used (written behind).
    async fn touch_tokens(&self, uses: &[(TokenId, Timestamp)]) -> Result<()>;
    /// Deletes tokens whose expiry is at or before `now`; returns their ids.
    async fn delete_expired_tokens(&self, now: Timestamp) -> Result<Vec<TokenId>>;

    /// Offline workers whose status changed at or before `before`.
    async fn offline_workers_since(&self, before: Timestamp) -> Result<Vec<WorkerRecord>>;
    /// Deletes machines that have no workers; returns how many.
    async fn forget_empty_machines(&self) -> Result<u64>;
    /// Deletes events at or before `before`; returns how many.
    async fn prune_events(&self, before: Timestamp) -> Result<u64>;

    // Health history (see [`history`]). Every commit and reconciliation
    // records the spans its events end and begin, in its transaction.

    /// Begins an observation at `at` (a server's start, a replica's
    /// takeover): the time since the latest one ended is no data.
    async fn begin_observation(&self, at: Timestamp) -> Result<()>;
    /// Extends the observation that began at `start` to `at` (never back).
    async fn extend_observation(&self, start: Timestamp, at: Timestamp) -> Result<()>;
    /// Every observation, ordered by start.
    async fn observations(&self) -> Result<Vec<Observation>>;
    /// The spans that overlap `window` (ending at or after its start) of
    /// these workers, or of these machines and their workers.
    async fn health_spans(&self, of: SpansOf<'_>, window: Window) -> Result<Vec<HealthSpan>>;
    /// The fleet's sums and rankings over a window, by SQL aggregates.
    async fn fleet_health(&self, query: &FleetQuery) -> Result<FleetSummary>;
    /// Deletes spans that ended, and observations that ended, at or before
    /// `before`; returns how many spans.
    async fn prune_health(&self, before: Timestamp) -> Result<u64>;

    // Incidents and the outbox (see [`alerts`]).

    /// The `seq` of the last event the alerter consumed.
    async fn alert_cursor(&self) -> Result<i64>;
    /// Applies a step of the alerter in one transaction and returns the
    /// `incident.*` events it appended to the log, numbered; `None` (and
    /// nothing written) if the cursor had moved.
    async fn commit_alerts(&self, step: &AlertCommit) -> Result<Option<Vec<EventRecord>>>;
    /// Pending and open incidents.
    async fn current_incidents(&self) -> Result<Vec<IncidentRecord>>;
    /// Incidents newest first, optionally of one status.
    async fn list_incidents(
        &self,
        status: Option<IncidentStatus>,
        before: Option<&IncidentId>,
        limit: usize,
    ) -> Result<Page<IncidentRecord>>;
    async fn get_incident(&self, id: &IncidentId) -> Result<Option<IncidentRecord>>;
    /// Acknowledges an incident (the first acknowledgement stands); `None`
    /// if there is no such incident.
    async fn ack_incident(
        &self,
        id: &IncidentId,
        at: Timestamp,
        by: &str,
    ) -> Result<Option<IncidentRecord>>;
    /// Undelivered notifications due at `now`, oldest first, each only if no
    /// older notification of its incident to its channel is still waiting.
    async fn due_notifications(&self, now: Timestamp, limit: usize) -> Result<Vec<Notification>>;
    /// Records how an attempt to deliver notification `id` ended.
    async fn record_attempt(&self, id: i64, at: Timestamp, attempt: &Attempt) -> Result<()>;
    async fn outbox_stats(&self) -> Result<OutboxStats>;
    /// The alert rules made through the API, by name.
    async fn list_alert_rules(&self) -> Result<Vec<StoredRule>>;
    /// Creates or replaces a rule (keeping its creation time); `true` if it
    /// was created.
    async fn put_alert_rule(&self, rule: &StoredRule) -> Result<bool>;
    /// Deletes a rule; `false` if there was none of that name.
    async fn delete_alert_rule(&self, name: &str) -> Result<bool>;
}

/// Whose spans [`Store::health_spans`] reads.
#[derive(Debug, Clone, Copy)]
pub enum SpansOf<'a> {
    Workers(&'a [WorkerId]),
    /// The machines' own spans and their workers'.
    Machines(&'a [MachineId]),
}
