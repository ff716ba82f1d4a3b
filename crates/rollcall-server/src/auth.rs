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
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use rollcall_core::{
    Labels, MachineId, Timestamp, TokenHash, TokenId, TokenKind, TokenScope, WorkerId, WorkerName,
};
use rollcall_store::TokenRecord;

use crate::engine::{Engine, TokenOwner};

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin,
    /// An enroll token, with its scope if it has one.
    Enroll(Option<Arc<TokenScope>>),
    Read,
    Worker(WorkerId),
}

impl Principal {
    /// The kind of token that authenticated the caller.
    pub fn kind(&self) -> TokenKind {
        match self {
            Principal::Admin => TokenKind::Admin,
            Principal::Enroll(_) => TokenKind::Enroll,
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
    scope: Option<Arc<TokenScope>>,
}

impl From<&TokenRecord> for Cached {
    fn from(r: &TokenRecord) -> Self {
        Cached {
            id: r.id.clone(),
            kind: r.kind,
            expires_at: r.expires_at,
            scope: r.scope.clone().map(Arc::new),
        }
    }
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
        self.by_hash.write().insert(r.hash, Cached::from(r));
    }

    /// Replaces every stored token by `records` (a replica that did not
    /// make the change reloads them from the store).
    pub fn replace_stored(&self, records: Vec<TokenRecord>) {
        let fresh: HashMap<TokenHash, Cached> =
            records.iter().map(|r| (r.hash, Cached::from(r))).collect();
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
                            TokenKind::Enroll => Principal::Enroll(c.scope),
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

    /// The worker a worker token belongs to, if it is one; records no use
    /// (for the batch, where only worker tokens authenticate an entry).
    pub fn worker_of(&self, engine: &Engine, token: &str) -> Option<WorkerId> {
        if TokenKind::of(token) != Some(TokenKind::Worker) {
            return None;
        }
        match engine.token_owner(&TokenHash::of(token)) {
            TokenOwner::Worker(id) => Some(id),
            TokenOwner::Unknown => None,
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

/// Why a registration by an enroll token with `scope` is refused (403), or
/// `None` when the worker is inside the scope: its machine id matches one
/// of the scope's patterns, and both the labels it is registered with and,
/// when the name is already registered on that machine, the labels it has
/// now carry every label the scope requires. (The second keeps a scoped
/// token from taking over a worker outside its scope by registering its
/// name with new labels.)
pub fn outside_scope(
    scope: &TokenScope,
    machine: &MachineId,
    name: &WorkerName,
    labels: &Labels,
    existing: Option<&Labels>,
) -> Option<String> {
    if !scope.admits_machine(machine) {
        return Some(format!(
            "machine.id {machine} is outside this enroll token's scope (machines {})",
            scope.machines().unwrap_or_default().join(", ")
        ));
    }
    if let Some((k, v)) = scope.missing_label(labels) {
        return Some(format!(
            "labels must include {k}={v}: this enroll token's scope requires it"
        ));
    }
    if let Some((k, v)) = existing.and_then(|l| scope.missing_label(l)) {
        return Some(format!(
            "worker {name} on {machine} is registered without the label {k}={v} this enroll \
             token's scope requires; only a token whose scope it is in, or an admin token, may \
             register it again"
        ));
    }
    None
}

/// Failed authentication, throttled per client address: a token bucket of
/// `burst` failures, refilled by one every `refill`. Only failures take
/// from it, and a valid token is always served, so workers that share an
/// address with a misbehaving client keep their heartbeats; the failures
/// beyond the bucket are answered 429 `rate_limited` instead of 401.
#[derive(Debug)]
pub struct FailureThrottle {
    burst: f64,
    refill: std::time::Duration,
    buckets: Mutex<HashMap<std::net::IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed (fractional while refilling).
    left: f64,
    at: std::time::Instant,
}

/// Addresses remembered at most; beyond, full buckets are forgotten.
const MAX_TRACKED: usize = 10_000;

impl FailureThrottle {
    pub fn new(burst: usize, refill: std::time::Duration) -> Self {
        FailureThrottle {
            burst: burst as f64,
            refill,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failed authentication from `ip` at `now`; `Err` with how
    /// long until the next failure is allowed once the bucket is empty.
    pub fn fail(
        &self,
        ip: std::net::IpAddr,
        now: std::time::Instant,
    ) -> Result<(), std::time::Duration> {
        let refill = self.refill.as_secs_f64();
        let burst = self.burst;
        let level = |b: &Bucket| {
            let gained = now.saturating_duration_since(b.at).as_secs_f64() / refill;
            (b.left + gained).min(burst)
        };
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            buckets.retain(|_, b| level(b) < burst);
            if buckets.len() >= MAX_TRACKED {
                // A spread-out flood: start over rather than grow.
                buckets.clear();
            }
        }
        let b = buckets.entry(ip).or_insert(Bucket {
            left: burst,
            at: now,
        });
        let left = level(b);
        b.at = now;
        if left >= 1.0 {
            b.left = left - 1.0;
            Ok(())
        } else {
            b.left = left;
            Err(std::time::Duration::from_secs_f64((1.0 - left) * refill))
        }
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
    fn failures_are_throttled_per_address_and_refill() {
        let t = FailureThrottle::new(3, std::time::Duration::from_secs(1));
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = std::time::Instant::now();
        for _ in 0..3 {
            assert_eq!(t.fail(a, t0), Ok(()));
        }
        let wait = t.fail(a, t0).unwrap_err();
        assert_eq!(wait, std::time::Duration::from_secs(1));
        // Another address has its own bucket.
        assert_eq!(t.fail(b, t0), Ok(()));
        // One failure regained per second.
        let t1 = t0 + std::time::Duration::from_millis(1500);
        assert_eq!(t.fail(a, t1), Ok(()));
        assert!(t.fail(a, t1).is_err());
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn an_enroll_token_carries_its_scope() {
        let engine = Engine::new();
        let now = Timestamp::from_millis(10_000);
        let secret = TokenKind::Enroll.secret([2; 32]);
        let scope =
            TokenScope::parse_input(Some(vec!["gpu-*".into()]), Default::default()).unwrap();
        let rec = TokenRecord {
            id: TokenId::generate(now, [2; 10]),
            kind: TokenKind::Enroll,
            name: "gpus".into(),
            hash: TokenHash::of(&secret),
            created_at: now,
            expires_at: None,
            last_used_at: None,
            scope: Some(scope.clone()),
        };
        let tokens = Tokens::new(vec![rec.clone()], None);
        let scoped = Principal::Enroll(Some(Arc::new(scope)));
        assert_eq!(
            tokens.authenticate_token(&engine, &secret, now),
            Ok(scoped.clone())
        );
        // A replica reloading the tokens from the store keeps the scope.
        tokens.replace_stored(vec![rec.clone()]);
        assert_eq!(tokens.authenticate_token(&engine, &secret, now), Ok(scoped));
        let unscoped = TokenRecord { scope: None, ..rec };
        tokens.replace_stored(vec![unscoped]);
        assert_eq!(
            tokens.authenticate_token(&engine, &secret, now),
            Ok(Principal::Enroll(None))
        );
    }

    #[test]
    fn outside_scope_names_what_is_outside() {
        let scope = TokenScope::parse_input(
            Some(vec!["gpu-*".into()]),
            [("pool".to_owned(), "gpu".to_owned())].into(),
        )
        .unwrap();
        let m = |s: &str| MachineId::parse(s).unwrap();
        let name = WorkerName::parse("w").unwrap();
        let gpu = Labels::parse([("pool".to_owned(), "gpu".to_owned())].into()).unwrap();
        let none = Labels::default();
        assert_eq!(outside_scope(&scope, &m("gpu-1"), &name, &gpu, None), None);
        assert_eq!(
            outside_scope(&scope, &m("gpu-1"), &name, &gpu, Some(&gpu)),
            None
        );
        let why = outside_scope(&scope, &m("cpu-1"), &name, &gpu, None).unwrap();
        assert!(why.starts_with("machine.id cpu-1 is outside"), "{why}");
        let why = outside_scope(&scope, &m("gpu-1"), &name, &none, None).unwrap();
        assert!(why.starts_with("labels must include pool=gpu"), "{why}");
        let why = outside_scope(&scope, &m("gpu-1"), &name, &gpu, Some(&none)).unwrap();
        assert!(
            why.starts_with("worker w on gpu-1 is registered without"),
            "{why}"
        );
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
            scope: None,
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
