//! The client's error type.
//!
//! Two families are kept apart because callers react to them differently:
//!
//! - [`Error::Api`]: the server answered, with a non-2xx status and (normally)
//!   the contract's body `{"error": {"code": "…", "message": "…"}}`, parsed
//!   into an [`ApiError`] whose [`ErrorCode`] callers match on.
//! - [`Error::Transport`]: no answer — connection refused, timeout, reset.
//!   Whether to retry is the caller's call; [`Error::is_transient`] helps.
//!
//! The remaining variants are local: a response that does not decode, a bad
//! configuration or argument, and the worker handle's own states.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The machine-readable `code` of an API error.
///
/// Every code of the contract has a variant; a code this client does not know
/// (a newer server may add some) is kept as [`ErrorCode::Unknown`] rather than
/// failing the decoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: malformed JSON, wrong types, missing fields, values out of range.
    InvalidRequest,
    /// 401: missing, unknown, expired or revoked token.
    Unauthorized,
    /// 403: a valid token that may not make this call.
    Forbidden,
    /// 404: no such worker, machine or token.
    NotFound,
    /// 409: the call conflicts with the current state (e.g. draining an
    /// offline worker).
    Conflict,
    /// 413: the request body is too large.
    PayloadTooLarge,
    /// 429: too many requests.
    RateLimited,
    /// 503: the server (or its store) cannot serve right now.
    Unavailable,
    /// 500: a bug or an unexpected failure on the server.
    Internal,
    /// A code this client does not know, as received. Also used, as
    /// `http_<status>`, when the body was not the contract's error shape and
    /// the status has no code of its own (e.g. a proxy's 502 page).
    Unknown(String),
}

impl ErrorCode {
    /// Parses a wire code; never fails.
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "invalid_request" => ErrorCode::InvalidRequest,
            "unauthorized" => ErrorCode::Unauthorized,
            "forbidden" => ErrorCode::Forbidden,
            "not_found" => ErrorCode::NotFound,
            "conflict" => ErrorCode::Conflict,
            "payload_too_large" => ErrorCode::PayloadTooLarge,
            "rate_limited" => ErrorCode::RateLimited,
            "unavailable" => ErrorCode::Unavailable,
            "internal" => ErrorCode::Internal,
            other => ErrorCode::Unknown(other.to_owned()),
        }
    }

    /// The wire code.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown(code) => code,
        }
    }

    /// The HTTP status the contract pairs with this code, if it is a known
    /// one. Useful for the per-entry errors of a batch heartbeat, which carry
    /// a code but no status.
    pub fn status(&self) -> Option<StatusCode> {
        let s = match self {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Unknown(_) => return None,
        };
        Some(s)
    }

    /// The code the contract pairs with an HTTP status, if any: the fallback
    /// when an error body is not the contract's shape.
    pub fn from_status(status: StatusCode) -> ErrorCode {
        match status.as_u16() {
            400 => ErrorCode::InvalidRequest,
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            409 => ErrorCode::Conflict,
            413 => ErrorCode::PayloadTooLarge,
            429 => ErrorCode::RateLimited,
            500 => ErrorCode::Internal,
            503 => ErrorCode::Unavailable,
            other => ErrorCode::Unknown(format!("http_{other}")),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(ErrorCode::parse(&s))
    }
}

/// The inside of the contract's error body, `{"code": …, "message": …}`. It
/// is also the shape of a failed entry in a batch heartbeat's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong, for people. Do not match on it.
    pub message: String,
}

/// The wire envelope `{"error": ErrorBody}`.
#[derive(Deserialize)]
struct Envelope {
    error: ErrorBody,
}

/// An error answer from the server: a non-2xx status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {} {code}: {message}", status.as_u16())]
pub struct ApiError {
    /// The HTTP status of the answer.
    pub status: StatusCode,
    /// The contract's error code (inferred from the status if the body was
    /// not the contract's shape).
    pub code: ErrorCode,
    /// The server's human-readable message (or the start of a foreign body).
    pub message: String,
    /// The server's `Retry-After`, in seconds, if it sent one.
    pub retry_after: Option<Duration>,
}

impl ApiError {
    /// Longest piece of a foreign (non-contract) body kept as the message.
    const MAX_FOREIGN_MESSAGE: usize = 512;

    /// Builds the error from a response's status and body. A body that is
    /// not `{"error": {"code", "message"}}` (a proxy's HTML page, an empty
    /// body) still gives an error: its code comes from the status and its
    /// message from the start of the body.
    pub fn from_response(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Self {
        match serde_json::from_slice::<Envelope>(body) {
            Ok(Envelope { error }) => ApiError {
                status,
                code: error.code,
                message: error.message,
                retry_after,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let mut message: String = text
                    .trim()
                    .chars()
                    .take(Self::MAX_FOREIGN_MESSAGE)
                    .collect();
                if message.is_empty() {
                    message = status
                        .canonical_reason()
                        .unwrap_or("no error body")
                        .to_owned();
                }
                ApiError {
                    status,
                    code: ErrorCode::from_status(status),
                    message,
                    retry_after,
                }
            }
        }
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with an error status.
    #[error(transparent)]
    Api(#[from] ApiError),

    /// The request got no answer: connection refused or reset, timeout,
    /// broken body. With several servers configured this is the error of
    /// the last one tried.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The URL of the failed request (it never contains a token).
        url: String,
        /// What reqwest reported.
        #[source]
        source: reqwest::Error,
    },

    /// A 2xx answer whose body is not what the contract promises.
    #[error("unexpected response from {url} (HTTP {}): {source}", status.as_u16())]
    Decode {
        /// The URL of the request.
        url: String,
        /// The (successful) status of the answer.
        status: StatusCode,
        /// Why the body did not decode.
        #[source]
        source: serde_json::Error,
    },

    /// The event stream sent nothing, not even a keep-alive comment, for
    /// this long; the connection is presumed dead.
    #[error("the event stream was silent for {0:?}")]
    StreamIdle(Duration),

    /// A server URL that cannot be used.
    #[error("invalid server URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// Why it was refused.
        reason: String,
    },

    /// The client was built without any server URL.
    #[error("no server URL was configured")]
    NoServers,

    /// The HTTP client could not be built (e.g. no TLS backend).
    #[error("could not build the HTTP client: {0}")]
    Build(#[source] reqwest::Error),

    /// An argument the client refuses before sending anything, e.g. a
    /// machine id (`.` or `..`) that no URL path can carry.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The worker handle has no registered worker (yet, or any more).
    #[error("the worker is not registered")]
    NotRegistered,

    /// The worker handle's background task has ended.
    #[error("the worker's background task has stopped")]
    Stopped,
}

impl Error {
    /// The API error, if the server answered with one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&ErrorCode> {
        self.api().map(|e| &e.code)
    }

    /// The HTTP status, if the server answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api(e) => Some(e.status),
            Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether the server answered 401 (`unauthorized`): the token is
    /// missing, unknown, expired, revoked or rotated.
    pub fn is_unauthorized(&self) -> bool {
        self.status() == Some(StatusCode::UNAUTHORIZED)
    }

    /// Whether the request got no answer at all.
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport { .. } | Error::StreamIdle(_))
    }

    /// Whether trying the same call again later may succeed without anyone
    /// changing anything: no answer, or an answer of 429, 500, 502, 503 or
    /// 504.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::StreamIdle(_) => true,
            Error::Api(e) => matches!(e.status.as_u16(), 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [(&str, u16); 9] = [
        ("invalid_request", 400),
        ("unauthorized", 401),
        ("forbidden", 403),
        ("not_found", 404),
        ("conflict", 409),
        ("payload_too_large", 413),
        ("rate_limited", 429),
        ("unavailable", 503),
        ("internal", 500),
    ];

    #[test]
    fn every_contract_code_round_trips_with_its_status() {
        for (wire, status) in ALL {
            let code = ErrorCode::parse(wire);
            assert!(!matches!(code, ErrorCode::Unknown(_)), "{wire}");
            assert_eq!(code.as_str(), wire);
            assert_eq!(code.status().map(|s| s.as_u16()), Some(status));
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(ErrorCode::from_status(status), code);
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{wire}\""));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
    }

    #[test]
    fn unknown_codes_are_kept() {
        let code: ErrorCode = serde_json::from_str("\"teapot\"").unwrap();
        assert_eq!(code, ErrorCode::Unknown("teapot".into()));
        assert_eq!(code.as_str(), "teapot");
        assert_eq!(code.status(), None);
    }

    #[test]
    fn parses_the_contract_error_body() {
        let body = br#"{"error": {"code": "not_found", "message": "no worker wkr_X"}}"#;
        let e = ApiError::from_response(StatusCode::NOT_FOUND, body, None);
        assert_eq!(e.status, StatusCode::NOT_FOUND);
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(e.message, "no worker wkr_X");
        assert_eq!(e.to_string(), "HTTP 404 not_found: no worker wkr_X");
    }

    #[test]
    fn the_body_code_wins_over_the_status() {
        // A server is free to pair codes and statuses as the contract says;
        // the client reports what it got rather than second-guessing it.
        let body = br#"{"error":{"code":"conflict","message":"m","extra":1},"more":true}"#;
        let e = ApiError::from_response(StatusCode::BAD_REQUEST, body, None);
        assert_eq!(e.code, ErrorCode::Conflict);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn foreign_bodies_fall_back_to_the_status() {
        let e = ApiError::from_response(
            StatusCode::BAD_GATEWAY,
            b"<html>bad gateway</html>",
            Some(Duration::from_secs(3)),
        );
        assert_eq!(e.code, ErrorCode::Unknown("http_502".into()));
        assert_eq!(e.message, "<html>bad gateway</html>");
        assert_eq!(e.retry_after, Some(Duration::from_secs(3)));

        let e = ApiError::from_response(StatusCode::SERVICE_UNAVAILABLE, b"", None);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.message, "Service Unavailable");

        let long = vec![b'x'; 10_000];
        let e = ApiError::from_response(StatusCode::INTERNAL_SERVER_ERROR, &long, None);
        assert_eq!(e.message.len(), ApiError::MAX_FOREIGN_MESSAGE);
    }

    #[test]
    fn classification_helpers() {
        let api = |status: u16| {
            Error::Api(ApiError::from_response(
                StatusCode::from_u16(status).unwrap(),
                b"",
                None,
            ))
        };
        assert!(api(401).is_unauthorized());
        assert!(!api(403).is_unauthorized());
        for s in [429, 500, 502, 503, 504] {
            assert!(api(s).is_transient(), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 413] {
            assert!(!api(s).is_transient(), "{s}");
        }
        assert_eq!(api(409).code(), Some(&ErrorCode::Conflict));
        assert!(Error::StreamIdle(Duration::from_secs(1)).is_transient());
        assert!(!Error::NotRegistered.is_transient());
        assert_eq!(Error::NoServers.status(), None);
    }
}
