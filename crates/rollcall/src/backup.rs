//! `rollcall backup FILE`: a consistent copy of the SQLite database, taken
//! while the server runs (or not).
//!
//! It finds the database the way `rollcall serve` does (`--database-url`,
//! `--data-dir`, their `ROLLCALL_*` variables, `--config`) and copies it
//! with `VACUUM INTO` from a read-only connection of its own (see
//! `rollcall_store::sqlite::backup`): the server keeps serving, the copy
//! holds every transaction committed before the backup began. PostgreSQL
//! databases are backed up with PostgreSQL's tools; the command says so.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rollcall_server::RawConfig;
use rollcall_store::sqlite::{self, BackupError};

/// Flags of `rollcall backup`.
#[derive(Debug, Args)]
#[command(after_help = "\
Restore: stop the server, move the data directory's rollcall.db (and any
rollcall.db-wal, rollcall.db-shm) away, copy the backup to rollcall.db, start
the server. Workers that were online get the restart grace.

Examples:
  rollcall backup rollcall-2026-12-02.db
  rollcall backup /backups/rollcall.db --data-dir /var/lib/rollcall")]
pub struct BackupArgs {
    /// The file to write; it must not exist.
    file: PathBuf,
    /// The server's TOML config file (only `database_url` and `data_dir` are
    /// read).
    #[arg(long, env = "ROLLCALL_CONFIG", hide_env_values = true)]
    config: Option<String>,
    /// sqlite://PATH of the database (default sqlite://<data-dir>/rollcall.db).
    #[arg(long, env = "ROLLCALL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// The server's data directory (default ./rollcall-data).
    #[arg(long, env = "ROLLCALL_DATA_DIR", hide_env_values = true)]
    data_dir: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `rollcall backup`.
pub fn main(args: BackupArgs) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err((message, code)) => {
            eprintln!("rollcall backup: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: &BackupArgs) -> Result<(), (String, u8)> {
    let source = database_path(args).map_err(|m| (m, 2))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (format!("cannot start the runtime: {e}"), 1))?;
    let summary = runtime
        .block_on(sqlite::backup(&source, &args.file))
        .map_err(|e| {
            let code = match e {
                BackupError::NoSource(_)
                | BackupError::DestinationExists(_)
                | BackupError::NotRollcall(_) => 2,
                _ => 1,
            };
            (e.to_string(), code)
        })?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "source": source.display().to_string(),
                "file": args.file.display().to_string(),
                "workers": summary.workers,
                "machines": summary.machines,
                "last_seq": summary.last_seq,
                "bytes": summary.bytes,
            })
        );
    } else {
        println!(
            "backed up {} to {}: {} workers, {} machines, events up to seq {} ({} KiB)",
            source.display(),
            args.file.display(),
            summary.workers,
            summary.machines,
            summary.last_seq,
            summary.bytes.div_ceil(1024),
        );
    }
    Ok(())
}

/// The SQLite file the server of these settings uses.
fn database_path(args: &BackupArgs) -> Result<PathBuf, String> {
    let file = match &args.config {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("config file {path}: {e}"))?;
            RawConfig::from_toml(path, &text).map_err(|e| e.to_string())?
        }
        None => RawConfig::default(),
    };
    let merged = RawConfig {
        database_url: args.database_url.clone(),
        data_dir: args.data_dir.clone(),
        ..RawConfig::default()
    }
    .over(file);
    // Only the database's location matters here; the rest of a server's
    // settings are neither needed nor checked.
    let config = RawConfig {
        database_url: merged.database_url,
        data_dir: merged.data_dir,
        ..RawConfig::default()
    }
    .resolve()
    .map_err(|e| e.to_string())?;
    if config.is_postgres() {
        return Err(format!(
            "{} is a PostgreSQL database: back it up with PostgreSQL's own tools, e.g. \
             `pg_dump --format=custom --file {} '{}'` (restore with pg_restore), or the \
             continuous backups of your PostgreSQL service",
            rollcall_server::config::redact_url(&config.database_url),
            args.file.display(),
            rollcall_server::config::redact_url(&config.database_url),
        ));
    }
    let url = &config.database_url;
    Ok(PathBuf::from(
        url.strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url),
    ))
}
