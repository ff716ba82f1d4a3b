//! `GET /v1/events/stream`: the event log as server-sent events.
//!
//! Each committed event goes out as one message, `id: <seq>`,
//! `event: <type>`, `data: <Event JSON>`. A client that reconnects with
//! `Last-Event-ID` (or `?after=`) first gets everything after that `seq` from
//! the store, then the live events; without either it starts live, from now.
//!
//! ## No gap, no duplicate
//!
//! The handler subscribes to the [`Hub`](crate::hub::Hub) *before* anything
//! reads the log. The writer publishes only after commit, so every event is
//! either already committed when the catch-up reads the log (and found
//! there), or published after the subscription (and received live), or both.
//! Live events at or below the last `seq` the catch-up read are dropped as
//! duplicates. The hub delivers events in `seq` order.
//!
//! ## Slow and stuck clients
//!
//! A stream is pulled by its connection: it reads the next events only when
//! hyper has room to write them, so a slow client costs one parked future and
//! a bounded write buffer, and the server and the other clients never wait
//! for it. The hub is a ring shared by all subscribers; a client that falls
//! further behind than the ring holds is told it lagged, and its stream ends:
//! it reconnects with `Last-Event-ID` and catches up from the log, which has
//! everything. A client that stops reading altogether is cut off by
//! [`GuardedIo`](crate::guarded_io::GuardedIo): a write that makes no progress for
//! [`StreamSettings::write_stall`] fails and closes the connection.
//!
//! ## Limits
//!
//! A stream holds a connection and some memory for as long as it runs, so
//! there are at most `max_streams` of them, and `max_streams_per_token` per
//! token ([`StreamSlots`]); beyond, 429 `rate_limited` (per token) or 503
//! `unavailable` (overall), both with `Retry-After`.
//!
//! ## Shutdown
//!
//! Streams never end on their own, and axum's graceful shutdown waits for
//! every response to finish. So every stream also ends when the server's
//! shutdown token is cancelled, and [`GuardedIo`](crate::guarded_io::GuardedIo) gives a connection
//! that is not being read [`StreamSettings::shutdown_write_grace`] before
//! closing it; otherwise one stuck client would hang `Running::shutdown`.

use std::convert::Infallible;
use std::fmt;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use rollcall_core::TokenKind;
use rollcall_store::{EventFilter, EventRecord, Store};
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio::time::{Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::dto::Event;
use super::error::{ApiError, ErrorBody};
use super::events::{event_filter, parse_after, EventQuery};
use super::extract::{Caller, Q};
use super::AppState;
use crate::auth::Tokens;
use crate::clock::Clock;
use crate::engine::Engine;

/// Events read from the log per store query while catching up.
const REPLAY_PAGE: usize = 500;
/// Live events gathered into one chunk at most, so that a burst goes out in
/// few writes without one chunk growing without bound.
const LIVE_BATCH: usize = 500;

/// Timings of the event stream and of connections that stop reading.
///
/// These are not configuration keys: production uses the defaults, and the
/// tests shorten them (see `start_with_stream_settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    /// How often an open stream sends a `: keep-alive` comment. The contract
    /// promises one at least every 15 s; 10 s leaves room for a busy server.
    pub keep_alive: Duration,
    /// How long a write to a client may make no progress at all before the
    /// connection is closed (the client resumes with `Last-Event-ID`).
    pub write_stall: Duration,
    /// After shutdown begins, how long a write may wait for a client that is
    /// not reading before its connection is closed.
    pub shutdown_write_grace: Duration,
}

impl Default for StreamSettings {
    fn default() -> Self {
        StreamSettings {
            keep_alive: Duration::from_secs(10),
            write_stall: Duration::from_secs(30),
            shutdown_write_grace: Duration::from_secs(1),
        }
    }
}

/// Where a stream starts, and its filters.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Replay the events after this `seq` first. `Last-Event-ID` wins when
    /// both are given (a reconnecting `EventSource` sends it and keeps the
    /// original URL).
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<String>,
    #[param(pattern = r"^wkr_[0-9A-HJKMNP-TV-Z]{26}$")]
    pub worker_id: Option<String>,
    #[param(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub machine_id: Option<String>,
    /// An event type, e.g. `worker.offline`.
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = Option<rollcall_core::EventType>)]
    pub kind: Option<String>,
}

/// Parses `Last-Event-ID`: empty (the client has no position yet) or a
/// `seq` of up to 19 digits. A value past the largest `seq` there can be
/// resumes after it: live from now.
fn parse_last_event_id(v: &[u8]) -> Result<Option<i64>, ApiError> {
    let v = v.trim_ascii();
    if v.is_empty() {
        return Ok(None);
    }
    if v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(ApiError::invalid(format!(
            "Last-Event-ID must be empty or an event seq (at most 19 digits), got {:?}",
            String::from_utf8_lossy(v)
        )));
    }
    // 19 digits fit in a u64.
    let seq: u64 = std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(ApiError::Internal)?;
    Ok(Some(i64::try_from(seq).unwrap_or(i64::MAX)))
}

/// Stream events as they are committed (server-sent events).
///
/// `text/event-stream`; each message has `id: <seq>`, `event: <type>` and
/// `data: <Event JSON>`. With `Last-Event-ID` or `?after=`, the events after
/// that `seq` are replayed from the log first. A `: keep-alive` comment goes
/// out at least every 15 s. A client that falls too far behind is
/// disconnected and should reconnect with `Last-Event-ID`.
#[utoipa::path(
    get, path = "/v1/events/stream", tag = "events",
    params(
        StreamQuery,
        ("Last-Event-ID" = Option<String>, Header, pattern = r"^[0-9]{0,19}$",
            description = "Resume after this seq (the `id` of the last message received); empty: no position yet"),
    ),
    responses(
        (status = 200, description = "A stream of events", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, description = "This token has `max_streams_per_token` streams open", body = ErrorBody),
        (status = 503, description = "`max_streams` streams are open", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn stream(
    State(s): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    conn: Option<axum::Extension<crate::conn::ConnHandle>>,
    q: Q<StreamQuery>,
) -> Result<Response, ApiError> {
    caller.require(&[TokenKind::Read, TokenKind::Admin])?;
    let q = q.get()?;
    let filter = event_filter(&EventQuery {
        after: None,
        limit: None,
        worker_id: q.worker_id,
        machine_id: q.machine_id,
        kind: q.kind,
    })?;
    // `after` is checked even when Last-Event-ID wins over it. An empty
    // Last-Event-ID means the client has no position yet: it counts as
    // absent, and `?after=` applies.
    let after = q
        .after
        .as_deref()
        .map(|a| parse_after(Some(a)))
        .transpose()?;
    let resume = match headers.get("last-event-id") {
        Some(v) => parse_last_event_id(v.as_bytes())?.or(after),
        None => after,
    };
    // The authorization header was valid a moment ago; the stream checks it
    // again as it runs, so a revoked or expired token ends it.
    let credential = Credential(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default(),
    );

    let slot = s.streams.take(&credential.0)?;

    // Subscribe before the log is read: see the module docs.
    let live = s.hub.subscribe();
    let mut keep_alive = tokio::time::interval(s.stream.keep_alive);
    keep_alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let feed = Feed {
        store: s.store.clone(),
        filter,
        live,
        catch_up: resume,
        sent_up_to: resume.unwrap_or(0),
        keep_alive,
        stop: s.shutdown.clone(),
        auth: Reauth {
            tokens: s.tokens.clone(),
            engine: s.engine.clone(),
            clock: s.clock.clone(),
            credential,
        },
        ended: false,
        _slot: slot,
        // The connection is not idle while its stream runs.
        _busy: conn.map(|c| c.0.busy()),
    };
    let body = futures::stream::unfold(feed, |mut feed| async move {
        let chunk = feed.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), feed))
    });
    Ok((
        [
            (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            // Reverse proxies (nginx) must pass messages on as they come.
            (
                axum::http::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The open event streams, counted overall and per token.
#[derive(Debug)]
pub struct StreamSlots {
    max: usize,
    per_token: usize,
    open: parking_lot::Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    total: usize,
    /// By the SHA-256 of the bearer token.
    by_token: std::collections::HashMap<[u8; 32], usize>,
}

impl StreamSlots {
    /// At most `max` streams, `per_token` of them per token.
    pub fn new(max: usize, per_token: usize) -> Arc<Self> {
        Arc::new(StreamSlots {
            max,
            per_token,
            open: parking_lot::Mutex::new(Open::default()),
        })
    }

    /// How many streams are open.
    pub fn open(&self) -> usize {
        self.open.lock().total
    }

    /// A slot for a stream of the token in `credential`, or the error that
    /// refuses it.
    fn take(self: &Arc<Self>, credential: &[u8]) -> Result<StreamSlot, ApiError> {
        use sha2::Digest;
        // By the token itself, so that spellings of the header (`bearer`,
        // extra spaces) count as the same token.
        let token = std::str::from_utf8(credential)
            .ok()
            .and_then(crate::auth::bearer)
            .map_or(credential, str::as_bytes);
        let key: [u8; 32] = sha2::Sha256::digest(token).into();
        let mut open = self.open.lock();
        if open.total >= self.max {
            return Err(ApiError::Busy(format!(
                "the server has {} event streams open, its limit (max_streams); retry shortly",
                self.max
            )));
        }
        let mine = open.by_token.entry(key).or_insert(0);
        if *mine >= self.per_token {
            return Err(ApiError::RateLimited {
                message: format!(
                    "this token has {} event streams open, its limit (max_streams_per_token); \
                     close one first",
                    self.per_token
                ),
                retry_after_secs: 5,
            });
        }
        *mine += 1;
        open.total += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            key,
        })
    }
}

/// One open stream's place in [`StreamSlots`], given back on drop.
#[derive(Debug)]
struct StreamSlot {
    slots: Arc<StreamSlots>,
    key: [u8; 32],
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.by_token.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.by_token.remove(&self.key);
            }
        }
    }
}

/// The caller's `Authorization` header, kept to re-check it while the
/// stream runs. Never printed.
struct Credential(Vec<u8>);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// What re-checks the caller's token while the stream runs.
#[derive(Debug)]
struct Reauth {
    tokens: Arc<Tokens>,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    credential: Credential,
}

impl Reauth {
    /// Whether the token still authenticates (not revoked, not expired).
    fn still_valid(&self) -> bool {
        self.tokens
            .authenticate(&self.engine, Some(&self.credential.0), self.clock.now())
            .is_ok()
    }
}

/// One client's stream: the catch-up from the log, then the live events.
///
/// It holds the store and a hub receiver but no writer handle, so a
/// connection that lingers cannot keep the writer (and shutdown) waiting.
#[derive(Debug)]
struct Feed {
    store: Arc<dyn Store>,
    filter: EventFilter,
    live: broadcast::Receiver<Arc<EventRecord>>,
    /// `Some(seq)` while catching up: the log is read after `seq` next.
    catch_up: Option<i64>,
    /// Everything up to this `seq` was sent (or is filtered out); a live
    /// event at or below it is a duplicate of the catch-up.
    sent_up_to: i64,
    keep_alive: Interval,
    stop: CancellationToken,
    auth: Reauth,
    /// Set when the stream must end after the chunk just returned.
    ended: bool,
    _slot: StreamSlot,
    _busy: Option<crate::conn::BusyGuard>,
}

impl Feed {
    /// The next bytes to send, or `None` when the stream ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended || self.stop.is_cancelled() || !self.auth.still_valid() {
            return None;
        }
        while let Some(after) = self.catch_up {
            let page = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                page = self.store.list_events(&self.filter, after, REPLAY_PAGE) => page,
            };
            let page = match page {
                Ok(p) => p,
                Err(e) => {
                    // The client reconnects and resumes from its last id.
                    warn!(error = %e, "event stream: reading the log failed; ending the stream");
                    return None;
                }
            };
            let last = page.items.last().map(|e| e.seq);
            if let Some(last) = last {
                self.sent_up_to = last;
            }
            self.catch_up = match last {
                Some(last) if page.more => Some(last),
                _ => None,
            };
            if !page.items.is_empty() {
                // Checked again before each chunk: a token revoked while
                // the page was read gets nothing more.
                if !self.auth.still_valid() {
                    return None;
                }
                let mut out = String::new();
                for e in &page.items {
                    encode(&mut out, e);
                }
                return Some(Bytes::from(out));
            }
        }

        loop {
            let received = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                r = self.live.recv() => r,
                _ = self.keep_alive.tick() => {
                    if !self.auth.still_valid() {
                        return None;
                    }
                    return Some(Bytes::from_static(b": keep-alive\n\n"));
                }
            };
            let first = match received {
                Ok(e) => e,
                Err(RecvError::Lagged(missed)) => {
                    debug!(
                        missed,
                        "event stream: a client fell behind the hub; disconnecting it to resume from the log"
                    );
                    return None;
                }
                Err(RecvError::Closed) => return None,
            };
            let mut out = String::new();
            self.take(&mut out, &first);
            // Gather what else is already waiting, so a burst goes out in
            // few writes.
            for _ in 1..LIVE_BATCH {
                match self.live.try_recv() {
                    Ok(e) => self.take(&mut out, &e),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => {
                        // Send what we have; the client resumes after it.
                        self.ended = true;
                        break;
                    }
                }
            }
            if !out.is_empty() {
                // The token may have been revoked while this stream waited:
                // a revocation commits before the events after it are
                // published, so checking here sends nothing after it.
                if !self.auth.still_valid() {
                    return None;
                }
                return Some(Bytes::from(out));
            }
            if self.ended {
                return None;
            }
        }
    }

    /// Appends a live event unless it is a duplicate or filtered out.
    fn take(&mut self, out: &mut String, e: &EventRecord) {
        if e.seq <= self.sent_up_to || !matches(&self.filter, e) {
            return;
        }
        self.sent_up_to = e.seq;
        encode(out, e);
    }
}

/// Whether a live event passes the stream's filters (the store applies the
/// same filters to the catch-up).
fn matches(f: &EventFilter, e: &EventRecord) -> bool {
    f.worker_id
        .as_ref()
        .is_none_or(|w| e.worker_id.as_ref() == Some(w))
        && f.machine_id.as_ref().is_none_or(|m| &e.machine_id == m)
        && f.kind.is_none_or(|k| e.kind == k)
}

/// Appends one server-sent-events message.
fn encode(out: &mut String, e: &EventRecord) {
    // Compact JSON has no newlines, so it fits one `data:` line.
    match serde_json::to_string(&Event::from(e)) {
        Ok(data) => {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "id: {}\nevent: {}\ndata: {}\n\n",
                e.seq,
                e.kind.as_str(),
                data
            );
        }
        Err(err) => error!(seq = e.seq, error = %err, "event stream: an event did not serialise"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_events_are_filtered_like_the_log() {
        use rollcall_core::{EventType, MachineId, Timestamp, WorkerId};
        let w = WorkerId::parse("wkr_01JDQ3Z6X8A1B2C3D4E5F6G7H8").unwrap();
        let e = EventRecord {
            seq: 7,
            at: Timestamp::from_millis(0),
            kind: EventType::WorkerOnline,
            worker_id: Some(w.clone()),
            machine_id: MachineId::parse("host-a").unwrap(),
            reason: None,
            session: Some(1),
            detection_lag_ms: None,
            exit: None,
            incident_id: None,
        };
        let all = EventFilter::default();
        assert!(matches(&all, &e));
        let by_worker = EventFilter {
            worker_id: Some(w),
            ..EventFilter::default()
        };
        assert!(matches(&by_worker, &e));
        let other_machine = EventFilter {
            machine_id: Some(MachineId::parse("host-b").unwrap()),
            ..EventFilter::default()
        };
        assert!(!matches(&other_machine, &e));
        let other_kind = EventFilter {
            kind: Some(EventType::MachineOnline),
            ..EventFilter::default()
        };
        assert!(!matches(&other_kind, &e));

        let mut out = String::new();
        encode(&mut out, &e);
        assert!(
            out.starts_with("id: 7\nevent: worker.online\ndata: {"),
            "{out}"
        );
        assert!(out.ends_with("}\n\n"), "{out}");
        assert_eq!(out.matches('\n').count(), 4, "one data line: {out}");
    }
}
