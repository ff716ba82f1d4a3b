//! The PostgreSQL store: several rollcall replicas on one database, one of
//! them active (see [`ha`]).
//!
//! - A pool of connections serves every method; MVCC lets reads run beside
//!   writes. Connections are taken with a short timeout, so while the
//!   database is unreachable calls fail fast with [`StoreError::Database`]
//!   instead of queueing.
//! - Writes that touch workers and machines (commit, heartbeat flushes,
//!   reconciliation, forgetting machines) take one transaction-level
//!   advisory lock, the *writer lock*, before anything else. Event `seq`s are
//!   assigned under it, so commit order is `seq` order and a reader that sees
//!   `seq` N has every smaller `seq` visible too; and these multi-row writes
//!   never deadlock each other.
//! - In fenced mode ([`PgStore::fence_writes`]) the liveness writes also
//!   check, in their transaction, that this store still leads.
//! - Batches are written as a few statements over arrays (`UNNEST`), not one
//!   statement per row (see [`batch`]).

mod batch;
pub mod ha;

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rollcall_core::health::{Observation, Window};
use rollcall_core::{
    IncidentId, MachineId, MachineStatus, Timestamp, TokenId, WorkerId, WorkerName,
};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection, Postgres, QueryBuilder, Transaction};

pub use self::ha::{LeaderInfo, Leadership, Notification, Notifications};
use crate::history::{self, Dialect, FleetQuery, FleetSummary, HealthSpan, SpanRow, SPAN_COLUMNS};
use crate::records::*;
use crate::rows::*;
use crate::{Result, SpansOf, Store, StoreError};

/// The first half of every advisory-lock key rollcall takes ("rllc"). The
/// two-part keys live apart from single-`bigint` keys, such as the one the
/// migrator takes.
const LOCK_SPACE: i32 = 0x726c_6c63;
/// Serialises the writes to workers, machines and the event log.
const WRITER_LOCK: i32 = 1;
/// Held, at session level, by the active replica.
const LEADER_LOCK: i32 = 2;
/// Serialises the multi-row writes to tokens.
const TOKENS_LOCK: i32 = 3;
/// Serialises the beginnings of observations (each reads the latest one).
const OBSERVATIONS_LOCK: i32 = 4;

/// How long a call waits for a pooled connection.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening a connection of its own may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections in the pool.
const MAX_CONNECTIONS: u32 = 10;
/// Heartbeat marks written per transaction (each holds the writer lock).
const FLUSH_CHUNK: usize = 1000;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

/// PostgreSQL implementation of [`Store`].
pub struct PgStore {
    pool: PgPool,
    /// For the connections that live outside the pool: the leader lock's
    /// and the listeners'.
    options: PgConnectOptions,
    /// Whether, and with which epoch, fenced writes may run.
    fence: Arc<Fence>,
    /// A connection kept between unsuccessful [`PgStore::try_lead`]s, so a
    /// standby that asks every second does not connect every second.
    candidate: tokio::sync::Mutex<Option<PgConnection>>,
}

// By hand: the connect options hold the database password.
impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool)
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

/// The fence of a store: see [`PgStore::fence_writes`].
#[derive(Debug, Default)]
pub(crate) struct Fence {
    /// Whether liveness writes are fenced at all.
    enabled: AtomicBool,
    /// The epoch this store leads with; 0 (never a leader's) while it does
    /// not lead.
    epoch: AtomicI64,
}

impl Fence {
    /// Forgets `epoch`, unless the store already leads with a newer one.
    pub(crate) fn clear(&self, epoch: i64) {
        let _ = self
            .epoch
            .compare_exchange(epoch, 0, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub(crate) fn set(&self, epoch: i64) {
        self.epoch.store(epoch, Ordering::SeqCst);
    }
}

impl PgStore {
    /// Connects to the database at a `postgres://` URL and runs the
    /// migrations. Replicas starting together against one database are
    /// safe: the migrator holds an advisory lock while it works, so one
    /// migrates and the others then find nothing to do.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url)?
            .application_name("rollcall")
            // A transaction left open by a stuck or frozen process (SIGSTOP,
            // a paused VM) would hold the writer lock and the share lock on
            // the leader row that a takeover waits for; the server ends it.
            // rollcall's transactions run their statements back to back, and
            // a replica starved for this long has lost its lock connection
            // (idle_session_timeout, see `cluster`) and its role anyway.
            .options([("idle_in_transaction_session_timeout", "4s")]);

        // Migrations run on a connection of their own: the migrator's lock is
        // a session lock, and a connection whose migration failed must be
        // closed, releasing it, not handed out again.
        let migrating = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        let migrated = MIGRATOR.run(&migrating).await;
        migrating.close().await;
        migrated?;

        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        Ok(PgStore {
            pool,
            options,
            fence: Arc::default(),
            candidate: tokio::sync::Mutex::new(None),
        })
    }

    /// The database's clock, in milliseconds: with several replicas, the one
    /// clock they share.
    pub async fn now(&self) -> Result<Timestamp> {
        let ms: i64 = sqlx::query_scalar(
            "SELECT FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Timestamp::from_millis(ms))
    }

    /// Puts the store in fenced mode: from now on the liveness writes
    /// (`commit`, `flush_heartbeats`, `reconcile_machines`,
    /// `forget_empty_machines`, `prune_events`, `delete_expired_tokens`) are
    /// refused with [`StoreError::Fenced`] unless this store holds a
    /// [`Leadership`] whose epoch is still the current one in the database.
    /// Without this call (contract tests, tools) writes are unfenced.
    pub fn fence_writes(&self) {
        self.fence.enabled.store(true, Ordering::SeqCst);
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The fence's answer without asking the database: refused when fenced
    /// and not leading.
    fn refuse_unless_leading(&self) -> Result<()> {
        if self.fence.enabled.load(Ordering::SeqCst) && self.fence.epoch.load(Ordering::SeqCst) == 0
        {
            return Err(StoreError::Fenced);
        }
        Ok(())
    }

    /// Begins a write transaction: checks the fence first when `fenced`,
    /// then takes `lock`, if any, until the transaction ends.
    async fn begin(
        &self,
        fenced: bool,
        lock: Option<i32>,
    ) -> Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        if fenced {
            self.check_fence(&mut tx).await?;
        }
        if let Some(key) = lock {
            sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
                .bind(LOCK_SPACE)
                .bind(key)
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
    }

    /// In fenced mode, refuses unless the leader table's epoch is ours. The
    /// row stays share-locked until the transaction ends, so a replica that
    /// takes over (raising the epoch) waits for this write to finish, and
    /// every later write of this store is refused.
    async fn check_fence(&self, tx: &mut Transaction<'static, Postgres>) -> Result<()> {
        if !self.fence.enabled.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.refuse_unless_leading()?;
        let ours = self.fence.epoch.load(Ordering::SeqCst);
        let current: i64 =
            sqlx::query_scalar("SELECT epoch FROM rollcall_leader WHERE id = 1 FOR SHARE")
                .fetch_one(&mut **tx)
                .await?;
        if current != ours {
            self.fence.clear(ours);
            return Err(StoreError::Fenced);
        }
        Ok(())
    }
}

/// Opens one connection outside the pool, giving up after
/// [`CONNECT_TIMEOUT`].
async fn connect_one(options: &PgConnectOptions) -> Result<PgConnection> {
    match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(timed_out("connecting to the database")),
    }
}

/// A database that did not answer in time.
pub(crate) fn timed_out(what: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    )))
}

/// Raises the event counter by `n` and returns the first of the `n` new
/// `seq`s. Runs under the writer lock.
async fn next_seqs(tx: &mut Transaction<'static, Postgres>, n: usize) -> Result<i64> {
    let last: i64 = sqlx::query_scalar(
        "UPDATE rollcall_event_seq SET last = last + $1 WHERE id = 1 RETURNING last",
    )
    .bind(n as i64)
    .fetch_one(&mut **tx)
    .await?;
    Ok(last - n as i64 + 1)
}

/// Numbers `events` (worker events, then machine events) and appends them.
async fn append_events(
    tx: &mut Transaction<'static, Postgres>,
    events: &mut [EventRecord],
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let first = next_seqs(tx, events.len()).await?;
    for (i, e) in events.iter_mut().enumerate() {
        e.seq = first + i as i64;
    }
    batch::insert_events(tx, events).await
}

/// Ends and begins the health spans of committed events, in their
/// transaction.
async fn record_history(
    tx: &mut Transaction<'static, Postgres>,
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
    let entity: Vec<&str> = plan.closes.iter().map(|c| c.0).collect();
    let id: Vec<&str> = plan.closes.iter().map(|c| c.1.as_str()).collect();
    let at: Vec<i64> = plan.closes.iter().map(|c| c.2).collect();
    let rows: Vec<(String, String, bool, i64, i64)> = sqlx::query_as(
        "UPDATE health_spans s SET end_ms = GREATEST(s.start_ms, v.at), n_end = $4 \
         FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS v (entity, id, at) \
         WHERE s.entity = v.entity AND s.id = v.id AND s.end_ms IS NULL \
         RETURNING s.entity, s.id, s.live, s.end_ms, s.n_end",
    )
    .bind(&entity)
    .bind(&id)
    .bind(&at)
    .bind(n)
    .fetch_all(&mut **tx)
    .await?;
    let closed: Vec<history::Closed> = rows
        .into_iter()
        .map(|(entity, id, live, end, n_end)| history::Closed {
            entity,
            id,
            live,
            end,
            n_end,
        })
        .collect();
    let p = &plan.inserts;
    let entity: Vec<&str> = p.iter().map(|s| s.entity).collect();
    let id: Vec<&str> = p.iter().map(|s| s.id.as_str()).collect();
    let machine: Vec<&str> = p.iter().map(|s| s.machine_id.as_str()).collect();
    let name: Vec<Option<&str>> = p.iter().map(|s| s.name.as_deref()).collect();
    let start: Vec<i64> = p.iter().map(|s| s.start).collect();
    let end: Vec<Option<i64>> = p.iter().map(|s| s.end).collect();
    let live: Vec<bool> = p.iter().map(|s| s.live).collect();
    let class: Vec<Option<&str>> = p.iter().map(|s| s.class).collect();
    let kind: Vec<Option<&str>> = p.iter().map(|s| s.kind).collect();
    sqlx::query(
        "INSERT INTO health_spans (entity, id, machine_id, name, start_ms, end_ms, live, class, \
           crash_kind, n_start, n_end) \
         SELECT v.entity, v.id, v.machine_id, v.name, v.start_ms, v.end_ms, v.live, v.class, \
           v.crash_kind, $10, CASE WHEN v.end_ms IS NULL THEN NULL ELSE $10 END \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], \
           $7::boolean[], $8::text[], $9::text[]) \
           AS v (entity, id, machine_id, name, start_ms, end_ms, live, class, crash_kind)",
    )
    .bind(&entity)
    .bind(&id)
    .bind(&machine)
    .bind(&name)
    .bind(&start)
    .bind(&end)
    .bind(&live)
    .bind(&class)
    .bind(&kind)
    .bind(n)
    .execute(&mut **tx)
    .await?;
    write_rollup(tx, &plan, &history::rollup(&plan, &closed, n)).await
}

/// Adds a batch's rollup to the rollup tables, and begins and ends the
/// workers' histories in `health_lives`.
async fn write_rollup(
    tx: &mut Transaction<'static, Postgres>,
    plan: &history::Plan,
    r: &history::Rollup,
) -> Result<()> {
    for (table, unit, rows) in [
        ("health_rollup", "at", r.at.clone()),
        ("health_rollup_hourly", "hour", r.hourly()),
    ] {
        if rows.is_empty() {
            continue;
        }
        let key: Vec<i64> = rows.keys().map(|k| k.0).collect();
        let series: Vec<&str> = rows.keys().map(|k| k.1.as_str()).collect();
        let n: Vec<i64> = rows.values().map(|v| v.0).collect();
        let ms: Vec<i64> = rows.values().map(|v| v.1).collect();
        let obs: Vec<i64> = rows.values().map(|v| v.2).collect();
        sqlx::query(&format!(
            "INSERT INTO {table} AS r ({unit}, series, n, sum_ms, sum_obs) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[]) \
             ON CONFLICT ({unit}, series) DO UPDATE SET n = r.n + excluded.n, \
             sum_ms = r.sum_ms + excluded.sum_ms, sum_obs = r.sum_obs + excluded.sum_obs"
        ))
        .bind(&key)
        .bind(&series)
        .bind(&n)
        .bind(&ms)
        .bind(&obs)
        .execute(&mut **tx)
        .await?;
    }
    if !r.machine_days.is_empty() {
        let day: Vec<i64> = r.machine_days.keys().map(|k| k.0).collect();
        let machine: Vec<&str> = r.machine_days.keys().map(|k| k.1.as_str()).collect();
        let n: Vec<i64> = r.machine_days.values().copied().collect();
        sqlx::query(
            "INSERT INTO health_rollup_machines AS r (day, machine_id, crashes) \
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[]) \
             ON CONFLICT (day, machine_id) DO UPDATE SET crashes = r.crashes + excluded.crashes",
        )
        .bind(&day)
        .bind(&machine)
        .bind(&n)
        .execute(&mut **tx)
        .await?;
    }
    if !r.lives.is_empty() {
        let id: Vec<&str> = r.lives.iter().map(|l| l.0.as_str()).collect();
        let machine: Vec<&str> = r.lives.iter().map(|l| l.1.as_str()).collect();
        let start: Vec<i64> = r.lives.iter().map(|l| l.2).collect();
        sqlx::query(
            "INSERT INTO health_lives (id, machine_id, start_ms) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&id)
        .bind(&machine)
        .bind(&start)
        .execute(&mut **tx)
        .await?;
    }
    if !plan.gone.is_empty() {
        sqlx::query(
            "UPDATE health_lives l SET end_ms = (SELECT MAX(s.end_ms) FROM health_spans s \
             WHERE s.entity = 'worker' AND s.id = l.id) WHERE l.id = ANY($1::text[])",
        )
        .bind(&plan.gone)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The worker, machine and events of a write.
fn parts(w: &WorkerWrite) -> (&WorkerId, &MachineId, &[NewEvent]) {
    match w {
        WorkerWrite::Put { record, events, .. } => (&record.id, &record.machine_id, events),
        WorkerWrite::Delete {
            id,
            machine_id,
            events,
            ..
        } => (id, machine_id, events),
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn probe_write(&self, at: Timestamp) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollcall_probe (id, at) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET at = excluded.at",
        )
        .bind(at.as_millis())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn load_workers(&self) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(&format!("SELECT {WORKER_COLUMNS} FROM workers"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(worker_from).collect()
    }

    async fn commit(&self, writes: Vec<WorkerWrite>) -> Result<CommitResult> {
        let mut tx = self.begin(true, Some(WRITER_LOCK)).await?;
        let applied = batch::apply_writes(&mut tx, &writes).await?;

        // Worker events in the order of the writes; each machine they touched
        // is derived at the time of its latest event.
        let mut events = Vec::new();
        let mut machines: BTreeMap<MachineId, Timestamp> = BTreeMap::new();
        for (write, ok) in writes.iter().zip(&applied) {
            if !ok {
                continue;
            }
            let (worker_id, machine_id, new_events) = parts(write);
            let at = machines
                .entry(machine_id.clone())
                .or_insert(Timestamp::EPOCH);
            for e in new_events {
                *at = (*at).max(e.at);
                events.push(worker_event(0, worker_id, machine_id, e));
            }
        }
        for (id, status, at) in batch::derive_machines(&mut tx, &machines).await? {
            events.push(machine_event(0, id, status, at));
        }
        append_events(&mut tx, &mut events).await?;
        record_history(&mut tx, &events, &history::names(&writes)).await?;
        tx.commit().await?;
        Ok(CommitResult { applied, events })
    }

    async fn reconcile_machines(&self, at: Timestamp) -> Result<Vec<EventRecord>> {
        let mut tx = self.begin(true, Some(WRITER_LOCK)).await?;
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM machines")
            .fetch_all(&mut *tx)
            .await?;
        let machines = ids
            .iter()
            .map(|id| Ok((MachineId::parse(id).map_err(corrupt)?, at)))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let mut events: Vec<EventRecord> = batch::derive_machines(&mut tx, &machines)
            .await?
            .into_iter()
            .map(|(id, status, at)| machine_event(0, id, status, at))
            .collect();
        append_events(&mut tx, &mut events).await?;
        record_history(&mut tx, &events, &HashMap::new()).await?;
        tx.commit().await?;
        Ok(events)
    }

    async fn flush_heartbeats(&self, marks: &[HeartbeatMark]) -> Result<()> {
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
        if marks.is_empty() {
            // Nothing to write; a store that knows it does not lead still
            // refuses, as it would with marks.
            return self.refuse_unless_leading();
        }
        // Short transactions: each holds the writer lock, which the
        // transition writer must never wait for long (detection lag).
        for chunk in marks.chunks(FLUSH_CHUNK) {
            let mut tx = self.begin(true, Some(WRITER_LOCK)).await?;
            let ids: Vec<&str> = chunk.iter().map(|((id, _), _)| *id).collect();
            let sessions: Vec<i64> = chunk.iter().map(|((_, s), _)| *s as i64).collect();
            let ats: Vec<i64> = chunk.iter().map(|(_, at)| at.as_millis()).collect();
            // A mark of an ended session (or a forgotten worker) matches no
            // row and is ignored entirely, machine included. Only the
            // unindexed `last_heartbeat_at` and `last_seen_at` change, so
            // the updates are HOT.
            sqlx::query(
                "WITH v AS (SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[]) \
                   AS v (id, session, at)), \
                 hb AS (UPDATE workers w SET last_heartbeat_at = GREATEST(w.last_heartbeat_at, v.at) \
                   FROM v WHERE w.id = v.id AND w.session = v.session \
                   RETURNING w.machine_id, w.last_heartbeat_at) \
                 UPDATE machines m SET last_seen_at = s.at \
                 FROM (SELECT machine_id, MAX(last_heartbeat_at) AS at FROM hb GROUP BY machine_id) s \
                 WHERE m.id = s.machine_id AND m.last_seen_at < s.at",
            )
            .bind(&ids)
            .bind(&sessions)
            .bind(&ats)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(worker_from).transpose()
    }

    async fn list_workers(
        &self,
        filter: &WorkerFilter,
        after: Option<&WorkerId>,
        limit: usize,
    ) -> Result<Page<WorkerRecord>> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {WORKER_COLUMNS} FROM workers WHERE true"));
        if let Some(s) = filter.status {
            qb.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(m) = &filter.machine_id {
            qb.push(" AND machine_id = ").push_bind(m.as_str());
        }
        if let Some(a) = after {
            qb.push(" AND id > ").push_bind(a.as_str());
        }
        qb.push(" ORDER BY id LIMIT ").push_bind(fetch_limit(limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        let items = rows.iter().map(worker_from).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn get_machine(&self, id: &MachineId) -> Result<Option<MachineRecord>> {
        let row = sqlx::query(&format!("{MACHINE_SELECT} WHERE m.id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(machine_from).transpose()
    }

    async fn list_machines(
        &self,
        status: Option<MachineStatus>,
        after: Option<&MachineId>,
        limit: usize,
    ) -> Result<Page<MachineRecord>> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("{MACHINE_SELECT} WHERE true"));
        if let Some(s) = status {
            qb.push(" AND m.status = ").push_bind(s.as_str());
        }
        if let Some(a) = after {
            qb.push(" AND m.id > ").push_bind(a.as_str());
        }
        qb.push(" ORDER BY m.id LIMIT ")
            .push_bind(fetch_limit(limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        let items = rows.iter().map(machine_from).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn list_events(
        &self,
        filter: &EventFilter,
        after: i64,
        limit: usize,
    ) -> Result<Page<EventRecord>> {
        let mut qb: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE seq > "));
        qb.push_bind(after);
        if let Some(w) = &filter.worker_id {
            qb.push(" AND worker_id = ").push_bind(w.as_str());
        }
        if let Some(m) = &filter.machine_id {
            qb.push(" AND machine_id = ").push_bind(m.as_str());
        }
        if let Some(k) = filter.kind {
            qb.push(" AND type = ").push_bind(k.as_str());
        }
        qb.push(" ORDER BY seq LIMIT ")
            .push_bind(fetch_limit(limit));
        let rows = qb.build().fetch_all(&self.pool).await?;
        let items = rows.iter().map(event_from).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn last_seq(&self) -> Result<i64> {
        let last: i64 = sqlx::query_scalar("SELECT last FROM rollcall_event_seq WHERE id = 1")
            .fetch_one(&self.pool)
            .await?;
        Ok(last)
    }

    async fn insert_token(&self, t: &TokenRecord) -> Result<()> {
        sqlx::query(&format!(
            "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(t.id.as_str())
        .bind(t.kind.as_str())
        .bind(&t.name)
        .bind(t.hash.to_hex())
        .bind(t.created_at.as_millis())
        .bind(t.expires_at.map(|x| x.as_millis()))
        .bind(t.last_used_at.map(|x| x.as_millis()))
        .bind(scope_json(t.scope.as_ref()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_tokens(
        &self,
        after: Option<&TokenId>,
        limit: usize,
    ) -> Result<Page<TokenRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after.map(|a| a.as_str()).unwrap_or(""))
        .bind(fetch_limit(limit))
        .fetch_all(&self.pool)
        .await?;
        let items = rows.iter().map(token_from).collect::<Result<Vec<_>>>()?;
        Ok(page(items, limit))
    }

    async fn all_tokens(&self) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM tokens"))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(token_from).collect()
    }

    async fn delete_token(&self, id: &TokenId) -> Result<bool> {
        let n = sqlx::query("DELETE FROM tokens WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn touch_tokens(&self, uses: &[(TokenId, Timestamp)]) -> Result<()> {
        if uses.is_empty() {
            return Ok(());
        }
        // One row per token, the latest use (see flush_heartbeats).
        let mut latest: BTreeMap<&str, Timestamp> = BTreeMap::new();
        for (id, at) in uses {
            let t = latest.entry(id.as_str()).or_insert(*at);
            *t = (*t).max(*at);
        }
        let ids: Vec<&str> = latest.keys().copied().collect();
        let ats: Vec<i64> = latest.values().map(|t| t.as_millis()).collect();
        let mut tx = self.begin(false, Some(TOKENS_LOCK)).await?;
        sqlx::query(
            "UPDATE tokens t SET last_used_at = GREATEST(t.last_used_at, v.at) \
             FROM UNNEST($1::text[], $2::bigint[]) AS v (id, at) \
             WHERE t.id = v.id AND (t.last_used_at IS NULL OR t.last_used_at < v.at)",
        )
        .bind(&ids)
        .bind(&ats)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_expired_tokens(&self, now: Timestamp) -> Result<Vec<TokenId>> {
        let mut tx = self.begin(true, Some(TOKENS_LOCK)).await?;
        let ids: Vec<String> = sqlx::query_scalar(
            "DELETE FROM tokens WHERE expires_at IS NOT NULL AND expires_at <= $1 RETURNING id",
        )
        .bind(now.as_millis())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        ids.iter()
            .map(|id| TokenId::parse(id).map_err(corrupt))
            .collect()
    }

    async fn offline_workers_since(&self, before: Timestamp) -> Result<Vec<WorkerRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {WORKER_COLUMNS} FROM workers WHERE status = 'offline' AND status_changed_at <= $1"
        ))
        .bind(before.as_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(worker_from).collect()
    }

    async fn forget_empty_machines(&self) -> Result<u64> {
        let mut tx = self.begin(true, Some(WRITER_LOCK)).await?;
        // A forgotten machine's history ends now (the database's clock).
        sqlx::query(
            "UPDATE health_spans SET \
               end_ms = GREATEST(start_ms, FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT), \
               n_end = COALESCE((SELECT no_data_before_ms FROM health_observations \
                                 ORDER BY start_ms DESC LIMIT 1), 0) \
             WHERE entity = 'machine' AND end_ms IS NULL AND id IN (SELECT m.id FROM machines m \
               WHERE NOT EXISTS (SELECT 1 FROM workers w WHERE w.machine_id = m.id))",
        )
        .execute(&mut *tx)
        .await?;
        let n = sqlx::query(
            "DELETE FROM machines m WHERE NOT EXISTS (SELECT 1 FROM workers w WHERE w.machine_id = m.id)",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn prune_events(&self, before: Timestamp) -> Result<u64> {
        let mut tx = self.begin(true, None).await?;
        let n = sqlx::query("DELETE FROM events WHERE at <= $1")
            .bind(before.as_millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn begin_observation(&self, at: Timestamp) -> Result<()> {
        // Serialised with other beginnings by an advisory lock, not a table
        // lock: a frozen replica's open extension of its own observation
        // must not block a takeover's beginning.
        let mut tx = self.begin(true, Some(OBSERVATIONS_LOCK)).await?;
        sqlx::query(
            "INSERT INTO health_observations (start_ms, end_ms, no_data_before_ms) \
             SELECT $1, $1, COALESCE((SELECT no_data_before_ms + GREATEST(0, $1 - end_ms) \
             FROM health_observations ORDER BY start_ms DESC LIMIT 1), 0) \
             ON CONFLICT (start_ms) DO NOTHING",
        )
        .bind(at.as_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn extend_observation(&self, start: Timestamp, at: Timestamp) -> Result<()> {
        let mut tx = self.begin(true, None).await?;
        sqlx::query(
            "UPDATE health_observations SET end_ms = GREATEST(end_ms, $1) WHERE start_ms = $2",
        )
        .bind(at.as_millis())
        .bind(start.as_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn observations(&self) -> Result<Vec<Observation>> {
        let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
            "SELECT start_ms, end_ms, no_data_before_ms FROM health_observations ORDER BY start_ms",
        )
        .fetch_all(&self.pool)
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
        let (cond, ids): (&str, Vec<&str>) = match of {
            SpansOf::Workers(ids) => (
                "entity = 'worker' AND id = ANY($1)",
                ids.iter().map(|i| i.as_str()).collect(),
            ),
            SpansOf::Machines(ids) => (
                "machine_id = ANY($1)",
                ids.iter().map(|i| i.as_str()).collect(),
            ),
        };
        let rows: Vec<SpanRow> = sqlx::query_as(&format!(
            "SELECT {SPAN_COLUMNS} FROM health_spans WHERE {cond} AND start_ms < $2 \
             AND (end_ms IS NULL OR end_ms >= $3) ORDER BY start_ms"
        ))
        .bind(&ids)
        .bind(window.to.as_millis())
        .bind(window.from.as_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(history::span_from).collect()
    }

    async fn fleet_health(&self, query: &FleetQuery) -> Result<FleetSummary> {
        let sql = history::fleet_sql(Dialect::Postgres, query);
        let mut tx = self.pool.begin().await?;
        // One snapshot: every statement sees the same history.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
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
        let wbc = ranked(
            sqlx::query_as(&sql.workers_by_crashes)
                .fetch_all(&mut *tx)
                .await?,
        );
        let wbd = ranked(
            sqlx::query_as(&sql.workers_by_downtime)
                .fetch_all(&mut *tx)
                .await?,
        );
        tx.rollback().await?;
        history::summary(counts, totals, [mbc, mbd, wbc, wbd])
    }

    async fn prune_health(&self, before: Timestamp) -> Result<u64> {
        let mut tx = self.begin(true, None).await?;
        let n = sqlx::query("DELETE FROM health_spans WHERE end_ms IS NOT NULL AND end_ms <= $1")
            .bind(before.as_millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Histories that ended by then, and the rollup rows no window within
        // the retention reads (the hourly rows stay: they give the counts
        // before every later instant).
        let before_ms = before.as_millis();
        sqlx::query("DELETE FROM health_lives WHERE end_ms IS NOT NULL AND end_ms <= $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM health_rollup WHERE at < $1")
            .bind(before_ms.div_euclid(history::HOUR_MS) * history::HOUR_MS)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM health_rollup_machines WHERE day < $1")
            .bind(before_ms.div_euclid(history::DAY_MS))
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM health_observations WHERE end_ms <= $1 AND start_ms < \
             (SELECT MAX(start_ms) FROM health_observations WHERE end_ms <= $1)",
        )
        .bind(before.as_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn alert_cursor(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT seq FROM alert_cursor WHERE id = 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn commit_alerts(&self, step: &crate::AlertCommit) -> Result<Option<Vec<EventRecord>>> {
        let mut tx = self.begin(true, None).await?;
        if !crate::alerts::apply_step!(tx, step) {
            return Ok(None);
        }
        let mut events = Vec::with_capacity(step.events.len());
        if !step.events.is_empty() {
            let first = next_seqs(&mut tx, step.events.len()).await?;
            events.extend(
                step.events
                    .iter()
                    .enumerate()
                    .map(|(i, e)| e.numbered(first + i as i64)),
            );
            batch::insert_events(&mut tx, &events).await?;
        }
        tx.commit().await?;
        Ok(Some(events))
    }

    async fn current_incidents(&self) -> Result<Vec<crate::IncidentRecord>> {
        let rows = sqlx::query(&crate::alerts::current_incidents_sql())
            .fetch_all(&self.pool)
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
            .fetch_all(&self.pool)
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
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(crate::alerts::incident_from).transpose()
    }

    async fn ack_incident(
        &self,
        id: &IncidentId,
        at: Timestamp,
        by: &str,
    ) -> Result<Option<crate::IncidentRecord>> {
        let mut tx = self.pool.begin().await?;
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

    async fn due_notifications(
        &self,
        now: Timestamp,
        limit: usize,
    ) -> Result<Vec<crate::Notification>> {
        let rows = sqlx::query(crate::alerts::DUE)
            .bind(now.as_millis())
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::alerts::notification_from).collect()
    }

    async fn record_attempt(&self, id: i64, at: Timestamp, attempt: &crate::Attempt) -> Result<()> {
        let mut tx = self.begin(true, None).await?;
        crate::alerts::record_attempt!(&mut *tx, id, at, attempt);
        tx.commit().await?;
        Ok(())
    }

    async fn outbox_stats(&self) -> Result<crate::OutboxStats> {
        let row = sqlx::query(crate::alerts::STATS)
            .fetch_one(&self.pool)
            .await?;
        Ok(crate::OutboxStats {
            pending: u64::try_from(row.int("pending")?).unwrap_or(0),
            oldest: row.opt_int("oldest")?.map(Timestamp::from_millis),
        })
    }

    async fn list_alert_rules(&self) -> Result<Vec<crate::StoredRule>> {
        let rows = sqlx::query(crate::alerts::LIST_RULES)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(crate::alerts::rule_from).collect()
    }

    async fn put_alert_rule(&self, rule: &crate::StoredRule) -> Result<bool> {
        let mut tx = self.pool.begin().await?;
        let created = crate::alerts::put_rule!(tx, rule);
        tx.commit().await?;
        Ok(created)
    }

    async fn delete_alert_rule(&self, name: &str) -> Result<bool> {
        let n = sqlx::query(crate::alerts::DELETE_RULE)
            .bind(name)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}
