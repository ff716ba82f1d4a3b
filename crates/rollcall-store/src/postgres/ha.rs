//! Active/standby replicas on one database: the leader lock, the epoch that
//! fences a replica which lost it, and the notifications standbys listen to.
//!
//! - The active replica holds a session-level advisory lock on a connection
//!   of its own ([`Leadership`]). When its process dies, the connection
//!   closes and the database releases the lock; the lock connection asks the
//!   server for TCP keepalives so that a vanished host is noticed too.
//! - Taking the lock raises `rollcall_leader.epoch`. A fenced store's
//!   liveness writes read that row `FOR SHARE` and run only while the epoch
//!   is the one their store leads with, so the raise waits for the old
//!   leader's in-flight write and refuses all its later ones: there are
//!   never two active writers, even before the old leader notices.
//! - Triggers notify `rollcall_events` when events are appended and
//!   `rollcall_tokens` when tokens are created or deleted.

use std::sync::Arc;
use std::time::Duration;

use rollcall_core::Timestamp;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{Connection, PgConnection};

use super::{connect_one, timed_out, Fence, PgStore, LEADER_LOCK, LOCK_SPACE};
use crate::{Result, StoreError};

/// How long the leader lock's connection may stay idle before the server
/// ends its session (and so releases the lock): well above the active
/// replica's check interval, well below the time a frozen active replica
/// should keep the others waiting.
pub const LOCK_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// The channel of appended events.
const EVENTS_CHANNEL: &str = "rollcall_events";
/// The channel of created and deleted tokens.
const TOKENS_CHANNEL: &str = "rollcall_tokens";

/// Who leads, according to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderInfo {
    pub epoch: i64,
    /// The replica's name, as it gave it to [`PgStore::try_lead`].
    pub replica: String,
    /// Where the other replicas reach it.
    pub advertise_url: String,
    /// When it took the lead (the database's clock).
    pub since: Timestamp,
}

/// The active replica's hold on the leader lock. Dropping it clears the
/// store's fence (its fenced writes fail from then on) and closes the lock's
/// connection, which releases the lock.
pub struct Leadership {
    /// The connection that holds the session-level lock.
    conn: Option<PgConnection>,
    epoch: i64,
    /// Whether another replica led until this one took over (it did not
    /// release the role: it died, or lost its connection, and may not have
    /// noticed yet).
    succeeded: bool,
    /// The backend process of `conn`.
    pid: i32,
    /// The store's fence, cleared when leadership ends.
    fence: Arc<Fence>,
    /// Set when a check failed: leadership never comes back.
    lost: bool,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("epoch", &self.epoch)
            .field("pid", &self.pid)
            .field("lost", &self.lost)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Tries once to become the active replica: on a connection of its own
    /// (not from the pool), `pg_try_advisory_lock`; on success raises the
    /// epoch in `rollcall_leader`, records `replica` and `advertise_url`, and
    /// returns the [`Leadership`]. `Ok(None)` if another session holds the
    /// lock.
    ///
    /// Raising the epoch waits for the fenced writes in flight of the
    /// previous leader, and makes its later ones fail.
    pub async fn try_lead(&self, replica: &str, advertise_url: &str) -> Result<Option<Leadership>> {
        // A connection that did not get the lock is kept for the next try.
        let mut candidate = self.candidate.lock().await;
        let mut conn = match candidate.take() {
            Some(conn) => conn,
            None => {
                // The server probes the lock's connection, so that a leader
                // whose host vanished loses the lock within half a minute.
                let options = self
                    .options
                    .clone()
                    .application_name("rollcall-leader")
                    .options([
                        ("tcp_keepalives_idle", "10"),
                        ("tcp_keepalives_interval", "5"),
                        ("tcp_keepalives_count", "3"),
                    ]);
                let mut conn = connect_one(&options).await?;
                // A frozen holder (SIGSTOP, a paused VM) keeps its TCP
                // connection — the kernel still answers keepalives — and so
                // the lock. The active replica uses this connection every
                // check (200 ms); once it has been idle for this long, the
                // server ends the session and releases the lock, so that a
                // standby takes over within seconds. The frozen replica,
                // when it wakes, finds its connection gone at its next check
                // and stands down; until then the epoch fences its writes.
                // (PostgreSQL 14 and later; older servers refuse the setting
                // and keep only the keepalives.)
                if let Err(e) = sqlx::query(&format!(
                    "SET idle_session_timeout = {}",
                    LOCK_IDLE_TIMEOUT.as_millis()
                ))
                .execute(&mut conn)
                .await
                {
                    tracing::debug!(error = %e, "idle_session_timeout is not available");
                }
                conn
            }
        };
        let (pid, locked): (i32, bool) =
            sqlx::query_as("SELECT pg_backend_pid(), pg_try_advisory_lock($1, $2)")
                .bind(LOCK_SPACE)
                .bind(LEADER_LOCK)
                .fetch_one(&mut conn)
                .await?;
        if !locked {
            *candidate = Some(conn);
            return Ok(None);
        }
        // If this fails the connection is dropped, and the lock with it.
        // The row is read and raised in one statement, so whether a replica
        // led until now is known exactly (a graceful release clears it).
        let (epoch, succeeded): (i64, bool) = sqlx::query_as(
            "UPDATE rollcall_leader AS l SET epoch = l.epoch + 1, replica = $1, \
               advertise_url = $2, \
               since = FLOOR(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT \
             FROM (SELECT replica FROM rollcall_leader WHERE id = 1) AS before \
             WHERE l.id = 1 RETURNING l.epoch, before.replica IS NOT NULL",
        )
        .bind(replica)
        .bind(advertise_url)
        .fetch_one(&mut conn)
        .await?;
        self.fence.set(epoch);
        Ok(Some(Leadership {
            conn: Some(conn),
            epoch,
            succeeded,
            pid,
            fence: self.fence.clone(),
            lost: false,
        }))
    }

    /// Who leads now according to the table: `None` if no replica ever led
    /// or the last one stepped down. May be stale if the leader just died.
    pub async fn leader(&self) -> Result<Option<LeaderInfo>> {
        let row: (i64, Option<String>, Option<String>, Option<i64>) = sqlx::query_as(
            "SELECT epoch, replica, advertise_url, since FROM rollcall_leader WHERE id = 1",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(match row {
            (epoch, Some(replica), Some(advertise_url), Some(since)) => Some(LeaderInfo {
                epoch,
                replica,
                advertise_url,
                since: Timestamp::from_millis(since),
            }),
            _ => None,
        })
    }

    /// A connection listening to the events and tokens channels. It does not
    /// reconnect: when it is lost, [`Notifications::recv`] fails, and the
    /// caller listens again (and re-reads what it may have missed).
    pub async fn listen(&self) -> Result<Notifications> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(super::CONNECT_TIMEOUT)
            .connect_with(self.options.clone().application_name("rollcall-listen"))
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.eager_reconnect(false);
        listener.ignore_pool_close_event(true);
        listener
            .listen_all([EVENTS_CHANNEL, TOKENS_CHANNEL])
            .await?;
        Ok(Notifications {
            listener,
            lost: false,
        })
    }
}

impl Leadership {
    /// The epoch this leadership raised the table to.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// Whether another replica held the role until now without releasing
    /// it (read in the same statement that took the role over).
    pub fn succeeded_a_leader(&self) -> bool {
        self.succeeded
    }

    /// The database backend process holding the lock (for operators, and for
    /// tests that cut it off).
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// Confirms the lock is still held: one round trip on the lock's own
    /// connection within `timeout`, which finds the lock held by it and the
    /// table's epoch still ours. An error means leadership is lost: the
    /// caller stops acting as active at once. It also clears the fence, so
    /// fenced writes fail from then on, and every later check fails too.
    pub async fn check(&mut self, timeout: Duration) -> Result<()> {
        let result = self.confirm(timeout).await;
        if result.is_err() {
            self.lost = true;
            self.fence.clear(self.epoch);
        }
        result
    }

    async fn confirm(&mut self, timeout: Duration) -> Result<()> {
        let Some(conn) = self.conn.as_mut().filter(|_| !self.lost) else {
            return Err(StoreError::Fenced);
        };
        let sql = format!(
            "SELECT (SELECT epoch FROM rollcall_leader WHERE id = 1), \
               EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
                 AND pid = pg_backend_pid() AND granted \
                 AND classid = {LOCK_SPACE} AND objid = {LEADER_LOCK} AND objsubid = 2)"
        );
        let query = sqlx::query_as::<_, (Option<i64>, bool)>(&sql).fetch_one(conn);
        let (epoch, held) = match tokio::time::timeout(timeout, query).await {
            Ok(row) => row?,
            Err(_) => return Err(timed_out("confirming the leader lock")),
        };
        if !held || epoch != Some(self.epoch) {
            return Err(StoreError::Fenced);
        }
        Ok(())
    }

    /// Gives the lead up (graceful shutdown): clears the fence, marks the
    /// table as led by nobody (unless another replica already took over) and
    /// releases the lock.
    pub async fn release(mut self) -> Result<()> {
        self.fence.clear(self.epoch);
        let Some(mut conn) = self.conn.take() else {
            return Ok(());
        };
        sqlx::query(
            "UPDATE rollcall_leader SET replica = NULL, advertise_url = NULL, since = NULL \
             WHERE id = 1 AND epoch = $1",
        )
        .bind(self.epoch)
        .execute(&mut conn)
        .await?;
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(LOCK_SPACE)
            .bind(LEADER_LOCK)
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(())
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.fence.clear(self.epoch);
    }
}

/// What changed, as a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notification {
    /// Events were appended.
    Events,
    /// Tokens were created or deleted.
    Tokens,
}

/// A listening connection: see [`PgStore::listen`].
#[derive(Debug)]
pub struct Notifications {
    listener: PgListener,
    /// Set once the connection was lost: it is not re-established.
    lost: bool,
}

impl Notifications {
    /// The next notification; an error once the connection is lost.
    pub async fn recv(&mut self) -> Result<Notification> {
        if self.lost {
            return Err(lost_listener());
        }
        loop {
            let next = self.listener.try_recv().await;
            match next {
                Ok(Some(n)) => match n.channel() {
                    EVENTS_CHANNEL => return Ok(Notification::Events),
                    TOKENS_CHANNEL => return Ok(Notification::Tokens),
                    _ => continue,
                },
                Ok(None) => {
                    self.lost = true;
                    return Err(lost_listener());
                }
                Err(e) => {
                    self.lost = true;
                    return Err(e.into());
                }
            }
        }
    }
}

fn lost_listener() -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the notification connection was lost",
    )))
}
