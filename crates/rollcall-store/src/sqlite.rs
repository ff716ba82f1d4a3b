//! The embedded SQLite store: the default, for one rollcall process.
//!
//! - WAL journal, `synchronous = FULL`: a commit survives a crash of the
//!   process and of the machine.
//! - All writes go through one connection, so write transactions never race
//!   each other for SQLite's lock; reads use a pool of their own and never
//!   wait for writes (WAL readers see the last commit).
//! - A write connection that saw any error is closed, never reused (see
//!   [`WriteConn`]): after a failed COMMIT (a full disk, an I/O error)
//!   SQLite may have rolled the transaction back by itself while the driver
//!   still counts it open, and such a connection would turn every later
//!   transaction into a savepoint that never commits. The next write opens
//!   a fresh connection.
//! - One process per database file: [`SqliteStore::open`] takes an exclusive
//!   lock on `<file>.lock` and refuses to open while another process holds it.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use rollcall_core::health::{Observation, Window};
use rollcall_core::{
    IncidentId, MachineId, MachineStatus, Timestamp, TokenId, WorkerId, WorkerName,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Connection, QueryBuilder, Sqlite, SqliteConnection, Transaction};

use crate::history::{self, Dialect, FleetQuery, FleetSummary, HealthSpan, SpanRow, SPAN_COLUMNS};
use crate::records::*;
use crate::rows::*;
use crate::sqlite_batch::{self, Outcome};
use crate::{Result, SpansOf, Store, StoreError};

pub use crate::sqlite_backup::{backup, BackupError, BackupSummary};

/// The write connection's page cache, in KiB.
const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Heartbeat marks written per transaction by [`Store::flush_heartbeats`].
const FLUSH_CHUNK: usize = 1000;

/// SQLite implementation of [`Store`].
#[derive(Debug)]
pub struct SqliteStore {
    /// Exactly one connection: the only writer.
    writer: SqlitePool,
    /// Read-only connections for queries.
    reader: SqlitePool,
    /// Held for the life of the store; dropping it releases the file lock.
    _lock: File,
    path: PathBuf,
    /// Whether commits write the health history: always, but for the
    /// benchmark's before/after measure of its cost (`testing` only).
    history: std::sync::atomic::AtomicBool,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at a `sqlite://PATH` URL or a
    /// plain path, takes the process lock and runs the migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let path = PathBuf::from(
            url.strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url),
        );
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            private_dir(dir).map_err(|e| {
                StoreError::Locked(format!("cannot create directory {}: {e}", dir.display()))
            })?;
        }
        let lock = take_lock(&path)?;
        // SQLite gives its -wal and -shm files the database file's mode, so
        // creating the database 0600 keeps all three private.
        private_file(&path).map_err(|e| {
            StoreError::Locked(format!("cannot create database {}: {e}", path.display()))
        })?;
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            .pragma("temp_store", "memory")
            .statement_cache_capacity(256);
        // The writer touches workers, their indexes and the event log at
        // random places; a page cache big enough for a large fleet's hot
        // pages keeps a burst of transitions from reading every page back
        // from the OS (the default is 2 MiB).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", format!("-{WRITER_CACHE_KIB}")),
            )
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            writer,
            reader,
            _lock: lock,
            path,
            history: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Turns the history writes of later commits off or on: only for
    /// `rollcall-bench store-health`, which measures their cost on the same
    /// data. A store without them is inconsistent; nothing else calls this.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub fn bench_set_history_writes(&self, on: bool) {
        self.history.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes both pools. Readers go first, so that the writer's checkpoint
    /// is not held back by a reader's snapshot: the WAL is copied into the
    /// main file and truncated to zero bytes, and `rollcall.db` alone holds
    /// every commit (a copy of it is a whole database; `rollcall backup` is
    /// still the way to copy one that is being served).
    pub async fn close(&self) -> Result<()> {
        self.reader.close().await;
        let checkpoint: Result<()> = async {
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.writer)
                .await?;
            if busy != 0 {
                tracing::warn!(
                    db = %self.path.display(),
                    "the WAL checkpoint at shutdown could not finish (the database is busy); \
                     the next start completes it"
                );
            }
            Ok(())
        }
        .await;
        self.writer.close().await;
        checkpoint
    }
}

/// Creates `dir` (and its missing parents) readable by this user only
/// (0700); an existing directory keeps its mode.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Creates an empty `path` with mode 0600 unless it exists (an existing
/// file keeps its mode).
fn private_file(path: &Path) -> std::io::Result<()> {
    let mut o = File::options();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    match o.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn take_lock(db: &Path) -> Result<File> {
    let mut lock_path = db.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let mut options = File::options();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options
        .open(&lock_path)
        .map_err(|e| StoreError::Locked(format!("cannot open {}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "database {} is in use by another rollcall process (lock {} is held); \
             only one process may serve a SQLite database",
            db.display(),
            lock_path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Locked(format!(
            "cannot lock {}: {e}",
            lock_path.display()
        ))),
    }
}

/// The write connection, borrowed for one operation. Unless the operation
/// reports success through [`WriteConn::done`], the connection is closed
/// instead of going back to the pool: an error (or a cancelled future) may
/// have left it inside a transaction that SQLite already ended, or the
/// other way round, and nothing later could tell. Closing costs one
/// reconnect after a failure; trusting it could cost every later write.
struct WriteConn {
    conn: PoolConnection<Sqlite>,
    healthy: bool,
}

impl WriteConn {
    async fn acquire(pool: &SqlitePool) -> Result<Self> {
        Ok(WriteConn {
            conn: pool.acquire().await?,
            healthy: false,
        })
    }

    /// Hands back `result`, keeping the connection only if it is `Ok` and
    /// the driver sees no transaction left open.
    fn done<T>(mut self, result: Result<T>) -> Result<T> {
        self.healthy = result.is_ok() && !self.conn.is_in_transaction();
        result
    }
}

impl std::ops::Deref for WriteConn {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }
}

impl Drop for WriteConn {
    fn drop(&mut self) {
        if !self.healthy {
            self.conn.close_on_drop();
        }
    }
}

/// The next `seq`s come from `sqlite_sequence`, which (unlike `MAX(seq)`)
/// never goes back when old events are pruned.
async fn current_seq(tx: &mut Transaction<'_, Sqlite>) -> Result<i64> {
    let seq: Option<i64> =
        sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(seq.unwrap_or(0))
}

async fn insert_events(tx: &mut Transaction<'_, Sqlite>, events: &[EventRecord]) -> Result<()> {
    for chunk in events.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (seq, at, type, worker_id, machine_id, reason, session, detection_lag_ms, exit_code, signal, incident_id) ",
        );
        qb.push_values(chunk, |mut b, e| {
            b.push_bind(e.seq)
                .push_bind(e.at.as_millis())
                .push_bind(e.kind.as_str())
                .push_bind(e.worker_id.as_ref().map(|w| w.as_str().to_owned()))
                .push_bind(e.machine_id.as_str().to_owned())
                .push_bind(e.reason.map(|r| r.as_str()))
                .push_bind(e.session.map(|s| s as i64))
                .push_bind(e.detection_lag_ms)
                .push_bind(e.exit.and_then(|x| x.code()).map(i64::from))
                .push_bind(e.exit.and_then(|x| x.signal()).map(i64::from))
                .push_bind(e.incident_id.as_ref().map(|i| i.as_str().to_owned()));
        });
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Ends and begins the health spans of committed events, in their
/// transaction.
async fn record_history(
    tx: &mut Transaction<'_, Sqlite>,
    events: &[EventRecord],
    names: &HashMap<WorkerId, WorkerName>,
) -> Result<()> {
    let plan = history::plan(events, names);
    if plan.closes.is_empty() {
        return Ok(());
    }
    let n: i64 = sqlx::query_scalar(
        "SELECT COALESCE((SELECT no_data_before_ms FROM health_observations \
         ORDER BY start_ms DESC LIMIT 1), 0)",
    )
    .fetch_one(&mut **tx)
    .await?;
    let mut closed: Vec<history::Closed> = Vec::with_capacity(plan.closes.len());
    for chunk in plan.closes.chunks(300) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("WITH v (entity, id, at) AS (");
        qb.push_values(chunk, |mut b, (entity, id, at)| {
            b.push_bind(*entity).push_bind(id.clone()).push_bind(*at);
        });
        qb.push(") UPDATE health_spans SET end_ms = MAX(health_spans.start_ms, v.at), n_end = ");
        qb.push_bind(n);
        qb.push(
            " FROM v WHERE health_spans.entity = v.entity AND health_spans.id = v.id \
             AND health_spans.end_ms IS NULL \
             RETURNING health_spans.entity, health_spans.id, health_spans.live, \
             health_spans.end_ms, health_spans.n_end",
        );
        let rows: Vec<(String, String, bool, i64, i64)> =
            qb.build_query_as().fetch_all(&mut **tx).await?;
        closed.extend(
            rows.into_iter()
                .map(|(entity, id, live, end, n_end)| history::Closed {
                    entity,
                    id,
                    live,
                    end,
                    n_end,
                }),
        );
    }
    for chunk in plan.inserts.chunks(300) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO health_spans (entity, id, machine_id, name, start_ms, end_ms, live, \
             class, crash_kind, n_start, n_end) ",
        );
        qb.push_values(chunk, |mut b, s| {
            b.push_bind(s.entity)
                .push_bind(s.id.clone())
                .push_bind(s.machine_id.clone())
                .push_bind(s.name.clone())
                .push_bind(s.start)
                .push_bind(s.end)
                .push_bind(s.live)
                .push_bind(s.class)
                .push_bind(s.kind)
                .push_bind(n)
                .push_bind(s.end.map(|_| n));
        });
        qb.build().execute(&mut **tx).await?;
    }
    write_rollup(tx, &plan, &history::rollup(&plan, &closed, n)).await
}

/// Adds a batch's rollup to the rollup tables, and begins and ends the
/// workers' histories in `health_lives`.
async fn write_rollup(
    tx: &mut Transaction<'_, Sqlite>,
    plan: &history::Plan,
    r: &history::Rollup,
) -> Result<()> {
    let rows: Vec<_> = r.at.iter().collect();
    for chunk in rows.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO health_rollup (at, series, n, sum_ms, sum_obs) ");
        qb.push_values(chunk, |mut b, ((at, series), (n, ms, obs))| {
            b.push_bind(*at)
                .push_bind(series.clone())
                .push_bind(*n)
                .push_bind(*ms)
                .push_bind(*obs);
        });
        qb.push(
            " ON CONFLICT (at, series) DO UPDATE SET n = n + excluded.n, \
             sum_ms = sum_ms + excluded.sum_ms, sum_obs = sum_obs + excluded.sum_obs",
        );
        qb.build().execute(&mut **tx).await?;
    }
    let hourly = r.hourly();
    let rows: Vec<_> = hourly.iter().collect();
    for chunk in rows.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO health_rollup_hourly (hour, series, n, sum_ms, sum_obs) ",
        );
        qb.push_values(chunk, |mut b, ((hour, series), (n, ms, obs))| {
            b.push_bind(*hour)
                .push_bind(series.clone())
                .push_bind(*n)
                .push_bind(*ms)
                .push_bind(*obs);
        });
        qb.push(
            " ON CONFLICT (hour, series) DO UPDATE SET n = n + excluded.n, \
             sum_ms = sum_ms + excluded.sum_ms, sum_obs = sum_obs + excluded.sum_obs",
        );
        qb.build().execute(&mut **tx).await?;
    }
    let rows: Vec<_> = r.machine_days.iter().collect();
    for chunk in rows.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO health_rollup_machines (day, machine_id, crashes) ");
        qb.push_values(chunk, |mut b, ((day, machine), n)| {
            b.push_bind(*day).push_bind(machine.clone()).push_bind(**n);
        });
        qb.push(
            " ON CONFLICT (day, machine_id) DO UPDATE SET crashes = crashes + excluded.crashes",
        );
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in r.lives.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new("INSERT INTO health_lives (id, machine_id, start_ms) ");
        qb.push_values(chunk, |mut b, (id, machine, start)| {
            b.push_bind(id.clone())
                .push_bind(machine.clone())
                .push_bind(*start);
        });
        qb.push(" ON CONFLICT (id) DO NOTHING");
        qb.build().execute(&mut **tx).await?;
    }
    for chunk in plan.gone.chunks(500) {
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
            "UPDATE health_lives SET end_ms = (SELECT MAX(s.end_ms) FROM health_spans s \
             WHERE s.entity = 'worker' AND s.id = health_lives.id) WHERE id IN (",
        );
        let mut sep = qb.separated(", ");
        for id in chunk {
            sep.push_bind(id.clone());
        }
        qb.push(")");
        qb.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// Sets each machine's status from its workers; returns the machine events.
async fn derive_machines(
    tx: &mut Transaction<'_, Sqlite>,
    machines: impl IntoIterator<Item = (MachineId, Timestamp)>,
    seq: &mut i64,
) -> Result<Vec<EventRecord>> {
    let mut events = Vec::new();
    for (id, at) in machines {
        let row: Option<(String, i64)> = sqlx::query_as(
            "SELECT m.status, (SELECT COUNT(*) FROM workers w WHERE w.machine_id = m.id \
             AND w.status IN ('online', 'draining')) FROM machines m WHERE m.id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        let Some((stored, live)) = row else { continue };
        let derived = if live > 0 {
            MachineStatus::Online
        } else {
            MachineStatus::Offline
        };
        if parse::<MachineStatus>(&stored, "machine status")? == derived {
            continue;
        }
        sqlx::query("UPDATE machines SET status = ?, status_changed_at = ? WHERE id = ?")
            .bind(derived.as_str())
            .bind(at.as_millis())
            .bind(id.as_str())
            .execute(&mut **tx)
            .await?;
        *seq += 1;
        events.push(machine_event(*seq, id, derived, at));
    }
    Ok(events)
}

async fn upsert_machine(tx: &mut Transaction<'_, Sqlite>, m: &MachineUpsert) -> Result<()> {
    sqlx::query(
        "INSERT INTO machines (id, hostname, labels, status, first_seen_at, last_seen_at, status_changed_at) \
         VALUES (?1, ?2, ?3, 'offline', ?4, ?4, ?4) \
         ON CONFLICT (id) DO UPDATE SET \
           hostname = COALESCE(excluded.hostname, machines.hostname), \
           labels = CASE WHEN ?5 THEN excluded.labels ELSE machines.labels END, \
           last_seen_at = MAX(machines.last_seen_at, excluded.last_seen_at)",
    )
    .bind(m.id.as_str())
    .bind(m.hostname.as_deref())
    .bind(m.labels.as_ref().map(labels_json).unwrap_or_else(|| "{}".into()))
    .bind(m.seen_at.as_millis())
    .bind(m.labels.is_some())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn put_worker(
    tx: &mut Transaction<'_, Sqlite>,
    r: &WorkerRecord,
    expect: Option<Expect>,
) -> Result<bool> {
    let sql = match expect {
        None => format!(
            "INSERT INTO workers ({WORKER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) \
             ON CONFLICT DO NOTHING"
        ),
        Some(_) => "UPDATE workers SET name = ?2, machine_id = ?3, status = ?4, offline_reason = ?5, \
             session = ?6, labels = ?7, heartbeat_interval_ms = ?8, stale_after_ms = ?9, \
             registered_at = ?10, \
             last_heartbeat_at = CASE WHEN session = ?6 \
               THEN MAX(COALESCE(last_heartbeat_at, ?11), COALESCE(?11, last_heartbeat_at)) \
               ELSE ?11 END, \
             status_changed_at = ?12, token_hash = ?13 \
             WHERE id = ?1 AND status = ?14 AND session = ?15"
            .to_owned(),
    };
    let mut q = sqlx::query(&sql)
        .bind(r.id.as_str())
        .bind(r.name.as_str())
        .bind(r.machine_id.as_str())
        .bind(r.status.as_str())
        .bind(r.offline_reason.map(|x| x.as_str()))
        .bind(r.session as i64)
        .bind(labels_json(&r.labels))
        .bind(ms(r.heartbeat_interval))
        .bind(ms(r.stale_after))
        .bind(r.registered_at.as_millis())
        .bind(r.last_heartbeat_at.map(|t| t.as_millis()))
        .bind(r.status_changed_at.as_millis())
        .bind(r.token_hash.to_hex());
    if let Some(e) = expect {
        q = q.bind(e.status.as_str()).bind(e.session as i64);
    }
    Ok(q.execute(&mut **tx).await?.rows_affected() == 1)
}

/// [`Store::commit`] on the write connection.
async fn commit_on(
    conn: &mut SqliteConnection,
    writes: Vec<WorkerWrite>,
    history: bool,
) -> Result<CommitResult> {
    let names = history::names(&writes);
    let mut tx = conn.begin().await?;
    if let Outcome::Applied = sqlite_batch::apply_writes(&mut tx, &writes).await? {
        let mut seq = current_seq(&mut tx).await?;
        let mut events = Vec::new();
        let mut machines: BTreeMap<MachineId, Timestamp> = BTreeMap::new();
        for write in &writes {
            let (worker_id, machine_id, new_events) = match write {
                WorkerWrite::Put { record, events, .. } => (&record.id, &record.machine_id, events),
                WorkerWrite::Delete {
                    id,
                    machine_id,
                    events,
                    ..
                } => (id, machine_id, events),
            };
            let at = machines
                .entry(machine_id.clone())
                .or_insert(Timestamp::EPOCH);
            for e in new_events {
                seq += 1;
                *at = (*at).max(e.at);
                events.push(worker_event(seq, worker_id, machine_id, e));
            }
        }
        let machine_events = sqlite_batch::derive_machines(&mut tx, &machines, &mut seq).await?;
        events.extend(machine_events);
        insert_events(&mut tx, &events).await?;
        if history {
            record_history(&mut tx, &events, &names).await?;
        }
        tx.commit().await?;
        return Ok(CommitResult {
            applied: vec![true; writes.len()],
            events,
        });
    }
    // Some write's condition failed: replay the batch one write at a
    // time, which applies exactly the writes whose conditions hold.
    tx.rollback().await?;
    let mut tx = conn.begin().await?;
    let mut seq = current_seq(&mut tx).await?;
    let mut applied = Vec::with_capacity(writes.len());
    let mut events = Vec::new();
    let mut machines: BTreeMap<MachineId, Timestamp> = BTreeMap::new();
    for write in writes {
        let (ok, worker_id, machine_id, new_events) = match write {
            WorkerWrite::Put {
                record,
                expect,
                machine,
                events,
            } => {
                let ok = match &machine {
                    // The machine row must exist before a worker refers
                    // to it, but a write that is not applied changes
                    // nothing: upsert it in a savepoint, undone if the
                    // worker's condition does not hold.
                    Some(m) => {
                        let mut sp = tx.begin().await?;
                        upsert_machine(&mut sp, m).await?;
                        let ok = put_worker(&mut sp, &record, expect).await?;
                        if ok {
                            sp.commit().await?;
                        } else {
                            sp.rollback().await?;
                        }
                        ok
                    }
                    None => put_worker(&mut tx, &record, expect).await?,
                };
                (ok, record.id, record.machine_id, events)
            }
            WorkerWrite::Delete {
                id,
                machine_id,
                expect,
                events,
            } => {
                let n =
                    sqlx::query("DELETE FROM workers WHERE id = ? AND status = ? AND session = ?")
                        .bind(id.as_str())
                        .bind(expect.status.as_str())
                        .bind(expect.session as i64)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                (n == 1, id, machine_id, events)
            }
        };
        applied.push(ok);
        if !ok {
            continue;
        }
        for e in &new_events {
            seq += 1;
            let at = machines.entry(machine_id.clone()).or_insert(e.at);
            *at = (*at).max(e.at);
            events.push(worker_event(seq, &worker_id, &machine_id, e));
        }
        machines.entry(machine_id).or_insert(Timestamp::EPOCH);
    }
    let machine_events = derive_machines(&mut tx, machines, &mut seq).await?;
    events.extend(machine_events);
    insert_events(&mut tx, &events).await?;
    if history {
        record_history(&mut tx, &events, &names).await?;
    }
    tx.commit().await?;
    Ok(CommitResult { applied, events })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn shutdown(&self) -> Result<()> {
        self.close().await
    }

    async fn probe_write(&self, at: Timestamp) -> Result<()> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let mut tx = conn.begin().await?;
            sqlx::query(
                "INSERT INTO rollcall_probe (id, at) VALUES (1, ?) \
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at",
            )
            .bind(at.as_millis())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }
        .await;
        conn.done(result)
    }

    async fn load_workers(&self) -> Result<Vec<WorkerRecord>> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let rows = sqlx::query(&format!("SELECT {WORKER_COLUMNS} FROM workers"))
                .fetch_all(&mut *conn)
                .await?;
            rows.iter().map(worker_from).collect()
        }
        .await;
        conn.done(result)
    }

    async fn commit(&self, writes: Vec<WorkerWrite>) -> Result<CommitResult> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let history = self.history.load(std::sync::atomic::Ordering::Relaxed);
        let result = commit_on(&mut conn, writes, history).await;
        conn.done(result)
    }

    async fn reconcile_machines(&self, at: Timestamp) -> Result<Vec<EventRecord>> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let mut tx = conn.begin().await?;
            let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM machines")
                .fetch_all(&mut *tx)
                .await?;
            let ids = ids
                .iter()
                .map(|id| Ok((MachineId::parse(id).map_err(corrupt)?, at)))
                .collect::<Result<Vec<_>>>()?;
            let mut seq = current_seq(&mut tx).await?;
            let events = derive_machines(&mut tx, ids, &mut seq).await?;
            insert_events(&mut tx, &events).await?;
            record_history(&mut tx, &events, &HashMap::new()).await?;
            tx.commit().await?;
            Ok(events)
        }
        .await;
        conn.done(result)
    }

    async fn flush_heartbeats(&self, marks: &[HeartbeatMark]) -> Result<()> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            // Small transactions of one statement each: the write connection is
            // shared with the transition writer, which must never wait long for
            // it (detection lag), so a large flush is cut into short pieces.
            // One row per (worker, session), the latest time: an UPDATE … FROM
            // with duplicate keys would apply an arbitrary one of them.
            let mut latest: BTreeMap<(&str, u64), Timestamp> = BTreeMap::new();
            for m in marks {
                let t = latest
                    .entry((m.worker_id.as_str(), m.session))
                    .or_insert(m.at);
                *t = (*t).max(m.at);
            }
            let marks: Vec<_> = latest.into_iter().collect();
            for chunk in marks.chunks(FLUSH_CHUNK) {
                let mut tx = conn.begin().await?;
                let mut qb: QueryBuilder<Sqlite> =
                    QueryBuilder::new("WITH v (id, session, at) AS (");
                qb.push_values(chunk, |mut b, ((id, session), at)| {
                    b.push_bind(id.to_string())
                        .push_bind(*session as i64)
                        .push_bind(at.as_millis());
                });
                // A mark of an ended session (or a forgotten worker) matches no
                // row and is ignored entirely, machine included.
                qb.push(
                    ") UPDATE workers SET last_heartbeat_at = \
                     MAX(COALESCE(workers.last_heartbeat_at, 0), v.at) \
                     FROM v WHERE workers.id = v.id AND workers.session = v.session \
                     RETURNING workers.machine_id, workers.last_heartbeat_at",
                );
                let rows: Vec<(String, i64)> = qb.build_query_as().fetch_all(&mut *tx).await?;
                let mut machines: BTreeMap<String, i64> = BTreeMap::new();
                for (machine, at) in rows {
                    let t = machines.entry(machine).or_insert(at);
                    *t = (*t).max(at);
                }
                // One statement for the chunk's machines, not one per machine:
                // a flush of a large fleet touches every machine in every chunk.
                if !machines.is_empty() {
                    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("WITH m (id, at) AS (");
                    qb.push_values(&machines, |mut b, (id, at)| {
                        b.push_bind(id.clone()).push_bind(*at);
                    });
                    qb.push(
                        ") UPDATE machines SET last_seen_at = MAX(machines.last_seen_at, m.at) \
                         FROM m WHERE machines.id = m.id",
                    );
                    qb.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
            }
            Ok(())
        }
        .await;
        conn.done(result)
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE id = ?"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(worker_from).transpose()
    }

    async fn list_workers(
        &self,
        filter: &WorkerFilter,
        after: Option<&WorkerId>,
        limit: usize,
    ) -> Result<Page<WorkerRecord>> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("SELECT {WORKER_COLUMNS} FROM workers WHERE 1 = 1"));
        if let Some(s) = filter.status {
            qb.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(m) = &filter.machine_id {
            qb.push(" AND machine_id = ")
                .push_bind(m.as_str().to_owned());
        }
        if let Some(a) = after {
            qb.push(" AND id > ").push_bind(a.as_str().to_owned());
        }
        qb.push(" ORDER BY id LIMIT ").push_bind(fetch_limit(limit));
        let rows = qb.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(worker_from).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn get_machine(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        let row = sqlx::query(&format!("{MACHINE_SELECT} WHERE m.id = ?"))
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(machine_from).transpose()
    }

    async fn list_machines(
        &self,
        status: Option<MachineStatus>,
        after: Option<&MachineId>,
        limit: usize,
    ) -> Result<Page<MachineRecord>> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(format!("{MACHINE_SELECT} WHERE 1 = 1"));
        if let Some(s) = status {
            qb.push(" AND m.status = ").push_bind(s.as_str());
        }
        if let Some(a) = after {
            qb.push(" AND m.id > ").push_bind(a.as_str().to_owned());
        }
        qb.push(" ORDER BY m.id LIMIT ")
            .push_bind(fetch_limit(limit));
        let rows = qb.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(machine_from).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: usize,
    ) -> Result<Page<EventRecord>> {
        let mut qb: QueryBuilder<Sqlite> =
            QueryBuilder::new(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > "));
        qb.push_bind(after);
        if let Some(w) = &filter.worker_id {
            qb.push(" AND worker_id = ")
                .push_bind(w.as_str().to_owned());
        }
        if let Some(m) = &filter.machine_id {
            qb.push(" AND machine_id = ")
                .push_bind(m.as_str().to_owned());
        }
        if let Some(k) = filter.kind {
            qb.push(" AND type = ").push_bind(k.as_str());
        }
        qb.push(" ORDER BY seq LIMIT ")
            .push_bind(fetch_limit(limit));
        let rows = qb.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(event_from).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn last_seq(&self) -> Result<i64> {
        let seq: Option<i64> =
            sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'events'")
                .fetch_optional(&self.reader)
                .await?;
        Ok(seq.unwrap_or(0))
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            sqlx::query(&format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(t.id.as_str())
            .bind(t.kind.as_str())
            .bind(&t.name)
            .bind(t.hash.to_hex())
            .bind(t.created_at.as_millis())
            .bind(t.expires_at.map(|x| x.as_millis()))
            .bind(t.last_used_at.map(|x| x.as_millis()))
            .bind(scope_json(t.scope.as_ref()))
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        .await;
        conn.done(result)
    }

    async fn list_tokens(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Page<TokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id > ? ORDER BY id LIMIT ?"
        ))
        .bind(after.map(|a| a.as_str()).unwrap_or(""))
        .bind(fetch_limit(limit))
        .fetch_all(&self.reader)
        .await?;
        let items = rows.iter().map(token_from).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let rows = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"))
                .fetch_all(&mut *conn)
                .await?;
            rows.iter().map(token_from).collect()
        }
        .await;
        conn.done(result)
    }

    async fn delete_token(&self, id: &TokenId) -> Result<bool> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let n = sqlx::query("DELETE FROM tokens WHERE id = ?")
                .bind(id.as_str())
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok(n == 1)
        }
        .await;
        conn.done(result)
    }

    async fn touch_tokens(&self, uses: &[(TokenId, Timestamp)]) -> Result<()> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            if uses.is_empty() {
                return Ok(());
            }
            let mut tx = conn.begin().await?;
            for (id, at) in uses {
                sqlx::query(
                    "UPDATE tokens SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?",
                )
                .bind(at.as_millis())
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .await;
        conn.done(result)
    }

    async fn delete_expired_tokens(&self, now: Timestamp) -> Result<Vec<TokenId>> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let ids: Vec<String> = sqlx::query_scalar(
                "DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= ? RETURNING id",
            )
            .bind(now.as_millis())
            .fetch_all(&mut *conn)
            .await?;
            ids.iter()
                .map(|id| TokenId::parse(id).map_err(corrupt))
                .collect()
        }
        .await;
        conn.done(result)
    }

    async fn offline_workers_since(&self, before: Timestamp) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE status = 'offline' AND status_changed_at <= ?"
        ))
        .bind(before.as_millis())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(worker_from).collect()
    }

    async fn forget_empty_machines(&self) -> Result<u64> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let mut tx = conn.begin().await?;
            // A forgotten machine's history ends now.
            sqlx::query(
                "UPDATE health_spans SET \
                   end_ms = MAX(start_ms, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)), \
                   n_end = COALESCE((SELECT no_data_before_ms FROM health_observations \
                                     ORDER BY start_ms DESC LIMIT 1), 0) \
                 WHERE entity = 'machine' AND end_ms IS NULL AND id IN (SELECT m.id FROM machines m \
                   WHERE NOT EXISTS (SELECT 1 FROM workers w WHERE w.machine_id = m.id))",
            )
            .execute(&mut *tx)
            .await?;
            let n = sqlx::query(
                "DELETE FROM machines WHERE NOT EXISTS (SELECT 1 FROM workers w WHERE w.machine_id = machines.id)",
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(n)
        }
        .await;
        conn.done(result)
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let n = sqlx::query("DELETE FROM events WHERE at <= ?")
                .bind(before.as_millis())
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok(n)
        }
        .await;
        conn.done(result)
    }

    async fn begin_observation(&self, at: Timestamp) -> Result<()> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            sqlx::query(
                "INSERT INTO health_observations (start_ms, end_ms, no_data_before_ms) \
                 SELECT ?1, ?1, COALESCE((SELECT no_data_before_ms + MAX(0, ?1 - end_ms) \
                 FROM health_observations ORDER BY start_ms DESC LIMIT 1), 0) WHERE true \
                 ON CONFLICT (start_ms) DO NOTHING",
            )
            .bind(at.as_millis())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        .await;
        conn.done(result)
    }

    async fn extend_observation(&self, start: Timestamp, at: Timestamp) -> Result<()> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            sqlx::query(
                "UPDATE health_observations SET end_ms = MAX(end_ms, ?) WHERE start_ms = ?",
            )
            .bind(at.as_millis())
            .bind(start.as_millis())
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
        .await;
        conn.done(result)
    }

    async fn observations(&self) -> Result<Vec<Observation>> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT start_ms, end_ms, no_data_before_ms FROM health_observations ORDER BY start_ms",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(s, e, n)| Observation {
                start: Timestamp::from_millis(s),
                end: Timestamp::from_millis(e),
                no_data_before_ms: n,
            })
            .collect())
    }

    async fn health_spans(&self, of: SpansOf<'_>, window: Window) -> Result<Vec<HealthSpan>> {
        let mut out = Vec::new();
        let ids: Vec<&str> = match of {
            SpansOf::Workers(ids) => ids.iter().map(|i| i.as_str()).collect(),
            SpansOf::Machines(ids) => ids.iter().map(|i| i.as_str()).collect(),
        };
        for chunk in ids.chunks(500) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new(format!("SELECT {SPAN_COLUMNS} FROM health_spans WHERE "));
            match of {
                SpansOf::Workers(_) => qb.push("entity = 'worker' AND id IN ("),
                SpansOf::Machines(_) => qb.push("machine_id IN ("),
            };
            let mut sep = qb.separated(", ");
            for id in chunk {
                sep.push_bind(id.to_string());
            }
            qb.push(") AND start_ms < ");
            qb.push_bind(window.to.as_millis());
            qb.push(" AND (end_ms IS NULL OR end_ms >= ");
            qb.push_bind(window.from.as_millis());
            qb.push(") ORDER BY start_ms");
            let rows: Vec<SpanRow> = qb.build_query_as().fetch_all(&self.reader).await?;
            for r in rows {
                out.push(history::span_from(r)?);
            }
        }
        Ok(out)
    }

    async fn fleet_health(&self, query: &FleetQuery) -> Result<FleetSummary> {
        let sql = history::fleet_sql(Dialect::Sqlite, query);
        let mut conn = self.reader.acquire().await?;
        // One read transaction: every statement sees the same history.
        let mut tx = conn.begin().await?;
        let counts: (i64, i64) = sqlx::query_as(&sql.counts).fetch_one(&mut *tx).await?;
        let totals = match (&sql.rollup, &sql.time, &sql.offlines) {
            (Some(rollup), _, _) => {
                let rows: Vec<history::RollupRow> =
                    sqlx::query_as(rollup).fetch_all(&mut *tx).await?;
                history::rollup_totals(query, rows)?
            }
            (None, Some(time), Some(offlines)) => {
                let time: (i64, i64, i64) = sqlx::query_as(time).fetch_one(&mut *tx).await?;
                let offlines: Vec<(String, Option<String>, i64)> =
                    sqlx::query_as(offlines).fetch_all(&mut *tx).await?;
                history::span_totals(time, offlines)?
            }
            _ => unreachable!("fleet_sql gives the rollup or the span sums"),
        };
        let ranked =
            |rows: Vec<(String, i64)>| rows.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let mbc = ranked(
            sqlx::query_as(&sql.machines_by_crashes)
                .fetch_all(&mut *tx)
                .await?,
        );
        let mbd = ranked(
            sqlx::query_as(&sql.machines_by_downtime)
                .fetch_all(&mut *tx)
                .await?,
        );
        // Ranked in Rust: SQLite's GROUP BY sorts every row of the window.
        let ids: String = sqlx::query_scalar(&sql.worker_crash_ids)
            .fetch_one(&mut *tx)
            .await?;
        let wbc = history::rank_text(&ids, false, query.top)?;
        let times: String = sqlx::query_scalar(&sql.worker_down_times)
            .fetch_one(&mut *tx)
            .await?;
        let wbd = history::rank_text(&times, true, query.top)?;
        tx.rollback().await?;
        history::summary(counts, totals, [mbc, mbd, wbc, wbd])
    }

    async fn prune_health(&self, before: Timestamp) -> Result<u64> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let mut tx = conn.begin().await?;
            let before_ms = before.as_millis();
            let n =
                sqlx::query("DELETE FROM health_spans WHERE end_ms IS NOT NULL AND end_ms <= ?")
                    .bind(before_ms)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            // Histories that ended by then, and the rollup rows no window
            // within the retention reads (the hourly rows stay: they give
            // the counts before every later instant).
            sqlx::query("DELETE FROM health_lives WHERE end_ms IS NOT NULL AND end_ms <= ?")
                .bind(before_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM health_rollup WHERE at < ?")
                .bind(before_ms.div_euclid(history::HOUR_MS) * history::HOUR_MS)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM health_rollup_machines WHERE day < ?")
                .bind(before_ms.div_euclid(history::DAY_MS))
                .execute(&mut *tx)
                .await?;
            // The latest observation that ended by then stays: it gives the
            // no-data time before every later instant.
            sqlx::query(
                "DELETE FROM health_observations WHERE end_ms <= ?1 AND start_ms < \
                 (SELECT MAX(start_ms) FROM health_observations WHERE end_ms <= ?1)",
            )
            .bind(before.as_millis())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(n)
        }
        .await;
        conn.done(result)
    }

    async fn alert_cursor(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT seq FROM alert_cursor WHERE id = 1")
                .fetch_one(&self.reader)
                .await?,
        )
    }

    async fn commit_alerts(&self, step: &crate::AlertCommit) -> Result<Option<Vec<EventRecord>>> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let mut tx = conn.begin().await?;
            if !crate::alerts::apply_step!(tx, step) {
                return Ok(None);
            }
            let seq = current_seq(&mut tx).await?;
            let events: Vec<EventRecord> = step
                .events
                .iter()
                .enumerate()
                .map(|(i, e)| e.numbered(seq + 1 + i as i64))
                .collect();
            insert_events(&mut tx, &events).await?;
            tx.commit().await?;
            Ok(Some(events))
        }
        .await;
        conn.done(result)
    }

    async fn current_incidents(&self) -> Result<Vec<crate::IncidentRecord>> {
        let rows = sqlx::query(&crate::alerts::current_incidents_sql())
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(crate::alerts::incident_from).collect()
    }

    async fn list_incidents(
        &self,
        status: Option<crate::IncidentStatus>,
        before: Option<&IncidentId>,
        limit: usize,
    ) -> Result<Page<crate::IncidentRecord>> {
        let rows = sqlx::query(&crate::alerts::list_incidents_sql())
            .bind(status.map(|s| s.as_str()).unwrap_or(""))
            .bind(before.map(|b| b.as_str()).unwrap_or(""))
            .bind(fetch_limit(limit))
            .fetch_all(&self.reader)
            .await?;
        let items = rows
            .iter()
            .map(crate::alerts::incident_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn get_incident(&self, id: &IncidentId) -> Result<Option<crate::IncidentRecord>> {
        let row = sqlx::query(&crate::alerts::get_incident_sql())
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(crate::alerts::incident_from).transpose()
    }

    async fn ack_incident(
        &self,
        id: &IncidentId,
        at: Timestamp,
        by: &str,
    ) -> Result<Option<crate::IncidentRecord>> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let mut tx = conn.begin().await?;
            sqlx::query(crate::alerts::ACK)
                .bind(id.as_str())
                .bind(at.as_millis())
                .bind(by)
                .execute(&mut *tx)
                .await?;
            let row = sqlx::query(&crate::alerts::get_incident_sql())
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            row.as_ref().map(crate::alerts::incident_from).transpose()
        }
        .await;
        conn.done(result)
    }

    async fn due_notifications(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::Notification>> {
        let rows = sqlx::query(crate::alerts::DUE)
            .bind(now.as_millis())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(crate::alerts::notification_from).collect()
    }

    async fn record_attempt(&self, id: i64, at: Timestamp, attempt: &crate::Attempt) -> Result<()> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            crate::alerts::record_attempt!(&mut *conn, id, at, attempt);
            Ok(())
        }
        .await;
        conn.done(result)
    }

    async fn outbox_stats(&self) -> Result<crate::OutboxStats> {
        let row = sqlx::query(crate::alerts::STATS)
            .fetch_one(&self.reader)
            .await?;
        Ok(crate::OutboxStats {
            pending: u64::try_from(row.int("pending")?).unwrap_or(0),
            oldest: row.opt_int("oldest")?.map(Timestamp::from_millis),
        })
    }

    async fn list_alert_rules(&self) -> Result<Vec<crate::StoredRule>> {
        let rows = sqlx::query(crate::alerts::LIST_RULES)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(crate::alerts::rule_from).collect()
    }

    async fn put_alert_rule(&self, rule: &crate::StoredRule) -> Result<bool> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let mut tx = conn.begin().await?;
            let created = crate::alerts::put_rule!(tx, rule);
            tx.commit().await?;
            Ok(created)
        }
        .await;
        conn.done(result)
    }

    async fn delete_alert_rule(&self, name: &str) -> Result<bool> {
        let mut conn = WriteConn::acquire(&self.writer).await?;
        let result = async {
            let n = sqlx::query(crate::alerts::DELETE_RULE)
                .bind(name)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            Ok(n == 1)
        }
        .await;
        conn.done(result)
    }
}
