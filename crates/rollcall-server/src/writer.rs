//! The transition writer: the one place where worker statuses change.
//!
//! Every change (registration, resume, drain, offline, delete, expiry,
//! forgetting) is a [`Request`] sent to a single task. It takes whatever
//! requests are queued (up to [`MAX_BATCH`]), plans each with the pure FSM in
//! arrival order — later requests for the same worker see the result of
//! earlier ones — and commits all resulting writes in one store transaction,
//! each conditional on the status and session it expects. Only after the
//! commit does it update the engine, publish the events and answer the
//! callers (ARCHITECTURE.md, invariant 5). One task, in order, is what makes
//! per-worker changes serial (invariant 3) without a lock per worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollcall_core::fsm::{self, Command, FsmError, Transition};
use rollcall_core::{
    policy, ExitStatus, Intervals, Labels, MachineId, OfflineReason, Status, Timestamp, TokenHash,
    TokenKind, TokenScope, WorkerId, WorkerName,
};
use rollcall_store::{
    EventFilter, EventRecord, Expect, MachineUpsert, NewEvent, Store, WorkerRecord, WorkerWrite,
};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::clock::Clock;
use crate::engine::{Beat, Engine, Expiry};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// The most requests committed in one transaction.
pub const MAX_BATCH: usize = 8_192;

/// After a failed commit, a claimed expiry is retried this much later.
const EXPIRY_RETRY: Duration = Duration::from_millis(250);

/// A registration, validated.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: WorkerName,
    pub machine_id: MachineId,
    pub hostname: Option<String>,
    pub machine_labels: Option<Labels>,
    pub labels: Labels,
    pub intervals: Intervals,
    /// The scope of the enroll token that asked, if it has one: the worker
    /// must be inside it, as it is when the registration commits.
    pub scope: Option<Arc<TokenScope>>,
}

/// A change to make.
#[derive(Debug, Clone)]
pub enum Request {
    Register(Registration),
    /// A heartbeat taken in memory found the worker offline (or its stale
    /// transition committing) at `at`: resume it. The heartbeat was already
    /// answered; the engine holds the change mark and the latest heartbeat
    /// time ([`Engine::heartbeat`]).
    Resume {
        id: WorkerId,
        at: Timestamp,
    },
    Drain {
        id: WorkerId,
    },
    Offline {
        id: WorkerId,
        reason: OfflineReason,
        /// With `Exited`: how the supervised process ended, if reported;
        /// recorded on the offline event.
        exit: Option<ExitStatus>,
    },
    /// An admin deletes the worker.
    Delete {
        id: WorkerId,
    },
    /// Cleanup forgets a worker that has been offline since at least
    /// `offline_since`.
    Forget {
        id: WorkerId,
        offline_since: Timestamp,
    },
    /// The detector claimed an expired deadline.
    Expire(Expiry),
    /// The sweep found the store disagreeing with the engine: reload the
    /// worker from the store, which is the truth.
    Reload {
        id: WorkerId,
    },
    /// The sweep re-derives every machine's status from its workers. It runs
    /// here, after the batch's own commit, so that its events are published
    /// by the one publisher, in `seq` order.
    ReconcileMachines,
    /// A step of the alerter (incidents, notifications, its cursor and the
    /// `incident.*` events). Committed here, after the batch's own commit,
    /// for the same reason as [`Request::ReconcileMachines`].
    CommitAlerts(Box<rollcall_store::AlertCommit>),
}

impl Request {
    /// The existing worker this request changes, if it names one.
    fn worker(&self) -> Option<&WorkerId> {
        match self {
            Request::Register(_) | Request::ReconcileMachines | Request::CommitAlerts(_) => None,
            Request::Resume { id, .. }
            | Request::Drain { id }
            | Request::Offline { id, .. }
            | Request::Delete { id }
            | Request::Forget { id, .. }
            | Request::Reload { id } => Some(id),
            Request::Expire(e) => Some(&e.id),
        }
    }
}

/// What a committed request did.
#[derive(Debug, Clone)]
pub enum Reply {
    Registered {
        record: WorkerRecord,
        deadline: Timestamp,
        /// The new worker token, shown once.
        token: String,
        /// False when an existing worker was registered again.
        created: bool,
    },
    Beat {
        beat: Beat,
        resumed: bool,
    },
    Worker {
        record: WorkerRecord,
        deadline: Option<Timestamp>,
    },
    Deleted,
    /// An expiry or forgetting: whether it changed anything, and where.
    Swept {
        applied: bool,
        machine_id: MachineId,
    },
    /// A reload asked for by the sweep: whether the store really
    /// disagreed with the engine (and the engine took the store's row).
    Reloaded {
        diverged: bool,
    },
    /// Machines whose stored status was wrong and has been corrected.
    Reconciled(Vec<MachineId>),
    /// An alerter's step: whether it was applied (`false`: its cursor had
    /// moved, another replica is alerting).
    AlertsCommitted(bool),
}

/// A committed registration.
#[derive(Debug, Clone)]
pub struct RegisteredWorker {
    pub record: WorkerRecord,
    pub deadline: Timestamp,
    /// The new worker token, shown once.
    pub token: String,
    /// False when an existing worker was registered again.
    pub created: bool,
}

/// A worker as a committed change left it; its deadline while it is live.
#[derive(Debug, Clone)]
pub struct Changed {
    pub record: WorkerRecord,
    pub deadline: Option<Timestamp>,
}

fn changed(call: &str, reply: Reply) -> Result<Changed, WriteError> {
    match reply {
        Reply::Worker { record, deadline } => Ok(Changed { record, deadline }),
        other => Err(mismatch(call, &other)),
    }
}

/// A reply of another kind than its request's: a bug in the planner. The
/// caller is refused, as when the store is unavailable, and it is logged.
fn mismatch(call: &str, reply: &Reply) -> WriteError {
    error!(
        ?reply,
        "the writer answered {call} with a reply of another kind"
    );
    WriteError::Unavailable(format!("internal error: unexpected answer to {call}"))
}

/// Why a request was not carried out.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum WriteError {
    #[error("worker not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// Outside the scope of the token that asked.
    #[error("{0}")]
    Forbidden(String),
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
}

struct Job {
    req: Request,
    reply: Option<oneshot::Sender<Result<Reply, WriteError>>>,
    /// Set when submitting marked a change as queued on this worker.
    holds: Option<WorkerId>,
}

/// Handle for submitting requests; cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    /// Unbounded: a heartbeat that queues a resume must never wait. What
    /// can be queued is bounded anyway: at most one expiry and one resume
    /// per worker, plus one request per caller waiting for its answer.
    tx: mpsc::UnboundedSender<Job>,
    engine: Arc<Engine>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("req", &self.req).finish()
    }
}

impl Writer {
    /// Starts the writer task. It ends when every `Writer` handle is dropped
    /// and the queue is drained.
    pub fn start(
        store: Arc<dyn Store>,
        engine: Arc<Engine>,
        hub: Hub,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = WriterTask {
            store,
            engine: engine.clone(),
            hub,
            clock,
            metrics,
        };
        let handle = tokio::spawn(task.run(rx));
        (Writer { tx, engine }, handle)
    }

    /// A handle with no writer behind it: every request is refused as
    /// unavailable. A standby replica changes nothing itself.
    pub fn detached(engine: Arc<Engine>) -> Writer {
        let (tx, _) = mpsc::unbounded_channel();
        Writer { tx, engine }
    }

    /// Registers a worker (again).
    pub async fn register(&self, reg: Registration) -> Result<RegisteredWorker, WriteError> {
        match self.submit(Request::Register(reg)).await? {
            Reply::Registered {
                record,
                deadline,
                token,
                created,
            } => Ok(RegisteredWorker {
                record,
                deadline,
                token,
                created,
            }),
            other => Err(mismatch("register", &other)),
        }
    }

    /// Drains a worker.
    pub async fn drain(&self, id: WorkerId) -> Result<Changed, WriteError> {
        changed("drain", self.submit(Request::Drain { id }).await?)
    }

    /// Takes a worker offline, with how its process ended if it exited.
    pub async fn offline(
        &self,
        id: WorkerId,
        reason: OfflineReason,
        exit: Option<ExitStatus>,
    ) -> Result<Changed, WriteError> {
        changed(
            "offline",
            self.submit(Request::Offline { id, reason, exit }).await?,
        )
    }

    /// Deletes a worker.
    pub async fn delete(&self, id: WorkerId) -> Result<(), WriteError> {
        match self.submit(Request::Delete { id }).await? {
            Reply::Deleted => Ok(()),
            other => Err(mismatch("delete", &other)),
        }
    }

    /// Forgets a worker that has been offline since at least
    /// `offline_since`; whether it did.
    pub async fn forget(&self, id: WorkerId, offline_since: Timestamp) -> Result<bool, WriteError> {
        match self.submit(Request::Forget { id, offline_since }).await? {
            Reply::Swept { applied, .. } => Ok(applied),
            other => Err(mismatch("forget", &other)),
        }
    }

    /// Has the writer check a worker the sweep suspects against the store;
    /// whether they really disagreed (and the engine took the store's row).
    pub async fn reload(&self, id: WorkerId) -> Result<bool, WriteError> {
        match self.submit(Request::Reload { id }).await? {
            Reply::Reloaded { diverged } => Ok(diverged),
            other => Err(mismatch("reload", &other)),
        }
    }

    /// Re-derives every machine's status; the machines that were wrong.
    pub async fn reconcile_machines(&self) -> Result<Vec<MachineId>, WriteError> {
        match self.submit(Request::ReconcileMachines).await? {
            Reply::Reconciled(ids) => Ok(ids),
            other => Err(mismatch("reconcile_machines", &other)),
        }
    }

    /// Submits a request and waits until it is committed (or refused).
    async fn submit(&self, req: Request) -> Result<Reply, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(req, Some(tx), false).await?;
        rx.await
            .map_err(|_| WriteError::Unavailable("the server is shutting down".into()))?
    }

    /// Commits a step of the alerter and publishes its events; `false` if
    /// its cursor had moved (nothing written).
    pub async fn commit_alerts(
        &self,
        step: rollcall_store::AlertCommit,
    ) -> Result<bool, WriteError> {
        match self.submit(Request::CommitAlerts(Box::new(step))).await? {
            Reply::AlertsCommitted(applied) => Ok(applied),
            other => Err(mismatch("an alerter's step", &other)),
        }
    }

    /// Submits a detector expiry (already claimed in the engine) without
    /// waiting for it.
    pub async fn expire(&self, e: Expiry) -> Result<(), WriteError> {
        self.enqueue(Request::Expire(e), None, true).await
    }

    /// Queues the resume claimed by a heartbeat ([`crate::engine::FastBeat::Resuming`])
    /// without waiting for it. On failure the claim is released.
    pub async fn resume(&self, id: WorkerId, at: Timestamp) -> Result<(), WriteError> {
        let r = self
            .enqueue(Request::Resume { id: id.clone(), at }, None, true)
            .await;
        if r.is_err() {
            self.engine.end_resume(&id);
        }
        r
    }

    /// Submits an expiry and waits for its outcome (used by the sweep): the
    /// worker's machine if the worker was marked offline.
    pub async fn expire_and_wait(&self, e: Expiry) -> Result<Option<MachineId>, WriteError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(Request::Expire(e), Some(tx), true).await?;
        let reply = rx
            .await
            .map_err(|_| WriteError::Unavailable("the server is shutting down".into()))??;
        match reply {
            Reply::Swept {
                applied,
                machine_id,
            } => Ok(applied.then_some(machine_id)),
            other => Err(mismatch("expire", &other)),
        }
    }

    async fn enqueue(
        &self,
        req: Request,
        reply: Option<oneshot::Sender<Result<Reply, WriteError>>>,
        already_claimed: bool,
    ) -> Result<(), WriteError> {
        let holds = match req.worker() {
            Some(id) if already_claimed => Some(id.clone()),
            Some(id) if !matches!(req, Request::Reload { .. }) => {
                if !self.engine.begin_change(id) {
                    return Err(WriteError::NotFound);
                }
                Some(id.clone())
            }
            _ => None,
        };
        let job = Job { req, reply, holds };
        if let Err(mpsc::error::SendError(job)) = self.tx.send(job) {
            if let Some(id) = &job.holds {
                self.engine.end_change(id);
            }
            return Err(WriteError::Unavailable(
                "the server is shutting down".into(),
            ));
        }
        Ok(())
    }
}

struct WriterTask {
    store: Arc<dyn Store>,
    engine: Arc<Engine>,
    hub: Hub,
    clock: Arc<dyn Clock>,
    /// Counts what was committed, after the commit.
    metrics: Arc<Metrics>,
}

/// A worker's state as the batch being planned sees it.
#[derive(Debug, Clone)]
struct Slot {
    /// `None`: deleted in this batch (or never existed).
    state: Option<(WorkerRecord, Timestamp)>,
    /// Some write for this worker was planned.
    written: bool,
    /// A planned write was not applied (or the commit failed).
    failed: bool,
    /// Reload from the store instead of installing `state`.
    reload: bool,
}

/// The outcome planned for one job, settled after the commit.
struct Planned {
    worker: Option<WorkerId>,
    result: Result<Reply, WriteError>,
}

fn new_events(t: &Transition, at: Timestamp, lag: Option<i64>) -> Vec<NewEvent> {
    t.events
        .iter()
        .map(|e| NewEvent {
            at,
            kind: e.kind,
            reason: e.reason,
            session: Some(e.session),
            detection_lag_ms: if e.reason == Some(rollcall_core::EventReason::Stale) {
                lag
            } else {
                None
            },
            exit: None,
        })
        .collect()
}

/// The write of a transition of an existing worker: the new record, only if
/// the stored one still has the status and session the plan started from.
fn update(
    record: WorkerRecord,
    expect: Expect,
    t: &Transition,
    now: Timestamp,
    lag: Option<i64>,
) -> WorkerWrite {
    WorkerWrite::Put {
        record,
        expect: Some(expect),
        machine: None,
        events: new_events(t, now, lag),
    }
}

fn fsm_error(e: FsmError) -> WriteError {
    match e {
        FsmError::NotFound => WriteError::NotFound,
        FsmError::DrainOffline => {
            WriteError::Conflict("the worker is offline and cannot be drained".into())
        }
        FsmError::ReasonNotRequestable(r) => {
            WriteError::Conflict(format!("offline reason {r} cannot be requested"))
        }
    }
}

fn expect_of(r: &WorkerRecord) -> Expect {
    Expect {
        status: r.status,
        session: r.session,
    }
}

fn deadline_of(r: &WorkerRecord, deadline: Timestamp) -> Option<Timestamp> {
    r.status.is_live().then_some(deadline)
}

impl WriterTask {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        // Resumes whose commit failed: they go first in the next batch (they
        // arrived before anything queued since), which comes at the latest
        // after `EXPIRY_RETRY`.
        let mut retry: Vec<Job> = Vec::new();
        loop {
            let mut jobs = Vec::with_capacity(MAX_BATCH);
            let open = if retry.is_empty() {
                rx.recv_many(&mut jobs, MAX_BATCH).await > 0
            } else {
                tokio::select! {
                    n = rx.recv_many(&mut jobs, MAX_BATCH) => n > 0,
                    _ = tokio::time::sleep(EXPIRY_RETRY) => true,
                }
            };
            if !open && retry.is_empty() {
                return;
            }
            let mut batch = std::mem::take(&mut retry);
            batch.append(&mut jobs);
            retry = self.process(batch).await;
            if !open {
                // Shutting down: one last try was made; what still failed
                // gives its claim up.
                for job in retry {
                    if let Request::Resume { id, .. } = &job.req {
                        self.engine.end_resume(id);
                        self.engine.end_change(id);
                    }
                }
                return;
            }
        }
    }

    fn slot<'a>(&self, work: &'a mut HashMap<WorkerId, Slot>, id: &WorkerId) -> &'a mut Slot {
        work.entry(id.clone()).or_insert_with(|| Slot {
            state: self.engine.get(id).map(|l| (l.record, l.deadline)),
            written: false,
            failed: false,
            reload: false,
        })
    }

    /// Plans, commits and settles one batch. Returns the resumes whose
    /// commit failed, to be tried again.
    async fn process(&self, jobs: Vec<Job>) -> Vec<Job> {
        let now = self.clock.now();
        let mut work: HashMap<WorkerId, Slot> = HashMap::new();
        let mut names: HashMap<(MachineId, WorkerName), WorkerId> = HashMap::new();
        let mut writes: Vec<WorkerWrite> = Vec::new();
        let mut write_owner: Vec<WorkerId> = Vec::new();
        let mut planned: Vec<Planned> = Vec::with_capacity(jobs.len());

        for job in &jobs {
            let p = self.plan(
                &job.req,
                now,
                &mut work,
                &mut names,
                &mut writes,
                &mut write_owner,
            );
            planned.push(p);
        }

        let mut committed: Vec<EventRecord> = Vec::new();
        let mut commit_time = Duration::ZERO;
        tracing::debug!(
            jobs = jobs.len(),
            writes = writes.len(),
            "writer batch planned"
        );
        if !writes.is_empty() {
            let n = writes.len();
            let started = Instant::now();
            match self.store.commit(writes).await {
                Ok(result) => {
                    commit_time = started.elapsed();
                    self.metrics.committed(n, commit_time);
                    for (i, ok) in result.applied.iter().enumerate() {
                        if !ok {
                            if let Some(slot) = work.get_mut(&write_owner[i]) {
                                slot.failed = true;
                            }
                        }
                    }
                    committed = result.events;
                }
                Err(e) => {
                    // Nothing of the batch is installed, published or
                    // acknowledged; expiries are retried. The store's
                    // health watch logs the incident once.
                    self.metrics.commit_failed();
                    tracing::debug!(error = %e, writes = n, "committing transitions failed");
                    for slot in work.values_mut() {
                        if slot.written {
                            slot.failed = true;
                            slot.reload = false;
                        }
                    }
                    for p in planned.iter_mut() {
                        let touched_failed = p
                            .worker
                            .as_ref()
                            .and_then(|w| work.get(w))
                            .is_some_and(|s| s.failed);
                        if touched_failed {
                            p.result = Err(WriteError::Unavailable(e.to_string()));
                        }
                    }
                    self.install(&mut work).await;
                    return self.settle(jobs, planned, &work, now, true).await;
                }
            }
        }

        // Writes whose condition did not hold: the store changed under us
        // (edited from outside). Its row is the truth; reload it.
        for (id, slot) in work.iter_mut() {
            if slot.failed {
                slot.reload = true;
                warn!(worker_id = %id, "conditional write not applied; reloading the worker from the store");
            }
        }
        for p in planned.iter_mut() {
            let failed = p
                .worker
                .as_ref()
                .and_then(|w| work.get(w))
                .is_some_and(|s| s.failed);
            if failed {
                p.result = match &p.result {
                    Ok(Reply::Swept { machine_id, .. }) => Ok(Reply::Swept {
                        applied: false,
                        machine_id: machine_id.clone(),
                    }),
                    _ => Err(WriteError::Conflict(
                        "the worker was changed concurrently; retry".into(),
                    )),
                };
            }
        }

        let diverged = self.install(&mut work).await;
        for (job, p) in jobs.iter().zip(planned.iter()) {
            if let (Request::Register(reg), Ok(_)) = (&job.req, &p.result) {
                self.engine.note_machine(
                    &reg.machine_id,
                    reg.hostname.as_deref(),
                    reg.machine_labels.as_ref(),
                );
            }
        }
        for (job, p) in jobs.iter().zip(planned.iter_mut()) {
            if let Request::Reload { id } = &job.req {
                p.result = Ok(Reply::Reloaded {
                    diverged: diverged.contains(id),
                });
            }
            if let Request::CommitAlerts(step) = &job.req {
                p.result = match self.store.commit_alerts(step).await {
                    Ok(Some(events)) => {
                        committed.extend(events);
                        Ok(Reply::AlertsCommitted(true))
                    }
                    Ok(None) => Ok(Reply::AlertsCommitted(false)),
                    Err(e) => Err(WriteError::Unavailable(e.to_string())),
                };
            }
            if matches!(job.req, Request::ReconcileMachines) {
                p.result = match self.store.reconcile_machines(now).await {
                    Ok(events) => {
                        let ids = events.iter().map(|e| e.machine_id.clone()).collect();
                        committed.extend(events);
                        Ok(Reply::Reconciled(ids))
                    }
                    Err(e) => Err(WriteError::Unavailable(e.to_string())),
                };
            }
        }
        self.fill_gap(committed.first().map(|e| e.seq)).await;
        for e in &committed {
            log_event(e);
            self.metrics.event(e);
        }
        log_batch(&committed, commit_time);
        self.hub.publish(committed);
        self.settle(jobs, planned, &work, now, false).await
    }

    /// Publishes, before the events of `seq` onward, any event of the log
    /// that was never published, and reloads its workers from the store.
    ///
    /// There is such a gap only when a commit reported failure but its
    /// transaction was durable after all (the connection was lost during
    /// COMMIT): its callers were told 503, the engine kept its old view, and
    /// subscribers would otherwise never see its events. The log is the
    /// truth; the hub follows it without a hole.
    async fn fill_gap(&self, seq: Option<i64>) {
        let Some(first) = seq else { return };
        let mut after = self.hub.last_seq();
        if first <= after + 1 {
            return;
        }
        warn!(
            from = after + 1,
            to = first - 1,
            "events committed by a write that reported failure are in the log; publishing them"
        );
        while after + 1 < first {
            let page = match self
                .store
                .list_events(&EventFilter::default(), after, 1000)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    error!(error = %e, "reading the log to fill a gap in the published events failed");
                    return;
                }
            };
            let missing: Vec<EventRecord> =
                page.items.into_iter().filter(|e| e.seq < first).collect();
            let Some(last) = missing.last().map(|e| e.seq) else {
                return;
            };
            for e in &missing {
                if let Some(id) = &e.worker_id {
                    self.resync(id).await;
                }
                log_event(e);
                self.metrics.event(e);
            }
            self.hub.publish(missing);
            after = last;
        }
    }

    /// Loads a worker from the store into the engine unless the engine
    /// already has it in the same status and session (its deadline, fresher
    /// in memory than in the store, is then kept).
    async fn resync(&self, id: &WorkerId) {
        match self.store.get_worker(id).await {
            Ok(Some(record)) => {
                let same = self.engine.get(id).is_some_and(|l| {
                    l.record.status == record.status && l.record.session == record.session
                });
                if !same {
                    let d = policy::deadline(
                        record.last_heartbeat_at,
                        Some(record.registered_at),
                        record.stale_after,
                    );
                    self.engine.apply(record, d);
                }
            }
            Ok(None) => self.engine.remove(id),
            Err(e) => error!(worker_id = %id, error = %e, "reloading a worker failed"),
        }
    }

    /// Brings the engine in line with what was committed. Returns the
    /// workers whose stored row disagreed with what the writer holds (a
    /// failed condition, or a row edited from outside), which the engine
    /// took from the store.
    ///
    /// A reload asked for by the sweep is confirmed here, where nothing is
    /// in flight: every commit before this point is installed, so a row
    /// that agrees with the writer's view (status and session) is no
    /// divergence — the sweep merely read the store between a commit and
    /// its installation, or the engine before a commit the store then
    /// showed — and the engine keeps its fresher deadline.
    async fn install(&self, work: &mut HashMap<WorkerId, Slot>) -> Vec<WorkerId> {
        let mut diverged = Vec::new();
        for (id, slot) in work.iter_mut() {
            if slot.failed && !slot.reload {
                // The commit failed: the engine keeps what it had.
                continue;
            }
            if slot.reload {
                match self.store.get_worker(id).await {
                    Ok(Some(record))
                        if !slot.failed
                            && slot.state.as_ref().is_some_and(|(r, _)| {
                                r.status == record.status && r.session == record.session
                            }) =>
                    {
                        slot.reload = false;
                        if let Some((r, d)) = &slot.state {
                            self.engine.apply(r.clone(), *d);
                        }
                    }
                    Ok(Some(record)) => {
                        diverged.push(id.clone());
                        let d = policy::deadline(
                            record.last_heartbeat_at,
                            Some(record.registered_at),
                            record.stale_after,
                        );
                        self.engine.apply(record, d);
                    }
                    Ok(None) if slot.state.is_none() && !slot.failed => {
                        slot.reload = false;
                        self.engine.remove(id);
                    }
                    Ok(None) => {
                        diverged.push(id.clone());
                        self.engine.remove(id);
                    }
                    Err(e) => error!(worker_id = %id, error = %e, "reloading a worker failed"),
                }
                continue;
            }
            match &slot.state {
                Some((record, deadline)) => self.engine.apply(record.clone(), *deadline),
                None => self.engine.remove(id),
            }
        }
        diverged
    }

    /// Releases queued-change marks and answers the callers. Returns the
    /// resumes to try again (the commit failed).
    async fn settle(
        &self,
        jobs: Vec<Job>,
        planned: Vec<Planned>,
        work: &HashMap<WorkerId, Slot>,
        now: Timestamp,
        commit_failed: bool,
    ) -> Vec<Job> {
        let mut retry = Vec::new();
        for (job, p) in jobs.into_iter().zip(planned) {
            // A resume whose commit failed was answered already (the
            // heartbeat was taken): it keeps its claim — no expiry can take
            // the worker — and is committed again once the store can.
            if commit_failed && matches!(job.req, Request::Resume { .. }) && job.holds.is_some() {
                retry.push(job);
                continue;
            }
            match &job.req {
                Request::Expire(e) => self.engine.end_expiry(&e.id),
                Request::Resume { id, .. } => self.engine.end_resume(id),
                _ => {}
            }
            if let Some(id) = &job.holds {
                self.engine.end_change(id);
                if commit_failed {
                    if let Request::Expire(e) = &job.req {
                        self.engine.arm(e.id.clone(), now.plus(EXPIRY_RETRY));
                    }
                }
                // A change that left the worker live re-arms its timer (the
                // detector drops timers of busy workers).
                if let Some(Slot {
                    state: Some((r, d)),
                    ..
                }) = work.get(id)
                {
                    if r.status.is_live() {
                        self.engine.arm(id.clone(), *d);
                    }
                }
            }
            if let Some(tx) = job.reply {
                let _ = tx.send(p.result);
            }
        }
        retry
    }

    #[allow(clippy::too_many_arguments)]
    fn plan(
        &self,
        req: &Request,
        now: Timestamp,
        work: &mut HashMap<WorkerId, Slot>,
        names: &mut HashMap<(MachineId, WorkerName), WorkerId>,
        writes: &mut Vec<WorkerWrite>,
        write_owner: &mut Vec<WorkerId>,
    ) -> Planned {
        let mut push = |owner: &WorkerId, w: WorkerWrite, work: &mut HashMap<WorkerId, Slot>| {
            writes.push(w);
            write_owner.push(owner.clone());
            if let Some(s) = work.get_mut(owner) {
                s.written = true;
            }
        };
        match req {
            Request::Register(reg) => {
                let key = (reg.machine_id.clone(), reg.name.clone());
                let existing = names
                    .get(&key)
                    .cloned()
                    .or_else(|| self.engine.by_name(&reg.machine_id, &reg.name));
                let current = existing
                    .as_ref()
                    .and_then(|id| self.slot(work, id).state.clone());
                if let Some(scope) = &reg.scope {
                    if let Some(why) = crate::auth::outside_scope(
                        scope,
                        &reg.machine_id,
                        &reg.name,
                        &reg.labels,
                        current.as_ref().map(|(r, _)| &r.labels),
                    ) {
                        return Planned {
                            worker: existing,
                            result: Err(WriteError::Forbidden(why)),
                        };
                    }
                }
                let t = match fsm::transition(
                    current.as_ref().map(|(r, _)| r.state()),
                    Command::Register,
                    now,
                ) {
                    Ok(t) => t,
                    Err(e) => {
                        return Planned {
                            worker: existing,
                            result: Err(fsm_error(e)),
                        }
                    }
                };
                let id = match (&existing, &current) {
                    (Some(id), Some(_)) => id.clone(),
                    _ => WorkerId::generate(now, rand::random()),
                };
                let token = TokenKind::Worker.secret(rand::random());
                let next = t.next.expect("registration leaves a worker");
                let record = WorkerRecord {
                    id: id.clone(),
                    name: reg.name.clone(),
                    machine_id: reg.machine_id.clone(),
                    status: next.status,
                    offline_reason: next.offline_reason,
                    session: next.session,
                    labels: reg.labels.clone(),
                    heartbeat_interval: reg.intervals.heartbeat_interval,
                    stale_after: reg.intervals.stale_after,
                    registered_at: now,
                    last_heartbeat_at: None,
                    status_changed_at: next.status_changed_at,
                    token_hash: TokenHash::of(&token),
                };
                let deadline = now.plus(reg.intervals.stale_after);
                let write = WorkerWrite::Put {
                    record: record.clone(),
                    expect: current.as_ref().map(|(r, _)| expect_of(r)),
                    machine: Some(MachineUpsert {
                        id: reg.machine_id.clone(),
                        hostname: reg.hostname.clone(),
                        labels: reg.machine_labels.clone(),
                        seen_at: now,
                    }),
                    events: new_events(&t, now, None),
                };
                let slot = self.slot(work, &id);
                slot.state = Some((record.clone(), deadline));
                push(&id, write, work);
                names.insert(key, id.clone());
                Planned {
                    worker: Some(id),
                    result: Ok(Reply::Registered {
                        record,
                        deadline,
                        token,
                        created: current.is_none(),
                    }),
                }
            }
            Request::Resume { id, at } => {
                let Some((mut record, mut deadline)) = self.slot(work, id).state.clone() else {
                    return not_found(id);
                };
                // Heartbeats taken in memory since the claim: the latest
                // one counts (installing merges any later one too).
                let at = &(*at).max(self.engine.resume_beat(id).unwrap_or(*at));
                let t = match fsm::transition(Some(record.state()), Command::Heartbeat, now) {
                    Ok(t) => t,
                    Err(e) => return failed(id, e),
                };
                let resumed = t.resumed();
                let expect = expect_of(&record);
                record.set_state(t.next.expect("a heartbeat keeps the worker"));
                record.last_heartbeat_at = record.last_heartbeat_at.max(Some(*at));
                // A resumed worker's deadline starts afresh, from its latest
                // heartbeat or from now, whichever is later.
                deadline = if resumed {
                    policy::extend_deadline(None, (*at).max(now), record.stale_after)
                } else {
                    policy::extend_deadline(Some(deadline), *at, record.stale_after)
                };
                self.slot(work, id).state = Some((record.clone(), deadline));
                if t.changed() {
                    push(id, update(record.clone(), expect, &t, now, None), work);
                }
                Planned {
                    worker: Some(id.clone()),
                    result: Ok(Reply::Beat {
                        beat: Beat {
                            status: record.status,
                            session: record.session,
                            deadline,
                            heartbeat_interval: record.heartbeat_interval,
                        },
                        resumed,
                    }),
                }
            }
            Request::Drain { id } => self.simple(id, Command::Drain, None, now, work, &mut push),
            Request::Offline { id, reason, exit } => {
                self.simple(id, Command::Offline(*reason), *exit, now, work, &mut push)
            }
            Request::Delete { id } | Request::Forget { id, .. } => {
                let Some((record, _)) = self.slot(work, id).state.clone() else {
                    return not_found(id);
                };
                if let Request::Forget { offline_since, .. } = req {
                    if record.status != Status::Offline || record.status_changed_at > *offline_since
                    {
                        return Planned {
                            worker: Some(id.clone()),
                            result: Ok(Reply::Swept {
                                applied: false,
                                machine_id: record.machine_id,
                            }),
                        };
                    }
                }
                let t = match fsm::transition(Some(record.state()), Command::Delete, now) {
                    Ok(t) => t,
                    Err(e) => return failed(id, e),
                };
                self.slot(work, id).state = None;
                let machine_id = record.machine_id.clone();
                push(
                    id,
                    WorkerWrite::Delete {
                        id: id.clone(),
                        machine_id: record.machine_id.clone(),
                        expect: expect_of(&record),
                        events: new_events(&t, now, None),
                    },
                    work,
                );
                Planned {
                    worker: Some(id.clone()),
                    result: Ok(match req {
                        Request::Forget { .. } => Reply::Swept {
                            applied: true,
                            machine_id,
                        },
                        _ => Reply::Deleted,
                    }),
                }
            }
            Request::Expire(e) => {
                let Some((mut record, deadline)) = self.slot(work, &e.id).state.clone() else {
                    return not_found(&e.id);
                };
                // The claim was made before this job reached the writer. A
                // heartbeat that found it queued takes this path too and may
                // have been ordered first, extending the deadline and
                // answering the worker: then the deadline has not passed
                // and the expiry lost the race (settling re-arms the timer).
                if !policy::is_expired(deadline, now) {
                    return Planned {
                        worker: Some(e.id.clone()),
                        result: Ok(Reply::Swept {
                            applied: false,
                            machine_id: record.machine_id,
                        }),
                    };
                }
                let t = match fsm::transition(
                    Some(record.state()),
                    Command::Expire { session: e.session },
                    now,
                ) {
                    Ok(t) => t,
                    Err(err) => return failed(&e.id, err),
                };
                let machine_id = record.machine_id.clone();
                // Confirmed under the worker's lock: a heartbeat taken since
                // the claim moved the deadline (the expiry lost the race),
                // or from now on resumes the worker after it.
                if t.changed() && !self.engine.seal_expiry(&e.id, now) {
                    return Planned {
                        worker: Some(e.id.clone()),
                        result: Ok(Reply::Swept {
                            applied: false,
                            machine_id,
                        }),
                    };
                }
                if t.changed() {
                    let expect = expect_of(&record);
                    record.set_state(t.next.expect("expiry keeps the worker"));
                    let lag = now.diff_ms(deadline).max(0);
                    self.slot(work, &e.id).state = Some((record.clone(), deadline));
                    push(&e.id, update(record, expect, &t, now, Some(lag)), work);
                }
                Planned {
                    worker: Some(e.id.clone()),
                    result: Ok(Reply::Swept {
                        applied: t.changed(),
                        machine_id,
                    }),
                }
            }
            Request::ReconcileMachines => Planned {
                worker: None,
                // Filled in after the commit (see `process`).
                result: Ok(Reply::Reconciled(Vec::new())),
            },
            Request::CommitAlerts(_) => Planned {
                worker: None,
                // Committed after the batch's own commit (see `process`),
                // which must succeed first.
                result: Err(WriteError::Unavailable(
                    "the transitions committed before it failed".into(),
                )),
            },
            Request::Reload { id } => {
                self.slot(work, id).reload = true;
                Planned {
                    worker: Some(id.clone()),
                    // Settled after the commit (see `install`).
                    result: Ok(Reply::Reloaded { diverged: false }),
                }
            }
        }
    }

    fn simple(
        &self,
        id: &WorkerId,
        cmd: Command,
        exit: Option<ExitStatus>,
        now: Timestamp,
        work: &mut HashMap<WorkerId, Slot>,
        push: &mut impl FnMut(&WorkerId, WorkerWrite, &mut HashMap<WorkerId, Slot>),
    ) -> Planned {
        let Some((mut record, deadline)) = self.slot(work, id).state.clone() else {
            return not_found(id);
        };
        let t = match fsm::transition(Some(record.state()), cmd, now) {
            Ok(t) => t,
            Err(e) => return failed(id, e),
        };
        if t.changed() {
            let expect = expect_of(&record);
            record.set_state(t.next.expect("this command keeps the worker"));
            self.slot(work, id).state = Some((record.clone(), deadline));
            let mut write = update(record.clone(), expect, &t, now, None);
            if let WorkerWrite::Put { events, .. } = &mut write {
                for e in events.iter_mut() {
                    if e.kind == rollcall_core::EventType::WorkerOffline {
                        e.exit = exit;
                    }
                }
            }
            push(id, write, work);
        }
        Planned {
            worker: Some(id.clone()),
            result: Ok(Reply::Worker {
                deadline: deadline_of(&record, deadline),
                record,
            }),
        }
    }
}

fn not_found(id: &WorkerId) -> Planned {
    Planned {
        worker: Some(id.clone()),
        result: Err(WriteError::NotFound),
    }
}

fn failed(id: &WorkerId, e: FsmError) -> Planned {
    Planned {
        worker: Some(id.clone()),
        result: Err(fsm_error(e)),
    }
}

/// One info line per committed batch that recorded events: how many of
/// each kind (and reason), how many machines they touched, the commit's
/// time. A storm of a hundred thousand transitions is a few dozen lines;
/// the event log is the record of each one.
fn log_batch(events: &[EventRecord], commit_time: Duration) {
    let Some(first) = events.first() else { return };
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut machines = std::collections::HashSet::new();
    for e in events {
        let key = match e.reason {
            Some(r) => format!("{}({})", e.kind.as_str(), r.as_str()),
            None => e.kind.as_str().to_owned(),
        };
        *kinds.entry(key).or_default() += 1;
        machines.insert(e.machine_id.as_str());
    }
    let counts = kinds
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    info!(
        events = events.len(),
        first_seq = first.seq,
        last_seq = events.last().map_or(first.seq, |e| e.seq),
        counts = %counts,
        machines = machines.len(),
        commit_ms = commit_time.as_millis() as u64,
        "transitions committed"
    );
}

/// One debug line per transition (the batch's summary is at info).
fn log_event(e: &EventRecord) {
    tracing::debug!(
        seq = e.seq,
        event = e.kind.as_str(),
        worker_id = e.worker_id.as_ref().map(|w| w.as_str()),
        machine_id = e.machine_id.as_str(),
        reason = e.reason.map(|r| r.as_str()),
        session = e.session,
        detection_lag_ms = e.detection_lag_ms,
        "transition"
    );
}
