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
//! gets a short grace, then its connection is closed), drains the writer and
//! flushes heartbeat times.

pub mod api;
pub mod auth;
pub mod cleanup;
pub mod clock;
pub mod config;
pub mod detector;
pub mod engine;
pub mod flush;
pub mod hub;
pub mod metrics;
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
    background: Vec<JoinHandle<()>>,
    /// Stopped last, so its final flush sees every accepted heartbeat.
    flush_stop: CancellationToken,
    flush_task: JoinHandle<()>,
    writer_task: JoinHandle<()>,
    store: Arc<dyn Store>,
    cleaner: Cleaner,
    engine: Arc<engine::Engine>,
    /// The admin token generated at this start, if one was.
    generated_admin_token: Option<String>,
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

    /// The cleanup tasks, for driving them directly.
    pub fn cleaner(&self) -> &Cleaner {
        &self.cleaner
    }

    /// The liveness engine (read-only use in tests and tools).
    pub fn engine(&self) -> &Arc<engine::Engine> {
        &self.engine
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
    /// the writer, flush heartbeat times, close the store.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        let http = self.http.await;
        for t in self.background {
            let _ = t.await;
        }
        self.flush_stop.cancel();
        let _ = self.flush_task.await;
        drop(self.cleaner);
        // Every Writer handle is gone now; the writer drains and ends.
        let _ = self.writer_task.await;
        if let Err(e) = http {
            warn!(error = %e, "the HTTP server task failed");
        }
        drop(self.store);
        Ok(())
    }
}

/// Opens the store named by the config.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
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
    };
    let path = config.data_dir.join("admin.token");
    write_secret(&path, &secret)
        .with_context(|| format!("writing the generated admin token to {}", path.display()))?;
    store.insert_token(&record).await?;
    info!(path = %path.display(), "generated an admin token; it is in this file (readable by this user only)");
    Ok((None, Some(secret)))
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    writeln!(f, "{secret}")?;
    f.sync_all()
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

/// Everything [`start`] does, with the store and the stream timings given.
async fn launch(
    config: Config,
    listener: TcpListener,
    clock: Arc<dyn Clock>,
    store: Arc<dyn Store>,
    stream: StreamSettings,
) -> anyhow::Result<Running> {
    let addr = listener.local_addr()?;
    let metrics_listener = match config.metrics_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("config key `metrics_listen`: cannot bind {a}"))?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    let existing_tokens = store.all_tokens().await?;
    let (configured_admin, generated) =
        admin_token(&config, store.as_ref(), &existing_tokens, clock.now()).await?;
    let tokens = Arc::new(auth::Tokens::new(
        store.all_tokens().await?,
        configured_admin.as_deref(),
    ));

    let engine = Arc::new(engine::Engine::new());
    let workers = store.load_workers().await?;
    let loaded = workers.len();
    // The restart grace counts from now, the moment we start serving.
    engine.load(workers, clock.now());
    let census = engine.census();
    info!(
        workers = loaded,
        online = census.online,
        draining = census.draining,
        "loaded workers with the restart grace"
    );

    let hub = hub::Hub::new();
    let metrics = Arc::new(metrics::Metrics::new());
    let (writer, writer_task) = writer::Writer::start(
        store.clone(),
        engine.clone(),
        hub.clone(),
        clock.clone(),
        metrics.clone(),
    );
    let cleaner = Cleaner {
        store: store.clone(),
        engine: engine.clone(),
        writer: writer.clone(),
        tokens: tokens.clone(),
        clock: clock.clone(),
        retention: cleanup::Retention {
            forget_offline_after: config.forget_offline_after,
            event_retention: config.event_retention,
        },
        metrics: metrics.clone(),
    };

    let stop = CancellationToken::new();
    let mut background = Vec::new();
    let detector = detector::Detector::new(engine.clone(), writer.clone(), clock.clone());
    background.push(tokio::spawn(detector.run(stop.child_token())));
    background.push(tokio::spawn(cleaner.clone().run(
        config.sweep_interval,
        config.cleanup_interval,
        stop.child_token(),
    )));
    let flusher = flush::Flusher::new(
        engine.clone(),
        tokens.clone(),
        store.clone(),
        metrics.clone(),
    );

    let state = api::AppState {
        store: store.clone(),
        engine: engine.clone(),
        writer,
        tokens,
        hub,
        clock,
        policy: config.policy,
        cleaner: cleaner.clone(),
        metrics,
        metrics_token: config.metrics_token.as_deref().map(TokenHash::of),
        stream,
        shutdown: stop.child_token(),
    };
    if let Some(listener) = metrics_listener {
        info!(addr = ?metrics_addr, "serving /metrics on its own listener");
        let app = api::metrics_router(state.clone()).layer(catch_panic());
        let metrics_stop = stop.clone();
        background.push(tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { metrics_stop.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "the metrics listener failed");
            }
        }));
    }
    let app = api::router(state, metrics_addr.is_none()).layer(catch_panic());
    let http_stop = stop.clone();
    // Connections that stop reading are closed rather than waited for, so
    // an event stream to a stuck client cannot hang shutdown.
    let listener = api::stream::GuardedListener::new(listener, stream, stop.clone());
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_stop.cancelled().await })
            .await
    });
    let flush_stop = CancellationToken::new();
    let flush_task = tokio::spawn(flusher.run(config.flush_interval, flush_stop.clone()));

    Ok(Running {
        addr,
        metrics_addr,
        stop,
        http,
        background,
        flush_stop,
        flush_task,
        writer_task,
        store,
        cleaner,
        engine,
        generated_admin_token: generated,
    })
}

/// Answers a panicking handler with the contract's opaque 500.
fn catch_panic() -> tower_http::catch_panic::CatchPanicLayer<
    impl tower_http::catch_panic::ResponseForPanic<ResponseBody = axum::body::Body>,
> {
    tower_http::catch_panic::CatchPanicLayer::custom(|_| {
        axum::response::IntoResponse::into_response(api::error::ApiError::Internal)
    })
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
