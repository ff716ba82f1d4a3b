//! Helpers for the store contract suite: the backends it runs against, and
//! small builders for ids, records and writes.
//!
//! Records and events are built with the core's FSM
//! ([`rollcall_core::transition`]), the way the server builds them, so the
//! states the tests store are states the server can actually produce.

// Not every test binary that includes this module uses every helper.
#![allow(dead_code)]

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rollcall_core::{
    transition, Command, EventType, Labels, MachineId, Status, Timestamp, TokenHash, TokenId,
    TokenKind, WorkerEvent, WorkerId, WorkerName,
};
use rollcall_store::postgres::PgStore;
use rollcall_store::sqlite::SqliteStore;
use rollcall_store::testing::TestDatabase;
use rollcall_store::{
    CommitResult, EventFilter, EventRecord, Expect, MachineUpsert, NewEvent, Store, TokenRecord,
    WorkerFilter, WorkerRecord, WorkerWrite,
};

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// A store under test, with whatever must outlive it (a temporary directory,
/// a scratch database, ...).
pub struct Backend {
    // Field order matters: the store is dropped before what it lives in.
    pub store: Arc<dyn Store>,
    _keep: Box<dyn Any + Send + Sync>,
}

/// SQLite in a fresh temporary directory: one database per test.
pub async fn sqlite() -> Option<Backend> {
    let dir = tempfile::TempDir::new().expect("temporary directory");
    let path = dir.path().join("rollcall.db");
    let store = SqliteStore::open(path.to_str().expect("utf-8 temp path"))
        .await
        .expect("open a fresh SQLite store");
    Some(Backend {
        store: Arc::new(store),
        _keep: Box::new(dir),
    })
}

/// PostgreSQL in a fresh database per test (see
/// [`rollcall_store::testing::TestDatabase`]), or `None` (the test is
/// skipped, saying so) when there is no PostgreSQL to test on. With
/// `ROLLCALL_REQUIRE_POSTGRES=1` that fails the test instead.
pub async fn postgres() -> Option<Backend> {
    let db = TestDatabase::from_env().await?;
    let store = PgStore::connect(db.url())
        .await
        .expect("connect a PostgreSQL store to a fresh database");
    Some(Backend {
        store: Arc::new(store),
        _keep: Box::new(db),
    })
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

/// A fixed origin for every test clock (2023-11-14T22:13:20Z).
pub const T0: i64 = 1_700_000_000_000;

/// `T0 + ms`.
pub fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + ms)
}

/// The `n`-th worker id; ids sort by `n`.
pub fn wid(n: u32) -> WorkerId {
    WorkerId::generate(Timestamp::from_millis(T0 + i64::from(n)), random(n))
}

/// The `n`-th token id; ids sort by `n`.
pub fn tid(n: u32) -> TokenId {
    TokenId::generate(Timestamp::from_millis(T0 + i64::from(n)), random(n))
}

fn random(n: u32) -> [u8; 10] {
    let mut r = [0xA5; 10];
    r[6..].copy_from_slice(&n.to_be_bytes());
    r
}

pub fn mid(s: &str) -> MachineId {
    MachineId::parse(s).expect("valid machine id")
}

pub fn wname(s: &str) -> WorkerName {
    WorkerName::parse(s).expect("valid worker name")
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::parse(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    )
    .expect("valid labels")
}

/// A worker token hash unique per worker and session (the column is unique).
pub fn worker_token(id: &WorkerId, session: u64) -> TokenHash {
    TokenHash::of(&format!("rc_worker_{id}_{session}"))
}

/// The record of worker `n` right after its first registration at `now`.
pub fn new_worker(n: u32, machine: &str, now: Timestamp) -> WorkerRecord {
    let t = transition(None, Command::Register, now).expect("register");
    let state = t.next.expect("registered");
    let id = wid(n);
    WorkerRecord {
        token_hash: worker_token(&id, state.session),
        id,
        name: wname(&format!("worker-{n}")),
        machine_id: mid(machine),
        status: state.status,
        offline_reason: state.offline_reason,
        session: state.session,
        labels: Labels::default(),
        heartbeat_interval: Duration::from_secs(30),
        stale_after: Duration::from_secs(90),
        registered_at: now,
        last_heartbeat_at: None,
        status_changed_at: state.status_changed_at,
    }
}

/// The machine part of a registration.
pub fn machine_upsert(machine: &str, now: Timestamp) -> MachineUpsert {
    MachineUpsert {
        id: mid(machine),
        hostname: Some(format!("{machine}.example")),
        labels: None,
        seen_at: now,
    }
}

/// The events of a transition, as the store takes them.
pub fn new_events(events: &[WorkerEvent], now: Timestamp, lag: Option<i64>) -> Vec<NewEvent> {
    events
        .iter()
        .map(|e| NewEvent {
            at: now,
            kind: e.kind,
            reason: e.reason,
            session: Some(e.session),
            detection_lag_ms: if e.kind == EventType::WorkerOffline {
                lag
            } else {
                None
            },
            exit: None,
        })
        .collect()
}

/// The insert of worker `n`'s first registration (with its machine).
pub fn register_write(n: u32, machine: &str, now: Timestamp) -> (WorkerRecord, WorkerWrite) {
    let record = new_worker(n, machine, now);
    let t = transition(None, Command::Register, now).expect("register");
    let write = WorkerWrite::Put {
        record: record.clone(),
        expect: None,
        machine: Some(machine_upsert(machine, now)),
        events: new_events(&t.events, now, None),
    };
    (record, write)
}

/// The conditional write the server would commit for `cmd` on `rec` at
/// `now`, and the record it leaves (`None` when the worker is forgotten).
///
/// Panics when the FSM refuses the command or the command changes nothing
/// (callers record nothing for those).
pub fn write_for(
    rec: &WorkerRecord,
    cmd: Command,
    now: Timestamp,
) -> (Option<WorkerRecord>, WorkerWrite) {
    let t = transition(Some(rec.state()), cmd, now).expect("the FSM accepts the command");
    assert!(t.changed(), "{cmd:?} changes nothing for {:?}", rec.state());
    let expect = Expect {
        status: rec.status,
        session: rec.session,
    };
    let lag = matches!(cmd, Command::Expire { .. }).then(|| {
        let deadline = rec
            .last_heartbeat_at
            .unwrap_or(rec.registered_at)
            .plus(rec.stale_after);
        now.diff_ms(deadline)
    });
    let events = new_events(&t.events, now, lag);
    match t.next {
        None => (
            None,
            WorkerWrite::Delete {
                id: rec.id.clone(),
                machine_id: rec.machine_id.clone(),
                expect,
                events,
            },
        ),
        Some(next) => {
            let mut record = rec.clone();
            record.set_state(next);
            let mut machine = None;
            match cmd {
                Command::Register => {
                    record.registered_at = now;
                    record.last_heartbeat_at = None;
                    record.token_hash = worker_token(&record.id, record.session);
                    machine = Some(machine_upsert(record.machine_id.as_str(), now));
                }
                Command::Heartbeat => record.last_heartbeat_at = Some(now),
                _ => {}
            }
            (
                Some(record.clone()),
                WorkerWrite::Put {
                    record,
                    expect: Some(expect),
                    machine,
                    events,
                },
            )
        }
    }
}

/// The same write with another expectation.
pub fn with_expect(write: WorkerWrite, status: Status, session: u64) -> WorkerWrite {
    let e = Expect { status, session };
    match write {
        WorkerWrite::Put {
            record,
            machine,
            events,
            ..
        } => WorkerWrite::Put {
            record,
            expect: Some(e),
            machine,
            events,
        },
        WorkerWrite::Delete {
            id,
            machine_id,
            events,
            ..
        } => WorkerWrite::Delete {
            id,
            machine_id,
            expect: e,
            events,
        },
    }
}

// ---------------------------------------------------------------------------
// Store shortcuts
// ---------------------------------------------------------------------------

/// Registers worker `n` on `machine` at `now`; asserts the write applied.
pub async fn register(
    store: &dyn Store,
    n: u32,
    machine: &str,
    now: Timestamp,
) -> (WorkerRecord, CommitResult) {
    let (record, write) = register_write(n, machine, now);
    let res = store.commit(vec![write]).await.expect("commit");
    assert_eq!(res.applied, [true], "registration of worker {n} applied");
    (record, res)
}

/// Applies `cmd` to `rec` at `now` through the FSM and commits it; asserts
/// the write applied and returns the record it left.
pub async fn apply(
    store: &dyn Store,
    rec: &WorkerRecord,
    cmd: Command,
    now: Timestamp,
) -> (Option<WorkerRecord>, CommitResult) {
    let (next, write) = write_for(rec, cmd, now);
    let res = store.commit(vec![write]).await.expect("commit");
    assert_eq!(res.applied, [true], "{cmd:?} on {} applied", rec.id);
    (next, res)
}

/// Like [`apply`], for commands that keep the worker.
pub async fn step(
    store: &dyn Store,
    rec: &WorkerRecord,
    cmd: Command,
    now: Timestamp,
) -> (WorkerRecord, CommitResult) {
    let (next, res) = apply(store, rec, cmd, now).await;
    (next.expect("the worker is kept"), res)
}

/// Every event matching `filter`, fetched in one large page.
pub async fn all_events(store: &dyn Store, filter: &EventFilter) -> Vec<EventRecord> {
    let page = store
        .list_events(filter, 0, 100_000)
        .await
        .expect("list events");
    assert!(!page.more);
    page.items
}

/// Every worker, fetched in one large page.
pub async fn all_workers(store: &dyn Store) -> Vec<WorkerRecord> {
    let page = store
        .list_workers(&WorkerFilter::default(), None, 100_000)
        .await
        .expect("list workers");
    assert!(!page.more);
    page.items
}

pub async fn worker(store: &dyn Store, id: &WorkerId) -> WorkerRecord {
    store
        .get_worker(id)
        .await
        .expect("get worker")
        .unwrap_or_else(|| panic!("worker {id} exists"))
}

pub async fn machine(store: &dyn Store, id: &str) -> rollcall_store::MachineRecord {
    store
        .get_machine(&mid(id))
        .await
        .expect("get machine")
        .unwrap_or_else(|| panic!("machine {id} exists"))
}

/// The kinds of some events, in order.
pub fn kinds(events: &[EventRecord]) -> Vec<EventType> {
    events.iter().map(|e| e.kind).collect()
}

pub fn is_machine_event(e: &EventRecord) -> bool {
    matches!(e.kind, EventType::MachineOnline | EventType::MachineOffline)
}

/// Asserts that `seq` strictly increases along `events`.
pub fn assert_strictly_increasing(events: &[EventRecord]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].seq < pair[1].seq,
            "seq must strictly increase: {} then {}",
            pair[0].seq,
            pair[1].seq
        );
    }
}

/// A token record.
pub fn token(n: u32, kind: TokenKind, expires_at: Option<Timestamp>) -> TokenRecord {
    TokenRecord {
        id: tid(n),
        kind,
        name: format!("token {n}"),
        hash: TokenHash::of(&kind.secret([n as u8; 32])),
        created_at: at(i64::from(n)),
        expires_at,
        last_used_at: None,
        scope: None,
    }
}
