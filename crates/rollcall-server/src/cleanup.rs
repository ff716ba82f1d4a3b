//! The periodic cleanup tasks: a safety net for detection, and housekeeping.
//!
//! - [`Cleaner::detect_stale_workers`] (every `sweep_interval`, default 2 min)
//!   reconciles the store with the engine — rows the engine does not know or
//!   disagrees with (edited from outside) are reloaded, the store being the
//!   truth — marks offline any live worker whose deadline passed without the
//!   detector having done so, and re-derives every machine's status. The
//!   detector, not this sweep, bounds detection time.
//! - [`Cleaner::run_all_cleanup_tasks`] (every `cleanup_interval`, default
//!   10 min) runs the sweep, then forgets workers offline for longer than
//!   `forget_offline_after` and machines left without workers, prunes events
//!   older than `event_retention` and deletes expired tokens.
//!
//! Both are single steps that tests call directly; [`Cleaner::run`] is the
//! thin schedule loop. Every run logs its result object.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollcall_core::Status;
use rollcall_store::{Store, StoreError, WorkerFilter};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::auth::Tokens;
use crate::clock::Clock;
use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::pause::PauseWatch;
use crate::writer::{WriteError, Writer};

/// The result of a stale sweep.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct StaleReport {
    pub success: bool,
    /// Always 0: the sweep marks workers offline, it deletes nothing.
    pub deleted_count: u64,
    pub marked_offline_count: u64,
    pub affected_machine_ids: Vec<String>,
}

/// The result of a full cleanup.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
pub struct CleanupReport {
    pub success: bool,
    pub stale: StaleReport,
    pub forgotten_workers: u64,
    pub forgotten_machines: u64,
    pub pruned_events: u64,
    pub expired_tokens: u64,
    pub duration_ms: u64,
}

/// Why a cleanup run failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// How long cleanup keeps things.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub forget_offline_after: Duration,
    pub event_retention: Duration,
    pub health_retention: Duration,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Cleaner {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) engine: Arc<Engine>,
    pub(crate) writer: Writer,
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) retention: Retention,
    pub(crate) metrics: Arc<Metrics>,
    /// The active core's pause watch, checked before the sweep expires
    /// anything.
    pub(crate) pause: Option<Arc<PauseWatch>>,
}

impl Cleaner {
    /// The stale sweep. See the module docs.
    pub async fn detect_stale_workers(&self) -> Result<StaleReport, CleanupError> {
        let started = Instant::now();
        let result = self.sweep().await;
        let now_s = self.clock.now().as_millis() / 1000;
        self.metrics
            .sweep_ran(started.elapsed(), result.as_ref().ok(), now_s);
        result
    }

    /// The full cleanup. See the module docs.
    pub async fn run_all_cleanup_tasks(&self) -> Result<CleanupReport, CleanupError> {
        let started = Instant::now();
        let result = self.cleanup(started).await;
        let now_s = self.clock.now().as_millis() / 1000;
        self.metrics
            .cleanup_ran(started.elapsed(), result.as_ref().ok(), now_s);
        result
    }

    async fn sweep(&self) -> Result<StaleReport, CleanupError> {
        // 1. The store is the truth: reload what the engine has wrong.
        let engine_view = self.engine.statuses();
        let mut stored_live: HashSet<_> = HashSet::new();
        let mut reload = Vec::new();
        for status in [Status::Online, Status::Draining] {
            let filter = WorkerFilter {
                status: Some(status),
                machine_id: None,
            };
            let mut after = None;
            loop {
                let page = self
                    .store
                    .list_workers(&filter, after.as_ref(), 1000)
                    .await?;
                for row in &page.items {
                    stored_live.insert(row.id.clone());
                    if engine_view.get(&row.id) != Some(&(row.status, row.session)) {
                        reload.push(row.id.clone());
                    }
                }
                if !page.more {
                    break;
                }
                after = page.items.last().map(|w| w.id.clone());
            }
        }
        for (id, (status, _)) in &engine_view {
            if status.is_live() && !stored_live.contains(id) {
                reload.push(id.clone());
            }
        }
        // These are suspects only: the engine was read before the store, and
        // the writer commits before it installs, so a worker that changed
        // meanwhile looks different in the two reads. The writer confirms
        // each (see `WriterTask::install`): only a real disagreement — a
        // row edited from outside — reloads anything, and is logged.
        let suspects = reload.len();
        let checks = reload.into_iter().map(|id| {
            let writer = self.writer.clone();
            // The engine entry may be one the store no longer has; either
            // way the writer reconciles it.
            async move { writer.reload(id).await }
        });
        let diverged = futures::future::join_all(checks)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count();
        self.metrics.diverged(suspects, diverged);
        if diverged > 0 {
            warn!(
                workers = diverged,
                "the store and the engine disagreed; reloading from the store"
            );
        } else if suspects > 0 {
            tracing::debug!(
                workers = suspects,
                "workers changed while the sweep read them; the store and the engine agree"
            );
        }

        // 2. Live workers past their deadline that no timer caught (after
        // a pause, only once the pause's grace is given).
        if let Some(p) = &self.pause {
            p.check();
        }
        let now = self.clock.now();
        let overdue = self.engine.overdue(now);
        let waits = overdue.into_iter().map(|e| {
            let writer = self.writer.clone();
            async move { writer.expire_and_wait(e).await }
        });
        let mut marked = 0u64;
        let mut machines = BTreeSet::new();
        for r in futures::future::join_all(waits).await {
            if let Ok(Some(machine_id)) = r {
                marked += 1;
                machines.insert(machine_id.to_string());
            }
        }

        // 3. Machines whose stored status is wrong.
        let ids = self
            .writer
            .reconcile_machines()
            .await
            .map_err(CleanupError::Write)?;
        machines.extend(ids.iter().map(|m| m.to_string()));

        Ok(StaleReport {
            success: true,
            deleted_count: 0,
            marked_offline_count: marked,
            affected_machine_ids: machines.into_iter().collect(),
        })
    }

    async fn cleanup(&self, started: Instant) -> Result<CleanupReport, CleanupError> {
        let stale = self.detect_stale_workers().await?;
        let now = self.clock.now();

        let cutoff = now.minus(self.retention.forget_offline_after);
        let candidates = self.store.offline_workers_since(cutoff).await?;
        let forgets = candidates.into_iter().map(|w| {
            let writer = self.writer.clone();
            async move { writer.forget(w.id, cutoff).await }
        });
        let forgotten_workers = futures::future::join_all(forgets)
            .await
            .into_iter()
            .filter(|r| matches!(r, Ok(true)))
            .count() as u64;

        let forgotten_machines = self.store.forget_empty_machines().await?;
        let pruned_events = self
            .store
            .prune_events(now.minus(self.retention.event_retention))
            .await?;
        let pruned_health_spans = self
            .store
            .prune_health(now.minus(self.retention.health_retention))
            .await?;
        if pruned_health_spans > 0 {
            info!(
                pruned_health_spans,
                "pruned health history older than health_retention"
            );
        }
        let expired = self.store.delete_expired_tokens(now).await?;
        self.tokens.remove(&expired);

        Ok(CleanupReport {
            success: true,
            stale,
            forgotten_workers,
            forgotten_machines,
            pruned_events,
            expired_tokens: expired.len() as u64,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Runs the sweep every `sweep` and the full cleanup every `cleanup`,
    /// logging each result, until `stop` is cancelled.
    pub async fn run(self, sweep: Duration, cleanup: Duration, stop: CancellationToken) {
        let mut sweep_tick = tokio::time::interval(sweep);
        let mut cleanup_tick = tokio::time::interval(cleanup);
        for t in [&mut sweep_tick, &mut cleanup_tick] {
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        // Both fire at once on the first tick; skip it (start-up just loaded
        // everything with the restart grace).
        sweep_tick.tick().await;
        cleanup_tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = sweep_tick.tick() => match self.detect_stale_workers().await {
                    Ok(r) => info!(task = "detect_stale_workers", result = %json(&r), "cleanup run"),
                    Err(e) => warn!(task = "detect_stale_workers", error = %e, "cleanup run failed"),
                },
                _ = cleanup_tick.tick() => match self.run_all_cleanup_tasks().await {
                    Ok(r) => info!(task = "run_all_cleanup_tasks", result = %json(&r), "cleanup run"),
                    Err(e) => warn!(task = "run_all_cleanup_tasks", error = %e, "cleanup run failed"),
                },
            }
        }
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}
