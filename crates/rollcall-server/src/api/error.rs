//! The HTTP error type: one enum, one JSON shape.
//!
//! Every error answers `{"error": {"code": "...", "message": "..."}}`. Client
//! mistakes are 4xx with a message that says what to fix; server faults are
//! 5xx with an opaque message, their cause logged here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::writer::WriteError;

/// An error answered to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidRequest(String),
    Unauthorized(String),
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed,
    Conflict(String),
    PayloadTooLarge(usize),
    Unavailable(String),
    /// `/readyz`: not ready, for the reason given (shown to the caller: it
    /// is what an operator needs to see).
    NotReady(String),
    Internal,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// One of `invalid_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `conflict`, `payload_too_large`, `rate_limited`, `unavailable`,
    /// `internal`.
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        ApiError::InvalidRequest(msg.into())
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        ApiError::Forbidden(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiError::NotFound(msg.into())
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) | ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) | ApiError::MethodNotAllowed => "invalid_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unavailable(_) | ApiError::NotReady(_) => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// The human message.
    pub fn message(&self) -> String {
        match self {
            ApiError::InvalidRequest(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::NotFound(m)
            | ApiError::Conflict(m)
            | ApiError::NotReady(m) => m.clone(),
            ApiError::MethodNotAllowed => "method not allowed on this path".into(),
            ApiError::PayloadTooLarge(limit) => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            ApiError::Unavailable(_) => {
                "the server cannot reach its database right now; retry shortly".into()
            }
            ApiError::Internal => "internal error".into(),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.message(),
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // At debug level: a store that cannot commit is logged once per
        // incident (`health.rs`), not once per refused request.
        if let ApiError::Unavailable(cause) = &self {
            tracing::debug!(cause = %cause, "answering 503");
        }
        (self.status(), Json(self.body())).into_response()
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Unauthorized(e.to_string())
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::NotFound => ApiError::not_found("worker not found"),
            WriteError::Conflict(m) => ApiError::Conflict(m),
            WriteError::Unavailable(m) => ApiError::Unavailable(m),
        }
    }
}

impl From<crate::cleanup::CleanupError> for ApiError {
    fn from(e: crate::cleanup::CleanupError) -> Self {
        match e {
            crate::cleanup::CleanupError::Store(e) => e.into(),
            crate::cleanup::CleanupError::Write(e) => e.into(),
        }
    }
}

impl From<rollcall_store::StoreError> for ApiError {
    fn from(e: rollcall_store::StoreError) -> Self {
        match e {
            rollcall_store::StoreError::Corrupt(m) => {
                tracing::error!(error = %m, "corrupt data in the store");
                ApiError::Internal
            }
            other => ApiError::Unavailable(other.to_string()),
        }
    }
}
