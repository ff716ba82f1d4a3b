//! [`TokenSecret`]: a bearer token that cannot end up in a log line by
//! accident.
//!
//! rollcall shows a token's secret exactly once, when it is created, and the
//! server never logs one (ARCHITECTURE.md, invariant 9). The client keeps
//! that promise on its side: the secret is only reachable through
//! [`TokenSecret::expose`], and `Debug` prints the token's kind, never its
//! value, so `{:?}` on a [`Client`](crate::Client) or a
//! [`Registration`](crate::Registration) is safe to log.

use std::fmt;

use rollcall_core::TokenKind;
use serde::{Deserialize, Serialize};

/// A bearer token (`rc_admin_…`, `rc_enroll_…`, `rc_read_…` or
/// `rc_worker_…`), redacted in `Debug` output.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// Wraps a token as given by the server or the user.
    pub fn new(token: impl Into<String>) -> Self {
        TokenSecret(token.into())
    }

    /// The secret itself, for the `Authorization` header or for showing it
    /// once to the user who created it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The kind the token claims by its prefix, if it has a known one. Only
    /// the server can tell whether the token is valid.
    pub fn kind(&self) -> Option<TokenKind> {
        TokenKind::of(&self.0)
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind() {
            Some(kind) => write!(f, "TokenSecret({kind}, <redacted>)"),
            None => f.write_str("TokenSecret(<redacted>)"),
        }
    }
}

impl From<String> for TokenSecret {
    fn from(s: String) -> Self {
        TokenSecret(s)
    }
}

impl From<&str> for TokenSecret {
    fn from(s: &str) -> Self {
        TokenSecret(s.to_owned())
    }
}

impl From<&String> for TokenSecret {
    fn from(s: &String) -> Self {
        TokenSecret(s.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let t = TokenSecret::new("rc_worker_0123456789abcdef");
        let shown = format!("{t:?}");
        assert_eq!(shown, "TokenSecret(worker, <redacted>)");
        assert!(!shown.contains("0123"));
        assert_eq!(
            format!("{:?}", TokenSecret::from("hunter2")),
            "TokenSecret(<redacted>)"
        );
    }

    #[test]
    fn serialises_as_a_plain_string() {
        let t = TokenSecret::from("rc_enroll_x");
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"rc_enroll_x\"");
        let back: TokenSecret = serde_json::from_str("\"rc_enroll_x\"").unwrap();
        assert_eq!(back, t);
        assert_eq!(back.kind(), Some(TokenKind::Enroll));
    }
}
