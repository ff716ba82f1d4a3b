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
    /// The request target (path and query) is longer than the limit, in
    /// bytes.
    UriTooLong(usize),
    /// The request's header fields add up to more than the limit, in bytes.
    HeadersTooLarge(usize),
    /// The body did not arrive within `body_read_timeout`.
    RequestTimeout(std::time::Duration),
    /// Too many attempts or open resources; retry after the given seconds.
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    Unavailable(String),
    /// The server is at a capacity limit (the message says which); retry
    /// shortly.
    Busy(String),
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
    /// `conflict`, `payload_too_large`, `uri_too_long`, `headers_too_large`,
    /// `request_timeout`, `rate_limited`, `unavailable`, `internal`.
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
            ApiError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::NotReady(_) | ApiError::Busy(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
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
            ApiError::UriTooLong(_) => "uri_too_long",
            ApiError::HeadersTooLarge(_) => "headers_too_large",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable(_) | ApiError::NotReady(_) | ApiError::Busy(_) => "unavailable",
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
            | ApiError::NotReady(m)
            | ApiError::Busy(m)
            | ApiError::RateLimited { message: m, .. } => m.clone(),
            ApiError::RequestTimeout(limit) => format!(
                "the request body did not arrive within {} ms",
                limit.as_millis()
            ),
            ApiError::MethodNotAllowed => "method not allowed on this path".into(),
            ApiError::PayloadTooLarge(limit) => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            ApiError::UriTooLong(limit) => {
                format!(
                    "the request target (path and query) is longer than the limit of {limit} bytes"
                )
            }
            ApiError::HeadersTooLarge(limit) => {
                format!(
                    "the request's header fields add up to more than the limit of {limit} bytes"
                )
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
        let retry_after = match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Busy(_) => Some(1),
            _ => None,
        };
        let mut response = (self.status(), Json(self.body())).into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        if matches!(
            self,
            ApiError::RequestTimeout(_) | ApiError::UriTooLong(_) | ApiError::HeadersTooLarge(_)
        ) {
            // The rest of the body may still come (a refused head's body is
            // never read): the connection is not reused.
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
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
            WriteError::Forbidden(m) => ApiError::Forbidden(m),
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
