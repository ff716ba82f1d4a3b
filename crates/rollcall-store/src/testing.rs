//! Scratch PostgreSQL databases for tests (feature `testing`).
//!
//! Each [`TestDatabase`] is a fresh, empty database created on the server
//! that [`POSTGRES_URL_ENV`] points at (or, when that is unset, on a local
//! PostgreSQL at [`DEFAULT_POSTGRES_URL`] if one answers), so tests stay
//! independent (advisory locks and notification channels are per database
//! too) and can run in parallel. Without a server, a test that needs one is
//! skipped and says so with [`skip`]. It is dropped when the value is (best effort) or by
//! [`TestDatabase::drop_database`].
//!
//! Names encode their creation time (`rollcall_test_<unix seconds>_...`), so
//! databases left behind by a crashed run are recognised: the first database
//! a process creates drops those older than an hour.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use crate::Result;

/// The server tests create their databases on, as a URL whose database
/// already exists (e.g. `postgres://postgres@127.0.0.1:5432/test`).
pub const POSTGRES_URL_ENV: &str = "ROLLCALL_TEST_POSTGRES_URL";

/// When `1`, tests that need PostgreSQL fail instead of being skipped when
/// there is no server to test on (CI sets it and [`POSTGRES_URL_ENV`]).
pub const REQUIRE_POSTGRES_ENV: &str = "ROLLCALL_REQUIRE_POSTGRES";

/// The server tests use when [`POSTGRES_URL_ENV`] is unset and something
/// listens on its address: a local PostgreSQL with the usual trust setup.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Where PostgreSQL tests run, as [`test_server`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestServer {
    /// [`POSTGRES_URL_ENV`] names it.
    Configured(String),
    /// [`POSTGRES_URL_ENV`] is unset and something answers on the address of
    /// [`DEFAULT_POSTGRES_URL`].
    Default(String),
    /// None, and why.
    None(String),
}

/// The PostgreSQL server tests should use: the one [`POSTGRES_URL_ENV`]
/// names; else, when that is unset, [`DEFAULT_POSTGRES_URL`] if its port
/// accepts a connection. `ROLLCALL_TEST_POSTGRES_URL=off` (or empty) turns
/// PostgreSQL tests off.
pub fn test_server() -> TestServer {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if url.is_empty() || url == "off" => {
            TestServer::None(format!("{POSTGRES_URL_ENV} is {url:?}"))
        }
        Ok(url) => TestServer::Configured(url),
        Err(_) => {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 5432));
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(_) => TestServer::Default(DEFAULT_POSTGRES_URL.to_owned()),
                Err(e) => TestServer::None(format!(
                    "{POSTGRES_URL_ENV} is not set and nothing answers on {addr} ({e})"
                )),
            }
        }
    }
}

/// Says, where `cargo test` shows it, that the calling test is skipped
/// (it then returns and is reported `ok`): one line on stderr,
/// `SKIPPED <test>: <reason>`; a reason already given in this test binary
/// is not repeated.
///
/// libtest captures what a passing test prints with `println!` and
/// `eprintln!`, so a skip said that way would be invisible; this writes to
/// the process's stderr directly, which libtest does not capture, in one
/// write so that it is not interleaved with libtest's own lines.
pub fn skip(reason: &str) {
    use std::io::Write;
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let thread = std::thread::current();
    // libtest names each test's thread after the test; a multi-threaded
    // tokio test runs its body on a worker thread instead.
    let test = thread
        .name()
        .filter(|n| *n != "main" && !n.starts_with("tokio-runtime"))
        .unwrap_or("a test");
    let repeated = {
        let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
        let seen = said.iter().any(|r| r == reason);
        if !seen {
            said.push(reason.to_owned());
        }
        seen
    };
    let line = if repeated {
        format!("SKIPPED {test} (as above)\n")
    } else {
        format!("SKIPPED {test}: {reason}\n")
    };
    let _ = std::io::stderr().write_all(line.as_bytes());
}

const PREFIX: &str = "rollcall_test_";

/// Leftovers older than this are dropped.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// A fresh database on the test server. Dropping the value drops the
/// database, with every connection still open to it.
pub struct TestDatabase {
    /// The database the test server was given by: where this one is created
    /// and dropped from.
    admin: PgConnectOptions,
    name: String,
    url: String,
    dropped: bool,
}

// By hand: the options and the URL may hold a password.
impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TestDatabase {
    /// A fresh database on the test server (see [`test_server`]).
    ///
    /// `None` when there is none: the caller skips its test, and this says
    /// so where `cargo test` shows it (see [`skip`]). Panics when there is
    /// none but [`REQUIRE_POSTGRES_ENV`] is `1`, or when the database cannot
    /// be created on a server that [`POSTGRES_URL_ENV`] names.
    pub async fn from_env() -> Option<TestDatabase> {
        let why = match test_server() {
            TestServer::Configured(url) => match TestDatabase::create(&url).await {
                Ok(db) => return Some(db),
                Err(e) => panic!("cannot create a test database on {url}: {e}"),
            },
            TestServer::Default(url) => match TestDatabase::create(&url).await {
                Ok(db) => return Some(db),
                Err(e) => format!(
                    "{POSTGRES_URL_ENV} is not set, and creating a database on {url} failed ({e})"
                ),
            },
            TestServer::None(why) => why,
        };
        if std::env::var(REQUIRE_POSTGRES_ENV).as_deref() == Ok("1") {
            panic!("{REQUIRE_POSTGRES_ENV}=1 but there is no PostgreSQL to test on: {why}");
        }
        skip(&format!(
            "needs PostgreSQL: {why}. Set {POSTGRES_URL_ENV}=postgres://USER@HOST:PORT/DB \
             (a server where it may create databases) to run it"
        ));
        None
    }

    /// Creates a fresh database on the server of `admin_url`.
    pub async fn create(admin_url: &str) -> Result<TestDatabase> {
        let admin = PgConnectOptions::from_str(admin_url)?;
        drop_leftovers(&admin).await;
        let name = fresh_name();
        let mut conn = PgConnection::connect_with(&admin).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        Ok(TestDatabase {
            url: with_database(admin_url, &name),
            admin,
            name,
            dropped: false,
        })
    }

    /// The URL of the database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Drops the database now, closing every connection to it.
    pub async fn drop_database(mut self) -> Result<()> {
        self.dropped = true;
        drop_named(&self.admin, &self.name).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Drop cannot await, and may run inside a runtime: drop the
        // database from a thread with a runtime of its own, and wait.
        let admin = self.admin.clone();
        let name = self.name.clone();
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(drop_named(&admin, &name))
                .map_err(|e| e.to_string())
        })
        .join();
        if let Ok(Err(e)) = done {
            eprintln!("could not drop test database {}: {e}", self.name);
        }
    }
}

async fn drop_named(admin: &PgConnectOptions, name: &str) -> Result<()> {
    let mut conn = PgConnection::connect_with(admin).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `rollcall_test_<unix seconds>_<pid>_<n>`: unique on the server while
/// process ids are, and dated.
fn fresh_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{PREFIX}{}_{}_{}",
        unix_seconds(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// When a database of ours was created, from its name.
fn created_at(name: &str) -> Option<u64> {
    name.strip_prefix(PREFIX)?.split('_').next()?.parse().ok()
}

/// Drops, once per process, the test databases older than
/// [`LEFTOVER_AGE`]: ones a crashed run left behind.
async fn drop_leftovers(admin: &PgConnectOptions) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        if let Err(e) = try_drop_leftovers(admin).await {
            eprintln!("could not drop old test databases: {e}");
        }
    })
    .await;
}

async fn try_drop_leftovers(admin: &PgConnectOptions) -> Result<()> {
    let mut conn = PgConnection::connect_with(admin).await?;
    let names: Vec<String> =
        sqlx::query_scalar("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
            .bind(PREFIX)
            .fetch_all(&mut conn)
            .await?;
    conn.close().await?;
    let cutoff = unix_seconds().saturating_sub(LEFTOVER_AGE.as_secs());
    for name in names {
        if created_at(&name).is_some_and(|t| t < cutoff) {
            drop_named(admin, &name).await?;
        }
    }
    Ok(())
}

/// `url` with its database replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_the_new_database() {
        for (url, want) in [
            ("postgres://u@h:5432/test", "postgres://u@h:5432/db"),
            ("postgres://u@h:5432", "postgres://u@h:5432/db"),
            (
                "postgres://u:p@h/test?sslmode=disable",
                "postgres://u:p@h/db?sslmode=disable",
            ),
            (
                "postgresql:///test?host=/run/pg",
                "postgresql:///db?host=/run/pg",
            ),
        ] {
            assert_eq!(with_database(url, "db"), want, "{url}");
        }
    }

    #[test]
    fn names_say_when_they_were_made() {
        let before = unix_seconds();
        let name = fresh_name();
        let after = unix_seconds();
        let t = created_at(&name).expect("a dated name");
        assert!((before..=after).contains(&t), "{name}");
        assert_eq!(created_at("rollcall_test_123_4_5"), Some(123));
        assert_eq!(created_at("other_123"), None);
        assert_eq!(created_at("rollcall_test_x_1"), None);
    }
}
