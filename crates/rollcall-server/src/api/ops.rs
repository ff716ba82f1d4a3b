//! Operations endpoints: health, readiness, on-demand cleanup, OpenAPI.

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use rollcall_core::TokenKind;

use super::error::{ApiError, ErrorBody};
use super::extract::{read_body, Caller, BODY_LIMIT};
use super::AppState;
use crate::cleanup::{CleanupReport, StaleReport};

/// Liveness of the process.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process runs", body = String, example = "ok")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = String, example = "ready"),
        (status = 503, description = "The store does not answer", body = ErrorBody),
    ))]
pub async fn readyz(State(s): State<AppState>) -> Result<&'static str, ApiError> {
    s.store.ping().await?;
    Ok("ready")
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

/// The HTTP contract as OpenAPI 3.
pub async fn openapi() -> impl IntoResponse {
    (StatusCode::OK, Json(super::openapi::document()))
}
