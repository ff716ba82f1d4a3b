//! [`WorkerHandle`]: a worker that registers, heartbeats in the background
//! and says goodbye.
//!
//! The background work is one step plus a thin loop (as in STYLE.md):
//! `Heartbeater::step` registers when there is no valid session and
//! heartbeats otherwise, and returns how long to wait before the next step.
//! The loop in `run` sleeps that long, or handles a command from the handle
//! (drain, offline) in between steps.
//!
//! What a step does with each outcome:
//!
//! | outcome | next step |
//! |---|---|
//! | registered / heartbeat acknowledged | after the server's interval ±10 % |
//! | 401 on a heartbeat (token rotated, revoked, forgotten) | register again at once, with the enroll token, logged at `warn` |
//! | no answer, 5xx, 429, any other error | retry with exponential backoff and jitter, capped at the heartbeat interval |
//!
//! State changes are published on a [`tokio::sync::watch`] channel
//! ([`WorkerHandle::subscribe`]), so callers can wait for "registered" or
//! watch the session without polling.

use std::sync::Arc;
use std::time::Duration;

use rollcall_core::{
    ExitStatus, MachineId, OfflineReason, Status, Timestamp, WorkerId, WorkerName,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::backoff;
use crate::client::Client;
use crate::error::Error;
use crate::model::{self, to_ms, Labels, MachineSpec, RegisterRequest, Registration};

/// The heartbeat interval assumed before the server has told us one: the
/// server's default. It only caps the backoff of the first registration.
pub const ASSUMED_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// The first retry delay (before doubling and jitter).
pub const DEFAULT_INITIAL_BACKOFF: Duration = Duration::from_millis(250);

/// What to register as.
///
/// ```
/// use rollcall_client::{WorkerName, WorkerOptions};
/// use std::time::Duration;
///
/// let mut options = WorkerOptions::new(WorkerName::parse("render-1").unwrap());
/// options.labels.insert("queue".into(), "gpu".into());
/// options.heartbeat_interval = Some(Duration::from_secs(10));
/// ```
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker's name, unique on its machine.
    pub name: WorkerName,
    /// The machine id; `None` means the host's name (see [`crate::host`]),
    /// or `localhost` if it cannot be found.
    pub machine_id: Option<MachineId>,
    /// The host name shown for the machine; `None` means the host's name if
    /// it can be found, else none is sent.
    pub hostname: Option<String>,
    /// Labels for the machine; `None` sends none (and so leaves the
    /// machine's labels to other workers).
    pub machine_labels: Option<Labels>,
    /// The worker's labels.
    pub labels: Labels,
    /// Ask the server for this heartbeat interval; `None` = its default.
    /// The handle heartbeats at whatever interval the server answers.
    pub heartbeat_interval: Option<Duration>,
    /// Ask the server for this staleness threshold; `None` = its default
    /// (3 × the interval if only that is given).
    pub stale_after: Option<Duration>,
    /// The first retry delay while the server is unreachable; it doubles per
    /// failure up to the heartbeat interval.
    pub initial_backoff: Duration,
}

impl WorkerOptions {
    /// Options for `name` with every default.
    pub fn new(name: WorkerName) -> Self {
        WorkerOptions {
            name,
            machine_id: None,
            hostname: None,
            machine_labels: None,
            labels: Labels::new(),
            heartbeat_interval: None,
            stale_after: None,
            initial_backoff: DEFAULT_INITIAL_BACKOFF,
        }
    }

    /// The registration body, with the defaults resolved (this reads the
    /// host name).
    pub fn to_request(&self) -> RegisterRequest {
        let host = crate::host::host_name();
        RegisterRequest {
            name: self.name.clone(),
            machine: MachineSpec {
                id: self
                    .machine_id
                    .clone()
                    .or_else(|| host.clone())
                    .unwrap_or_else(crate::host::default_machine_id),
                hostname: self.hostname.clone().or_else(|| host.map(String::from)),
                labels: self.machine_labels.clone(),
            },
            labels: self.labels.clone(),
            heartbeat_interval_ms: self.heartbeat_interval.map(to_ms),
            stale_after_ms: self.stale_after.map(to_ms),
        }
    }
}

/// Where the handle is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No valid session: registering (at start, or again after a 401).
    Registering,
    /// Registered; heartbeating.
    Registered,
    /// The background task has ended (after `shutdown`/`offline`, or when the
    /// handle was dropped).
    Stopped,
}

/// A snapshot of the handle's state, published on every change.
#[derive(Debug, Clone)]
pub struct WorkerState {
    /// Where the handle is in its life.
    pub phase: Phase,
    /// The worker's id once registered (kept while re-registering and
    /// after stopping: it is the same record on the server).
    pub worker_id: Option<WorkerId>,
    /// The current (or last) session.
    pub session: Option<u64>,
    /// The status the server last reported.
    pub status: Option<Status>,
    /// The heartbeat interval the server last gave.
    pub heartbeat_interval: Option<Duration>,
    /// The deadline the server last gave.
    pub deadline_at: Option<Timestamp>,
    /// How many times the handle registered (more than one after 401s).
    pub registrations: u64,
    /// Failed steps in a row (0 while all is well).
    pub consecutive_failures: u32,
    /// The most recent failure, cleared by the next success.
    pub last_error: Option<Arc<Error>>,
}

impl WorkerState {
    fn new() -> Self {
        WorkerState {
            phase: Phase::Registering,
            worker_id: None,
            session: None,
            status: None,
            heartbeat_interval: None,
            deadline_at: None,
            registrations: 0,
            consecutive_failures: 0,
            last_error: None,
        }
    }
}

/// A request from the handle to its background task.
#[derive(Debug)]
enum Command {
    Drain(oneshot::Sender<Result<model::Worker, Error>>),
    Offline(
        OfflineReason,
        Option<ExitStatus>,
        oneshot::Sender<Result<Option<model::Worker>, Error>>,
    ),
}

/// A registered worker, heartbeating in a background task.
///
/// Dropping the handle aborts the task: heartbeats stop and the server marks
/// the worker stale after `stale_after`. Call [`WorkerHandle::shutdown`] to
/// go offline at once instead.
///
/// ```no_run
/// # async fn demo() -> Result<(), rollcall_client::Error> {
/// use rollcall_client::{Client, WorkerHandle, WorkerName, WorkerOptions};
///
/// let client = Client::builder().server("http://127.0.0.1:7373").token("rc_enroll_…").build()?;
/// let options = WorkerOptions::new(WorkerName::parse("render-1").unwrap());
/// let worker = WorkerHandle::register(&client, options).await?;
/// println!("registered as {:?}, session {:?}", worker.id(), worker.session());
/// // … do the work …
/// worker.shutdown().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct WorkerHandle {
    state: watch::Receiver<WorkerState>,
    commands: mpsc::Sender<Command>,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// Registers now (one attempt, with failover between replicas) and, on
    /// success, starts heartbeating in the background. `client` must hold an
    /// enroll (or admin) token; it is kept for registering again after a
    /// 401. Must be called within a tokio runtime.
    pub async fn register(client: &Client, options: WorkerOptions) -> Result<WorkerHandle, Error> {
        let (mut heartbeater, state) = Heartbeater::new(client, &options);
        heartbeater.register().await?;
        let first = heartbeater.heartbeat_delay();
        Ok(WorkerHandle::spawn(heartbeater, state, first))
    }

    /// Returns at once and registers in the background, retrying with
    /// backoff while the server is unreachable, then heartbeats. For "start
    /// the work now, register when the server is there": the agent's
    /// behaviour. Wait with [`WorkerHandle::wait_registered`] if needed.
    /// Must be called within a tokio runtime.
    pub fn spawn_registering(client: &Client, options: WorkerOptions) -> WorkerHandle {
        let (heartbeater, state) = Heartbeater::new(client, &options);
        WorkerHandle::spawn(heartbeater, state, Duration::ZERO)
    }

    fn spawn(
        heartbeater: Heartbeater,
        state: watch::Receiver<WorkerState>,
        first: Duration,
    ) -> Self {
        let (commands, rx) = mpsc::channel(4);
        let task = tokio::spawn(run(heartbeater, rx, first));
        WorkerHandle {
            state,
            commands,
            task,
        }
    }

    /// The worker's id, once registered.
    pub fn id(&self) -> Option<WorkerId> {
        self.state.borrow().worker_id.clone()
    }

    /// The current session, once registered.
    pub fn session(&self) -> Option<u64> {
        self.state.borrow().session
    }

    /// The status the server last reported.
    pub fn status(&self) -> Option<Status> {
        self.state.borrow().status
    }

    /// A snapshot of the whole state.
    pub fn state(&self) -> WorkerState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every state change, e.g. to notice a new
    /// session (`changed().await`) or wait for a condition (`wait_for`).
    pub fn subscribe(&self) -> watch::Receiver<WorkerState> {
        self.state.clone()
    }

    /// Waits until the worker is registered and returns its id;
    /// [`Error::Stopped`] if the handle stops first.
    pub async fn wait_registered(&self) -> Result<WorkerId, Error> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| s.phase != Phase::Registering)
            .await
            .map_err(|_| Error::Stopped)?;
        match (&state.phase, &state.worker_id) {
            (Phase::Registered, Some(id)) => Ok(id.clone()),
            _ => Err(Error::Stopped),
        }
    }

    /// Drains the worker: it keeps heartbeating but should take no new work.
    /// The wish is remembered: if the handle has to register again later,
    /// it drains the new session too. [`Error::NotRegistered`] while it has
    /// no session.
    pub async fn drain(&self) -> Result<model::Worker, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Drain(tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Marks the worker offline with reason `shutdown` and stops
    /// heartbeating. `Ok(None)` if it has no valid session (it never
    /// registered, or is registering again after a 401). One attempt (with
    /// failover): if it fails the task stops anyway, and the server will
    /// mark the worker stale after `stale_after`.
    pub async fn shutdown(self) -> Result<Option<model::Worker>, Error> {
        self.offline(OfflineReason::Shutdown).await
    }

    /// Like [`WorkerHandle::shutdown`] with another reason. A supervisor
    /// whose child ended should prefer [`WorkerHandle::exited`], which says
    /// how it ended; `Exited` alone counts as a crash.
    pub async fn offline(self, reason: OfflineReason) -> Result<Option<model::Worker>, Error> {
        self.go_offline(reason, None).await
    }

    /// Like [`WorkerHandle::shutdown`], with reason `exited` and the
    /// process's exit status: what an agent sends when its child ended.
    /// Exit code 0 is a graceful end; any other code or a signal is a
    /// crash.
    pub async fn exited(self, status: ExitStatus) -> Result<Option<model::Worker>, Error> {
        self.go_offline(OfflineReason::Exited, Some(status)).await
    }

    async fn go_offline(
        self,
        reason: OfflineReason,
        exit: Option<ExitStatus>,
    ) -> Result<Option<model::Worker>, Error> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Offline(reason, exit, tx))
            .await
            .map_err(|_| Error::Stopped)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Whether the background task has ended.
    pub fn is_stopped(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A valid session: what is needed to heartbeat.
#[derive(Debug)]
struct Session {
    id: WorkerId,
    /// The client with this session's worker token.
    client: Client,
    interval: Duration,
}

/// The background task's state and its single step.
#[derive(Debug)]
struct Heartbeater {
    /// The client with the enroll token, for (re-)registering.
    enroll: Client,
    /// The registration body, resolved once so every registration is the
    /// same worker on the same machine.
    request: RegisterRequest,
    session: Option<Session>,
    /// The interval to cap backoff at until the server gives one.
    assumed_interval: Duration,
    initial_backoff: Duration,
    /// The caller asked to drain; re-applied to a new session.
    want_draining: bool,
    /// A drain that still has to reach the server (after re-registering).
    drain_pending: bool,
    failures: u32,
    state: watch::Sender<WorkerState>,
}

impl Heartbeater {
    fn new(client: &Client, options: &WorkerOptions) -> (Self, watch::Receiver<WorkerState>) {
        let (state, rx) = watch::channel(WorkerState::new());
        let heartbeater = Heartbeater {
            enroll: client.clone(),
            request: options.to_request(),
            session: None,
            assumed_interval: options
                .heartbeat_interval
                .unwrap_or(ASSUMED_HEARTBEAT_INTERVAL),
            initial_backoff: options.initial_backoff,
            want_draining: false,
            drain_pending: false,
            failures: 0,
            state,
        };
        (heartbeater, rx)
    }

    fn interval(&self) -> Duration {
        self.session
            .as_ref()
            .map_or(self.assumed_interval, |s| s.interval)
    }

    fn heartbeat_delay(&self) -> Duration {
        backoff::heartbeat_delay(self.interval(), backoff::unit())
    }

    /// One unit of background work; returns the delay before the next one,
    /// counted from this step's start.
    async fn step(&mut self) -> Duration {
        if self.session.is_none() {
            return match self.register().await {
                Ok(()) => self.heartbeat_delay(),
                Err(e) => self.failed("registration", e),
            };
        }
        if self.drain_pending {
            // Best effort; a failure leaves it pending for the next step.
            let _ = self.drain().await;
        }
        let Some((id, client)) = self
            .session
            .as_ref()
            .map(|s| (s.id.clone(), s.client.clone()))
        else {
            return Duration::ZERO; // the drain found the token gone: register now
        };
        match client.heartbeat(&id).await {
            Ok(ack) => {
                let interval = ack.heartbeat_interval();
                if ack.resumed {
                    tracing::info!(
                        worker_id = %id,
                        session = ack.session,
                        "rollcall had marked this worker offline; this heartbeat brought it back"
                    );
                }
                if let Some(s) = &mut self.session {
                    s.interval = interval;
                }
                // A resumed session starts online; a drained worker stays
                // drained.
                self.drain_pending |= ack.resumed && self.want_draining;
                self.succeeded(|st| {
                    st.session = Some(ack.session);
                    st.status = Some(ack.status);
                    st.deadline_at = Some(ack.deadline_at);
                    st.heartbeat_interval = Some(interval);
                });
                backoff::heartbeat_delay(interval, backoff::unit())
            }
            Err(e) if e.is_unauthorized() => {
                self.token_refused(&e);
                Duration::ZERO
            }
            Err(e) => self.failed("heartbeat", e),
        }
    }

    /// Registers with the enroll token and starts a new session.
    async fn register(&mut self) -> Result<(), Error> {
        let Registration { worker, token, .. } = self.enroll.register(&self.request).await?;
        let again = self.state.borrow().registrations > 0;
        tracing::info!(
            worker_id = %worker.id,
            session = worker.session,
            machine_id = %worker.machine_id,
            again,
            "registered with rollcall"
        );
        self.session = Some(Session {
            id: worker.id.clone(),
            client: self.enroll.with_token(token),
            interval: worker.heartbeat_interval(),
        });
        self.drain_pending = self.want_draining;
        self.succeeded(|st| {
            st.phase = Phase::Registered;
            st.registrations += 1;
            publish_worker(st, &worker);
        });
        Ok(())
    }

    /// Drains the current session.
    async fn drain(&mut self) -> Result<model::Worker, Error> {
        let Some((id, client)) = self
            .session
            .as_ref()
            .map(|s| (s.id.clone(), s.client.clone()))
        else {
            return Err(Error::NotRegistered);
        };
        self.want_draining = true;
        match client.drain(&id).await {
            Ok(worker) => {
                self.drain_pending = false;
                self.state.send_modify(|st| publish_worker(st, &worker));
                Ok(worker)
            }
            Err(e) => {
                self.drain_pending = true;
                if e.is_unauthorized() {
                    self.token_refused(&e);
                }
                Err(e)
            }
        }
    }

    /// Marks the session offline; `None` if there is none.
    async fn offline(
        &mut self,
        reason: OfflineReason,
        exit: Option<ExitStatus>,
    ) -> Result<Option<model::Worker>, Error> {
        let Some(session) = &self.session else {
            return Ok(None);
        };
        let worker = match exit {
            Some(status) => session.client.exited(&session.id, status).await?,
            None => session.client.offline(&session.id, reason).await?,
        };
        self.state.send_modify(|st| publish_worker(st, &worker));
        Ok(Some(worker))
    }

    /// The server refused the worker token: forget the session so that the
    /// next step registers again.
    fn token_refused(&mut self, e: &Error) {
        let id = self.session.take().map(|s| s.id);
        tracing::warn!(
            worker_id = ?id.as_ref().map(WorkerId::as_str),
            error = %e,
            "rollcall refused this worker's token: it was rotated (the same name registered \
             again on this machine — another process?), revoked (the worker was deleted) or \
             forgotten; registering again with the enroll token"
        );
        // A 401 is always an API error, which (unlike transport errors) can
        // be cloned into the state while the caller keeps the original.
        let error = e.api().cloned().map(|a| Arc::new(Error::Api(a)));
        self.state.send_modify(|st| {
            st.phase = Phase::Registering;
            st.last_error = error;
        });
    }

    fn succeeded(&mut self, update: impl FnOnce(&mut WorkerState)) {
        self.failures = 0;
        self.state.send_modify(|st| {
            st.consecutive_failures = 0;
            st.last_error = None;
            update(st);
        });
    }

    /// Records a failure and returns the backoff before the next attempt.
    fn failed(&mut self, what: &str, e: Error) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let cap = self.interval();
        let mut delay =
            backoff::retry_delay(self.failures, self.initial_backoff, cap, backoff::unit());
        if let Some(after) = e.api().and_then(|a| a.retry_after) {
            // Honour the server's wish, but never so long that the worker
            // goes stale over it.
            delay = delay.max(after.min(cap));
        }
        tracing::warn!(
            error = %e,
            attempt = self.failures,
            retry_in = ?delay,
            "rollcall {what} failed"
        );
        let failures = self.failures;
        self.state.send_modify(|st| {
            st.consecutive_failures = failures;
            st.last_error = Some(Arc::new(e));
        });
        delay
    }

    fn stopped(&self) {
        self.state.send_modify(|st| st.phase = Phase::Stopped);
    }
}

fn publish_worker(st: &mut WorkerState, worker: &model::Worker) {
    st.worker_id = Some(worker.id.clone());
    st.session = Some(worker.session);
    st.status = Some(worker.status);
    st.heartbeat_interval = Some(worker.heartbeat_interval());
    st.deadline_at = worker.deadline_at;
}

/// The thin loop: a step whenever its time comes, commands in between.
async fn run(mut heartbeater: Heartbeater, mut commands: mpsc::Receiver<Command>, first: Duration) {
    let mut next = Instant::now() + first;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(next) => {
                let started = Instant::now();
                let delay = heartbeater.step().await;
                next = started + delay;
            }
            command = commands.recv() => match command {
                Some(Command::Drain(reply)) => {
                    let result = heartbeater.drain().await;
                    if heartbeater.session.is_none() {
                        next = Instant::now(); // the token was refused: register now
                    }
                    let _ = reply.send(result);
                }
                Some(Command::Offline(reason, exit, reply)) => {
                    let result = heartbeater.offline(reason, exit).await;
                    heartbeater.stopped();
                    let _ = reply.send(result);
                    return;
                }
                None => break,
            }
        }
    }
    heartbeater.stopped();
}
