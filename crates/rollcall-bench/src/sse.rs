//! A client of `GET /v1/events/stream` that stamps every event with the
//! time it arrived, and reconnects with `Last-Event-ID` when the server ends
//! the stream (a client that falls behind the hub's ring is cut off and
//! resumes from the log), so no event is missed.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::BytesMut;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

/// One event as the stream delivered it.
#[derive(Debug, Clone, Deserialize)]
pub struct StreamEvent {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub worker_id: Option<String>,
    pub reason: Option<String>,
    pub detection_lag_ms: Option<i64>,
    /// Wall-clock milliseconds when the chunk holding it was read.
    #[serde(skip)]
    pub received_ms: i64,
}

/// Wall-clock milliseconds since the epoch (the server's clock: same host).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A running subscription; events arrive on `events`.
#[derive(Debug)]
pub struct Subscription {
    pub events: mpsc::UnboundedReceiver<StreamEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes from just after `after`; returns once the first connection
/// is established (so nothing committed later can be missed).
pub async fn subscribe(addr: SocketAddr, token: String, after: i64) -> Result<Subscription> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut last = after;
        let mut ready = Some(ready_tx);
        loop {
            match stream_once(addr, &token, &mut last, &tx, &mut ready).await {
                Ok(()) => {}
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e));
                        return;
                    }
                    eprintln!("event stream ended ({e:#}); resuming after {last}");
                }
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    ready_rx.await.context("event stream task ended")??;
    Ok(Subscription { events: rx, task })
}

async fn stream_once(
    addr: SocketAddr,
    token: &str,
    last: &mut i64,
    tx: &mpsc::UnboundedSender<StreamEvent>,
    ready: &mut Option<oneshot::Sender<Result<()>>>,
) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::get("/v1/events/stream")
        .header("host", addr.to_string())
        .header("authorization", format!("Bearer {token}"))
        .header("last-event-id", last.to_string())
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        bail!("event stream: {}", resp.status());
    }
    if let Some(r) = ready.take() {
        let _ = r.send(Ok(()));
    }
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let received_ms = now_ms();
        buf.extend_from_slice(&data);
        while let Some(end) = memchr::memmem::find(&buf, b"\n\n") {
            let msg = buf.split_to(end + 2);
            for line in msg[..].split(|b| *b == b'\n') {
                if let Some(json) = line.strip_prefix(b"data: ") {
                    let mut e: StreamEvent = serde_json::from_slice(json)
                        .with_context(|| String::from_utf8_lossy(json).into_owned())?;
                    e.received_ms = received_ms;
                    *last = (*last).max(e.seq);
                    if tx.send(e).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}
