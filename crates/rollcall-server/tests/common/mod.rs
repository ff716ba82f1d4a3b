//! Shared helpers of the server's in-process API tests.
//!
//! [`spawn_app`] starts the real server (the same [`rollcall_server::start`]
//! the binary uses) on 127.0.0.1 port 0, on a fresh temporary data
//! directory, with a known admin token and short timings: heartbeat 100 ms,
//! `stale_after` 500 ms, flush every 200 ms. The periodic sweep and cleanup
//! run only every hour, so tests drive them directly through
//! [`TestApp::cleaner`] or the cleanup endpoints.
//!
//! With `ROLLCALL_TEST_API_STORE=postgres` (and `ROLLCALL_TEST_POSTGRES_URL`)
//! every app runs on a fresh PostgreSQL database of its own instead of
//! SQLite, as a lone replica: the same suite checks both stores.
//!
//! Tests never sleep and hope: they poll a condition until a deadline with
//! [`wait_until`] / [`wait_for`], and when time has to pass they compute how
//! long from the timestamps the server returned ([`sleep_until_ms`]). The
//! server reads the system clock, the same one [`now_ms`] reads.

#![allow(dead_code)]

pub mod receiver;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use rollcall_server::{Cleaner, RawConfig, Running, SystemClock};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::net::TcpListener;

/// The admin token every test app is configured with.
pub const ADMIN_TOKEN: &str = "rc_admin_test-suite-admin-token-0123456789";

/// A worker id in the right format that no server issued.
pub const UNKNOWN_WORKER: &str = "wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H8";
/// A token id in the right format that no server issued.
pub const UNKNOWN_TOKEN_ID: &str = "tok_01JDQ3Z6X8A1B2C3D4E5F6G7H8";

/// The default test configuration (see the module docs).
pub fn test_config(data_dir: &str) -> RawConfig {
    RawConfig {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.into()),
        heartbeat_interval: Some("100ms".into()),
        stale_after: Some("500ms".into()),
        flush_interval: Some("200ms".into()),
        sweep_interval: Some("1h".into()),
        cleanup_interval: Some("1h".into()),
        max_stale_after: Some("1h".into()),
        admin_token: Some(ADMIN_TOKEN.into()),
        // The suite sends 401s in bulk to check them; the throttle that
        // would turn them into 429s has its own test (`limits.rs`).
        failed_auth_burst: Some("1000000".into()),
        ..RawConfig::default()
    }
}

/// A running server and a client for it.
#[derive(Debug)]
pub struct TestApp {
    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub base: String,
    pub client: reqwest::Client,
    pub admin: String,
    running: Option<Running>,
    raw: RawConfig,
    /// The PostgreSQL database of this app, in PostgreSQL mode.
    pub postgres: Option<rollcall_store::testing::TestDatabase>,
    /// Dropped last: the data directory outlives the server.
    pub dir: TempDir,
}

/// Whether the suite runs on PostgreSQL (see the module docs).
pub fn on_postgres() -> bool {
    std::env::var("ROLLCALL_TEST_API_STORE").as_deref() == Ok("postgres")
}

/// A response: status, parsed JSON body (`Null` if it is not JSON) and text.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Value {
        assert_eq!(
            self.status, status,
            "expected HTTP {status}, got {}: {}",
            self.status, self.text
        );
        &self.body
    }
}

/// A registered worker.
#[derive(Debug, Clone)]
pub struct Reg {
    pub id: String,
    pub token: String,
    /// The `worker` object of the response.
    pub worker: Value,
    /// 201 or 200.
    pub status: u16,
}

impl Reg {
    pub fn session(&self) -> u64 {
        self.worker["session"].as_u64().unwrap()
    }

    pub fn deadline_ms(&self) -> i64 {
        ts(&self.worker["deadline_at"])
    }
}

/// Starts a server with the default test configuration.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server with the default test configuration, changed by `tweak`.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut RawConfig)) -> TestApp {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut raw = test_config(dir.path().to_str().expect("a UTF-8 temp path"));
    let postgres = if on_postgres() {
        let db = rollcall_store::testing::TestDatabase::from_env()
            .await
            .expect("ROLLCALL_TEST_API_STORE=postgres needs ROLLCALL_TEST_POSTGRES_URL");
        raw.database_url = Some(db.url().to_owned());
        Some(db)
    } else {
        None
    };
    tweak(&mut raw);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut app = TestApp {
        base: String::new(),
        client,
        admin: ADMIN_TOKEN.to_owned(),
        running: None,
        raw,
        postgres,
        dir,
    };
    app.start().await;
    app
}

impl TestApp {
    /// Starts (or starts again) the server on the same data directory, on a
    /// new port.
    pub async fn start(&mut self) {
        assert!(self.running.is_none(), "the server is already running");
        let config = self.raw.clone().resolve().expect("a valid test config");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = rollcall_server::start(config, listener, Arc::new(SystemClock))
            .await
            .expect("the server starts");
        self.base = format!("http://{}", running.addr());
        self.running = Some(running);
    }

    /// Shuts the server down gracefully (the data directory stays).
    pub async fn stop(&mut self) {
        let running = self.running.take().expect("the server is running");
        running.shutdown().await.expect("a clean shutdown");
    }

    /// The running server.
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("the server is running")
    }

    /// The cleanup tasks, to drive them directly.
    pub fn cleaner(&self) -> Cleaner {
        self.running().cleaner()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends a request with an optional bearer token and an optional raw body.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let auth = token.map(|t| format!("Bearer {t}"));
        self.send_auth(method, path, auth.as_deref(), body).await
    }

    /// Sends a request with an optional raw `Authorization` header value.
    pub async fn send_auth(
        &self,
        method: Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Resp {
        let mut req = self.client.request(method, self.url(path));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Resp {
        self.send(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Resp {
        self.send(
            Method::POST,
            path,
            Some(token),
            Some(serde_json::to_vec(&body).unwrap()),
        )
        .await
    }

    pub async fn post_empty(&self, path: &str, token: &str) -> Resp {
        self.send(Method::POST, path, Some(token), None).await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Resp {
        self.send(Method::POST, path, token, Some(body.into()))
            .await
    }

    pub async fn delete(&self, path: &str, token: &str) -> Resp {
        self.send(Method::DELETE, path, Some(token), None).await
    }

    /// Registers with an arbitrary body (admin token); expects 200 or 201.
    pub async fn register_body(&self, body: Value) -> Reg {
        self.register_as(&self.admin, body).await
    }

    /// Registers with `token`; expects 200 or 201.
    pub async fn register_as(&self, token: &str, body: Value) -> Reg {
        let r = self.post("/v1/workers", token, body).await;
        assert!(
            r.status == 200 || r.status == 201,
            "registration failed: {} {}",
            r.status,
            r.text
        );
        Reg {
            id: r.body["worker"]["id"].as_str().unwrap().to_owned(),
            token: r.body["token"].as_str().unwrap().to_owned(),
            worker: r.body["worker"].clone(),
            status: r.status,
        }
    }

    /// Registers `name` on `machine` with the server's default intervals.
    pub async fn register(&self, name: &str, machine: &str) -> Reg {
        self.register_body(json!({"name": name, "machine": {"id": machine}}))
            .await
    }

    /// Registers `name` on `machine` with its own `stale_after` (the
    /// heartbeat interval follows as a third of it).
    pub async fn register_stale(&self, name: &str, machine: &str, stale_after_ms: u64) -> Reg {
        self.register_body(
            json!({"name": name, "machine": {"id": machine}, "stale_after_ms": stale_after_ms}),
        )
        .await
    }

    /// Waits until a worker is shown online in `session`: a heartbeat of an
    /// offline worker is answered (`resumed: true`) before its resume is
    /// committed, and the worker is shown online — with its event in the
    /// log — once it is.
    pub async fn wait_resumed(&self, id: &str, session: u64) {
        wait_until(
            &format!("{id} is shown online in session {session}"),
            Duration::from_secs(10),
            || async {
                let w = self.worker(id).await;
                w["status"] == "online" && w["session"] == session
            },
        )
        .await;
    }

    /// A worker's own heartbeat.
    pub async fn heartbeat_raw(&self, id: &str, token: &str) -> Resp {
        self.post_empty(&format!("/v1/workers/{id}/heartbeat"), token)
            .await
    }

    /// A worker's own heartbeat; expects 200 and returns the body.
    pub async fn heartbeat(&self, w: &Reg) -> Value {
        self.heartbeat_raw(&w.id, &w.token)
            .await
            .expect(200)
            .clone()
    }

    /// Marks a worker offline with its own token; expects 200.
    pub async fn offline(&self, w: &Reg, reason: &str) -> Value {
        self.post(
            &format!("/v1/workers/{}/offline", w.id),
            &w.token,
            json!({"reason": reason}),
        )
        .await
        .expect(200)
        .clone()
    }

    /// Creates a token of `kind` (admin); expects 201 and returns the body.
    pub async fn create_token(&self, kind: &str, name: &str, expires_in_ms: Option<u64>) -> Value {
        let mut body = json!({"kind": kind, "name": name});
        if let Some(ms) = expires_in_ms {
            body["expires_in_ms"] = json!(ms);
        }
        self.post("/v1/tokens", &self.admin, body)
            .await
            .expect(201)
            .clone()
    }

    /// The secret of a new token of `kind`.
    pub async fn token(&self, kind: &str) -> String {
        self.create_token(kind, &format!("{kind} token"), None)
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Every item of a paginated list, following `next_cursor` with
    /// `cursor_param` (`cursor`, or `after` for events). `path` may carry a
    /// query already.
    pub async fn list_all(&self, path: &str, cursor_param: &str, limit: usize) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100_000 {
            let mut url = format!("{path}{sep}limit={limit}");
            if let Some(c) = &cursor {
                url.push_str(&format!("&{cursor_param}={}", encode(c)));
            }
            let r = self.get(&url, &self.admin).await;
            let body = r.expect(200);
            let page = body["items"].as_array().unwrap();
            assert!(page.len() <= limit, "a page longer than its limit");
            items.extend(page.iter().cloned());
            match &body["next_cursor"] {
                Value::Null => return items,
                Value::String(c) => {
                    assert!(!page.is_empty(), "a cursor after an empty page");
                    cursor = Some(c.clone());
                }
                other => panic!("next_cursor is neither null nor a string: {other}"),
            }
        }
        panic!("pagination of {path} does not end");
    }

    /// The whole event log, oldest first.
    pub async fn events(&self) -> Vec<Value> {
        self.list_all("/v1/events", "after", 1000).await
    }

    /// The events of one worker, oldest first.
    pub async fn worker_events(&self, worker_id: &str) -> Vec<Value> {
        self.list_all(&format!("/v1/events?worker_id={worker_id}"), "after", 1000)
            .await
    }

    /// The events of one machine (machine and worker events), oldest first.
    pub async fn machine_events(&self, machine_id: &str) -> Vec<Value> {
        self.list_all(
            &format!("/v1/events?machine_id={machine_id}"),
            "after",
            1000,
        )
        .await
    }

    pub async fn workers(&self) -> Vec<Value> {
        self.list_all("/v1/workers", "cursor", 1000).await
    }

    pub async fn machines(&self) -> Vec<Value> {
        self.list_all("/v1/machines", "cursor", 1000).await
    }

    pub async fn tokens(&self) -> Vec<Value> {
        self.list_all("/v1/tokens", "cursor", 1000).await
    }

    /// `GET /v1/workers/{id}`; expects 200.
    pub async fn worker(&self, id: &str) -> Value {
        self.get(&format!("/v1/workers/{id}"), &self.admin)
            .await
            .expect(200)
            .clone()
    }

    /// `GET /v1/machines/{id}`; expects 200.
    pub async fn machine(&self, id: &str) -> Value {
        self.get(&format!("/v1/machines/{id}"), &self.admin)
            .await
            .expect(200)
            .clone()
    }

    /// Everything a request could change, for "bad input changes nothing":
    /// the event log, workers, machines and tokens (without their last-use
    /// times, which every authenticated request moves).
    pub async fn snapshot(&self) -> Snapshot {
        let mut tokens = self.tokens().await;
        for t in &mut tokens {
            t.as_object_mut().unwrap().remove("last_used_at");
        }
        Snapshot {
            events: self.events().await,
            workers: self.workers().await,
            machines: self.machines().await,
            tokens,
        }
    }
}

/// See [`TestApp::snapshot`].
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub events: Vec<Value>,
    pub workers: Vec<Value>,
    pub machines: Vec<Value>,
    pub tokens: Vec<Value>,
}

/// Percent-encodes a query value (cursors are opaque).
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asserts an error response: the status and the contract's body,
/// exactly `{"error": {"code": ..., "message": ...}}` with a message.
#[track_caller]
pub fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_error_in("the request", r, status, code)
}

/// [`assert_error`], naming the request in failure messages.
#[track_caller]
pub fn assert_error_in(what: &str, r: &Resp, status: u16, code: &str) {
    assert_eq!(
        r.status, status,
        "{what}: expected HTTP {status} ({code}), got {}: {}",
        r.status, r.text
    );
    assert!(
        r.body.as_object().is_some_and(|o| o.len() == 1)
            && r.body["error"].as_object().is_some_and(|o| o.len() == 2),
        "{what}: the error body is not {{\"error\": {{\"code\", \"message\"}}}}: {}",
        r.text
    );
    assert_eq!(r.body["error"]["code"], code, "{what}: {}", r.text);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "{what}: no error message: {}", r.text);
}

/// Asserts that `v` is an object with exactly these keys.
#[track_caller]
pub fn assert_keys(v: &Value, keys: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut got: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
    got.sort_unstable();
    let mut want = keys.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "fields of {v}");
}

/// Checks that `v` is a timestamp as the contract writes them
/// (`2026-11-28T07:18:40.123Z`) and returns it in ms since the epoch.
#[track_caller]
pub fn ts(v: &Value) -> i64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a timestamp string: {v}"));
    let b = s.as_bytes();
    let shape_ok = b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape_ok, "not an RFC 3339 UTC millisecond timestamp: {s}");
    let dt = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("unparsable timestamp {s}: {e}"));
    (dt.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Like [`ts`], but `null` is `None`.
#[track_caller]
pub fn opt_ts(v: &Value) -> Option<i64> {
    (!v.is_null()).then(|| ts(v))
}

/// Now, in ms since the epoch, on the clock the server uses.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Sleeps until the system clock reads at least `at_ms` (a time computed
/// from server-returned timestamps).
pub async fn sleep_until_ms(at_ms: i64) {
    loop {
        let left = at_ms - now_ms();
        if left <= 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(left as u64)).await;
    }
}

/// Polls `cond` every 10 ms until it holds; panics naming `what` if it does
/// not within `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = cond();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `f` every 10 ms until it returns `Some`; panics naming `what` if it
/// does not within `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An event's type, reason and session, for compact assertions.
pub fn brief(e: &Value) -> (String, Option<String>, Option<u64>) {
    (
        e["type"].as_str().unwrap().to_owned(),
        e["reason"].as_str().map(str::to_owned),
        e["session"].as_u64(),
    )
}

/// `(type, reason, session)` triples, for comparing with [`brief`].
pub fn ev(
    kind: &str,
    reason: Option<&str>,
    session: Option<u64>,
) -> (String, Option<String>, Option<u64>) {
    (kind.to_owned(), reason.map(str::to_owned), session)
}

/// Events grouped by worker id (machine events are left out).
pub fn by_worker(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events {
        if let Some(w) = e["worker_id"].as_str() {
            out.entry(w.to_owned()).or_default().push(e.clone());
        }
    }
    out
}
