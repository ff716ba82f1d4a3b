//! # rollcall-server
//!
//! The rollcall server as a library: the binary's `serve` is a thin shim
//! over [`start`], and tests run the real thing on port 0.
//!
//! ## Layout
//!
//! - [`engine`]: the liveness engine — every worker in memory, deadlines in
//!   a timer heap; a heartbeat is a hash-map update.
//! - [`writer`]: the transition writer — the one task that changes statuses,
//!   in batched, conditional store transactions, before anything announces
//!   them.
//! - [`detector`]: turns passed deadlines into stale transitions.
//! - [`flush`]: writes heartbeat times behind.
//! - [`cleanup`]: the periodic sweep (safety net) and housekeeping.
//! - [`hub`]: committed events fan-out.
//! - [`alerts`]: rules turn the event log into incidents; the outbox is
//!   delivered to webhooks, Slack and Alertmanager.
//! - [`metrics`]: Prometheus counters, histograms and the `/metrics` text.
//! - [`auth`]: who is calling.
//! - [`api`]: the HTTP contract (axum).
//! - [`config`]: flags > env > file > defaults.
//! - [`clock`]: time as an input.
//!
//! ## Start-up and shutdown
//!
//! [`start`] opens the store, loads every worker into the engine with the
//! restart grace, starts the background tasks and begins serving on the
//! caller's listener. [`Running::shutdown`] stops accepting requests, lets
//! in-flight ones finish (event streams end; a client that is not reading
//! gets a short grace, then its connection is closed), drains the writer,
//! flushes heartbeat times and shuts the store down (SQLite checkpoints its
//! WAL, so `rollcall.db` alone holds every commit).

pub mod alerts;
pub mod api;
pub mod auth;
pub mod cleanup;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod detector;
pub mod engine;
pub mod flush;
pub mod guarded_io;
pub mod health;
pub mod hub;
pub mod metrics;
pub mod pause;
pub mod writer;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rollcall_core::{Timestamp, TokenHash, TokenId, TokenKind};
use rollcall_store::sqlite::SqliteStore;
use rollcall_store::{Store, TokenRecord};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use api::stream::StreamSettings;
pub use cleanup::Cleaner;
pub use clock::{Clock, SystemClock};
pub use config::{Config, RawConfig};

/// A server that is up and serving.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    /// Where `/metrics` is served when it has a listener of its own.
    metrics_addr: Option<SocketAddr>,
    stop: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    mode: Mode,
    /// The admin token generated at this start, if one was.
    generated_admin_token: Option<String>,
}

/// How this server runs.
#[derive(Debug)]
enum Mode {
    /// SQLite: this process is the only one, always active. The store is
    /// kept to be shut down last, once the core has written everything.
    Single(Box<Core>, Arc<dyn Store>),
    /// PostgreSQL: one replica of several, active or standby.
    Replica(cluster::Replica),
}

/// Whether a server changes state itself or passes changes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs the liveness engine, the detector, write-behind and cleanup.
    Active,
    /// Serves reads from the database, relays events, and forwards every
    /// change to the active replica.
    Standby,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Active => "active",
            Role::Standby => "standby",
        }
    }
}

/// A server's current role, shared between the task that changes it and
/// the HTTP layer that reports it.
#[derive(Debug, Clone)]
pub(crate) struct RoleCell(Arc<std::sync::atomic::AtomicBool>);

impl RoleCell {
    pub(crate) fn new(role: Role) -> Self {
        RoleCell(Arc::new(std::sync::atomic::AtomicBool::new(
            role == Role::Active,
        )))
    }

    pub(crate) fn get(&self) -> Role {
        if self.0.load(std::sync::atomic::Ordering::Acquire) {
            Role::Active
        } else {
            Role::Standby
        }
    }

    pub(crate) fn set(&self, role: Role) {
        self.0
            .store(role == Role::Active, std::sync::atomic::Ordering::Release);
    }
}

impl Running {
    /// The address it serves on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address of the separate metrics listener, if `metrics_listen`
    /// is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The cleanup tasks of the current role, for driving them directly (a
    /// standby's refuse to change anything).
    pub fn cleaner(&self) -> Cleaner {
        match &self.mode {
            Mode::Single(core, _) => core.cleaner.clone(),
            Mode::Replica(r) => r.state().cleaner,
        }
    }

    /// The liveness engine of the current role (read-only use in tests and
    /// tools; a standby's is empty).
    pub fn engine(&self) -> Arc<engine::Engine> {
        match &self.mode {
            Mode::Single(core, _) => core.engine.clone(),
            Mode::Replica(r) => r.state().engine,
        }
    }

    /// Whether this server is the active one.
    pub fn role(&self) -> Role {
        match &self.mode {
            Mode::Single(..) => Role::Active,
            Mode::Replica(r) => r.role(),
        }
    }

    /// The admin token generated at this start, if one was.
    pub fn generated_admin_token(&self) -> Option<&str> {
        self.generated_admin_token.as_deref()
    }

    /// Resolves when the server stops serving on its own (it should not).
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        (&mut self.http).await??;
        Ok(())
    }

    /// Graceful shutdown: stop accepting, finish in-flight requests, drain
    /// the writer, flush heartbeat times, close the store (SQLite: with its
    /// WAL checkpointed into the database file and truncated; for a
    /// replica, give up the active role so that a standby takes over at once).
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let http = self.http.await;
        match self.mode {
            Mode::Single(core, store) => {
                core.stop().await;
                // Nothing writes any more: checkpoint SQLite's WAL into the
                // database file, so that the file alone holds every commit.
                if let Err(e) = store.shutdown().await {
                    warn!(error = %e, "closing the store at shutdown failed");
                }
            }
            Mode::Replica(r) => r.shutdown().await,
        }
        if let Ok(Err(e)) = &http {
            warn!(error = %e, "the HTTP server task failed");
        }
        http??;
        Ok(())
    }
}

/// What every role of a server shares: the store, the token cache, the
/// event hub, the clock and the settings.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) tokens: Arc<auth::Tokens>,
    pub(crate) hub: hub::Hub,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Whether the store can commit; `store` reports every write to it.
    pub(crate) health: Arc<health::StoreHealth>,
    pub(crate) stream: StreamSettings,
    /// The open event streams (shared by every role this server takes).
    pub(crate) streams: Arc<api::stream::StreamSlots>,
    /// Failed authentications per client address.
    pub(crate) throttle: Arc<auth::FailureThrottle>,
    /// Cancelled when the server shuts down.
    pub(crate) shutdown: CancellationToken,
    /// On a standby replica: whether the active one answers.
    pub(crate) active_reach: Arc<cluster::ActiveReach>,
    /// Woken when the API changed the alert rules (the alerter reloads).
    pub(crate) rules_changed: Arc<tokio::sync::Notify>,
}

impl Shared {
    /// The API state of a role.
    pub(crate) fn app_state(
        &self,
        engine: Arc<engine::Engine>,
        writer: writer::Writer,
        cleaner: Cleaner,
    ) -> api::AppState {
        api::AppState {
            store: self.store.clone(),
            engine,
            writer,
            tokens: self.tokens.clone(),
            hub: self.hub.clone(),
            clock: self.clock.clone(),
            policy: self.config.policy,
            cleaner,
            metrics: self.metrics.clone(),
            store_health: self.health.clone(),
            metrics_token: self.config.metrics_token.as_deref().map(TokenHash::of),
            stream: self.stream,
            streams: self.streams.clone(),
            throttle: self.throttle.clone(),
            re_register: self.config.re_register,
            health: api::health::HealthSettings {
                retention: self.config.health_retention,
                flapping_crashes_per_hour: self.config.flapping_crashes_per_hour,
            },
            shutdown: self.shutdown.child_token(),
            active_reach: None,
            alerting: Arc::new(self.config.alerting.clone()),
            rules_changed: self.rules_changed.clone(),
        }
    }

    fn cleaner(&self, engine: Arc<engine::Engine>, writer: writer::Writer) -> Cleaner {
        Cleaner {
            store: self.store.clone(),
            engine,
            writer,
            tokens: self.tokens.clone(),
            clock: self.clock.clone(),
            retention: cleanup::Retention {
                forget_offline_after: self.config.forget_offline_after,
                event_retention: self.config.event_retention,
                health_retention: self.config.health_retention,
            },
            metrics: self.metrics.clone(),
            pause: None,
        }
    }

    /// The API state of a replica that changes nothing itself.
    pub(crate) fn standby_state(&self) -> api::AppState {
        let engine = Arc::new(engine::Engine::new());
        let writer = writer::Writer::detached(engine.clone());
        let cleaner = self.cleaner(engine.clone(), writer.clone());
        let mut state = self.app_state(engine, writer, cleaner);
        state.active_reach = Some(self.active_reach.clone());
        state
    }
}

/// The liveness machinery of the server that changes state: the engine
/// loaded with the restart grace, the transition writer, the detector, the
/// sweep and cleanup loops, and the write-behind flush.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) engine: Arc<engine::Engine>,
    pub(crate) writer: writer::Writer,
    pub(crate) cleaner: Cleaner,
    stop: CancellationToken,
    background: Vec<JoinHandle<()>>,
    /// Stopped last, so its final flush sees every accepted heartbeat.
    flush_stop: CancellationToken,
    flush_task: JoinHandle<()>,
    writer_task: JoinHandle<()>,
}

impl Core {
    /// Loads every worker from the store with the restart grace (counted
    /// from now, the moment this core starts taking traffic) and starts the
    /// background tasks.
    pub(crate) async fn start(shared: &Shared) -> anyhow::Result<Core> {
        // From here on this server observes: before it loads or changes
        // anything, so every transition it commits is within its
        // observation.
        let observing_since = shared.clock.now();
        shared.store.begin_observation(observing_since).await?;
        let engine = Arc::new(engine::Engine::new());
        let workers = shared.store.load_workers().await?;
        let loaded = workers.len();
        engine.load(workers, shared.clock.now());
        let mut after = None;
        loop {
            let page = shared
                .store
                .list_machines(None, after.as_ref(), 1000)
                .await?;
            for m in &page.items {
                engine.note_machine(&m.id, m.hostname.as_deref(), Some(&m.labels));
            }
            if !page.more {
                break;
            }
            after = page.items.last().map(|m| m.id.clone());
        }
        let census = engine.census();
        info!(
            workers = loaded,
            online = census.online,
            draining = census.draining,
            "loaded workers with the restart grace"
        );
        let (writer, writer_task) = writer::Writer::start(
            shared.store.clone(),
            engine.clone(),
            shared.hub.clone(),
            shared.clock.clone(),
            shared.metrics.clone(),
        );
        let pause = Arc::new(pause::PauseWatch::new(
            engine.clone(),
            shared.clock.clone(),
            shared.metrics.clone(),
        ));
        let mut cleaner = shared.cleaner(engine.clone(), writer.clone());
        cleaner.pause = Some(pause.clone());
        let config = &shared.config;
        let stop = CancellationToken::new();
        let detector = detector::Detector::new(
            engine.clone(),
            writer.clone(),
            shared.clock.clone(),
            pause.clone(),
        );
        let background = vec![
            tokio::spawn(pause.run(stop.child_token())),
            tokio::spawn(detector.run(stop.child_token())),
            tokio::spawn(cleaner.clone().run(
                config.sweep_interval,
                config.cleanup_interval,
                stop.child_token(),
            )),
            tokio::spawn(observe(
                shared.store.clone(),
                shared.clock.clone(),
                observing_since,
                stop.child_token(),
            )),
        ];
        let outbox = Arc::new(tokio::sync::Notify::new());
        let alerter = alerts::Alerter {
            store: shared.store.clone(),
            writer: writer.clone(),
            engine: engine.clone(),
            hub: shared.hub.clone(),
            clock: shared.clock.clone(),
            metrics: shared.metrics.clone(),
            alerting: config.alerting.clone(),
            rules_changed: shared.rules_changed.clone(),
            outbox: outbox.clone(),
        };
        let deliverer = alerts::deliver::Deliverer {
            store: shared.store.clone(),
            clock: shared.clock.clone(),
            metrics: shared.metrics.clone(),
            alerting: config.alerting.clone(),
            wake: outbox,
            http: alerts::deliver::Deliverer::client(),
        };
        let mut background = background;
        background.push(tokio::spawn(alerter.run(stop.child_token())));
        background.push(tokio::spawn(deliverer.run(stop.child_token())));
        let flusher = flush::Flusher::new(
            engine.clone(),
            shared.tokens.clone(),
            shared.store.clone(),
            shared.metrics.clone(),
        );
        let flush_stop = CancellationToken::new();
        let flush_task = tokio::spawn(flusher.run(config.flush_interval, flush_stop.clone()));
        Ok(Core {
            engine,
            writer,
            cleaner,
            stop,
            background,
            flush_stop,
            flush_task,
            writer_task,
        })
    }

    /// The API state of this core.
    pub(crate) fn app_state(&self, shared: &Shared) -> api::AppState {
        shared.app_state(
            self.engine.clone(),
            self.writer.clone(),
            self.cleaner.clone(),
        )
    }

    /// Graceful stop, once nothing submits any more: the loops end, the last
    /// heartbeat times are flushed, the writer drains its queue.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        for t in self.background {
            let _ = t.await;
        }
        self.flush_stop.cancel();
        let _ = self.flush_task.await;
        drop(self.cleaner);
        drop(self.writer);
        // Every Writer handle is gone now; the writer drains and ends.
        let _ = self.writer_task.await;
    }

    /// Stops at once, writing nothing more (the active role was lost: another
    /// replica may already have taken over). Queued changes are refused.
    pub(crate) async fn abandon(self) {
        self.stop.cancel();
        self.flush_stop.cancel();
        self.writer_task.abort();
        self.flush_task.abort();
        for t in &self.background {
            t.abort();
        }
        let _ = self.writer_task.await;
        let _ = self.flush_task.await;
        for t in self.background {
            let _ = t.await;
        }
    }
}

/// Extends this server's observation every
/// [`OBSERVE_INTERVAL`](rollcall_core::health::OBSERVE_INTERVAL) while it
/// runs, and once more when it stops: time it did not extend over is no data
/// in the health history. A failed extension is retried at the next tick.
async fn observe(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    since: rollcall_core::Timestamp,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(rollcall_core::health::OBSERVE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = store.extend_observation(since, clock.now()).await;
                return;
            }
            _ = tick.tick() => {
                if let Err(e) = store.extend_observation(since, clock.now()).await {
                    tracing::debug!(error = %e, "extending the health observation failed");
                }
            }
        }
    }
}

/// Opens the SQLite store named by the config.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    anyhow::ensure!(
        !config.is_postgres(),
        "open_store opens SQLite; PostgreSQL replicas are started by `start`"
    );
    let store = SqliteStore::open(&config.database_url)
        .await
        .with_context(|| format!("opening {}", config::redact_url(&config.database_url)))?;
    Ok(Arc::new(store))
}

/// Sets up the admin token (see the HTTP contract, "Tokens"). Returns the
/// configured secret (kept in memory as a hash only) and, on a first start
/// without one, the generated secret.
async fn admin_token(
    config: &Config,
    store: &dyn Store,
    existing: &[TokenRecord],
    now: Timestamp,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    if let Some(t) = &config.admin_token {
        return Ok((Some(t.clone()), None));
    }
    if let Some(path) = &config.admin_token_file {
        let t = std::fs::read_to_string(path).with_context(|| {
            format!("config key `admin_token_file`: reading {}", path.display())
        })?;
        let t = t.trim().to_owned();
        anyhow::ensure!(
            t.len() >= 16,
            "config key `admin_token_file`: {} holds fewer than 16 characters",
            path.display()
        );
        return Ok((Some(t), None));
    }
    if existing.iter().any(|t| t.kind == TokenKind::Admin) {
        return Ok((None, None));
    }
    let secret = TokenKind::Admin.secret(rand::random());
    let record = TokenRecord {
        id: TokenId::generate(now, rand::random()),
        kind: TokenKind::Admin,
        name: "generated admin token".into(),
        hash: TokenHash::of(&secret),
        created_at: now,
        expires_at: None,
        last_used_at: None,
        scope: None,
    };
    let path = config.data_dir.join("admin.token");
    write_secret(&path, &secret)
        .with_context(|| format!("writing the generated admin token to {}", path.display()))?;
    store.insert_token(&record).await?;
    info!(path = %path.display(), "generated an admin token; it is in this file (readable by this user only)");
    Ok((None, Some(secret)))
}

/// Writes `secret` to `path` (mode 0600) so that a reader finds either no
/// file or the whole secret, never a part: into a temporary file beside it,
/// synced, renamed over `path`, and the directory synced. A full disk fails
/// the start with the error; it never leaves an empty or cut token file.
fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    rollcall_store::sqlite::private_dir(dir)?;
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut f = options.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        writeln!(f, "{secret}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Starts rollcall on `listener`: opens the store, loads the engine with the
/// restart grace, starts the background tasks and serves. Returns once it is
/// ready to accept requests.
pub async fn start(
    config: Config,
    listener: TcpListener,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Running> {
    start_with_stream_settings(config, listener, clock, StreamSettings::default()).await
}

/// Like [`start`], with the event stream's timings (keep-alive, how long a
/// client that stopped reading is waited for) changed; tests shorten them.
pub async fn start_with_stream_settings(
    config: Config,
    listener: TcpListener,
    clock: Arc<dyn Clock>,
    stream: StreamSettings,
) -> anyhow::Result<Running> {
    if config.is_postgres() {
        return cluster::launch(config, listener, clock, stream).await;
    }
    let store = open_store(&config).await?;
    launch(config, listener, clock, store, stream).await
}

/// Like [`start`], with a store opened by the caller.
pub async fn start_with_store(
    config: Config,
    listener: TcpListener,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
) -> anyhow::Result<Running> {
    launch(config, listener, clock, store, StreamSettings::default()).await
}

/// Everything [`start`] does for a single server, with the store and the
/// stream timings given.
async fn launch(
    config: Config,
    listener: TcpListener,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    stream: StreamSettings,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let metrics_listener = bind_metrics(&config).await?;
    let (shared, generated) = prepare(config, store, clock, stream).await?;
    // Events already in the log are not published again; the writer fills
    // any gap after this from the log (see `writer.rs`).
    shared.hub.mark_published(shared.store.last_seq().await?);
    let core = Core::start(&shared).await?;
    let state = core.app_state(&shared);
    let store = shared.store.clone();
    let metrics_addr = match metrics_listener {
        Some(l) => Some(serve_metrics(
            l,
            api::metrics_router(state.clone()),
            &shared,
        )?),
        None => None,
    };
    let app = api::router(state, metrics_addr.is_none());
    let stop = shared.shutdown.clone();
    let http = serve_http(listener, app, RoleCell::new(Role::Active), &shared);
    Ok(Running {
        addr,
        metrics_addr,
        stop,
        http,
        mode: Mode::Single(Box::new(core), store),
        generated_admin_token: generated,
    })
}

/// Sets up what every role shares: the admin token and the token cache.
/// Returns it with the admin token generated at this start, if any.
pub(crate) async fn prepare(
    config: Config,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    stream: StreamSettings,
) -> anyhow::Result<(Shared, Option<String>)> {
    let metrics = Arc::new(metrics::Metrics::new());
    let health = Arc::new(health::StoreHealth::new(metrics.clone()));
    let store: Arc<dyn Store> = Arc::new(health::Watched::new(store, health.clone()));
    let existing_tokens = store.all_tokens().await?;
    let (configured_admin, generated) =
        admin_token(&config, store.as_ref(), &existing_tokens, clock.now()).await?;
    let tokens = Arc::new(auth::Tokens::new(
        store.all_tokens().await?,
        configured_admin.as_deref(),
    ));
    let streams = api::stream::StreamSlots::new(
        config.limits.max_streams,
        config.limits.max_streams_per_token,
    );
    let throttle = Arc::new(auth::FailureThrottle::new(
        config.limits.failed_auth_burst,
        config.limits.failed_auth_refill,
    ));
    let shared = Shared {
        streams,
        throttle,
        config: Arc::new(config),
        store,
        tokens,
        hub: hub::Hub::new(),
        clock,
        metrics,
        health,
        stream,
        shutdown: CancellationToken::new(),
        active_reach: Arc::default(),
        rules_changed: Arc::default(),
    };
    Ok((shared, generated))
}

/// Binds `metrics_listen`, if it is set.
pub(crate) async fn bind_metrics(config: &Config) -> anyhow::Result<Option<TcpListener>> {
    match config.metrics_listen {
        Some(a) => Ok(Some(TcpListener::bind(a).await.with_context(|| {
            format!("config key `metrics_listen`: cannot bind {a}")
        })?)),
        None => Ok(None),
    }
}

/// Serves `/metrics` on a listener of its own until the server shuts down;
/// returns its address.
pub(crate) fn serve_metrics(
    listener: TcpListener,
    app: axum::Router,
    shared: &Shared,
) -> anyhow::Result<SocketAddr> {
    let addr = listener.local_addr()?;
    info!(%addr, "serving /metrics on its own listener");
    let app = app.layer(nosniff()).layer(catch_panic());
    let stop = shared.shutdown.clone();
    let settings = serve_settings(shared);
    tokio::spawn(async move {
        let served = conn::serve(listener, app, settings, stop).await;
        if let Err(e) = served {
            warn!(error = %e, "the metrics listener failed");
        }
    });
    Ok(addr)
}

/// `X-Content-Type-Options: nosniff` on every answer (a static header).
fn nosniff() -> tower_http::set_header::SetResponseHeaderLayer<axum::http::HeaderValue> {
    tower_http::set_header::SetResponseHeaderLayer::if_not_present(
        axum::http::header::X_CONTENT_TYPE_OPTIONS,
        axum::http::HeaderValue::from_static("nosniff"),
    )
}

/// Answers a panicking handler with the contract's opaque 500.
fn catch_panic() -> tower_http::catch_panic::CatchPanicLayer<
    impl tower_http::catch_panic::ResponseForPanic<ResponseBody = axum::body::Body>,
> {
    tower_http::catch_panic::CatchPanicLayer::custom(|_| {
        axum::response::IntoResponse::into_response(api::error::ApiError::Internal)
    })
}

/// Serves `app` on `listener` until the server shuts down.
pub(crate) fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    role: RoleCell,
    shared: &Shared,
) -> JoinHandle<std::io::Result<()>> {
    // A plain response-header layer: no boxed middleware on the heartbeat
    // path.
    let app = app
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            axum::http::HeaderName::from_static(api::ROLE_HEADER),
            move |_: &axum::response::Response| {
                Some(axum::http::HeaderValue::from_static(role.get().as_str()))
            },
        ))
        .layer(nosniff())
        .layer(catch_panic());
    let stop = shared.shutdown.clone();
    // Connections that stop reading are closed rather than waited for, so
    // an event stream to a stuck client cannot hang shutdown; see `conn`
    // for the timeouts and the cap.
    tokio::spawn(conn::serve(listener, app, serve_settings(shared), stop))
}

/// The connection limits in force: the configured ones, with the cap
/// lowered to fit the open-file limit (raised first).
fn serve_settings(shared: &Shared) -> conn::ServeSettings {
    let limits = shared.config.limits;
    let fd_limit = conn::raise_fd_limit();
    let max_connections = conn::effective_max_connections(limits.max_connections, fd_limit);
    if max_connections < limits.max_connections {
        warn!(
            configured = limits.max_connections,
            in_force = max_connections,
            open_file_limit = fd_limit,
            "max_connections lowered to leave file descriptors for the rest of the server"
        );
    }
    conn::ServeSettings {
        limits,
        max_connections,
        stream: shared.stream,
    }
}

/// Runs rollcall on `listener` until `shutdown` resolves, then shuts down
/// gracefully.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let mut running = start(config, listener, Arc::new(SystemClock)).await?;
    tokio::select! {
        r = running.stopped() => r,
        _ = shutdown => running.shutdown().await,
    }
}
