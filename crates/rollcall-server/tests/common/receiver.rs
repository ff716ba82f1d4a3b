//! A real HTTP receiver for notifications: it listens on 127.0.0.1 port 0,
//! records every request (headers and body), and answers 200 — or 503 while
//! it is told to fail.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value;

/// A request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether it was answered 200.
    pub accepted: bool,
    /// When it arrived (Unix ms).
    pub received_ms: i64,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Debug, Default)]
struct Inner {
    got: Mutex<Vec<Received>>,
    /// Requests still to answer 503.
    fail: AtomicUsize,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/{*path}", post(take))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { url, inner }
    }

    /// Answers the next `n` requests with 503.
    pub fn fail_next(&self, n: usize) {
        self.inner.fail.store(n, Ordering::SeqCst);
    }

    /// Every request so far.
    pub fn all(&self) -> Vec<Received> {
        self.inner.got.lock().clone()
    }

    /// The requests answered 200.
    pub fn accepted(&self) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.accepted).collect()
    }

    /// The notifications of accepted webhook requests, in order.
    pub fn notifications(&self) -> Vec<Value> {
        self.accepted()
            .iter()
            .flat_map(|r| {
                r.json()["notifications"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect()
    }
}

async fn take(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let fail = inner
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    inner.got.lock().push(Received {
        headers,
        body,
        accepted: !fail,
        received_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64),
    });
    if fail {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}
