//! API tokens: kinds, the secret format, hashing and comparison.
//!
//! A token is its kind's prefix followed by 64 hex characters (256 random
//! bits drawn by the caller). Only the SHA-256 of the whole token is ever
//! stored; the secret is shown once, when it is created. Hashes are compared
//! in constant time.
//!
//! [`TokenHash`] deliberately has no `Display` and a redacted `Debug`, so a
//! hash, let alone a secret, cannot end up in a log line by accident.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do (see the HTTP contract for the full table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    /// Everything.
    Admin,
    /// Register workers (and send batch heartbeats on their behalf).
    Enroll,
    /// Every GET, the event stream and the dashboard.
    Read,
    /// Heartbeat, drain and offline for its own worker only.
    Worker,
}

impl TokenKind {
    /// The prefix that starts every token of this kind.
    pub const fn prefix(self) -> &'static str {
        match self {
            TokenKind::Admin => "rc_admin_",
            TokenKind::Enroll => "rc_enroll_",
            TokenKind::Read => "rc_read_",
            TokenKind::Worker => "rc_worker_",
        }
    }

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            TokenKind::Admin => "admin",
            TokenKind::Enroll => "enroll",
            TokenKind::Read => "read",
            TokenKind::Worker => "worker",
        }
    }

    /// The wire name with its indefinite article, for messages: "an admin",
    /// "an enroll", "a read", "a worker".
    pub const fn with_article(self) -> &'static str {
        match self {
            TokenKind::Admin => "an admin",
            TokenKind::Enroll => "an enroll",
            TokenKind::Read => "a read",
            TokenKind::Worker => "a worker",
        }
    }

    /// The kind a presented token claims by its prefix, if any. The claim is
    /// only trusted once the token's hash has been found.
    pub fn of(token: &str) -> Option<TokenKind> {
        [
            TokenKind::Admin,
            TokenKind::Enroll,
            TokenKind::Read,
            TokenKind::Worker,
        ]
        .into_iter()
        .find(|k| token.starts_with(k.prefix()))
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<TokenKind> {
        match s {
            "admin" => Some(TokenKind::Admin),
            "enroll" => Some(TokenKind::Enroll),
            "read" => Some(TokenKind::Read),
            "worker" => Some(TokenKind::Worker),
            _ => None,
        }
    }

    /// Builds a new token secret from 32 random bytes.
    pub fn secret(self, random: [u8; 32]) -> String {
        format!("{}{}", self.prefix(), hex::encode(random))
    }
}

impl fmt::Display for TokenKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 of a token; what the store keeps instead of the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl TokenHash {
    /// Hashes a presented token.
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    /// Wraps stored hash bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TokenHash(bytes)
    }

    /// Parses stored hex.
    pub fn from_hex(s: &str) -> Option<Self> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenHash(out))
    }

    /// The hash as hex, for storage.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Constant-time equality, for checking a presented token against the
    /// one stored for a record.
    pub fn ct_eq(&self, other: &TokenHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenHash(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_carry_their_kind() {
        for kind in [
            TokenKind::Admin,
            TokenKind::Enroll,
            TokenKind::Read,
            TokenKind::Worker,
        ] {
            let s = kind.secret([0xab; 32]);
            assert_eq!(TokenKind::of(&s), Some(kind));
            assert_eq!(s.len(), kind.prefix().len() + 64);
            assert_eq!(TokenKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(TokenKind::of("Bearer x"), None);
    }

    #[test]
    fn messages_name_kinds_with_the_right_article() {
        assert_eq!(TokenKind::Admin.with_article(), "an admin");
        assert_eq!(TokenKind::Enroll.with_article(), "an enroll");
        assert_eq!(TokenKind::Read.with_article(), "a read");
        assert_eq!(TokenKind::Worker.with_article(), "a worker");
    }

    #[test]
    fn hashes_compare_and_stay_secret() {
        let a = TokenHash::of("rc_read_1");
        assert!(a.ct_eq(&TokenHash::of("rc_read_1")));
        assert!(!a.ct_eq(&TokenHash::of("rc_read_2")));
        assert_eq!(TokenHash::from_hex(&a.to_hex()), Some(a));
        assert_eq!(format!("{a:?}"), "TokenHash(<redacted>)");
    }
}
