//! What only the PostgreSQL store does, on a real server: concurrent start-up,
//! HOT heartbeat updates, the leader lock and the epoch fence, notifications,
//! the database's clock, and failing cleanly when the database is gone.
//!
//! Each test takes a fresh database from `ROLLCALL_TEST_POSTGRES_URL` (or a
//! local PostgreSQL on 127.0.0.1:5432); without one it prints `SKIPPED …`
//! and returns (unless `ROLLCALL_REQUIRE_POSTGRES=1`).

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use rollcall_core::{Command, OfflineReason, Status, TokenKind};
use rollcall_store::postgres::{Leadership, Notification, Notifications, PgStore};
use rollcall_store::testing::TestDatabase;
use rollcall_store::{
    EventFilter, EventRecord, HeartbeatMark, MachineRecord, Store, StoreError, WorkerRecord,
};
use sqlx::{Connection, PgConnection};

/// How long a test waits for something the database does asynchronously
/// (a terminated backend going away, statistics being flushed) before it
/// fails. Only a bound on a hang: tests poll for the condition.
const PATIENCE: Duration = Duration::from_secs(60);

async fn store(db: &TestDatabase) -> PgStore {
    PgStore::connect(db.url()).await.expect("connect")
}

async fn admin(db: &TestDatabase) -> PgConnection {
    PgConnection::connect(db.url())
        .await
        .expect("admin connection")
}

/// Awaits `f` but fails the test instead of hanging.
async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}

/// Bounds a polling loop: [`Deadline::wait`] pauses between two looks and
/// fails the test once [`PATIENCE`] has passed.
struct Deadline {
    what: String,
    at: tokio::time::Instant,
}

impl Deadline {
    fn new(what: impl Into<String>) -> Self {
        Deadline {
            what: what.into(),
            at: tokio::time::Instant::now() + PATIENCE,
        }
    }

    async fn wait(&self) {
        assert!(
            tokio::time::Instant::now() < self.at,
            "{}: not within {PATIENCE:?}",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Terminates a backend and waits until it has exited.
async fn terminate(admin: &mut PgConnection, pid: i32) {
    let gone: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 30000)")
        .bind(pid)
        .fetch_one(admin)
        .await
        .expect("terminate a backend");
    assert!(gone, "backend {pid} did not exit");
}

/// Everything a store holds, to show that something changed nothing.
#[derive(Debug, PartialEq)]
struct Snapshot {
    workers: Vec<WorkerRecord>,
    machines: Vec<MachineRecord>,
    events: Vec<EventRecord>,
    last_seq: i64,
    tokens: usize,
}

async fn snapshot(s: &dyn Store) -> Snapshot {
    Snapshot {
        workers: all_workers(s).await,
        machines: s.list_machines(None, None, 10_000).await.unwrap().items,
        events: all_events(s, &EventFilter::default()).await,
        last_seq: s.last_seq().await.unwrap(),
        tokens: s.all_tokens().await.unwrap().len(),
    }
}

// ===========================================================================
// Start-up
// ===========================================================================

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let url = db.url().to_owned();
    let connects: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for c in connects {
        stores.push(c.await.unwrap().expect("every replica starts"));
    }
    let mut conn = admin(&db).await;
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count();
    assert_eq!(applied as usize, migrations, "each migration applied once");

    // They share one database.
    register(&stores[0], 1, "m1", at(0)).await;
    for s in &stores {
        assert_eq!(all_workers(s).await.len(), 1);
    }
    // And a later start finds nothing to do.
    drop(stores);
    let again = store(&db).await;
    assert_eq!(all_workers(&again).await.len(), 1);
}

// ===========================================================================
// Heartbeats written behind stay HOT
// ===========================================================================

/// (updates, HOT updates) of a table, once its statistics show at least
/// `updates` updates.
async fn table_updates(conn: &mut PgConnection, table: &str, updates: i64) -> (i64, i64) {
    let deadline = Deadline::new(format!("statistics of {updates} updates of {table}"));
    loop {
        let (upd, hot): (i64, i64) = sqlx::query_as(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
        if upd >= updates {
            return (upd, hot);
        }
        deadline.wait().await;
    }
}

#[tokio::test]
async fn heartbeat_flushes_are_hot_updates() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let s = store(&db).await;
    const WORKERS: u32 = 400;
    const FLUSHES: i64 = 25;
    let mut writes = Vec::new();
    let mut workers = Vec::new();
    for n in 0..WORKERS {
        let mut machine = format!("m{}", n % 40);
        if n % 3 == 0 {
            // Some longer rows, as labels make them.
            machine.push_str("-with-a-rather-long-machine-name");
        }
        let (mut w, write) = register_write(n, &machine, at(0));
        let rollcall_store::WorkerWrite::Put {
            expect,
            machine,
            events,
            ..
        } = write
        else {
            unreachable!()
        };
        w.labels = labels(&[
            ("role", "api"),
            ("zone", &"z".repeat((n % 7 * 20) as usize)),
        ]);
        writes.push(rollcall_store::WorkerWrite::Put {
            record: w.clone(),
            expect,
            machine,
            events,
        });
        workers.push(w);
    }
    assert!(s.commit(writes).await.unwrap().applied.iter().all(|a| *a));

    for round in 1..=FLUSHES {
        let marks: Vec<HeartbeatMark> = workers
            .iter()
            .map(|w| HeartbeatMark {
                worker_id: w.id.clone(),
                machine_id: w.machine_id.clone(),
                session: w.session,
                at: at(round * 1_000),
            })
            .collect();
        s.flush_heartbeats(&marks).await.unwrap();
    }
    assert_eq!(
        worker(&s, &workers[0].id).await.last_heartbeat_at,
        Some(at(FLUSHES * 1_000))
    );
    // Closing the pool ends its backends, which report their statistics.
    s.close().await;

    let mut conn = admin(&db).await;
    let expected = i64::from(WORKERS) * FLUSHES;
    let (upd, hot) = table_updates(&mut conn, "workers", expected).await;
    assert_eq!(upd, expected, "only the flushes updated workers");
    assert!(
        hot * 100 >= upd * 99,
        "heartbeat updates must be HOT: {hot} of {upd}"
    );
    // Machines: every flush moved last_seen_at of every machine, after the
    // registration derived their status.
    let machines = workers
        .iter()
        .map(|w| &w.machine_id)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as i64;
    let (upd, hot) = table_updates(&mut conn, "machines", machines * (FLUSHES + 1)).await;
    assert_eq!(upd, machines * (FLUSHES + 1));
    assert!(hot * 100 >= upd * 99, "machine updates: {hot} of {upd} HOT");
}

// ===========================================================================
// Leadership and the fence
// ===========================================================================

async fn lead(s: &PgStore, name: &str) -> Leadership {
    s.try_lead(name, &format!("http://{name}:8080"))
        .await
        .expect("try_lead")
        .unwrap_or_else(|| panic!("{name} leads"))
}

/// Tries to lead until it succeeds.
async fn lead_eventually(s: &PgStore, name: &str) -> Leadership {
    let deadline = Deadline::new(format!("{name} taking the lead"));
    loop {
        let url = format!("http://{name}:8080");
        if let Some(l) = s.try_lead(name, &url).await.expect("try_lead") {
            return l;
        }
        deadline.wait().await;
    }
}

#[tokio::test]
async fn one_replica_leads_until_its_leadership_is_dropped() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let a = store(&db).await;
    let b = store(&db).await;
    a.fence_writes();
    b.fence_writes();
    assert_eq!(b.leader().await.unwrap(), None, "nobody led yet");

    let mut la = lead(&a, "a").await;
    assert_eq!(la.epoch(), 1);
    assert!(!la.succeeded_a_leader(), "the first leader succeeds nobody");
    for _ in 0..3 {
        assert!(b.try_lead("b", "http://b:8080").await.unwrap().is_none());
    }
    assert!(
        a.try_lead("a", "http://a:8080").await.unwrap().is_none(),
        "a second leadership of the same store"
    );
    let info = b.leader().await.unwrap().expect("a leads");
    assert_eq!(
        (
            info.epoch,
            info.replica.as_str(),
            info.advertise_url.as_str()
        ),
        (1, "a", "http://a:8080")
    );
    let now = a.now().await.unwrap();
    assert!(info.since <= now);
    la.check(Duration::from_secs(10)).await.unwrap();

    // The leader writes; the standby is refused, and changes nothing.
    let (w1, _) = register(&a, 1, "m1", at(0)).await;
    let before = snapshot(&a).await;
    let (_, write) = register_write(2, "m1", at(10));
    assert!(matches!(
        b.commit(vec![write]).await,
        Err(StoreError::Fenced)
    ));
    assert_eq!(snapshot(&a).await, before);

    drop(la);
    // Dropped: this store's fenced writes are refused at once.
    let (_, write) = write_for(&w1, Command::Drain, at(20));
    assert!(matches!(
        a.commit(vec![write.clone()]).await,
        Err(StoreError::Fenced)
    ));
    let mut lb = lead_eventually(&b, "b").await;
    assert_eq!(lb.epoch(), 2);
    assert!(
        lb.succeeded_a_leader(),
        "a did not hand over: it was dropped"
    );
    lb.check(Duration::from_secs(10)).await.unwrap();
    let info = a.leader().await.unwrap().expect("b leads");
    assert_eq!((info.epoch, info.replica.as_str()), (2, "b"));
    assert_eq!(b.commit(vec![write]).await.unwrap().applied, [true]);
}

#[tokio::test]
async fn a_leader_cut_off_is_replaced_and_its_writes_are_refused() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let a = store(&db).await;
    let b = store(&db).await;
    // A store that never fences (a tool): unaffected by leadership.
    let tool = store(&db).await;
    a.fence_writes();
    b.fence_writes();

    let mut la = lead(&a, "a").await;
    let (w1, _) = register(&a, 1, "m1", at(0)).await;
    let (w2, _) = register(&a, 2, "m2", at(0)).await;
    let (w2, _) = step(&a, &w2, Command::Offline(OfflineReason::Shutdown), at(5)).await;
    a.insert_token(&token(1, TokenKind::Read, Some(at(1))))
        .await
        .unwrap();

    // a's lock connection is cut (its host vanished, say); b takes over
    // before a has noticed anything.
    let mut conn = admin(&db).await;
    terminate(&mut conn, la.backend_pid()).await;
    let lb = lead_eventually(&b, "b").await;
    assert_eq!(lb.epoch(), 2);

    // Every liveness write of a is now refused, and changes nothing.
    let before = snapshot(&a).await;
    let (_, drain) = write_for(&w1, Command::Drain, at(10));
    let fenced = |r: Result<_, StoreError>| matches!(r, Err(StoreError::Fenced));
    assert!(fenced(a.commit(vec![drain.clone()]).await.map(|_| ())));
    assert!(fenced(
        a.flush_heartbeats(&[HeartbeatMark {
            worker_id: w1.id.clone(),
            machine_id: w1.machine_id.clone(),
            session: 1,
            at: at(10),
        }])
        .await
    ));
    assert!(fenced(a.reconcile_machines(at(10)).await.map(|_| ())));
    assert!(fenced(a.forget_empty_machines().await.map(|_| ())));
    assert!(fenced(a.prune_events(at(1_000_000)).await.map(|_| ())));
    assert!(fenced(a.delete_expired_tokens(at(100)).await.map(|_| ())));
    assert!(fenced(a.commit(vec![]).await.map(|_| ())));
    assert_eq!(snapshot(&a).await, before);

    // a learns it lost the lead.
    assert!(la.check(Duration::from_secs(10)).await.is_err());
    assert!(la.check(Duration::from_secs(10)).await.is_err(), "for good");

    // b writes; so does a store without a fence.
    assert_eq!(b.commit(vec![drain]).await.unwrap().applied, [true]);
    let (_, delete) = write_for(&w2, Command::Delete, at(20));
    assert_eq!(tool.commit(vec![delete]).await.unwrap().applied, [true]);
    assert_eq!(b.forget_empty_machines().await.unwrap(), 1);
    assert_eq!(b.delete_expired_tokens(at(100)).await.unwrap().len(), 1);
    assert_eq!(worker(&b, &w1.id).await.status, Status::Draining);
}

#[tokio::test]
async fn check_fails_once_the_lock_connection_is_gone() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let a = store(&db).await;
    a.fence_writes();
    let mut la = lead(&a, "a").await;
    la.check(Duration::from_secs(10)).await.unwrap();
    register(&a, 1, "m1", at(0)).await;

    let mut conn = admin(&db).await;
    terminate(&mut conn, la.backend_pid()).await;
    assert!(la.check(Duration::from_secs(10)).await.is_err());
    // Nobody else leads, yet this store's fenced writes stop at once.
    let (_, write) = register_write(2, "m1", at(10));
    assert!(matches!(
        a.commit(vec![write]).await,
        Err(StoreError::Fenced)
    ));
    // The lock is free again: the same store may lead anew.
    let la = lead_eventually(&a, "a").await;
    assert_eq!(la.epoch(), 2);
    let (_, write) = register_write(2, "m1", at(10));
    assert_eq!(a.commit(vec![write]).await.unwrap().applied, [true]);
}

#[tokio::test]
async fn taking_the_lead_waits_for_the_old_leaders_write_in_flight() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let a = store(&db).await;
    let b = Arc::new(store(&db).await);
    a.fence_writes();
    b.fence_writes();
    let la = lead(&a, "a").await;

    // A write of a's in flight: it holds the leader row as fenced writes do.
    let mut in_flight = admin(&db).await;
    sqlx::query("BEGIN").execute(&mut in_flight).await.unwrap();
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM rollcall_leader WHERE id = 1 FOR SHARE")
        .fetch_one(&mut in_flight)
        .await
        .unwrap();
    assert_eq!(epoch, la.epoch());

    let mut conn = admin(&db).await;
    terminate(&mut conn, la.backend_pid()).await;
    let taking = tokio::spawn({
        let b = b.clone();
        async move { b.try_lead("b", "http://b:8080").await }
    });
    // b has the lock and waits to raise the epoch.
    let deadline = Deadline::new("b waiting for the leader row");
    loop {
        let waiting: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
               AND application_name = 'rollcall-leader' AND wait_event_type = 'Lock' \
               AND query LIKE 'UPDATE rollcall_leader%')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if waiting {
            break;
        }
        deadline.wait().await;
    }
    assert!(!taking.is_finished());

    sqlx::query("COMMIT").execute(&mut in_flight).await.unwrap();
    let lb = bounded("b taking the lead", taking)
        .await
        .unwrap()
        .unwrap()
        .expect("b leads once the write is done");
    assert_eq!(lb.epoch(), 2);
}

#[tokio::test]
async fn release_hands_the_lead_over_at_once() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let a = store(&db).await;
    let b = store(&db).await;
    a.fence_writes();
    b.fence_writes();
    let la = lead(&a, "a").await;
    la.release().await.unwrap();
    assert_eq!(b.leader().await.unwrap(), None, "a stepped down");
    let (_, write) = register_write(1, "m1", at(0));
    assert!(matches!(
        a.commit(vec![write.clone()]).await,
        Err(StoreError::Fenced)
    ));

    let lb = lead(&b, "b").await;
    assert_eq!(lb.epoch(), 2);
    assert!(
        !lb.succeeded_a_leader(),
        "a handed over: nobody to wait for"
    );
    assert_eq!(b.commit(vec![write]).await.unwrap().applied, [true]);
    assert_eq!(
        b.leader().await.unwrap().map(|l| (l.epoch, l.replica)),
        Some((2, "b".to_owned()))
    );
}

// ===========================================================================
// Notifications
// ===========================================================================

async fn next(n: &mut Notifications) -> Notification {
    bounded("a notification", n.recv()).await.unwrap()
}

#[tokio::test]
async fn events_and_tokens_are_notified_to_every_listener() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let active = store(&db).await;
    let standby = store(&db).await;
    let mut here = active.listen().await.unwrap();
    let mut there = standby.listen().await.unwrap();

    let (w, _) = register(&active, 1, "m1", at(0)).await;
    assert_eq!(next(&mut here).await, Notification::Events);
    assert_eq!(next(&mut there).await, Notification::Events);

    // Notifications come in commit order: had any of these writes (which
    // append no event and change no token) notified, it would come first.
    active
        .flush_heartbeats(&[HeartbeatMark {
            worker_id: w.id.clone(),
            machine_id: w.machine_id.clone(),
            session: 1,
            at: at(10),
        }])
        .await
        .unwrap();
    let (_, stale) = register_write(1, "m1", at(20));
    assert_eq!(active.commit(vec![stale]).await.unwrap().applied, [false]);
    assert!(active
        .delete_expired_tokens(at(20))
        .await
        .unwrap()
        .is_empty());
    assert!(!active.delete_token(&tid(9)).await.unwrap());
    let t = token(1, TokenKind::Admin, Some(at(30)));
    active.insert_token(&t).await.unwrap();
    assert_eq!(next(&mut here).await, Notification::Tokens);
    assert_eq!(next(&mut there).await, Notification::Tokens);

    assert!(active.delete_token(&t.id).await.unwrap());
    assert_eq!(next(&mut there).await, Notification::Tokens);
    active
        .insert_token(&token(2, TokenKind::Read, Some(at(30))))
        .await
        .unwrap();
    assert_eq!(next(&mut there).await, Notification::Tokens);
    assert_eq!(active.delete_expired_tokens(at(30)).await.unwrap().len(), 1);
    assert_eq!(next(&mut there).await, Notification::Tokens);
    step(&active, &w, Command::Drain, at(40)).await;
    assert_eq!(next(&mut there).await, Notification::Events);
}

#[tokio::test]
async fn a_lost_listener_fails_instead_of_reconnecting() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let s = store(&db).await;
    let mut n = s.listen().await.unwrap();
    let mut conn = admin(&db).await;
    let pid: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
           AND application_name = 'rollcall-listen'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    terminate(&mut conn, pid).await;
    assert!(bounded("recv", n.recv()).await.is_err());
    register(&s, 1, "m1", at(0)).await;
    assert!(
        bounded("recv", n.recv()).await.is_err(),
        "a lost listener stays lost"
    );
    // Listening again works.
    let mut n = s.listen().await.unwrap();
    register(&s, 2, "m1", at(0)).await;
    assert_eq!(next(&mut n).await, Notification::Events);
}

// ===========================================================================
// Event order across replicas
// ===========================================================================

#[tokio::test]
async fn a_reader_following_seq_misses_nothing_while_two_stores_commit() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let stores: Vec<Arc<PgStore>> = vec![Arc::new(store(&db).await), Arc::new(store(&db).await)];
    const TASKS: u32 = 8;
    const COMMITS: u32 = 5;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = stores[t as usize % 2].clone();
        tasks.push(tokio::spawn(async move {
            for c in 0..COMMITS {
                let n = t * 1_000 + c;
                let (_, w) = register_write(n, &format!("m{}", n % 3), at(n.into()));
                assert_eq!(s.commit(vec![w]).await.unwrap().applied, [true]);
            }
        }));
    }
    // A reader resumes from the last seq it saw, as a stream client does.
    let reader = stores[0].clone();
    let mut seen: Vec<EventRecord> = Vec::new();
    let mut cursor = 0;
    let registrations = (TASKS * COMMITS * 2) as usize;
    bounded("reading every event", async {
        while seen.iter().filter(|e| e.worker_id.is_some()).count() < registrations {
            let page = reader
                .list_events(&EventFilter::default(), cursor, 7)
                .await
                .unwrap();
            if let Some(last) = page.items.last() {
                cursor = last.seq;
            }
            seen.extend(page.items);
            tokio::task::yield_now().await;
        }
    })
    .await;
    for t in tasks {
        t.await.unwrap();
    }
    let tail = all_events(&*reader, &EventFilter::default()).await;
    let rest = reader
        .list_events(&EventFilter::default(), cursor, 10_000)
        .await
        .unwrap()
        .items;
    seen.extend(rest);
    assert_eq!(seen, tail, "the reader saw every event once, in order");
    assert_strictly_increasing(&tail);
}

// ===========================================================================
// The database's clock, and a database that is gone
// ===========================================================================

#[tokio::test]
async fn now_is_the_database_clock() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    let s = store(&db).await;
    let local = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let before = local();
    let now = s.now().await.unwrap().as_millis();
    let after = local();
    // The server runs on this machine: the same clock, to the millisecond
    // (rounding down on one side).
    assert!(
        before - 1 <= now && now <= after,
        "{before} <= {now} <= {after}"
    );
    let later = s.now().await.unwrap().as_millis();
    assert!(later >= now);
}

#[tokio::test]
async fn a_database_that_is_gone_is_a_database_error() {
    let Some(db) = TestDatabase::from_env().await else {
        return;
    };
    // Nothing listens on port 1.
    assert!(matches!(
        PgStore::connect("postgres://postgres@127.0.0.1:1/none").await,
        Err(StoreError::Database(_))
    ));

    let s = store(&db).await;
    s.fence_writes();
    let mut l = lead(&s, "a").await;
    let (w, _) = register(&s, 1, "m1", at(0)).await;
    let mut n = s.listen().await.unwrap();
    let url = db.url().to_owned();
    db.drop_database().await.unwrap();

    let database_error = |r: Result<(), StoreError>| match r {
        Err(StoreError::Database(_)) => {}
        other => panic!("expected a database error, got {other:?}"),
    };
    database_error(s.ping().await);
    database_error(s.load_workers().await.map(|_| ()));
    database_error(s.get_worker(&w.id).await.map(|_| ()));
    database_error(s.last_seq().await.map(|_| ()));
    database_error(s.now().await.map(|_| ()));
    database_error(s.leader().await.map(|_| ()));
    database_error(s.listen().await.map(|_| ()));
    assert!(n.recv().await.is_err());
    // Writes fail too, whether the fence lets them through or not.
    let (_, write) = write_for(&w, Command::Drain, at(10));
    assert!(s.commit(vec![write]).await.is_err());
    assert!(l.check(Duration::from_secs(10)).await.is_err());
    assert!(matches!(
        PgStore::connect(&url).await,
        Err(StoreError::Database(_))
    ));
}

/// The server spawns these futures on a multi-threaded runtime.
#[allow(dead_code)]
fn futures_are_send(
    s: &'static PgStore,
    l: &'static mut Leadership,
    n: &'static mut Notifications,
    owned: Leadership,
) {
    fn send<T: Send>(_: T) {}
    send(PgStore::connect(""));
    send(s.now());
    send(s.try_lead("", ""));
    send(s.leader());
    send(s.listen());
    send(l.check(Duration::ZERO));
    send(n.recv());
    send(owned.release());
}
