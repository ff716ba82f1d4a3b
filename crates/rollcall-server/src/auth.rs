//! Authentication: who is calling.
//!
//! Worker tokens are checked against the liveness engine (each worker holds
//! the hash of its current token). Admin, enroll and read tokens live in the
//! store and are cached here by hash. A token configured through
//! `ROLLCALL_ADMIN_TOKEN` (or `admin_token_file`) is never stored; only its
//! hash is kept in memory.
//!
//! Every comparison of a presented token is between SHA-256 hashes, in
//! constant time; the secret itself is never stored, logged or echoed.

use std::collections::HashMap;

use parking_lot::{Mutex, RwLock};
use rollcall_core::{Timestamp, TokenHash, TokenId, TokenKind, WorkerId};
use rollcall_store::TokenRecord;

use crate::engine::{Engine, TokenOwner};

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    Enroll,
    Read,
    Worker(WorkerId),
}

impl Principal {
    /// The kind of token that authenticated the caller.
    pub fn kind(&self) -> TokenKind {
        match self {
            Principal::Admin => TokenKind::Admin,
            Principal::Enroll => TokenKind::Enroll,
            Principal::Read => TokenKind::Read,
            Principal::Worker(_) => TokenKind::Worker,
        }
    }
}

/// Why a caller could not be authenticated (always 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send an Authorization: Bearer <token> header")]
    Missing,
    #[error("malformed Authorization header: expected Bearer <token>")]
    Malformed,
    #[error("unknown, expired or revoked token")]
    Invalid,
}

#[derive(Debug, Clone)]
struct Cached {
    id: TokenId,
    kind: TokenKind,
    expires_at: Option<Timestamp>,
}

/// The cache of admin, enroll and read tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    by_hash: RwLock<HashMap<TokenHash, Cached>>,
    /// The configured admin token, if any (never stored).
    configured_admin: Option<TokenHash>,
    /// Last-use times not yet written behind.
    uses: Mutex<HashMap<TokenId, Timestamp>>,
}

impl Tokens {
    /// A cache holding `records`, plus the configured admin token.
    pub fn new(records: Vec<TokenRecord>, configured_admin: Option<&str>) -> Self {
        let t = Tokens {
            configured_admin: configured_admin.map(TokenHash::of),
            ..Tokens::default()
        };
        for r in records {
            t.insert(&r);
        }
        t
    }

    /// Adds a token (after it was stored).
    pub fn insert(&self, r: &TokenRecord) {
        self.by_hash.write().insert(
            r.hash,
            Cached {
                id: r.id.clone(),
                kind: r.kind,
                expires_at: r.expires_at,
            },
        );
    }

    /// Replaces every stored token by `records` (a replica that did not
    /// make the change reloads them from the store).
    pub fn replace_stored(&self, records: Vec<TokenRecord>) {
        let fresh: HashMap<TokenHash, Cached> = records
            .into_iter()
            .map(|r| {
                (
                    r.hash,
                    Cached {
                        id: r.id,
                        kind: r.kind,
                        expires_at: r.expires_at,
                    },
                )
            })
            .collect();
        *self.by_hash.write() = fresh;
    }

    /// Removes tokens by id (after they were deleted from the store).
    pub fn remove(&self, ids: &[TokenId]) {
        self.by_hash.write().retain(|_, c| !ids.contains(&c.id));
    }

    /// Takes the last-use times to write behind.
    pub fn take_uses(&self) -> Vec<(TokenId, Timestamp)> {
        std::mem::take(&mut *self.uses.lock()).into_iter().collect()
    }

    /// Puts back uses whose write failed, so the next flush retries them
    /// (a later use of the same token wins).
    pub fn restore_uses(&self, uses: Vec<(TokenId, Timestamp)>) {
        let mut pending = self.uses.lock();
        for (id, at) in uses {
            let t = pending.entry(id).or_insert(at);
            *t = (*t).max(at);
        }
    }

    /// Authenticates the value of an `Authorization` header.
    pub fn authenticate(
        &self,
        engine: &Engine,
        header: Option<&[u8]>,
        now: Timestamp,
    ) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?;
        let header = std::str::from_utf8(header).map_err(|_| AuthError::Malformed)?;
        let token = bearer(header).ok_or(AuthError::Malformed)?;
        self.authenticate_token(engine, token, now)
    }

    /// Authenticates a bare token.
    pub fn authenticate_token(
        &self,
        engine: &Engine,
        token: &str,
        now: Timestamp,
    ) -> Result<Principal, AuthError> {
        let hash = TokenHash::of(token);
        if let Some(admin) = &self.configured_admin {
            if admin.ct_eq(&hash) {
                return Ok(Principal::Admin);
            }
        }
        match TokenKind::of(token) {
            Some(TokenKind::Worker) => match engine.token_owner(&hash) {
                TokenOwner::Worker(id) => Ok(Principal::Worker(id)),
                TokenOwner::Unknown => Err(AuthError::Invalid),
            },
            Some(claimed) => {
                let cached = self.by_hash.read().get(&hash).cloned();
                match cached {
                    Some(c) if c.kind == claimed && c.expires_at.is_none_or(|e| now < e) => {
                        self.uses.lock().insert(c.id, now);
                        Ok(match c.kind {
                            TokenKind::Admin => Principal::Admin,
                            TokenKind::Enroll => Principal::Enroll,
                            TokenKind::Read => Principal::Read,
                            TokenKind::Worker => return Err(AuthError::Invalid),
                        })
                    }
                    _ => Err(AuthError::Invalid),
                }
            }
            None => Err(AuthError::Invalid),
        }
    }

    /// Whether any stored admin token exists (the generated one).
    pub fn has_stored_admin(&self) -> bool {
        self.by_hash
            .read()
            .values()
            .any(|c| c.kind == TokenKind::Admin)
    }
}

/// The token of a `Bearer` header; the scheme is case-insensitive.
pub(crate) fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn kinds_expiry_and_configured_admin() {
        let engine = Engine::new();
        let now = Timestamp::from_millis(10_000);
        let read = TokenKind::Read.secret([1; 32]);
        let rec = TokenRecord {
            id: TokenId::generate(now, [1; 10]),
            kind: TokenKind::Read,
            name: "r".into(),
            hash: TokenHash::of(&read),
            created_at: now,
            expires_at: Some(Timestamp::from_millis(20_000)),
            last_used_at: None,
        };
        let tokens = Tokens::new(vec![rec.clone()], Some("my-admin-secret"));
        assert_eq!(
            tokens.authenticate_token(&engine, &read, now),
            Ok(Principal::Read)
        );
        assert_eq!(tokens.take_uses(), vec![(rec.id.clone(), now)]);
        // Expired at its expiry instant.
        assert_eq!(
            tokens.authenticate_token(&engine, &read, Timestamp::from_millis(20_000)),
            Err(AuthError::Invalid)
        );
        // The same secret with another kind's prefix is not the same token.
        let forged = read.replacen("rc_read_", "rc_admin_", 1);
        assert_eq!(
            tokens.authenticate_token(&engine, &forged, now),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            tokens.authenticate_token(&engine, "my-admin-secret", now),
            Ok(Principal::Admin)
        );
        tokens.remove(&[rec.id]);
        assert_eq!(
            tokens.authenticate_token(&engine, &read, now),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            tokens.authenticate(&engine, None, now),
            Err(AuthError::Missing)
        );
        assert_eq!(
            tokens.authenticate(&engine, Some(b"Token x"), now),
            Err(AuthError::Malformed)
        );
    }
}
