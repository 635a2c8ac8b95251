//! Reporting-client tokens: what they look like, how they are checked.
//!
//! A token is 32 random bytes (256 bits) shown once, as `et_<64 hex digits>`,
//! when it is issued. Only its SHA-256 is stored, so a copy of the database
//! does not let anyone report. A token is scoped to one election and
//! optionally one ballot box.
//!
//! Every request needs its token checked, and at thousands of requests per
//! second a PostgreSQL query each would cost more than the report itself. So
//! answers (including "unknown") are cached for [`TokenCache::ttl`]: a revoked
//! token stops working within that time (5 s by default), which is the price
//! of the cache and is documented in the README.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use election_core::{BallotBoxId, ElectionId, StoreError};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The prefix of every token, so a leaked one is recognisable in a scan.
pub const TOKEN_PREFIX: &str = "et_";

/// What a valid token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    /// The election it may report to.
    pub election: ElectionId,
    /// The only ballot box it may report for, if bound to one.
    pub ballot_box: Option<BallotBoxId>,
}

/// Finds the scope of a token by its SHA-256 (`None`: unknown or revoked).
pub trait TokenLookup: Send + Sync {
    /// Looks a token hash up.
    fn find(&self, sha256: &[u8; 32]) -> Result<Option<Scope>, StoreError>;
}

/// A new random token, as shown to the operator once.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// The stored form of a token.
pub fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The token of an `Authorization: Bearer <token>` header value, if that is
/// what it is.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Cached answers by token hash, with when they were looked up.
type Entries = HashMap<[u8; 32], (Option<Scope>, Instant)>;

/// Caches token lookups for a short time.
pub struct TokenCache {
    lookup: Arc<dyn TokenLookup>,
    ttl: Duration,
    entries: Mutex<Entries>,
}

/// Most entries kept; a flood of random tokens cannot grow the cache beyond
/// this.
const MAX_ENTRIES: usize = 100_000;

impl TokenCache {
    /// A cache in front of `lookup` keeping answers for `ttl`.
    pub fn new(lookup: Arc<dyn TokenLookup>, ttl: Duration) -> TokenCache {
        TokenCache {
            lookup,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// How long an answer is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The scope of the token whose [`hash`] is `key` (blocking: may query
    /// the store). Callers hash the token once and use the hash for the
    /// cache, the store and the rate limit.
    pub fn scope(&self, key: &[u8; 32]) -> Result<Option<Scope>, StoreError> {
        if let Some(scope) = self.cached(key) {
            return Ok(scope);
        }
        let scope = self.lookup.find(key)?;
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(*key, (scope.clone(), Instant::now()));
        Ok(scope)
    }

    /// The cached scope of the token whose [`hash`] is `key`, if fresh (no
    /// store access).
    pub fn cached(&self, key: &[u8; 32]) -> Option<Option<Scope>> {
        let entries = self.lock();
        let (scope, at) = entries.get(key)?;
        (at.elapsed() < self.ttl).then(|| scope.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_prefixed() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(TOKEN_PREFIX));
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn bearer_headers() {
        assert_eq!(bearer("Bearer et_abc"), Some("et_abc"));
        assert_eq!(bearer("bearer   et_abc "), Some("et_abc"));
        assert_eq!(bearer("Basic dXNlcg=="), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("et_abc"), None);
    }
}
