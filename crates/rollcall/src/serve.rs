//! `rollcall serve`: configuration layering, logging, signals, and the
//! "listening" line.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches, ValueEnum};
use rollcall_server::config::{Source, SETTINGS};
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
    #[command(flatten)]
    settings: SettingFlags,
    /// Log format on stderr.
    #[arg(long, env = "ROLLCALL_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// The settings that are flags: one flag and one variable per
/// [`Source::Flag`] entry of [`SETTINGS`], named after its key.
#[derive(Debug, Clone, Default)]
struct SettingFlags(RawConfig);

impl FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = SettingFlags::default();
        flags.update_from_arg_matches(matches)?;
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        for s in SETTINGS.iter().filter(|s| s.source == Source::Flag) {
            if let Some(v) = matches.get_one::<String>(s.key) {
                *self.0.value_mut(s.key).expect("every setting is a key") = Some(v.clone());
            }
        }
        Ok(())
    }
}

impl Args for SettingFlags {
    fn augment_args(cmd: Command) -> Command {
        SETTINGS
            .iter()
            .fold(cmd, |cmd, s| match (s.flag(), s.env()) {
                (Some(flag), Some(env)) => cmd.arg(
                    Arg::new(s.key)
                        .long(flag)
                        .env(env)
                        .hide_env_values(true)
                        .value_name(s.key.to_uppercase())
                        .value_parser(clap::value_parser!(String))
                        .action(ArgAction::Set)
                        .help(s.help),
                ),
                _ => cmd,
            })
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl ServeArgs {
    fn raw(&self) -> RawConfig {
        let mut raw = self.settings.0.clone();
        // Secrets come only from the environment or the file.
        for s in SETTINGS.iter().filter(|s| s.source == Source::Env) {
            if let Some(env) = s.env() {
                *raw.value_mut(s.key).expect("every setting is a key") = std::env::var(env).ok();
            }
        }
        raw
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
