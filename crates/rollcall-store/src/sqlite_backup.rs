//! Consistent copies of a SQLite database, safe while a server writes to it.
//!
//! [`backup`] runs `VACUUM INTO` on a read-only connection of its own: in
//! WAL mode a reader sees one committed snapshot and never blocks the
//! writer, so the copy holds every transaction committed before it began
//! and none after — whether or not a `rollcall serve` holds the database.
//! Copying `rollcall.db` with `cp` is not a backup: committed transactions
//! may still live only in `rollcall.db-wal`.
//!
//! The copy is written to `<dest>.partial`, synced, checked with
//! `PRAGMA integrity_check` and only then renamed to `dest`, so `dest`
//! either does not exist or is a complete, verified database.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use thiserror::Error;

/// Why a backup failed. Nothing is left at the destination.
#[derive(Debug, Error)]
pub enum BackupError {
    /// The source database does not exist.
    #[error("no database at {0}")]
    NoSource(PathBuf),
    /// The destination exists; a backup never overwrites a file.
    #[error("{0} already exists; a backup never overwrites a file")]
    DestinationExists(PathBuf),
    /// The source holds no rollcall schema.
    #[error("{0} is not a rollcall database (it has no workers table)")]
    NotRollcall(PathBuf),
    /// The copy did not pass SQLite's integrity check.
    #[error("the copy failed SQLite's integrity check: {0}")]
    Corrupt(String),
    /// SQLite refused.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Writing, syncing or renaming the copy failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

/// What a finished backup holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// Workers in the copy.
    pub workers: u64,
    /// Machines in the copy.
    pub machines: u64,
    /// The largest event `seq` ever assigned, as of the copy.
    pub last_seq: i64,
    /// The copy's size on disk.
    pub bytes: u64,
}

/// Writes a consistent copy of the rollcall database at `source` to the new
/// file `dest` (see the module docs). Safe while a server is writing.
pub async fn backup(source: &Path, dest: &Path) -> Result<BackupSummary, BackupError> {
    if !source.is_file() {
        return Err(BackupError::NoSource(source.to_owned()));
    }
    if dest.exists() {
        return Err(BackupError::DestinationExists(dest.to_owned()));
    }
    let mut partial = dest.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let io = |context: String| move |source| BackupError::Io { context, source };
    // A leftover of an interrupted backup is ours to replace.
    match std::fs::remove_file(&partial) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing {}", partial.display()))(e)),
    }
    let result = copy(source, &partial).await;
    let summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    // Durable before it is named: sync the file, rename, sync the directory.
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io(format!("syncing {}", partial.display())))?;
    if dest.exists() {
        let _ = std::fs::remove_file(&partial);
        return Err(BackupError::DestinationExists(dest.to_owned()));
    }
    std::fs::rename(&partial, dest).map_err(io(format!(
        "renaming {} to {}",
        partial.display(),
        dest.display()
    )))?;
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io(format!("syncing {}", dir.display())))?;
    }
    Ok(summary)
}

async fn copy(source: &Path, partial: &Path) -> Result<BackupSummary, BackupError> {
    let mut conn = SqliteConnectOptions::new()
        .filename(source)
        .read_only(true)
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    let has_workers: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'workers'",
    )
    .fetch_one(&mut conn)
    .await?;
    if has_workers == 0 {
        conn.close().await?;
        return Err(BackupError::NotRollcall(source.to_owned()));
    }
    let target = partial.to_str().ok_or_else(|| BackupError::Io {
        context: format!("{} is not UTF-8", partial.display()),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    verify(partial).await
}

/// Opens the copy read-only, checks its integrity and counts what it holds.
async fn verify(path: &Path) -> Result<BackupSummary, BackupError> {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await?;
    let check: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_all(&mut conn)
        .await?;
    if check != ["ok"] {
        conn.close().await?;
        return Err(BackupError::Corrupt(check.join("; ")));
    }
    let workers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM workers")
        .fetch_one(&mut conn)
        .await?;
    let machines: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM machines")
        .fetch_one(&mut conn)
        .await?;
    let last_seq: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
            .fetch_optional(&mut conn)
            .await?;
    conn.close().await?;
    let bytes = std::fs::metadata(path)
        .map_err(|source| BackupError::Io {
            context: format!("reading {}", path.display()),
            source,
        })?
        .len();
    Ok(BackupSummary {
        workers: workers as u64,
        machines: machines as u64,
        last_seq: last_seq.unwrap_or(0),
        bytes,
    })
}
