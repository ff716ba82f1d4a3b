//! Storage faults under the real binary: nothing is acknowledged, streamed
//! or shown unless it is durable, and rollcall recovers by itself.
//!
//! The SQLite database lives on a small ext4 filesystem of its own (a loop
//! device this test creates and mounts), which the test fills up (a full
//! disk) or makes immutable (`chattr +i`: every write fails with an I/O
//! error). Meanwhile a workload registers workers, heartbeats live ones,
//! takes others offline, deletes some and lets some go silent, and follows
//! the event stream. Afterwards, on a restarted server:
//!
//! - every acknowledged registration, offline and deletion is in the store
//!   (the "acknowledged writes are never lost" check);
//! - every event the stream delivered is in the log, with the same `seq`
//!   and content (so no `seq` was reused), in strictly increasing order;
//! - changes were refused with 503 and `/readyz` said 503 while the store
//!   failed, and both recovered without a restart;
//! - no heartbeating worker was marked offline, and every silent worker was
//!   marked offline once the store could commit again.
//!
//! Mounting needs root (CI runs as root). Elsewhere the tests print why they
//! skip, unless `ROLLCALL_REQUIRE_FAULTS=1`, which makes that a failure.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command as StdCommand;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// How long recovery (readiness, expiries) may take once the fault is gone:
/// generous for a debug build on a busy two-core machine.
const RECOVERY: Duration = Duration::from_secs(30);

/// A small ext4 filesystem on a loop device, mounted for one test and
/// unmounted when dropped.
struct SmallDisk {
    mount: tempfile::TempDir,
    _image: tempfile::TempDir,
    filler: PathBuf,
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = StdCommand::new(cmd)
        .args(args)
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl SmallDisk {
    /// Mounts a fresh filesystem of `mib` MiB, or explains why it cannot.
    fn mount(mib: u64) -> Option<SmallDisk> {
        match Self::try_mount(mib) {
            Ok(d) => Some(d),
            Err(why) => {
                assert!(
                    std::env::var("ROLLCALL_REQUIRE_FAULTS").as_deref() != Ok("1"),
                    "ROLLCALL_REQUIRE_FAULTS=1 but no small filesystem could be mounted: {why}"
                );
                rollcall_store::testing::skip(&format!(
                    "the storage-fault tests mount a loop device, which needs root ({why})"
                ));
                None
            }
        }
    }

    fn try_mount(mib: u64) -> Result<SmallDisk, String> {
        let image_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = image_dir.path().join("disk.ext4");
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| e.to_string())?;
        let image_s = image.display().to_string();
        run("mkfs.ext4", &["-q", "-F", "-m", "0", &image_s])?;
        let mount = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount_s = mount.path().display().to_string();
        run("mount", &["-o", "loop", &image_s, &mount_s])?;
        let filler = mount.path().join("filler");
        Ok(SmallDisk {
            mount,
            _image: image_dir,
            filler,
        })
    }

    fn path(&self) -> &Path {
        self.mount.path()
    }

    /// Writes a file until the filesystem has no byte left.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .expect("open the filler file");
        for chunk in [1 << 20, 4096, 512] {
            let buf = vec![0u8; chunk];
            while f.write_all(&buf).is_ok() {}
        }
        let _ = f.sync_all();
    }

    /// Gives the space back.
    fn free(&self) {
        std::fs::remove_file(&self.filler).expect("remove the filler file");
    }

    /// `chattr +i` (or `-i`) on `files`: writes to them fail with EPERM.
    fn immutable(&self, files: &[PathBuf], on: bool) {
        for f in files {
            if f.exists() {
                run(
                    "chattr",
                    &[if on { "+i" } else { "-i" }, &f.display().to_string()],
                )
                .expect("chattr");
            }
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let mount = self.mount.path().display().to_string();
        let _ = run("chattr", &["-R", "-i", &mount]);
        let _ = run("umount", &["-l", &mount]);
    }
}

/// Every event the server's stream delivers, reconnecting by
/// `Last-Event-ID` when it is cut.
struct StreamLog {
    events: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl StreamLog {
    fn follow(target: &Target) -> StreamLog {
        let events: Arc<Mutex<Vec<Value>>> = Arc::default();
        let (out, target) = (events.clone(), target.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            loop {
                let last = out
                    .lock()
                    .unwrap()
                    .last()
                    .map(|e| e["seq"].as_i64().unwrap());
                let mut req = http
                    .get(format!("{}/v1/events/stream", target.get()))
                    .bearer_auth(ADMIN);
                req = match last {
                    Some(seq) => req.header("Last-Event-ID", seq.to_string()),
                    None => req.query(&[("after", "0")]),
                };
                let Ok(mut resp) = req.send().await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if resp.status() != StatusCode::OK {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                let mut buf = String::new();
                while let Ok(Some(chunk)) = resp.chunk().await {
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let frame: String = buf.drain(..end + 2).collect();
                        for line in frame.lines() {
                            if let Some(data) = line.strip_prefix("data:") {
                                let v: Value =
                                    serde_json::from_str(data.trim()).expect("event JSON");
                                out.lock().unwrap().push(v);
                            }
                        }
                    }
                }
            }
        });
        StreamLog { events, task }
    }

    fn seen(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// Waits until the stream has delivered every event up to `seq`.
    async fn caught_up(&self, seq: i64) {
        eventually(RECOVERY, "the stream to deliver the log", || async {
            let last = self.seen().last().map(|e| e["seq"].as_i64().unwrap());
            (last >= Some(seq)).then_some(())
        })
        .await;
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What clients were told, to hold the store to afterwards.
#[derive(Default)]
struct Acks {
    /// Acknowledged registrations: worker id → the latest session told.
    registered: HashMap<String, u64>,
    /// Acknowledged offlines: (worker id, session, the reason answered). An
    /// offline call on a worker already offline answers its current state
    /// and records nothing (idempotent), so the reason may be `stale`.
    offline: Vec<(String, u64, String)>,
    /// Other acknowledged transitions, each of which must be in the log:
    /// (event type, reason, worker id, session).
    transitions: Vec<(&'static str, Option<&'static str>, String, u64)>,
    /// Acknowledged deletions.
    deleted: HashSet<String>,
    /// Read tokens whose creation was acknowledged (201): each must
    /// authenticate after the restart.
    tokens: Vec<String>,
    /// Tokens whose revocation was acknowledged (204): none may
    /// authenticate after the restart.
    revoked: Vec<String>,
    /// Changes answered 503.
    refused: usize,
    /// Whether `/readyz` answered 503.
    unready_seen: bool,
}

/// Creates a read token; `Some((id, secret))` when acknowledged.
async fn try_create_token(api: &Api, acks: &mut Acks, name: &str) -> Option<(String, String)> {
    let (status, body) = api
        .post("/v1/tokens", json!({"kind": "read", "name": name}))
        .await;
    match status {
        StatusCode::CREATED => {
            let secret = body["token"].as_str().unwrap().to_owned();
            acks.tokens.push(secret.clone());
            Some((body["id"].as_str().unwrap().to_owned(), secret))
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            acks.refused += 1;
            None
        }
        other => panic!("token creation answered {other}: {body}"),
    }
}

/// Revokes a token, recording whether that was acknowledged.
async fn try_revoke_token(api: &Api, acks: &mut Acks, (id, secret): &(String, String)) {
    let (status, _) = api.delete(&format!("/v1/tokens/{id}")).await;
    match status {
        StatusCode::NO_CONTENT => {
            acks.tokens.retain(|t| t != secret);
            acks.revoked.push(secret.clone());
        }
        // Refused: unknown whether it happened (a connection killed after
        // COMMIT reached the database); nothing is asserted either way.
        StatusCode::SERVICE_UNAVAILABLE => acks.refused += 1,
        other => panic!("token revocation answered {other}"),
    }
}

impl Acks {
    /// Records a 200 answer of `POST /v1/workers/{id}/offline`.
    fn offline_answered(&mut self, worker: &Value) {
        assert_eq!(worker["status"], "offline", "{worker}");
        self.offline.push((
            worker["id"].as_str().unwrap().to_owned(),
            worker["session"].as_u64().unwrap(),
            worker["offline_reason"].as_str().unwrap().to_owned(),
        ));
    }
}

/// Keeps `ids` heartbeating in one batch request every 200 ms and counts
/// entries that were not ok.
struct Heart {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<usize>,
}

impl Heart {
    fn start(target: &Target, workers: &[Registered]) -> Heart {
        let stop = Arc::new(AtomicBool::new(false));
        let entries: Vec<Value> = workers
            .iter()
            .map(|w| json!({"worker_id": w.id, "token": w.token}))
            .collect();
        let (target, s) = (target.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let http = http_client();
            let mut bad = 0;
            while !s.load(Ordering::SeqCst) {
                let resp = http
                    .post(format!("{}/v1/heartbeats", target.get()))
                    .bearer_auth(ADMIN)
                    .json(&json!({"heartbeats": entries}))
                    .send()
                    .await;
                if let Ok(resp) = resp {
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    for r in body["results"].as_array().into_iter().flatten() {
                        if r["ok"] != true || r["resumed"] == true {
                            bad += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            bad
        });
        Heart { stop, task }
    }

    /// Stops; returns how many heartbeat entries were refused or resumed a
    /// worker (either means a live worker was taken for dead).
    async fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("heartbeat task")
    }
}

/// Registers `name`; `None` when refused with 503 (counted).
async fn try_register(
    api: &Api,
    acks: &mut Acks,
    name: &str,
    interval_ms: u64,
) -> Option<Registered> {
    let (status, body) = api
        .post(
            "/v1/workers",
            json!({"name": name, "machine": {"id": "m-faults"}, "heartbeat_interval_ms": interval_ms}),
        )
        .await;
    match status {
        StatusCode::CREATED | StatusCode::OK => {
            let id = body["worker"]["id"].as_str().unwrap().to_owned();
            let session = body["worker"]["session"].as_u64().unwrap();
            acks.registered.insert(id.clone(), session);
            acks.deleted.remove(&id);
            Some(Registered {
                id,
                token: body["token"].as_str().unwrap().to_owned(),
                worker: body["worker"].clone(),
            })
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
            acks.refused += 1;
            None
        }
        other => panic!("registration answered {other}: {body}"),
    }
}

async fn ready(api: &Api) -> (StatusCode, Value) {
    api.get("/readyz").await
}

/// One fault episode: the fault is on from `on` until `off`; during it,
/// changes are attempted until one is refused and `/readyz` said 503.
/// Workers registered just before it go silent during it.
async fn episode(api: &Api, acks: &mut Acks, tag: &str, fault: &dyn Fault) -> Vec<Registered> {
    // Silent workers whose deadlines pass while the store fails.
    let mut silent = Vec::new();
    for i in 0..5 {
        silent.push(
            try_register(api, acks, &format!("{tag}-silent-{i}"), 300)
                .await
                .expect("registration before the fault"),
        );
    }
    // Some graceful offlines and deletions before the fault, acknowledged.
    let w = try_register(api, acks, &format!("{tag}-bye"), 300)
        .await
        .unwrap();
    let (status, body) = api
        .post(&format!("/v1/workers/{}/offline", w.id), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    acks.offline_answered(&body);
    let w = try_register(api, acks, &format!("{tag}-gone"), 300)
        .await
        .unwrap();
    let (status, body) = api.delete(&format!("/v1/workers/{}", w.id)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    acks.deleted.insert(w.id.clone());
    acks.registered.remove(&w.id);
    // A token to revoke while the store fails.
    let doomed = try_create_token(api, acks, &format!("{tag}-doomed"))
        .await
        .expect("a token created before the fault");

    fault.on().await;
    // Revoked while failing: acknowledged only if it committed.
    try_revoke_token(api, acks, &doomed).await;
    let started = Instant::now();
    let (mut refused, mut unready) = (false, false);
    let mut n = 0;
    while !(refused && unready) {
        assert!(
            started.elapsed() < RECOVERY,
            "{tag}: within {RECOVERY:?} of the fault, a change refused: {refused}, /readyz 503: {unready}"
        );
        let before = acks.refused;
        let r = try_register(api, acks, &format!("{tag}-during-{n}"), 300).await;
        try_create_token(api, acks, &format!("{tag}-during-{n}")).await;
        n += 1;
        if acks.refused > before {
            refused = true;
        }
        // A graceful offline of a worker registered during the fault: it
        // is acknowledged only if it committed.
        if let Some(w) = r {
            let (status, body) = api
                .post(&format!("/v1/workers/{}/offline", w.id), json!({}))
                .await;
            match status {
                StatusCode::OK => acks.offline_answered(&body),
                StatusCode::SERVICE_UNAVAILABLE => acks.refused += 1,
                other => panic!("offline answered {other}: {body}"),
            }
        }
        let (status, body) = ready(api).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(body["error"]["code"], "unavailable", "{body}");
            // A failed write: "the store cannot commit …"; a killed
            // PostgreSQL connection can instead fail the read that follows
            // a successful probe: "… cannot reach its database …".
            let message = body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains("cannot commit") || message.contains("cannot reach its database"),
                "/readyz names the reason: {body}"
            );
            unready = true;
            acks.unready_seen = true;
        }
    }
    // Let the silent workers' deadlines pass while the store still fails.
    tokio::time::sleep(Duration::from_millis(1200)).await;

    fault.off().await;
    eventually(RECOVERY, "/readyz 200 after the fault", || async {
        (ready(api).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    // Every silent worker is detected once the store commits again.
    for w in &silent {
        eventually(
            RECOVERY,
            "a silent worker marked offline after recovery",
            || async {
                let v = api.worker(&w.id).await;
                (v["status"] == "offline").then_some(v)
            },
        )
        .await;
    }
    // And changes are taken again, without a restart.
    try_register(api, acks, &format!("{tag}-after"), 300)
        .await
        .expect("a registration after recovery");
    silent
}

/// Holds the store, through a restarted server, to what clients were told
/// and what the stream delivered.
async fn verify(api: &Api, acks: &Acks, streamed: &[Value], live: &[Registered]) {
    // The stream: strictly increasing seq, each event in the log as sent.
    let log = api.events("").await;
    let by_seq: BTreeMap<i64, &Value> = log
        .iter()
        .map(|e| (e["seq"].as_i64().unwrap(), e))
        .collect();
    let mut last = 0;
    for e in streamed {
        let seq = e["seq"].as_i64().unwrap();
        assert!(
            seq > last,
            "stream seq {seq} after {last}: not strictly increasing"
        );
        last = seq;
        let stored = by_seq
            .get(&seq)
            .unwrap_or_else(|| panic!("streamed event {e} is not in the log"));
        for key in ["type", "worker_id", "machine_id", "reason", "session", "at"] {
            assert_eq!(
                e[key], stored[key],
                "event {seq}: streamed {e}, stored {stored}"
            );
        }
    }
    // The log itself has no gap: a rolled-back transaction never used a seq
    // that a later commit skipped.
    let seqs: Vec<i64> = by_seq.keys().copied().collect();
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "the log has a gap after seq {}",
            pair[0]
        );
    }
    // Acknowledged registrations.
    for (id, session) in &acks.registered {
        let (status, w) = api.get(&format!("/v1/workers/{id}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "acknowledged worker {id} is gone: {w}"
        );
        assert!(
            w["session"].as_u64().unwrap() >= *session,
            "worker {id}: session {} < acknowledged {session}",
            w["session"]
        );
        assert!(
            log.iter().any(|e| e["type"] == "worker.registered"
                && e["worker_id"] == id.as_str()
                && e["session"] == *session),
            "the registration of {id} (session {session}) is not in the log"
        );
    }
    // Acknowledged offlines.
    for (id, session, reason) in &acks.offline {
        assert!(
            log.iter().any(|e| e["type"] == "worker.offline"
                && e["worker_id"] == id.as_str()
                && e["session"] == *session
                && e["reason"] == reason.as_str()),
            "the acknowledged offline ({reason}) of {id} (session {session}) is not in the log"
        );
    }
    // Other acknowledged transitions.
    for (kind, reason, id, session) in &acks.transitions {
        assert!(
            log.iter().any(|e| e["type"] == *kind
                && e["worker_id"] == id.as_str()
                && e["session"] == *session
                && reason.is_none_or(|r| e["reason"] == r)),
            "the acknowledged {kind} ({reason:?}) of {id} (session {session}) is not in the log"
        );
    }
    // Acknowledged deletions.
    for id in &acks.deleted {
        let (status, _) = api.get(&format!("/v1/workers/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "deleted worker {id} is back");
    }
    // Tokens: acknowledged creations and revocations hold.
    for (secret, works, what) in acks
        .tokens
        .iter()
        .map(|t| (t, true, "created"))
        .chain(acks.revoked.iter().map(|t| (t, false, "revoked")))
    {
        let (status, body) = Api::new(&api.base, secret).get("/v1/workers").await;
        if works {
            assert_eq!(
                status,
                StatusCode::OK,
                "a token {what} does not work: {body}"
            );
        } else {
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "a token {what} works: {body}"
            );
        }
    }
    // No heartbeating worker was ever taken for dead.
    for w in live {
        assert!(
            !log.iter()
                .any(|e| e["type"] == "worker.offline" && e["worker_id"] == w.id.as_str()),
            "live worker {} was marked offline",
            w.id
        );
    }
}

/// A fault that a test switches on and off.
#[async_trait::async_trait(?Send)]
trait Fault {
    async fn on(&self);
    async fn off(&self);
}

/// Runs `episodes` fault episodes against one server process started by
/// `serve`, then checks everything on a restarted one.
async fn drill(serve: Serve, episodes: usize, fault: &dyn Fault) {
    let mut server = serve.clone().spawn().await;
    let api = server.admin();
    let target = Target::new(&api.base);
    let stream = StreamLog::follow(&target);
    let mut acks = Acks::default();

    let mut live = Vec::new();
    for i in 0..10 {
        live.push(
            try_register(&api, &mut acks, &format!("live-{i}"), 1000)
                .await
                .unwrap(),
        );
    }
    let heart = Heart::start(&target, &live);

    for round in 0..episodes {
        episode(&api, &mut acks, &format!("r{round}"), fault).await;
    }
    assert!(acks.refused > 0 && acks.unready_seen);

    let bad_beats = heart.stop().await;
    assert_eq!(
        bad_beats, 0,
        "heartbeats of live workers were refused or resumed them"
    );
    let tail = api.events("").await;
    let last_seq = tail.last().map(|e| e["seq"].as_i64().unwrap()).unwrap_or(0);
    stream.caught_up(last_seq).await;
    let streamed = stream.seen();
    drop(stream);

    // What the store holds, read by a fresh process.
    let (status, _) = server.stop_with("TERM").await;
    assert!(
        status.success(),
        "the server exits cleanly: {}",
        server.stderr()
    );
    // One error line per incident, not one per refused request (a full
    // disk can let a small commit through mid-incident, which ends it), and
    // each incident's end is logged. A background write no client sees (the
    // heartbeat flush, the readiness probe) can fail first and open an
    // incident of its own; an intermittent fault (killed connections) can
    // let a background write through and fail the next: at most two more
    // per fault.
    let log_text = server.stderr();
    let incidents = log_text.matches("the store cannot commit").count();
    assert!(
        incidents >= episodes && incidents <= acks.refused + 2 * episodes,
        "{incidents} incident lines for {episodes} faults and {} refusals:\n{log_text}",
        acks.refused
    );
    assert_eq!(
        log_text.matches("the store commits again").count(),
        incidents
    );
    let server = serve.spawn().await;
    verify(&server.admin(), &acks, &streamed, &live).await;
}

/// The disk under the database fills up.
struct FullDisk(SmallDisk);

#[async_trait::async_trait(?Send)]
impl Fault for FullDisk {
    async fn on(&self) {
        self.0.fill();
    }
    async fn off(&self) {
        self.0.free();
    }
}

/// Every write to the database file and its WAL fails (EPERM: an I/O error
/// for SQLite).
struct IoErrors {
    disk: SmallDisk,
    files: Vec<PathBuf>,
}

#[async_trait::async_trait(?Send)]
impl Fault for IoErrors {
    async fn on(&self) {
        self.disk.immutable(&self.files, true);
    }
    async fn off(&self) {
        self.disk.immutable(&self.files, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_twice_loses_nothing_and_recovers_without_restart() {
    let Some(disk) = SmallDisk::mount(48) else {
        return;
    };
    let serve = Serve::new(&disk.path().join("data"));
    drill(serve, 2, &FullDisk(disk)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_errors_twice_lose_nothing_and_recover_without_restart() {
    let Some(disk) = SmallDisk::mount(48) else {
        return;
    };
    let data = disk.path().join("data");
    let db = data.join("rollcall.db");
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let fault = IoErrors {
        files: vec![db, PathBuf::from(wal)],
        disk,
    };
    drill(Serve::new(&data), 2, &fault).await;
}

mod pg;

/// PostgreSQL refuses every write of the database with SQLSTATE 53100
/// (`disk_full`), the error a full disk gives: a statement trigger on every
/// table rollcall writes, created and dropped behind the server's back.
struct PgDiskFull(pg::Database);

const PG_TABLES: [&str; 5] = ["workers", "machines", "events", "tokens", "rollcall_probe"];

#[async_trait::async_trait(?Send)]
impl Fault for PgDiskFull {
    async fn on(&self) {
        let mut sql = String::from(
            "CREATE FUNCTION rollcall_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' \
             USING ERRCODE = 'disk_full'; END $$;",
        );
        for t in PG_TABLES {
            sql.push_str(&format!(
                "CREATE TRIGGER rollcall_test_disk_full BEFORE INSERT OR UPDATE OR DELETE ON {t} \
                 FOR EACH STATEMENT EXECUTE FUNCTION rollcall_test_disk_full();"
            ));
        }
        self.0.execute(&sql).await;
    }
    async fn off(&self) {
        let mut sql = String::new();
        for t in PG_TABLES {
            sql.push_str(&format!("DROP TRIGGER rollcall_test_disk_full ON {t};"));
        }
        sql.push_str("DROP FUNCTION rollcall_test_disk_full();");
        self.0.execute(&sql).await;
    }
}

/// The server's pooled connections are killed (`pg_terminate_backend`)
/// every few milliseconds, mid-transaction and mid-COMMIT; the connection
/// that holds the active replica's lock is spared, so the replica stays
/// active and the writer is what meets the fault.
struct PgKilledConnections {
    db: pg::Database,
    killer: Mutex<Option<(Arc<AtomicBool>, tokio::task::JoinHandle<()>)>>,
}

#[async_trait::async_trait(?Send)]
impl Fault for PgKilledConnections {
    async fn on(&self) {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(kill_pool_connections(
            self.db.url().to_owned(),
            stop.clone(),
        ));
        *self.killer.lock().unwrap() = Some((stop, task));
    }
    async fn off(&self) {
        let (stop, task) = self.killer.lock().unwrap().take().expect("on before off");
        stop.store(true, Ordering::SeqCst);
        task.await.expect("killer task");
    }
}

/// Terminates the server's pooled connections every few milliseconds until
/// `stop` (the connection holding the leader lock is spared).
async fn kill_pool_connections(url: String, stop: Arc<AtomicBool>) {
    // A pool, not a bare connection: a spawned task must be `Send`, which
    // sqlx's `&mut PgConnection` executor cannot prove here.
    let pool = sqlx::PgPool::connect(&url).await.expect("connect");
    while !stop.load(Ordering::SeqCst) {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'rollcall' \
             AND pid <> pg_backend_pid() AND pid NOT IN \
             (SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
              AND classid = 1919708259 AND objid = 2 AND objsubid = 2 \
              AND pid IS NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("terminate backends");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refusing_writes_twice_loses_nothing_and_recovers() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dir = data_dir();
    let serve = Serve::new(dir.path()).args(&["--database-url", db.url()]);
    drill(serve, 2, &PgDiskFull(db)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_commit_lose_nothing_and_recover() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    let dir = data_dir();
    let serve = Serve::new(dir.path()).args(&["--database-url", db.url()]);
    let fault = PgKilledConnections {
        db,
        killer: Mutex::new(None),
    };
    drill(serve, 2, &fault).await;
}

/// Another session holds every table rollcall writes locked, and the
/// database's `statement_timeout` (1 s here, set by the operator on the
/// database) cancels the writes that wait for it.
struct PgStatementTimeouts {
    db: pg::Database,
    holder: tokio::sync::Mutex<Option<sqlx::PgConnection>>,
}

#[async_trait::async_trait(?Send)]
impl Fault for PgStatementTimeouts {
    async fn on(&self) {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(self.db.url())
            .await
            .expect("connect");
        sqlx::raw_sql(
            "SET statement_timeout = 0; BEGIN; \
             LOCK TABLE workers, machines, events, tokens, rollcall_probe IN EXCLUSIVE MODE",
        )
        .execute(&mut conn)
        .await
        .expect("lock the tables");
        *self.holder.lock().await = Some(conn);
    }
    async fn off(&self) {
        let mut conn = self.holder.lock().await.take().expect("on before off");
        sqlx::raw_sql("ROLLBACK")
            .execute(&mut conn)
            .await
            .expect("unlock");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_statement_timeouts_lose_nothing_and_recover() {
    let Some(db) = pg::Database::create().await else {
        return;
    };
    db.execute(&format!(
        "ALTER DATABASE {} SET statement_timeout = '1s'",
        db.name()
    ))
    .await;
    let dir = data_dir();
    let serve = Serve::new(dir.path()).args(&["--database-url", db.url()]);
    let fault = PgStatementTimeouts {
        db,
        holder: tokio::sync::Mutex::new(None),
    };
    drill(serve, 2, &fault).await;
}

/// A small deterministic generator for the randomized drill (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

/// Registrations, resumes, drains, offlines and deletions, interleaved at
/// random with a store that fails and recovers (I/O errors toggled on and
/// off at random steps), in one server process; then the acknowledgements
/// are held against the store of a restarted server. The seed is printed;
/// `ROLLCALL_FAULT_SEED` replays one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_operations_under_random_io_errors_keep_every_acknowledgement() {
    let Some(disk) = SmallDisk::mount(48) else {
        return;
    };
    let seed = std::env::var("ROLLCALL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now_ms() as u64 | 1);
    eprintln!("ROLLCALL_FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    let data = disk.path().join("data");
    let db = data.join("rollcall.db");
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let fault = IoErrors {
        files: vec![db, PathBuf::from(wal)],
        disk,
    };
    let serve = Serve::new(&data);
    let mut server = serve.clone().spawn().await;
    let api = server.admin();
    let target = Target::new(&api.base);
    let stream = StreamLog::follow(&target);
    let mut acks = Acks::default();
    // Workers known to the test: name → (id, token) of the latest
    // acknowledged registration.
    let mut known: BTreeMap<String, Registered> = BTreeMap::new();
    let mut failing = false;

    for step in 0..400 {
        if rng.below(25) == 0 {
            failing = !failing;
            if failing {
                fault.on().await;
            } else {
                fault.off().await;
            }
        }
        let name = format!("w{}", rng.below(30));
        let existing = known.get(&name).cloned();
        let op = rng.below(5);
        match (op, existing) {
            (0, _) | (_, None) => {
                if let Some(w) = try_register(&api, &mut acks, &name, 200).await {
                    known.insert(name, w);
                }
            }
            (1, Some(w)) => {
                // A heartbeat: in memory for a live worker; a resume (a
                // change) for an offline one.
                let (status, body) = Api::new(&api.base, &w.token)
                    .post(&format!("/v1/workers/{}/heartbeat", w.id), json!({}))
                    .await;
                match status {
                    StatusCode::OK => {
                        if body["resumed"] == true {
                            acks.transitions.push((
                                "worker.online",
                                Some("heartbeat"),
                                w.id.clone(),
                                body["session"].as_u64().unwrap(),
                            ));
                        }
                    }
                    StatusCode::SERVICE_UNAVAILABLE => acks.refused += 1,
                    // Its token was rotated by a registration that was
                    // refused but... cannot be: refused changes change
                    // nothing. Any other answer is a defect.
                    other => panic!("step {step}: heartbeat answered {other}: {body}"),
                }
            }
            (2, Some(w)) => {
                let (status, body) = api
                    .post(&format!("/v1/workers/{}/drain", w.id), json!({}))
                    .await;
                match status {
                    StatusCode::OK => {
                        if body["status"] == "draining" {
                            acks.transitions.push((
                                "worker.draining",
                                None,
                                w.id.clone(),
                                body["session"].as_u64().unwrap(),
                            ));
                        }
                    }
                    // Draining an offline worker.
                    StatusCode::CONFLICT => {}
                    StatusCode::SERVICE_UNAVAILABLE => acks.refused += 1,
                    other => panic!("step {step}: drain answered {other}: {body}"),
                }
            }
            (3, Some(w)) => {
                let (status, body) = api
                    .post(&format!("/v1/workers/{}/offline", w.id), json!({}))
                    .await;
                match status {
                    StatusCode::OK => acks.offline_answered(&body),
                    StatusCode::SERVICE_UNAVAILABLE => acks.refused += 1,
                    other => panic!("step {step}: offline answered {other}: {body}"),
                }
            }
            (_, Some(w)) => {
                let (status, _) = api.delete(&format!("/v1/workers/{}", w.id)).await;
                match status {
                    StatusCode::NO_CONTENT => {
                        acks.deleted.insert(w.id.clone());
                        acks.registered.remove(&w.id);
                        acks.offline.retain(|(id, _, _)| *id != w.id);
                        acks.transitions.retain(|(_, _, id, _)| *id != w.id);
                        known.remove(&name);
                    }
                    StatusCode::SERVICE_UNAVAILABLE => acks.refused += 1,
                    other => panic!("step {step}: delete answered {other}"),
                }
            }
        }
        if failing && ready(&api).await.0 == StatusCode::SERVICE_UNAVAILABLE {
            acks.unready_seen = true;
        }
    }
    if failing {
        fault.off().await;
    }
    eventually(RECOVERY, "/readyz 200 after the last fault", || async {
        (ready(&api).await.0 == StatusCode::OK).then_some(())
    })
    .await;
    assert!(acks.refused > 0, "seed {seed}: the faults refused nothing");
    assert!(acks.unready_seen, "seed {seed}: /readyz never said 503");
    // Every worker is silent now: all are detected, none is left online.
    for w in known.values() {
        eventually(RECOVERY, "a silent worker marked offline", || async {
            let v = api.worker(&w.id).await;
            (v["status"] == "offline").then_some(())
        })
        .await;
    }
    let tail = api.events("").await;
    stream
        .caught_up(tail.last().map(|e| e["seq"].as_i64().unwrap()).unwrap_or(0))
        .await;
    let streamed = stream.seen();
    drop(stream);
    let (status, _) = server.stop_with("TERM").await;
    assert!(status.success(), "{}", server.stderr());
    let server = serve.spawn().await;
    verify(&server.admin(), &acks, &streamed, &[]).await;
}
