//! Replicas on PostgreSQL: one active, the others standing by.
//!
//! Every replica serves the same HTTP API on the same database. Exactly one
//! is *active*: it holds a PostgreSQL advisory lock on a dedicated
//! connection and runs the [`Core`] (liveness engine, writer, detector,
//! write-behind, cleanup). The others are *standbys*: they answer reads
//! from the database, relay committed events to their own stream clients
//! (LISTEN/NOTIFY, with a poll as a safety net), and forward every change —
//! heartbeats, registrations, everything but `GET` — to the active replica,
//! whose address it published in the database when it took the lock.
//!
//! ## Taking over
//!
//! Each standby tries the lock every [`Timing::poll`]. The one that gets it
//! bumps the leadership epoch (which fences every later write of a former
//! active replica, see `rollcall_store::postgres`), waits out
//! [`Timing::settle`] so that a former active replica that lost its
//! connection has noticed and stepped down, publishes the events it had not
//! relayed yet, loads every worker with the restart grace and starts its
//! core.
//!
//! ## Stepping down
//!
//! The active replica confirms its lock every [`Timing::check`] on the
//! lock's own connection. When that fails (the connection was cut, the
//! database restarted) it stops acting as active at once: requests are
//! forwarded from then on, the core is abandoned without writing anything
//! more, and it stands by like any other replica. Its writes would be
//! refused by the fence anyway.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderName, Method};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use parking_lot::RwLock;
use rollcall_core::Timestamp;
use rollcall_store::postgres::{LeaderInfo, Leadership, Notification, PgStore};
use rollcall_store::{EventFilter, Store};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{error, info, warn};

use crate::api::error::ApiError;
use crate::api::extract::{drain_unread, BATCH_BODY_LIMIT};
use crate::api::{self, AppState};
use crate::clock::Clock;
use crate::{Config, Core, Mode, Role, RoleCell, Running, Shared, StreamSettings};

/// The header a standby adds to a request it forwards; a replica that is
/// not active refuses such a request instead of forwarding it again.
pub const FORWARDED_HEADER: &str = "x-rollcall-forwarded-by";

/// How long a standby waits for the active replica's answer to a change it
/// forwards (and to its reachability probe): about the lock-check interval
/// plus its timeout. An active replica that does not answer within it is
/// frozen or cut off; the client gets 503 `unavailable` and retries,
/// instead of hanging until the freeze ends.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a standby reaches the active replica, as its last probe found
/// (`GET /healthz` of the active replica, every poll). Unknown counts as
/// reachable: forwarding says so when it is not.
#[derive(Debug, Default)]
pub struct ActiveReach {
    unreachable: parking_lot::Mutex<Option<String>>,
}

impl ActiveReach {
    /// Why the active replica cannot be reached, if it cannot.
    pub fn unreachable(&self) -> Option<String> {
        self.unreachable.lock().clone()
    }

    fn set(&self, reason: Option<String>) {
        let mut cur = self.unreachable.lock();
        match (&*cur, &reason) {
            (None, Some(r)) => warn!(reason = %r, "this standby cannot reach the active replica"),
            (Some(_), None) => info!("this standby reaches the active replica again"),
            _ => {}
        }
        *cur = reason;
    }
}

/// How often replicas act.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A standby tries to take the lock this often.
    pub poll: Duration,
    /// The active replica confirms its lock this often…
    pub check: Duration,
    /// …and gives up the role when a confirmation takes longer than this.
    pub check_timeout: Duration,
    /// A new active replica waits this long after taking the lock before
    /// it acts, so that the replica it replaces has noticed (one check and
    /// its timeout).
    pub settle: Duration,
    /// A standby re-reads the event log this often even without a
    /// notification.
    pub relay_poll: Duration,
    /// How often the offset to the database's clock is measured again.
    pub clock_sync: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            poll: Duration::from_millis(500),
            check: Duration::from_millis(200),
            check_timeout: Duration::from_secs(1),
            settle: Duration::from_millis(1_300),
            relay_poll: Duration::from_secs(1),
            clock_sync: Duration::from_secs(30),
        }
    }
}

/// A replica's handle, held by [`Running`].
#[derive(Debug)]
pub(crate) struct Replica {
    inner: Arc<Inner>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    shared: Shared,
    pg: Arc<PgStore>,
    /// How the other replicas reach this one.
    me: String,
    role: RoleCell,
    /// The router (and its state) requests go to now, and the role it
    /// serves: read together, so that a request is never given to one
    /// role's router on the strength of the other role.
    current: RwLock<(Router, AppState, Role)>,
    /// The active replica as last read from the database.
    leader: RwLock<Option<LeaderInfo>>,
    forward: reqwest::Client,
    clock: Arc<DbClock>,
    timing: Timing,
    /// Held while the token cache is reloaded, so that a reload never
    /// replaces a newer read of the tokens with an older one.
    token_reload: tokio::sync::Mutex<()>,
}

impl Replica {
    pub(crate) fn role(&self) -> Role {
        self.inner.role.get()
    }

    pub(crate) fn state(&self) -> AppState {
        self.inner.current.read().1.clone()
    }

    pub(crate) async fn shutdown(self) {
        let _ = self.task.await;
    }
}

/// Starts a replica on `listener`. Returns once it knows its role: active,
/// or standing by.
pub(crate) async fn launch(
    config: Config,
    listener: TcpListener,
    base_clock: Arc<dyn Clock>,
    stream: StreamSettings,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let metrics_listener = crate::bind_metrics(&config).await?;
    let me = match &config.advertise_url {
        Some(u) => u.clone(),
        None => format!("http://{addr}"),
    };
    let pg = Arc::new(PgStore::connect(&config.database_url).await.map_err(|e| {
        anyhow::anyhow!(
            "opening {}: {e}",
            crate::config::redact_url(&config.database_url)
        )
    })?);
    pg.fence_writes();
    let clock = Arc::new(DbClock::new(base_clock));
    clock.sync(&pg).await?;
    let store: Arc<dyn Store> = pg.clone();
    let (shared, generated) = crate::prepare(config, store, clock.clone(), stream).await?;
    shared.hub.mark_published(shared.store.last_seq().await?);

    let standby = standby_router(&shared);
    shared.metrics.set_active(false);
    let inner = Arc::new(Inner {
        current: RwLock::new((standby.0, standby.1, Role::Standby)),
        shared: shared.clone(),
        pg,
        me,
        role: RoleCell::new(Role::Standby),
        leader: RwLock::new(None),
        forward: reqwest::Client::builder()
            .timeout(FORWARD_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?,
        clock,
        timing: Timing::default(),
        token_reload: tokio::sync::Mutex::new(()),
    });

    // The first election happens before serving, so a lone replica answers
    // its first request as the active one.
    let phase = inner.clone().elect().await;
    let task = tokio::spawn(inner.clone().run(phase));

    let dispatch = inner.clone();
    let app = Router::new().fallback_service(tower::service_fn(move |req: Request| {
        let replica = dispatch.clone();
        async move { Ok::<_, std::convert::Infallible>(replica.dispatch(req).await) }
    }));
    let metrics_addr = match metrics_listener {
        Some(l) => {
            // Scrapes go to whichever role is current.
            let dispatch = inner.clone();
            let app = Router::new().fallback_service(tower::service_fn(move |req: Request| {
                let router = api::metrics_router(dispatch.current.read().1.clone());
                async move { router.oneshot(req).await }
            }));
            Some(crate::serve_metrics(l, app, &shared)?)
        }
        None => None,
    };
    let http = crate::serve_http(listener, app, inner.role.clone(), &shared);
    Ok(Running {
        addr,
        metrics_addr,
        stop: shared.shutdown.clone(),
        http,
        mode: Mode::Replica(Replica { inner, task }),
        generated_admin_token: generated,
    })
}

/// What a replica is doing.
enum Phase {
    Standby { relay: Relay },
    Active { core: Box<Core>, lead: Leadership },
}

impl Inner {
    /// Tries to become active once; stands by otherwise.
    async fn elect(self: Arc<Self>) -> Phase {
        match self.contend().await {
            Ok(Some((lead, settle))) => match self.clone().activate(lead, settle).await {
                Ok(phase) => return phase,
                Err(e) => {
                    error!(error = %e, "taking over as the active replica failed; standing by")
                }
            },
            Ok(None) => {}
            Err(e) => warn!(error = %e, "could not contend for the active role"),
        }
        Phase::Standby {
            relay: Relay::start(self.clone()),
        }
    }

    /// Tries the lock once. On success, also says whether another replica
    /// led until now (so the new one must let it notice first); otherwise
    /// remembers who leads, to forward changes there.
    async fn contend(&self) -> Result<Option<(Leadership, bool)>, rollcall_store::StoreError> {
        match self.pg.try_lead(&self.me, &self.me).await? {
            Some(lead) => {
                let settle = lead.succeeded_a_leader();
                Ok(Some((lead, settle)))
            }
            None => {
                *self.leader.write() = self.pg.leader().await?;
                Ok(None)
            }
        }
    }

    /// The replica's life: stand by and contend, or act and confirm.
    async fn run(self: Arc<Self>, mut phase: Phase) {
        let stop = self.shared.shutdown.clone();
        let mut last_sync = tokio::time::Instant::now();
        loop {
            // Every replica keeps its offset to the database's clock
            // current: a standby's reads compute deadlines too.
            if last_sync.elapsed() >= self.timing.clock_sync {
                last_sync = tokio::time::Instant::now();
                if let Err(e) = self.clock.sync(&self.pg).await {
                    warn!(error = %e, "measuring the database clock failed");
                }
            }
            phase = match phase {
                Phase::Standby { relay } => {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            relay.stop().await;
                            return;
                        }
                        _ = tokio::time::sleep(self.timing.poll) => {}
                    }
                    match self.contend().await {
                        Ok(Some((lead, settle))) => {
                            relay.stop().await;
                            match self.clone().activate(lead, settle).await {
                                Ok(phase) => phase,
                                Err(e) => {
                                    error!(error = %e, "taking over as the active replica failed; standing by");
                                    Phase::Standby {
                                        relay: Relay::start(self.clone()),
                                    }
                                }
                            }
                        }
                        Ok(None) => {
                            self.probe_active().await;
                            Phase::Standby { relay }
                        }
                        Err(e) => {
                            warn!(error = %e, "could not contend for the active role");
                            *self.leader.write() = None;
                            Phase::Standby { relay }
                        }
                    }
                }
                Phase::Active { core, mut lead } => {
                    tokio::select! {
                        _ = stop.cancelled() => {
                            // Requests have ended; hand over cleanly.
                            self.set_current(standby_router(&self.shared), Role::Standby);
                            core.stop().await;
                            // Bounded: an unreachable database must not
                            // hold up the exit.
                            let released =
                                tokio::time::timeout(self.timing.check_timeout, lead.release());
                            match released.await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => warn!(
                                    error = %e,
                                    "releasing the active role failed; the database releases it when the connection closes"
                                ),
                                Err(_) => warn!(
                                    "releasing the active role timed out; the database releases it when the connection closes"
                                ),
                            }
                            info!("stopped acting as the active replica (shutdown)");
                            return;
                        }
                        _ = tokio::time::sleep(self.timing.check) => {}
                    }
                    match lead.check(self.timing.check_timeout).await {
                        Ok(()) => Phase::Active { core, lead },
                        Err(e) => {
                            error!(error = %e, epoch = lead.epoch(), "lost the active role; standing by");
                            // First stop taking changes, then drop everything
                            // the core held without writing it.
                            self.set_current(standby_router(&self.shared), Role::Standby);
                            *self.leader.write() = None;
                            drop(lead);
                            core.abandon().await;
                            Phase::Standby {
                                relay: Relay::start(self.clone()),
                            }
                        }
                    }
                }
            };
        }
    }

    /// Becomes the active replica with the lock just taken; `settle` when
    /// another replica led until now.
    async fn activate(
        self: Arc<Self>,
        mut lead: Leadership,
        settle: bool,
    ) -> anyhow::Result<Phase> {
        if settle {
            info!(
                epoch = lead.epoch(),
                "took the active role; waiting for the replica that held it to step down"
            );
            // The replica that held the role until just now may not have
            // noticed yet; it does within one check and its timeout.
            tokio::time::sleep(self.timing.settle).await;
            lead.check(self.timing.check_timeout).await?;
        } else {
            info!(
                epoch = lead.epoch(),
                "took the active role, which no replica held"
            );
        }
        let prepare = async {
            self.clock.sync(&self.pg).await?;
            // The former active replica is fenced: the log is final up to here.
            relay_events(&self.shared).await?;
            self.reload_tokens().await?;
            anyhow::Ok(Box::new(Core::start(&self.shared).await?))
        };
        // Loading a large fleet takes a while: the lock is confirmed
        // meanwhile, as it is once active, which also keeps its connection
        // from idling out (see `LOCK_IDLE_TIMEOUT`).
        tokio::pin!(prepare);
        let mut lost = None;
        let core = loop {
            tokio::select! {
                core = &mut prepare => break core?,
                _ = tokio::time::sleep(self.timing.check) => {
                    if lost.is_none() {
                        lost = lead.check(self.timing.check_timeout).await.err();
                    }
                }
            }
        };
        if let Some(e) = lost {
            core.abandon().await;
            return Err(e.into());
        }
        let state = core.app_state(&self.shared);
        let router = api::router(state.clone(), self.shared.config.metrics_listen.is_none());
        self.set_current((router, state), Role::Active);
        *self.leader.write() = Some(LeaderInfo {
            epoch: lead.epoch(),
            replica: self.me.clone(),
            advertise_url: self.me.clone(),
            since: self.shared.clock.now(),
        });
        info!(epoch = lead.epoch(), "this replica is now the active one");
        Ok(Phase::Active { core, lead })
    }

    /// Reads every token from the database into the token cache.
    async fn reload_tokens(&self) -> Result<(), rollcall_store::StoreError> {
        let _one_at_a_time = self.token_reload.lock().await;
        let tokens = self.shared.store.all_tokens().await?;
        self.shared.tokens.replace_stored(tokens);
        Ok(())
    }

    /// Serves a request with the current role's router; a standby passes
    /// changes on to the active replica instead.
    async fn dispatch(&self, req: Request) -> Response {
        let (router, role) = {
            let current = self.current.read();
            (current.0.clone(), current.2)
        };
        if role == Role::Standby && (is_change(&req) || needs_engine(&req)) {
            drain_unread(req, |req| self.forward(req)).await
        } else {
            match router.oneshot(req).await {
                Ok(resp) => resp,
                Err(never) => match never {},
            }
        }
    }

    fn set_current(&self, current: (Router, AppState), role: Role) {
        // The role flips before the router: a request that sees `active`
        // in the header was served by the active router or forwarded to it.
        if role == Role::Standby {
            self.role.set(role);
        }
        *self.current.write() = (current.0, current.1, role);
        if role == Role::Active {
            self.role.set(role);
        }
        self.shared.metrics.set_active(role == Role::Active);
    }

    /// Asks the active replica (as last read from the database) whether it
    /// answers, within [`FORWARD_TIMEOUT`]; `/readyz` of this standby says
    /// what it found.
    async fn probe_active(&self) {
        let target = self.leader.read().clone();
        let Some(target) = target.filter(|l| l.advertise_url != self.me) else {
            self.shared.active_reach.set(None);
            return;
        };
        let url = format!("{}/healthz", target.advertise_url);
        let reason = match self.forward.get(url).send().await {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!(
                "the active replica {} answers {} to /healthz",
                target.advertise_url,
                r.status()
            )),
            Err(e) if e.is_timeout() => Some(format!(
                "the active replica {} does not answer within {FORWARD_TIMEOUT:?} (frozen or cut off); changes sent here are refused with 503",
                target.advertise_url
            )),
            Err(e) => Some(format!(
                "the active replica {} cannot be reached ({}); changes sent here are refused with 503",
                target.advertise_url,
                e.without_url()
            )),
        };
        self.shared.active_reach.set(reason);
    }

    /// Passes a change on to the active replica and returns its answer.
    async fn forward(&self, req: Request) -> Response {
        if let Some(by) = req.headers().get(FORWARDED_HEADER) {
            let by = by.to_str().unwrap_or("another replica").to_owned();
            return ApiError::Unavailable(format!(
                "this replica is standing by; the change came from {by}, which took it for the active one (a takeover is in progress); retry"
            ))
            .into_response();
        }
        let target = self.leader.read().clone();
        let Some(target) = target.filter(|l| l.advertise_url != self.me) else {
            return ApiError::Unavailable(
                "no replica is active right now (a takeover is in progress); retry".into(),
            )
            .into_response();
        };
        let (parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let url = format!("{}{}", target.advertise_url, path);
        let mut out = self
            .forward
            .request(parts.method.clone(), url)
            .body(reqwest::Body::wrap_stream(capped(body, FORWARD_BODY_CAP)));
        let too_long = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > FORWARD_BODY_CAP as u64);
        for (name, value) in &parts.headers {
            // A body cut at the cap goes out chunked, not with its length.
            if !is_hop_by_hop(name)
                && name != axum::http::header::HOST
                && !(too_long && name == CONTENT_LENGTH)
            {
                out = out.header(name, value);
            }
        }
        out = out.header(FORWARDED_HEADER, self.me.as_str());
        let changes_tokens = path.starts_with("/v1/tokens");
        match out.send().await {
            Ok(resp) => {
                // A token created or deleted through this replica counts
                // here as soon as the client hears of it, as it does on the
                // active replica (the others learn it from the notification).
                if changes_tokens && resp.status().is_success() {
                    if let Err(e) = self.reload_tokens().await {
                        warn!(error = %e, "reloading tokens failed");
                    }
                }
                let mut builder = Response::builder().status(resp.status());
                for (name, value) in resp.headers() {
                    if !is_hop_by_hop(name) && name != api::ROLE_HEADER {
                        builder = builder.header(name, value);
                    }
                }
                builder
                    .body(Body::from_stream(resp.bytes_stream()))
                    .unwrap_or_else(|_| ApiError::Internal.into_response())
            }
            Err(e) => {
                // Without the URL: its query string is the client's and
                // might hold anything, a misplaced token included.
                let e = e.without_url();
                warn!(active = %target.advertise_url, error = %e, "forwarding to the active replica failed");
                // It may have just died: read who leads now for the next one.
                // (Not when the request itself failed, e.g. a client that
                // went away mid-body: the active replica is still there.)
                if e.is_connect() {
                    *self.leader.write() = None;
                }
                ApiError::Unavailable(
                    "the active replica did not answer (a takeover may be in progress); retry"
                        .into(),
                )
                .into_response()
            }
        }
    }
}

/// Whether a request changes something and so must go to the active replica.
fn is_change(req: &Request) -> bool {
    req.uri().path().starts_with("/v1/") && !matches!(*req.method(), Method::GET | Method::HEAD)
}

/// Whether a read is answered from the liveness engine's memory, which only
/// the active replica holds (`GET /v1/summary`).
fn needs_engine(req: &Request) -> bool {
    req.uri().path() == "/v1/summary"
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The router of a standby: reads are answered here, changes forwarded.
fn standby_router(shared: &Shared) -> (Router, AppState) {
    let state = shared.standby_state();
    let router = api::router(state.clone(), shared.config.metrics_listen.is_none());
    (router, state)
}

/// The most of a request body a standby passes on: one byte over the
/// largest body limit. A longer body is refused with 413 whatever its
/// length (after the checks that come first), and the active replica reads
/// this much to the end, so its answer arrives whole; the rest is read and
/// discarded here, as the active replica would.
const FORWARD_BODY_CAP: usize = BATCH_BODY_LIMIT + 1;

/// The first `cap` bytes of `body`, as a stream.
fn capped(
    body: Body,
    cap: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, axum::Error>> + Send {
    body.into_data_stream().scan(cap, |left, chunk| {
        let next = match chunk {
            Ok(_) if *left == 0 => None,
            Ok(mut data) => {
                data.truncate(*left);
                *left -= data.len();
                Some(Ok(data))
            }
            Err(e) => Some(Err(e)),
        };
        std::future::ready(next)
    })
}

/// Publishes every event of the log after the last one published.
async fn relay_events(shared: &Shared) -> Result<usize, rollcall_store::StoreError> {
    let mut n = 0;
    loop {
        let after = shared.hub.last_seq();
        let page = shared
            .store
            .list_events(&EventFilter::default(), after, 1_000)
            .await?;
        n += page.items.len();
        shared.hub.publish(page.items);
        if !page.more {
            return Ok(n);
        }
    }
}

/// A standby's relay: events committed by the active replica go out to this
/// replica's stream clients, and token changes reach its token cache.
#[derive(Debug)]
struct Relay {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Relay {
    fn start(replica: Arc<Inner>) -> Relay {
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay(replica, stop.clone()));
        Relay { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn relay(replica: Arc<Inner>, stop: CancellationToken) {
    let shared = &replica.shared;
    let reload_tokens = || async {
        if let Err(e) = replica.reload_tokens().await {
            warn!(error = %e, "reloading tokens failed");
        }
    };
    let catch_up = || async {
        if let Err(e) = relay_events(shared).await {
            warn!(error = %e, "relaying events failed; will retry");
        }
    };
    loop {
        let mut listener = tokio::select! {
            _ = stop.cancelled() => return,
            l = replica.pg.listen() => match l {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "listening for events failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        // Whatever happened while nobody listened.
        reload_tokens().await;
        catch_up().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.recv() => match n {
                    Ok(Notification::Events) => catch_up().await,
                    Ok(Notification::Tokens) => reload_tokens().await,
                    Err(e) => {
                        warn!(error = %e, "the event notification connection was lost; reconnecting");
                        break;
                    }
                },
                _ = tokio::time::sleep(replica.timing.relay_poll) => catch_up().await,
            }
        }
    }
}

/// The database's clock, read through the local one: timestamps of a
/// PostgreSQL deployment come from the database, so that every replica
/// agrees on deadlines whatever its own clock says.
#[derive(Debug)]
pub struct DbClock {
    base: Arc<dyn Clock>,
    offset_ms: std::sync::atomic::AtomicI64,
}

impl DbClock {
    pub fn new(base: Arc<dyn Clock>) -> Self {
        DbClock {
            base,
            offset_ms: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Measures the offset to the database's clock. A reading taken
    /// between the local readings before and after it agrees with the
    /// local clock within what one round trip can tell: the offset is then
    /// zero, else the distance to the middle of the round trip.
    pub async fn sync(&self, pg: &PgStore) -> Result<(), rollcall_store::StoreError> {
        let before = self.base.now().as_millis();
        let db = pg.now().await?.as_millis();
        let after = self.base.now().as_millis();
        self.offset_ms.store(
            clock_offset(before, db, after),
            std::sync::atomic::Ordering::Relaxed,
        );
        Ok(())
    }
}

/// The offset of the database's clock reading `db`, taken between the
/// local readings `before` and `after` (see [`DbClock::sync`]).
fn clock_offset(before: i64, db: i64, after: i64) -> i64 {
    if (before..=after).contains(&db) {
        0
    } else {
        db - (before + after) / 2
    }
}

impl Clock for DbClock {
    fn now(&self) -> Timestamp {
        let base = self.base.now();
        Timestamp::from_millis(
            base.as_millis() + self.offset_ms.load(std::sync::atomic::Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;

    #[test]
    fn clock_offset_is_zero_within_the_round_trip_else_from_its_middle() {
        assert_eq!(clock_offset(1_000, 1_000, 1_004), 0);
        assert_eq!(clock_offset(1_000, 1_004, 1_004), 0);
        // The database is ahead: measured from the middle of the trip.
        assert_eq!(clock_offset(1_000, 1_500, 1_004), 498);
        // Behind.
        assert_eq!(clock_offset(1_000, 400, 1_010), -605);
    }

    #[tokio::test(start_paused = true)]
    async fn db_clock_reads_the_base_clock_plus_the_offset() {
        let base = Arc::new(TokioClock::starting_at(Timestamp::from_millis(10_000)));
        let clock = DbClock::new(base);
        assert_eq!(clock.now(), Timestamp::from_millis(10_000));
        clock.offset_ms.store(
            clock_offset(10_000, 10_250, 10_000),
            std::sync::atomic::Ordering::Relaxed,
        );
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(clock.now(), Timestamp::from_millis(10_255));
    }
}
