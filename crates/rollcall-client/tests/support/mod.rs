//! In-process fake rollcall servers for the tests, on 127.0.0.1 port 0.
//!
//! - [`Scripted`]: answers each request with the next canned response and
//!   records what it got — for checking the client's requests and its
//!   handling of answers, endpoint by endpoint.
//! - [`FakeRollcall`]: a tiny stateful server for one worker (register,
//!   heartbeat, drain, offline) whose failures the test scripts — for the
//!   worker handle's retry and re-register logic.
//!
//! Tests wait on conditions with [`FakeRollcall::wait_until`] (a deadline,
//! never a bare sleep). Under `tokio::time::pause` the deadline is virtual
//! time, which the runtime advances whenever everything is waiting.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

/// A valid worker id.
pub const WKR: &str = "wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H8";

/// Serves `router` on a fresh port and returns its base URL.
async fn serve(router: Router) -> (String, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    serve_on(listener, router);
    (format!("http://{addr}"), addr)
}

fn serve_on(listener: TcpListener, router: Router) {
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
}

/// A URL on which nothing listens (a port bound, then released).
pub async fn closed_port_url() -> (String, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    (format!("http://{addr}"), addr)
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

fn error(status: u16, code: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({"error": {"code": code, "message": format!("scripted {code}")}})),
    )
        .into_response()
}

// ----------------------------------------------------------------------------
// Scripted

/// A request as the scripted server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub token: Option<String>,
    pub content_type: Option<String>,
    pub body: Option<Value>,
}

impl Seen {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A canned answer.
#[derive(Debug, Clone)]
pub struct Canned {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, &'static str)>,
}

impl Canned {
    pub fn json(status: u16, body: Value) -> Self {
        Canned {
            status,
            body: body.to_string(),
            content_type: "application/json",
            headers: Vec::new(),
        }
    }

    pub fn error(status: u16, code: &str) -> Self {
        Canned::json(
            status,
            json!({"error": {"code": code, "message": format!("scripted {code}")}}),
        )
    }

    pub fn text(status: u16, body: &str, content_type: &'static str) -> Self {
        Canned {
            status,
            body: body.to_owned(),
            content_type,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.push((name, value));
        self
    }
}

#[derive(Debug, Default)]
struct ScriptState {
    answers: VecDeque<Canned>,
    seen: Vec<Seen>,
}

/// A server that answers from a script and records the requests.
#[derive(Debug, Clone)]
pub struct Scripted {
    pub url: String,
    state: Arc<Mutex<ScriptState>>,
}

impl Scripted {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(ScriptState::default()));
        let s = state.clone();
        let router = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = s.clone();
                async move { scripted_answer(&state, method, uri, headers, body) }
            },
        );
        let (url, _) = serve(router).await;
        Scripted { url, state }
    }

    /// Queues an answer.
    pub fn then(&self, answer: Canned) -> &Self {
        self.state.lock().unwrap().answers.push_back(answer);
        self
    }

    /// The requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// The one request seen, asserting there was exactly one.
    pub fn only(&self) -> Seen {
        let seen = self.seen();
        assert_eq!(seen.len(), 1, "{seen:#?}");
        seen.into_iter().next().unwrap()
    }
}

fn scripted_answer(
    state: &Mutex<ScriptState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri
        .query()
        .map(|q| {
            url_decode_pairs(q)
                .into_iter()
                .collect::<Vec<(String, String)>>()
        })
        .unwrap_or_default();
    let seen = Seen {
        method,
        path: uri.path().to_owned(),
        query,
        token: bearer(&headers),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: if body.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&body).expect("the client sends JSON bodies"))
        },
    };
    let mut st = state.lock().unwrap();
    st.seen.push(seen);
    let Some(answer) = st.answers.pop_front() else {
        return error(500, "internal");
    };
    let mut response = (
        StatusCode::from_u16(answer.status).unwrap(),
        [("content-type", answer.content_type)],
        answer.body,
    )
        .into_response();
    for (k, v) in answer.headers {
        response
            .headers_mut()
            .insert(k, HeaderValue::from_static(v));
    }
    response
}

/// `application/x-www-form-urlencoded` decoding, enough for the tests.
fn url_decode_pairs(q: &str) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A worker as the contract shows it.
pub fn worker_json(id: &str, session: u64, status: &str, interval_ms: u64) -> Value {
    json!({
        "id": id, "name": "render-1", "machine_id": "host-a",
        "status": status,
        "offline_reason": if status == "offline" { json!("shutdown") } else { Value::Null },
        "session": session,
        "labels": {},
        "heartbeat_interval_ms": interval_ms, "stale_after_ms": interval_ms * 3,
        "registered_at": "2026-11-28T07:18:40.123Z", "last_heartbeat_at": null,
        "deadline_at": if status == "offline" { Value::Null } else { json!("2026-11-28T07:20:10.123Z") },
        "status_changed_at": "2026-11-28T07:18:40.123Z"
    })
}

// ----------------------------------------------------------------------------
// FakeRollcall

/// What the stateful fake has seen and what it is scripted to do.
#[derive(Debug)]
pub struct FakeState {
    /// The enroll token it accepts for registration.
    pub enroll_token: String,
    /// The interval it hands out.
    pub interval_ms: u64,
    /// Answers (status codes) for the next registrations, before succeeding.
    pub register_failures: VecDeque<u16>,
    /// Answers (status codes) for the next heartbeats, before succeeding.
    pub heartbeat_failures: VecDeque<u16>,
    /// Registration attempts that reached the server (failed ones too).
    pub register_attempts: u32,
    /// Bodies of successful registrations.
    pub registrations: Vec<Value>,
    /// The current session.
    pub session: u64,
    /// The current worker token; `None` when revoked.
    pub token: Option<String>,
    pub status: &'static str,
    /// Every heartbeat attempt: when, with which token, and what it got.
    pub heartbeats: Vec<(Instant, Option<String>, u16)>,
    /// Successful drain calls.
    pub drains: u32,
    /// Reasons of offline calls.
    pub offlines: Vec<String>,
}

impl FakeState {
    /// Successful heartbeats so far.
    pub fn ok_heartbeats(&self) -> Vec<Instant> {
        self.heartbeats
            .iter()
            .filter(|(_, _, s)| *s == 200)
            .map(|(t, _, _)| *t)
            .collect()
    }
}

/// A stateful fake of one worker's side of the API.
#[derive(Debug, Clone)]
pub struct FakeRollcall {
    pub url: String,
    pub addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    changed: Arc<watch::Sender<u64>>,
}

impl FakeRollcall {
    pub async fn start(interval: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, interval)
    }

    /// Starts on an already bound listener (to come up on a known port).
    pub fn start_on(listener: TcpListener, interval: Duration) -> Self {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(FakeState {
            enroll_token: "rc_enroll_test".into(),
            interval_ms: interval.as_millis() as u64,
            register_failures: VecDeque::new(),
            heartbeat_failures: VecDeque::new(),
            register_attempts: 0,
            registrations: Vec::new(),
            session: 0,
            token: None,
            status: "offline",
            heartbeats: Vec::new(),
            drains: 0,
            offlines: Vec::new(),
        }));
        let changed = Arc::new(watch::channel(0u64).0);
        let fake = FakeRollcall {
            url: format!("http://{addr}"),
            addr,
            state,
            changed,
        };
        let f = fake.clone();
        let router = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let fake = f.clone();
                async move { fake.answer(method, uri.path(), &headers, &body) }
            },
        );
        serve_on(listener, router);
        fake
    }

    /// Reads the state.
    pub fn with<T>(&self, f: impl FnOnce(&FakeState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Changes the state (e.g. scripts failures).
    pub fn update(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
    }

    /// Forgets the worker token, as a deletion or rotation would.
    pub fn revoke_token(&self) {
        self.update(|s| s.token = None);
    }

    /// Waits until `cond` holds, failing the test after `deadline`.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        what: &str,
        cond: impl Fn(&FakeState) -> bool,
    ) {
        let mut rx = self.changed.subscribe();
        let check = async {
            loop {
                if self.with(&cond) {
                    return;
                }
                rx.changed().await.unwrap();
            }
        };
        if tokio::time::timeout(deadline, check).await.is_err() {
            panic!(
                "timed out waiting for: {what}; state: {:#?}",
                self.state.lock().unwrap()
            );
        }
    }

    fn answer(&self, method: Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        let response = self.route(method, path, headers, body);
        self.changed.send_modify(|n| *n += 1);
        response
    }

    fn route(&self, method: Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Response {
        let token = bearer(headers);
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut st = self.state.lock().unwrap();
        match (method, segments.as_slice()) {
            (Method::POST, ["v1", "workers"]) => {
                st.register_attempts += 1;
                if let Some(status) = st.register_failures.pop_front() {
                    return error(status, "unavailable");
                }
                if token.as_deref() != Some(st.enroll_token.as_str()) {
                    return error(401, "unauthorized");
                }
                let body: Value = serde_json::from_slice(body).unwrap();
                let created = st.registrations.is_empty();
                st.registrations.push(body);
                st.session += 1;
                st.status = "online";
                let new_token = format!("rc_worker_{}", st.session);
                st.token = Some(new_token.clone());
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                let worker = worker_json(WKR, st.session, "online", st.interval_ms);
                (
                    status,
                    axum::Json(json!({"worker": worker, "token": new_token})),
                )
                    .into_response()
            }
            (Method::POST, ["v1", "workers", id, action]) => {
                assert_eq!(*id, WKR);
                let now = Instant::now();
                if *action == "heartbeat" {
                    if let Some(status) = st.heartbeat_failures.pop_front() {
                        st.heartbeats.push((now, token, status));
                        return error(status, "unavailable");
                    }
                }
                if token.is_none() || token != st.token {
                    if *action == "heartbeat" {
                        st.heartbeats.push((now, token, 401));
                    }
                    return error(401, "unauthorized");
                }
                match *action {
                    "heartbeat" => {
                        st.heartbeats.push((now, token, 200));
                        axum::Json(json!({
                            "status": st.status, "session": st.session, "resumed": false,
                            "deadline_at": "2026-11-28T07:20:10.123Z",
                            "heartbeat_interval_ms": st.interval_ms
                        }))
                        .into_response()
                    }
                    "drain" => {
                        st.drains += 1;
                        st.status = "draining";
                        axum::Json(worker_json(WKR, st.session, "draining", st.interval_ms))
                            .into_response()
                    }
                    "offline" => {
                        let body: Value = serde_json::from_slice(body).unwrap();
                        st.offlines
                            .push(body["reason"].as_str().unwrap().to_owned());
                        st.status = "offline";
                        axum::Json(worker_json(WKR, st.session, "offline", st.interval_ms))
                            .into_response()
                    }
                    _ => error(404, "not_found"),
                }
            }
            _ => error(404, "not_found"),
        }
    }
}
