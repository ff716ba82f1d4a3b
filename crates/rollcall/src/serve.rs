//! `rollcall serve`: configuration layering, logging, signals, and the
//! "listening" line.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use rollcall_server::{RawConfig, SystemClock};
use tracing_subscriber::EnvFilter;

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags of `rollcall serve`. Every setting can also come from a
/// `ROLLCALL_*` environment variable or the TOML file given by `--config`;
/// flags win over the environment, which wins over the file.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as in the long flags,
    /// with underscores: stale_after = "90s").
    #[arg(long, env = "ROLLCALL_CONFIG", hide_env_values = true)]
    config: Option<String>,
    /// Address to serve on (default 127.0.0.1:7373); a port of 0 picks a
    /// free one.
    #[arg(long, env = "ROLLCALL_LISTEN", hide_env_values = true)]
    listen: Option<String>,
    /// sqlite://PATH (default sqlite://<data-dir>/rollcall.db), or
    /// postgres://USER@HOST/DB for replicas.
    #[arg(long, env = "ROLLCALL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where the database and the generated admin token live (default
    /// ./rollcall-data).
    #[arg(long, env = "ROLLCALL_DATA_DIR", hide_env_values = true)]
    data_dir: Option<String>,
    /// Default heartbeat interval of workers (default 30s).
    #[arg(long, env = "ROLLCALL_HEARTBEAT_INTERVAL", hide_env_values = true)]
    heartbeat_interval: Option<String>,
    /// Default time without a heartbeat after which a worker is stale
    /// (default 90s; at least 2 × heartbeat interval).
    #[arg(long, env = "ROLLCALL_STALE_AFTER", hide_env_values = true)]
    stale_after: Option<String>,
    /// How often the safety-net sweep runs (default 2m).
    #[arg(long, env = "ROLLCALL_SWEEP_INTERVAL", hide_env_values = true)]
    sweep_interval: Option<String>,
    /// How often the full cleanup runs (default 10m).
    #[arg(long, env = "ROLLCALL_CLEANUP_INTERVAL", hide_env_values = true)]
    cleanup_interval: Option<String>,
    /// How often heartbeat times are written behind (default 5s).
    #[arg(long, env = "ROLLCALL_FLUSH_INTERVAL", hide_env_values = true)]
    flush_interval: Option<String>,
    /// Smallest heartbeat interval a worker may ask for (default 50ms).
    #[arg(long, env = "ROLLCALL_MIN_HEARTBEAT_INTERVAL", hide_env_values = true)]
    min_heartbeat_interval: Option<String>,
    /// Largest stale_after a worker may ask for (default 1d).
    #[arg(long, env = "ROLLCALL_MAX_STALE_AFTER", hide_env_values = true)]
    max_stale_after: Option<String>,
    /// Serve /metrics on a separate address.
    #[arg(long, env = "ROLLCALL_METRICS_LISTEN", hide_env_values = true)]
    metrics_listen: Option<String>,
    /// Forget workers offline for longer than this (default 7d).
    #[arg(long, env = "ROLLCALL_FORGET_OFFLINE_AFTER", hide_env_values = true)]
    forget_offline_after: Option<String>,
    /// Prune events older than this (default 30d).
    #[arg(long, env = "ROLLCALL_EVENT_RETENTION", hide_env_values = true)]
    event_retention: Option<String>,
    /// Keep the health history this long (default 400d; longer than
    /// event_retention).
    #[arg(long, env = "ROLLCALL_HEALTH_RETENTION", hide_env_values = true)]
    health_retention: Option<String>,
    /// Crashes within the last hour that make a worker or machine flapping
    /// (default 3).
    #[arg(
        long,
        env = "ROLLCALL_FLAPPING_CRASHES_PER_HOUR",
        hide_env_values = true
    )]
    flapping_crashes_per_hour: Option<String>,
    /// How the other replicas reach this one (PostgreSQL mode; default
    /// http:// + the listen address).
    #[arg(long, env = "ROLLCALL_ADVERTISE_URL", hide_env_values = true)]
    advertise_url: Option<String>,
    /// How long a request's head may take (default 10s).
    #[arg(long, env = "ROLLCALL_HEADER_READ_TIMEOUT", hide_env_values = true)]
    header_read_timeout: Option<String>,
    /// How long a request's body may take after its head (default 30s).
    #[arg(long, env = "ROLLCALL_BODY_READ_TIMEOUT", hide_env_values = true)]
    body_read_timeout: Option<String>,
    /// Close keep-alive connections idle for this long (default 75s).
    #[arg(long, env = "ROLLCALL_IDLE_TIMEOUT", hide_env_values = true)]
    idle_timeout: Option<String>,
    /// Open connections at most (default 10000, lowered to fit the
    /// open-file limit).
    #[arg(long, env = "ROLLCALL_MAX_CONNECTIONS", hide_env_values = true)]
    max_connections: Option<String>,
    /// Open event streams at most (default 1000).
    #[arg(long, env = "ROLLCALL_MAX_STREAMS", hide_env_values = true)]
    max_streams: Option<String>,
    /// Open event streams per token at most (default 32).
    #[arg(long, env = "ROLLCALL_MAX_STREAMS_PER_TOKEN", hide_env_values = true)]
    max_streams_per_token: Option<String>,
    /// Failed authentications per client address in a burst before 429
    /// (default 100).
    #[arg(long, env = "ROLLCALL_FAILED_AUTH_BURST", hide_env_values = true)]
    failed_auth_burst: Option<String>,
    /// A client address regains one failed attempt this often (default 100ms).
    #[arg(long, env = "ROLLCALL_FAILED_AUTH_REFILL", hide_env_values = true)]
    failed_auth_refill: Option<String>,
    /// Who may register a live worker's name again: `any` (default) or
    /// `own_token` (its current token, or an admin token).
    #[arg(long, env = "ROLLCALL_RE_REGISTER", hide_env_values = true)]
    re_register: Option<String>,
    /// Log format on stderr.
    #[arg(long, env = "ROLLCALL_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

impl ServeArgs {
    fn raw(&self) -> RawConfig {
        RawConfig {
            listen: self.listen.clone(),
            database_url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            heartbeat_interval: self.heartbeat_interval.clone(),
            stale_after: self.stale_after.clone(),
            sweep_interval: self.sweep_interval.clone(),
            cleanup_interval: self.cleanup_interval.clone(),
            flush_interval: self.flush_interval.clone(),
            min_heartbeat_interval: self.min_heartbeat_interval.clone(),
            max_stale_after: self.max_stale_after.clone(),
            metrics_listen: self.metrics_listen.clone(),
            // Secrets come only from the environment or the file.
            metrics_token: std::env::var("ROLLCALL_METRICS_TOKEN").ok(),
            forget_offline_after: self.forget_offline_after.clone(),
            event_retention: self.event_retention.clone(),
            health_retention: self.health_retention.clone(),
            flapping_crashes_per_hour: self.flapping_crashes_per_hour.clone(),
            admin_token: std::env::var("ROLLCALL_ADMIN_TOKEN").ok(),
            admin_token_file: None,
            advertise_url: self.advertise_url.clone(),
            header_read_timeout: self.header_read_timeout.clone(),
            body_read_timeout: self.body_read_timeout.clone(),
            idle_timeout: self.idle_timeout.clone(),
            max_connections: self.max_connections.clone(),
            max_streams: self.max_streams.clone(),
            max_streams_per_token: self.max_streams_per_token.clone(),
            failed_auth_burst: self.failed_auth_burst.clone(),
            failed_auth_refill: self.failed_auth_refill.clone(),
            re_register: self.re_register.clone(),
            alert: None,
            channel: None,
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Resolves the layered configuration.
fn config(args: &ServeArgs) -> Result<rollcall_server::Config, String> {
    let file = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("config file {path}: {e}"))?;
            RawConfig::from_toml(path, &text).map_err(|e| e.to_string())?
        }
        None => RawConfig::default(),
    };
    args.raw().over(file).resolve().map_err(|e| e.to_string())
}

/// Installs the SIGTERM and SIGINT handlers at once and returns a future
/// that resolves on the first of them. Installing them before the listening
/// line matters: a supervisor may signal as soon as it reads that line, and
/// a signal without a handler would kill the process without the graceful
/// shutdown (and its final flush).
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        let mut ctrl_c = tokio::signal::windows::ctrl_c()?;
        Ok(async move {
            ctrl_c.recv().await;
        })
    }
}

/// Runs the server; exit code 2 for configuration errors, 1 for failures.
pub fn main(args: ServeArgs) -> ExitCode {
    init_logging(args.log_format);
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rollcall: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rollcall: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rollcall: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: rollcall_server::Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()
        .map_err(|e| anyhow::anyhow!("cannot install the SIGTERM/SIGINT handlers: {e}"))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("config key `listen`: cannot bind {}: {e}", config.listen))?;
    let mut running = rollcall_server::start(config, listener, Arc::new(SystemClock)).await?;
    // The one line on stdout: scripts and tests wait for it.
    println!("rollcall listening on http://{}", running.addr());
    tracing::info!(addr = %running.addr(), "ready");
    tokio::select! {
        r = running.stopped() => r?,
        _ = shutdown => {
            tracing::info!("shutting down");
            running.shutdown().await?;
        }
    }
    Ok(())
}
