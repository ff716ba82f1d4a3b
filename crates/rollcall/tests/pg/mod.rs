//! A fresh PostgreSQL database per test, and the few statements the
//! replica tests run against the database behind the servers' backs.
//!
//! Without `ROLLCALL_TEST_POSTGRES_URL` (and no PostgreSQL answering on
//! 127.0.0.1:5432) a test that needs PostgreSQL prints `SKIPPED …` and
//! passes, unless `ROLLCALL_REQUIRE_POSTGRES=1` (CI sets both), in which case
//! it fails.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use rollcall_store::testing::TestDatabase;
use sqlx::{Connection, PgConnection};

use crate::common::{http_client, Serve};

/// A replica on `db` with short timings: heartbeats every 200 ms, stale
/// after 1.5 s, heartbeat times flushed every 200 ms; the periodic sweep and
/// cleanup out of the way.
pub fn replica(db: &Database, dir: &Path) -> Serve {
    Serve::new(dir).args(&[
        "--database-url",
        db.url(),
        "--heartbeat-interval",
        "200ms",
        "--stale-after",
        "1500ms",
        "--flush-interval",
        "200ms",
        "--sweep-interval",
        "1h",
        "--cleanup-interval",
        "1h",
    ])
}

/// The role a replica reports (`active` or `standby`), or `None` if it
/// does not answer.
pub async fn role(url: &str) -> Option<String> {
    let resp = http_client()
        .get(format!("{url}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    resp.headers()
        .get("x-rollcall-role")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A database of its own for one test.
#[derive(Debug)]
pub struct Database {
    db: TestDatabase,
}

impl Database {
    /// `None` (the test is skipped) when no PostgreSQL is configured.
    pub async fn create() -> Option<Database> {
        Some(Database {
            db: TestDatabase::from_env().await?,
        })
    }

    pub fn url(&self) -> &str {
        self.db.url()
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        self.db.name()
    }

    /// Cuts the connection that holds the active replica's lock, as a lost
    /// network path or a database failover would. Returns whether one was
    /// found.
    pub async fn terminate_lock_holder(&self) -> bool {
        let mut conn = PgConnection::connect(self.url())
            .await
            .expect("connecting to the test database");
        let cut: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(&mut conn)
        .await
        .expect("terminating the lock holder");
        let _ = conn.close().await;
        cut.iter().any(|&ok| ok)
    }

    /// Runs `sql` (one or more statements) on the database, behind the
    /// servers' backs.
    pub async fn execute(&self, sql: &str) {
        let mut conn = PgConnection::connect(self.url())
            .await
            .expect("connecting to the test database");
        sqlx::raw_sql(sql)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let _ = conn.close().await;
    }

    /// Drops the database (every replica must be gone or will be cut off).
    pub async fn drop(self) {
        if let Err(e) = self.db.drop_database().await {
            eprintln!("dropping the test database failed: {e}");
        }
    }
}
