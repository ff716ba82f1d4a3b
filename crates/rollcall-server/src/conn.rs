//! Connections: the accept loop, its cap and the timeouts of a connection.
//!
//! hyper, as axum's `serve` runs it, waits forever for a request's head, for
//! its body and for the next request on a keep-alive connection, and accepts
//! every connection until the process runs out of file descriptors. Here:
//!
//! - **Head.** A connection must deliver a whole request head within
//!   `header_read_timeout`: counted from the connection's start for its
//!   first request, and from the first byte of each later one.
//! - **Body.** A request's body must have arrived `body_read_timeout` after
//!   its head (answered 408 `request_timeout`, and the connection closed).
//! - **Idle.** A keep-alive connection with no request in flight is closed
//!   `idle_timeout` after its last response.
//! - **Head size.** A request target over [`MAX_REQUEST_TARGET`] is answered
//!   414 `uri_too_long`, header fields over [`MAX_HEADER_BYTES`] 431
//!   `headers_too_large`, before any handler runs ([`oversized_head`]).
//! - **Cap.** At most `max_connections` connections are open, fewer when the
//!   file limit (`RLIMIT_NOFILE`, whose soft value is raised to the hard one
//!   at start) would not leave room for the store and the rest
//!   ([`fd_headroom`]). A new connection at the cap closes the connection
//!   that has waited longest without a request in flight (an idle keep-alive
//!   connection, or one still sending its head), so a flood of idle or slow
//!   connections cannot lock out a worker's heartbeat; when every connection
//!   has a request in flight, the new one is answered 503 `unavailable` and
//!   closed.
//!
//! A connection counts as busy from the end of a request's head until the
//! handler's answer; an event stream keeps its connection busy while it runs
//! ([`ConnHandle::busy`]). The cost on the heartbeat path: two atomic
//! updates per request; the body's timer is armed only when a body has to be
//! waited for.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use futures::task::AtomicWaker;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::api::stream::StreamSettings;
use crate::config::Limits;
use crate::guarded_io::GuardedIo;

/// File descriptors kept free of connections: the store's files and pool,
/// the listeners, logs, the runtime's own. 64 plus 1/16 of the limit.
pub fn fd_headroom(fd_limit: u64) -> u64 {
    64 + fd_limit / 16
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft
/// limit in force afterwards (`None` when unlimited or unknown).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let current = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (current.current, current.maximum) {
        if soft < hard {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => info!(from = soft, to = hard, "raised the open-file limit"),
                Err(e) => warn!(soft, hard, error = %e, "could not raise the open-file limit"),
            }
        }
    }
    getrlimit(Resource::Nofile).current
}

/// The connection cap in force: `max_connections`, lowered so that the
/// open-file limit keeps [`fd_headroom`] free.
pub fn effective_max_connections(configured: usize, fd_limit: Option<u64>) -> usize {
    match fd_limit {
        Some(limit) => {
            let room = limit.saturating_sub(fd_headroom(limit)).max(16);
            configured.min(usize::try_from(room).unwrap_or(usize::MAX))
        }
        None => configured,
    }
}

/// A connection's state, shared by its task, its I/O and its requests.
#[derive(Debug)]
struct ConnState {
    /// Requests in flight (and event streams running).
    busy: AtomicU32,
    /// Milliseconds since the registry's epoch, plus one, at which the
    /// connection last became idle (0: never).
    idle_since: AtomicU64,
    /// Likewise, when the head being received began (0: none is).
    head_started: AtomicU64,
    /// Set by the accept loop to make room at the cap.
    evict: CancellationToken,
    /// The connection's task, woken when it turns idle.
    task: AtomicWaker,
}

/// A handle on the connection a request came on, in its extensions.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    state: Arc<ConnState>,
    epoch: Instant,
}

impl ConnHandle {
    /// Keeps the connection counted busy (not idle, not evictable) until
    /// the guard is dropped; for responses that outlive their handler.
    pub fn busy(&self) -> BusyGuard {
        self.state.busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(self.clone())
    }
}

/// See [`ConnHandle::busy`].
#[derive(Debug)]
pub struct BusyGuard(ConnHandle);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        let s = &self.0.state;
        if s.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            s.idle_since
                .store(stamp(self.0.epoch, Instant::now()), Ordering::Release);
            s.task.wake();
        }
    }
}

fn stamp(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

fn unstamp(epoch: Instant, s: u64) -> Instant {
    epoch + Duration::from_millis(s.saturating_sub(1))
}

impl ConnState {
    /// When the connection must be closed if nothing changes; `None` while
    /// a request is in flight.
    fn deadline(&self, epoch: Instant, limits: &Limits) -> Option<Instant> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => {
                Some(unstamp(epoch, self.idle_since.load(Ordering::Acquire)) + limits.idle_timeout)
            }
            s => Some(unstamp(epoch, s) + limits.header_read_timeout),
        }
    }

    /// Since when the connection has been without a request in flight, if
    /// it is.
    fn waiting_since(&self) -> Option<u64> {
        if self.busy.load(Ordering::Acquire) > 0 {
            return None;
        }
        match self.head_started.load(Ordering::Acquire) {
            0 => Some(self.idle_since.load(Ordering::Acquire)),
            s => Some(s),
        }
    }
}

/// The open connections.
#[derive(Debug)]
struct Registry {
    conns: parking_lot::Mutex<HashMap<u64, Arc<ConnState>>>,
    /// Notified when the last connection closes.
    empty: tokio::sync::Notify,
}

impl Registry {
    /// Makes room for one more connection; false if every connection has a
    /// request in flight.
    fn make_room(&self, cap: usize) -> bool {
        let conns = self.conns.lock();
        if conns.len() < cap {
            return true;
        }
        // Connections already told to go still count until they are gone;
        // pick one that was not.
        let oldest = conns
            .values()
            .filter(|c| !c.evict.is_cancelled())
            .filter_map(|c| c.waiting_since().map(|since| (since, c)))
            .min_by_key(|(since, _)| *since);
        match oldest {
            Some((_, c)) => {
                c.evict.cancel();
                true
            }
            None => conns.values().any(|c| c.evict.is_cancelled()),
        }
    }
}

/// Removes a connection from the registry when its task ends.
struct Registered {
    registry: Arc<Registry>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut conns = self.registry.conns.lock();
        conns.remove(&self.id);
        if conns.is_empty() {
            self.registry.empty.notify_waiters();
        }
    }
}

/// A connection's socket, noting when a request head begins to arrive.
struct Watched {
    io: TcpStream,
    state: Arc<ConnState>,
    epoch: Instant,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before
            && self.state.busy.load(Ordering::Acquire) == 0
            && self.state.head_started.load(Ordering::Acquire) == 0
        {
            self.state
                .head_started
                .store(stamp(self.epoch, Instant::now()), Ordering::Release);
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The longest request target (path and query) answered; a longer one is
/// 414 `uri_too_long`.
pub const MAX_REQUEST_TARGET: usize = 8 * 1024;
/// The most bytes of header fields a request may carry (each field counted
/// as `name: value` and its line end); more is 431 `headers_too_large`.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// What HTTP/2 may carry in a request's header list before h2 itself
/// refuses it.
const HTTP2_MAX_HEADER_LIST: usize = 2 * MAX_HEADER_BYTES;

/// The refusal of a request whose head is over [`MAX_REQUEST_TARGET`] or
/// [`MAX_HEADER_BYTES`], in the contract's error shape. Heads beyond what
/// hyper itself parses (HTTP/1.1: a request line and headers over about
/// 400 KiB, more than 100 header fields, a target over 64 KiB) never get
/// here: hyper answers those 431 or 414 with an empty body.
fn oversized_head<B>(req: &hyper::Request<B>) -> Option<crate::api::error::ApiError> {
    use crate::api::error::ApiError;
    let uri = req.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.scheme_str().map_or(0, |s| s.len() + 3);
    if target > MAX_REQUEST_TARGET {
        return Some(ApiError::UriTooLong(MAX_REQUEST_TARGET));
    }
    let headers: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers > MAX_HEADER_BYTES {
        return Some(ApiError::HeadersTooLarge(MAX_HEADER_BYTES));
    }
    None
}

/// The error a request body gives once `body_read_timeout` has passed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimedOut(pub Duration);

/// A request body that must end by a deadline.
struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    limit: Duration,
    /// Armed only when the body has to be waited for.
    timer: Option<Pin<Box<Sleep>>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|f| f.map_err(axum::Error::new))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(this.limit)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What the accept loop needs.
#[derive(Debug, Clone)]
pub(crate) struct ServeSettings {
    pub(crate) limits: Limits,
    /// The connection cap in force (see [`effective_max_connections`]).
    pub(crate) max_connections: usize,
    pub(crate) stream: StreamSettings,
}

/// The answer to a connection that finds every slot busy with a request.
const FULL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 1\r\ncontent-length: 85\r\n\r\n\
{\"error\":{\"code\":\"unavailable\",\"message\":\"too many open connections; retry shortly\"}}";

/// Serves `app` on `listener` until `stop` is cancelled, then lets every
/// connection finish its request and waits for them.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    settings: ServeSettings,
    stop: CancellationToken,
) -> io::Result<()> {
    let registry = Arc::new(Registry {
        conns: parking_lot::Mutex::new(HashMap::new()),
        empty: tokio::sync::Notify::new(),
    });
    let epoch = Instant::now();
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) {
                    // EMFILE and the like: the headroom should prevent it;
                    // wait a little for files to close.
                    warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        if !registry.make_room(settings.max_connections) {
            debug!(%peer, "every connection has a request in flight; refusing one");
            tokio::spawn(async move {
                let mut tcp = tcp;
                let _ = tokio::time::timeout(Duration::from_secs(1), tcp.write_all(FULL)).await;
            });
            continue;
        }
        next_id += 1;
        let now = Instant::now();
        let state = Arc::new(ConnState {
            busy: AtomicU32::new(0),
            idle_since: AtomicU64::new(stamp(epoch, now)),
            // The first request's head is waited for from the start.
            head_started: AtomicU64::new(stamp(epoch, now)),
            evict: CancellationToken::new(),
            task: AtomicWaker::new(),
        });
        registry.conns.lock().insert(next_id, state.clone());
        let registered = Registered {
            registry: registry.clone(),
            id: next_id,
        };
        tokio::spawn(connection(
            tcp,
            peer,
            app.clone(),
            ConnHandle { state, epoch },
            settings.clone(),
            stop.clone(),
            registered,
        ));
    }
    // Stop accepting; the connections end their requests (each saw `stop`).
    drop(listener);
    loop {
        let emptied = registry.empty.notified();
        if registry.conns.lock().is_empty() {
            break;
        }
        emptied.await;
    }
    Ok(())
}

/// Serves one connection until it ends, times out, is evicted, or the
/// server stops.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: axum::Router,
    handle: ConnHandle,
    settings: ServeSettings,
    stop: CancellationToken,
    registered: Registered,
) {
    let limits = settings.limits;
    let epoch = handle.epoch;
    let state = handle.state.clone();
    let io = Watched {
        io: tcp,
        state: state.clone(),
        epoch,
    };
    let io = TokioIo::new(GuardedIo::new(io, settings.stream, stop.clone()));
    let service = {
        let handle = handle.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = handle.busy();
            handle.state.head_started.store(0, Ordering::Release);
            let deadline = Instant::now() + limits.body_read_timeout;
            let mut req = req.map(|inner| {
                Body::new(DeadlineBody {
                    inner,
                    deadline,
                    limit: limits.body_read_timeout,
                    timer: None,
                })
            });
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(handle.clone());
            let answer = match oversized_head(&req) {
                None => futures::future::Either::Left(app.clone().oneshot(req)),
                Some(refusal) => futures::future::Either::Right(std::future::ready(Ok::<
                    _,
                    std::convert::Infallible,
                >(
                    axum::response::IntoResponse::into_response(refusal),
                ))),
            };
            async move {
                let response = answer.await;
                drop(busy);
                response
            }
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // HTTP/2's own limit on a request's header list (16 KiB by default,
    // answered by h2 itself) above rollcall's, so that rollcall answers.
    builder
        .http2()
        .max_header_list_size(HTTP2_MAX_HEADER_LIST as u32);
    let mut conn = pin!(builder.serve_connection_with_upgrades(io, service));
    let mut timer = pin!(tokio::time::sleep(limits.header_read_timeout));
    let mut stopping = pin!(stop.cancelled());
    let mut evicted = pin!(state.evict.cancelled());
    let mut shutting_down = false;
    let mut evicted_seen = false;
    let ended = std::future::poll_fn(|cx| {
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready("ended");
        }
        if !evicted_seen && evicted.as_mut().poll(cx).is_ready() {
            // Room for a new connection: an idle one goes at once.
            evicted_seen = true;
            if state.busy.load(Ordering::Acquire) == 0 {
                return Poll::Ready("evicted at the connection cap");
            }
            shutting_down = true;
            conn.as_mut().graceful_shutdown();
        }
        if !shutting_down && stopping.as_mut().poll(cx).is_ready() {
            // Ends an idle connection at once, a busy one after its answer.
            shutting_down = true;
            conn.as_mut().graceful_shutdown();
            if conn.as_mut().poll(cx).is_ready() {
                return Poll::Ready("ended");
            }
        }
        state.task.register(cx.waker());
        match state.deadline(epoch, &limits) {
            Some(d) => {
                if timer.deadline() != d {
                    timer.as_mut().reset(d);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready("timed out"),
                    Poll::Pending => Poll::Pending,
                }
            }
            None => Poll::Pending,
        }
    })
    .await;
    debug!(%peer, how = ended, "connection closed");
    // Dropping the connection closes the socket.
    drop(registered);
}

/// Whether `e` (a request body's error, as the handler saw it) is the
/// body's deadline passing.
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<BodyTimedOut>() {
            return Some(t.0);
        }
        cur = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_headroom_below_the_file_limit() {
        assert_eq!(effective_max_connections(10_000, None), 10_000);
        assert_eq!(effective_max_connections(10_000, Some(1_048_576)), 10_000);
        // 256 files: 64 + 16 kept free.
        assert_eq!(effective_max_connections(10_000, Some(256)), 176);
        assert_eq!(effective_max_connections(100, Some(256)), 100);
        assert_eq!(effective_max_connections(10_000, Some(20)), 16);
    }
}
