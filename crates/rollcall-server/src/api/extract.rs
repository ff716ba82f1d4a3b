//! Request extraction in the contract's order: authentication (401), then
//! permission (403), then body size (413), then content (400, 404, 409).
//!
//! [`Caller`] authenticates from the headers. Path and query parameters are
//! extracted without failing ([`PathId`], [`Q`]) so that their errors are
//! reported only after the permission check. Handlers take the body raw and
//! read it with [`json_body`] once the caller is allowed, so that an
//! unauthorised client is never told anything about its payload.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::extract::{FromRequestParts, Path, Query, Request};
use axum::http::header::{AUTHORIZATION, CONNECTION};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Version};
use axum::response::Response;
use futures::future::{BoxFuture, Either};
use http_body_util::BodyExt;
use rollcall_core::{TokenKind, WorkerId};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::AppState;
use crate::auth::Principal;

/// The body limit of most requests.
pub const BODY_LIMIT: usize = 64 * 1024;
/// The body limit of `POST /v1/heartbeats`.
pub const BATCH_BODY_LIMIT: usize = 1024 * 1024;

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts.headers.get(AUTHORIZATION).map(|v| v.as_bytes());
        match state
            .tokens
            .authenticate(&state.engine, header, state.clock.now())
        {
            Ok(p) => Ok(Caller(p)),
            Err(e) => Err(failed_authentication(state, &parts.extensions, e.into())),
        }
    }
}

/// The answer to a failed authentication: `error`, unless this client address
/// has failed too often lately (see `FailureThrottle`); then 429. A valid
/// token is never counted.
pub fn failed_authentication(
    state: &AppState,
    extensions: &axum::http::Extensions,
    error: ApiError,
) -> ApiError {
    let peer = extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>();
    if let Some(peer) = peer {
        if let Err(wait) = state.throttle.fail(peer.0.ip(), std::time::Instant::now()) {
            return ApiError::RateLimited {
                message: "too many failed authentications from this address; \
                          retry later with a valid token"
                    .into(),
                retry_after_secs: wait.as_secs() + 1,
            };
        }
    }
    error
}

fn kinds(allowed: &[TokenKind]) -> String {
    allowed
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

impl Caller {
    /// Requires one of the given token kinds.
    pub fn require(&self, allowed: &[TokenKind]) -> Result<(), ApiError> {
        if allowed.contains(&self.0.kind()) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "{} token may not make this call (needs {})",
                self.0.kind().with_article(),
                kinds(allowed)
            )))
        }
    }

    /// Requires the token of the worker named by the path (or admin, when
    /// `admin_too`). A worker token on any other worker's path is 403,
    /// whether or not that worker exists.
    pub fn require_own_worker(&self, path: &PathId, admin_too: bool) -> Result<(), ApiError> {
        match &self.0 {
            Principal::Worker(own) if path.0.as_deref() == Some(own.as_str()) => Ok(()),
            Principal::Worker(_) => Err(ApiError::forbidden(
                "a worker token may only act on its own worker",
            )),
            Principal::Admin if admin_too => Ok(()),
            other => Err(ApiError::forbidden(format!(
                "{} token may not make this call (needs this worker's own token{})",
                other.kind().with_article(),
                if admin_too { " or admin" } else { "" }
            ))),
        }
    }
}

/// The `{id}` path parameter, `None` if it could not be decoded.
#[derive(Debug, Clone)]
pub struct PathId(pub Option<String>);

impl PathId {
    /// The path as a worker id; anything else names no worker (404).
    pub fn worker(&self) -> Result<WorkerId, ApiError> {
        self.0
            .as_deref()
            .and_then(|s| WorkerId::parse(s).ok())
            .ok_or_else(|| ApiError::not_found("worker not found"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(PathId(
            Path::<String>::from_request_parts(parts, state)
                .await
                .ok()
                .map(|p| p.0),
        ))
    }
}

/// Query parameters, with any error held until the handler asks.
#[derive(Debug)]
pub struct Q<T>(pub Result<T, ApiError>);

impl<T> Q<T> {
    /// The parameters, or a 400 naming what is wrong.
    pub fn get(self) -> Result<T, ApiError> {
        self.0
    }
}

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(Q(Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| q.0)
            .map_err(|e| {
                ApiError::invalid(format!("invalid query: {}", e.body_text()))
            })))
    }
}

/// Reads the body up to `limit` bytes (413 beyond).
pub async fn read_body(body: Body, limit: usize) -> Result<bytes::Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Err(e) => match crate::conn::is_body_timeout(e.as_ref()) {
            Some(limit) => Err(ApiError::RequestTimeout(limit)),
            None => Err(ApiError::invalid(format!(
                "could not read the request body: {e}"
            ))),
        },
    }
}

/// Reads and parses a JSON body (413 beyond `limit`, 400 if malformed).
pub async fn json_body<T: DeserializeOwned>(body: Body, limit: usize) -> Result<T, ApiError> {
    let bytes = read_body(body, limit).await?;
    parse_json(&bytes)
}

/// Like [`json_body`], but an empty body is `None`.
pub async fn optional_json_body<T: DeserializeOwned>(
    body: Body,
    limit: usize,
) -> Result<Option<T>, ApiError> {
    let bytes = read_body(body, limit).await?;
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    parse_json(&bytes).map(Some)
}

fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every request body of the contract is a JSON object; serde would
    // also take an array for a struct (`["exited"]` as an offline body).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "invalid JSON body: expected a JSON object",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))
}

/// A request body that records whether it was read to the end. The body
/// itself is shared with the middleware, which can drain what a handler
/// left unread after the handler dropped its end.
struct Tracked {
    inner: Arc<parking_lot::Mutex<Body>>,
    done: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let mut inner = self.inner.lock();
        let polled = Pin::new(&mut *inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || inner.is_end_stream() {
            self.done.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.lock().is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.lock().size_hint()
    }
}

/// How much of an unread request body is read and discarded after the
/// answer is ready, so that the client gets to read the answer.
const DRAIN_LIMIT: usize = 4 * 1024 * 1024;
/// How long draining may take.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A layer for requests refused before their body was read to the end
/// (401, 403 and 413 come before the body is read). If the server closed the
/// connection with the rest of the body still arriving, the client would see
/// a reset instead of the answer; so what is left is read and discarded, up
/// to [`DRAIN_LIMIT`] bytes and [`DRAIN_TIMEOUT`]. A body beyond that is
/// answered with `Connection: close`, which at least keeps clients from
/// reusing the connection.
///
/// A request without a body (a single heartbeat, every `GET`) goes straight
/// to the service inside: no allocation, no boxed future.
#[derive(Debug, Clone, Copy, Default)]
pub struct CloseIfBodyUnreadLayer;

impl<S> tower::Layer<S> for CloseIfBodyUnreadLayer {
    type Service = CloseIfBodyUnread<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CloseIfBodyUnread { inner }
    }
}

/// The service of [`CloseIfBodyUnreadLayer`].
#[derive(Debug, Clone)]
pub struct CloseIfBodyUnread<S> {
    inner: S,
}

impl<S> tower::Service<Request> for CloseIfBodyUnread<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        if !has_body(&req) {
            return Either::Left(self.inner.call(req));
        }
        // The service made ready is the one that answers; a clone stays.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        Either::Right(Box::pin(async move {
            Ok(drain_unread(req, |req| async move {
                match inner.call(req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                }
            })
            .await)
        }))
    }
}

/// Whether a request may leave a body unread: HTTP/1 with a body that has
/// not ended (HTTP/2 resets only the stream, never the connection).
fn has_body(req: &Request) -> bool {
    !req.body().is_end_stream() && req.version() <= Version::HTTP_11
}

/// What [`CloseIfBodyUnreadLayer`] does, around any way of answering `req`
/// (a standby's forwarding to the active replica, too).
pub async fn drain_unread<F, Fut>(req: Request, answer: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    if !has_body(&req) {
        return answer(req).await;
    }
    let done = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(parking_lot::Mutex::new(Body::empty()));
    let req = req.map(|inner| {
        *shared.lock() = inner;
        Body::new(Tracked {
            inner: shared.clone(),
            done: done.clone(),
        })
    });
    let mut response = answer(req).await;
    if done.load(Ordering::Acquire) {
        return response;
    }
    let rest = Body::new(Tracked {
        inner: shared,
        done: done.clone(),
    });
    let drained = tokio::time::timeout(
        DRAIN_TIMEOUT,
        http_body_util::Limited::new(rest, DRAIN_LIMIT).collect(),
    )
    .await;
    if !matches!(drained, Ok(Ok(_))) || !done.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}
