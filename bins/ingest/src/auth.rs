//! Reporting-client tokens: what they look like, how they are checked.
//!
//! A token is 32 random bytes (256 bits) shown once, as `et_<64 hex digits>`,
//! when it is issued (its form and hash: `election_core::token`). Only its
//! SHA-256 is stored, so a copy of the database
//! does not let anyone report. A token is scoped to one election and
//! optionally one ballot box.
//!
//! Every request needs its token checked, and at thousands of requests per
//! second a PostgreSQL query each would cost more than the report itself. So
//! answers are cached for [`TokenCache::ttl`]: a revoked token stops working
//! within that time (5 s by default), which is the price of the cache and is
//! documented in the README.
//!
//! Two bounded caches (moka: size-bounded, entries expire after the TTL), so
//! a flood of made-up tokens cannot push valid ones out: valid tokens live in
//! one ([`MAX_VALID`] entries, more than any election has ballot boxes), the
//! "unknown or revoked" answers in another, smaller one ([`MAX_UNKNOWN`]).
//! Random tokens only ever evict each other. (The map this replaces was
//! cleared whole at 100,000 entries, valid tokens with it.) What stops such
//! a flood from costing a PostgreSQL query per token is the limit on failed
//! authentications per client address ([`crate::failed_auth`]), checked
//! before any lookup that is not a cache hit.

use std::sync::Arc;
use std::time::Duration;

use election_core::{BallotBoxId, ElectionId, StoreError};
// The form of a token and its stored hash are the core's, shared with
// whoever else issues tokens (the benchmark, tests).
pub use election_core::token::{TOKEN_PREFIX, hash};

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
    election_core::token::from_bytes(rand::random())
}

/// The token of an `Authorization: Bearer <token>` header value, if that is
/// what it is.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Most valid tokens cached.
pub const MAX_VALID: u64 = 1_000_000;

/// Most "unknown or revoked" answers cached.
pub const MAX_UNKNOWN: u64 = 10_000;

/// Caches token lookups for a short time.
pub struct TokenCache {
    lookup: Arc<dyn TokenLookup>,
    ttl: Duration,
    /// `None` when the TTL is 0 (no caching).
    caches: Option<Caches>,
}

struct Caches {
    valid: moka::sync::Cache<[u8; 32], Scope>,
    unknown: moka::sync::Cache<[u8; 32], ()>,
}

impl TokenCache {
    /// A cache in front of `lookup` keeping answers for `ttl` (0: none).
    pub fn new(lookup: Arc<dyn TokenLookup>, ttl: Duration) -> TokenCache {
        TokenCache::with_capacity(lookup, ttl, MAX_VALID, MAX_UNKNOWN)
    }

    /// [`TokenCache::new`] with other bounds (tests).
    pub fn with_capacity(
        lookup: Arc<dyn TokenLookup>,
        ttl: Duration,
        valid: u64,
        unknown: u64,
    ) -> TokenCache {
        let caches = (!ttl.is_zero()).then(|| Caches {
            valid: moka::sync::Cache::builder()
                .max_capacity(valid)
                .time_to_live(ttl)
                .build(),
            unknown: moka::sync::Cache::builder()
                .max_capacity(unknown)
                .time_to_live(ttl)
                .build(),
        });
        TokenCache {
            lookup,
            ttl,
            caches,
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
        if let Some(caches) = &self.caches {
            match &scope {
                Some(scope) => caches.valid.insert(*key, scope.clone()),
                None => caches.unknown.insert(*key, ()),
            }
        }
        Ok(scope)
    }

    /// The cached answer for the token whose [`hash`] is `key`, if fresh:
    /// `Some(Some(scope))` valid, `Some(None)` known to be unknown or
    /// revoked, `None` not cached (no store access).
    pub fn cached(&self, key: &[u8; 32]) -> Option<Option<Scope>> {
        let caches = self.caches.as_ref()?;
        if let Some(scope) = caches.valid.get(key) {
            return Some(Some(scope));
        }
        caches.unknown.contains_key(key).then_some(None)
    }

    /// Settles pending evictions (tests that count entries).
    pub fn run_pending_tasks(&self) {
        if let Some(caches) = &self.caches {
            caches.valid.run_pending_tasks();
            caches.unknown.run_pending_tasks();
        }
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

    /// Counts lookups per token hash.
    #[derive(Default)]
    struct Counting {
        valid: Option<[u8; 32]>,
        lookups: std::sync::Mutex<std::collections::HashMap<[u8; 32], u32>>,
    }

    impl TokenLookup for Counting {
        fn find(&self, sha256: &[u8; 32]) -> Result<Option<Scope>, StoreError> {
            *self.lookups.lock().unwrap().entry(*sha256).or_default() += 1;
            Ok((Some(*sha256) == self.valid).then(|| Scope {
                election: ElectionId::parse("e").unwrap(),
                ballot_box: None,
            }))
        }
    }

    #[test]
    fn unknown_tokens_cannot_evict_valid_ones() {
        let valid = hash(&generate());
        let lookup = Arc::new(Counting {
            valid: Some(valid),
            ..Counting::default()
        });
        let cache = TokenCache::with_capacity(lookup.clone(), Duration::from_secs(60), 100, 100);
        assert!(cache.scope(&valid).unwrap().is_some());
        // Fifty times as many made-up tokens as the unknown cache holds.
        for _ in 0..5_000 {
            assert_eq!(cache.scope(&hash(&generate())).unwrap(), None);
        }
        cache.run_pending_tasks();
        assert!(matches!(cache.cached(&valid), Some(Some(_))));
        assert!(cache.scope(&valid).unwrap().is_some());
        assert_eq!(lookup.lookups.lock().unwrap()[&valid], 1, "looked up once");
        // An unknown token's answer is cached too (within its bound).
        let unknown = hash(&generate());
        assert_eq!(cache.scope(&unknown).unwrap(), None);
        assert_eq!(cache.cached(&unknown), Some(None));
        assert_eq!(cache.scope(&unknown).unwrap(), None);
        assert_eq!(lookup.lookups.lock().unwrap()[&unknown], 1);
    }

    #[test]
    fn answers_expire_after_the_ttl() {
        let valid = hash(&generate());
        let lookup = Arc::new(Counting {
            valid: Some(valid),
            ..Counting::default()
        });
        let cache = TokenCache::new(lookup.clone(), Duration::from_millis(50));
        assert!(cache.scope(&valid).unwrap().is_some());
        assert!(cache.cached(&valid).is_some());
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(cache.cached(&valid), None, "expired");
        let uncached = TokenCache::new(lookup.clone(), Duration::ZERO);
        assert!(uncached.scope(&valid).unwrap().is_some());
        assert_eq!(uncached.cached(&valid), None, "a TTL of 0 caches nothing");
        assert_eq!(lookup.lookups.lock().unwrap()[&valid], 2);
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
