//! Operations endpoints: health, readiness, metrics, on-demand cleanup,
//! OpenAPI.

use axum::body::Body;
use axum::extract::State;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use rollcall_core::{TokenHash, TokenKind};

use super::error::{ApiError, ErrorBody};
use super::extract::{read_body, Caller, BODY_LIMIT};
use super::AppState;
use crate::auth::{self, Principal};
use crate::cleanup::{CleanupReport, StaleReport};

/// Liveness of the process.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", body = String, example = "ok")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store can commit. Unless a write finished within the
/// last second, a one-row write transaction proves it (a full disk, an I/O
/// error or a lost database fail it); while the last write failed, the
/// answer is 503 with the reason. A standby replica is also not ready while
/// the active replica does not answer it (frozen, or cut off): it could
/// only refuse the changes it is given.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, example = "ready"),
        (status = 503, description = "The store cannot commit, or does not answer; or, on a standby replica, the active replica does not answer", body = ErrorBody),
    ))]
pub async fn readyz(State(s): State<AppState>) -> Result<&'static str, ApiError> {
    if let Some(reason) = s.active_reach.as_ref().and_then(|r| r.unreachable()) {
        return Err(ApiError::NotReady(reason));
    }
    if let Some(reason) = s.store_health.check(s.store.as_ref(), s.clock.now()).await {
        return Err(ApiError::NotReady(reason));
    }
    s.store.ping().await?;
    Ok("ready")
}

/// Prometheus metrics in the text exposition format. No token is needed
/// unless the server has a `metrics_token`; then that token or an admin
/// token is.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security((), ("bearer" = [])))]
pub async fn metrics(
    State(s): State<AppState>,
    request: axum::extract::Request,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(expected) = &s.metrics_token {
        authorize_scrape(&s, expected, request.headers()).map_err(|e| match e {
            // Counted like any failed authentication, per client address.
            e @ ApiError::Unauthorized(_) => {
                super::extract::failed_authentication(&s, request.extensions(), e)
            }
            e => e,
        })?;
    }
    // The census walks every worker: off the async threads.
    let (engine, metrics) = (s.engine.clone(), s.metrics.clone());
    let text = tokio::task::spawn_blocking(move || metrics.render(&engine.census()))
        .await
        .map_err(|_| ApiError::Internal)?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text))
}

/// The metrics token, or else an admin token.
fn authorize_scrape(
    s: &AppState,
    expected: &TokenHash,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let header = headers.get(AUTHORIZATION).map(|v| v.as_bytes());
    let presented = header
        .and_then(|h| std::str::from_utf8(h).ok())
        .and_then(auth::bearer);
    if presented.is_some_and(|t| TokenHash::of(t).ct_eq(expected)) {
        return Ok(());
    }
    match s.tokens.authenticate(&s.engine, header, s.clock.now())? {
        Principal::Admin => Ok(()),
        other => Err(ApiError::forbidden(format!(
            "{} token may not read metrics (needs the metrics token or admin)",
            other.kind().with_article()
        ))),
    }
}

/// Run the stale sweep now.
#[utoipa::path(post, path = "/v1/cleanup/stale", tag = "cleanup",
    responses(
        (status = 200, body = StaleReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn cleanup_stale(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<StaleReport>, ApiError> {
    caller.require(&[TokenKind::Admin])?;
    read_body(body, BODY_LIMIT).await?;
    let report = s.cleaner.detect_stale_workers().await?;
    tracing::info!(task = "detect_stale_workers", trigger = "api", result = %serde_json::to_string(&report).unwrap_or_default(), "cleanup run");
    Ok(Json(report))
}

/// Run every cleanup task now.
#[utoipa::path(post, path = "/v1/cleanup/all", tag = "cleanup",
    responses(
        (status = 200, body = CleanupReport),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn cleanup_all(
    State(s): State<AppState>,
    caller: Caller,
    body: Body,
) -> Result<Json<CleanupReport>, ApiError> {
    caller.require(&[TokenKind::Admin])?;
    read_body(body, BODY_LIMIT).await?;
    let report = s.cleaner.run_all_cleanup_tasks().await?;
    tracing::info!(task = "run_all_cleanup_tasks", trigger = "api", result = %serde_json::to_string(&report).unwrap_or_default(), "cleanup run");
    Ok(Json(report))
}

/// The HTTP contract as OpenAPI 3, with this server's bounds.
pub async fn openapi(State(s): State<AppState>) -> impl IntoResponse {
    (StatusCode::OK, Json(super::openapi::document(&s.policy)))
}
