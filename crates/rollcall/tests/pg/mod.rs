//! A fresh PostgreSQL database per test, and the few statements the
//! replica tests run against the database behind the servers' backs.
//!
//! Without `ROLLCALL_TEST_POSTGRES_URL` a test that needs PostgreSQL prints
//! that it is skipped and passes, unless `ROLLCALL_REQUIRE_POSTGRES=1` (CI
//! sets both), in which case it fails.

#![allow(dead_code)]

use rollcall_store::testing::TestDatabase;
use sqlx::{Connection, PgConnection};

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

    /// Drops the database (every replica must be gone or will be cut off).
    pub async fn drop(self) {
        if let Err(e) = self.db.drop_database().await {
            eprintln!("dropping the test database failed: {e}");
        }
    }
}
