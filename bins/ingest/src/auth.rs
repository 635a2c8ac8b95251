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
//! before any lookup that is not a cache hit. Concurrent misses of one token
//! share one lookup ([`TokenCache::scope`]).

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

/// Token lookups from a fixed list of `(token, scope)`: the in-memory
/// adapter of [`TokenLookup`], for embedders and tests (an ingest whose
/// PostgreSQL is down still knows its tokens).
pub struct FixedTokens(pub Vec<(String, Scope)>);

impl TokenLookup for FixedTokens {
    fn find(&self, sha256: &[u8; 32]) -> Result<Option<Scope>, StoreError> {
        Ok(self
            .0
            .iter()
            .find(|(token, _)| &hash(token) == sha256)
            .map(|(_, scope)| scope.clone()))
    }
}

/// Why a coalesced lookup found no valid token.
enum Miss {
    /// Unknown or revoked.
    Unknown,
    /// The lookup failed.
    Failed(StoreError),
}

/// The error of a lookup, which every request that waited for it shares
/// (moka hands each one the same `Arc`): the same kind and store, its
/// message with its causes.
fn shared_failure(error: &StoreError) -> StoreError {
    let store = error.store().unwrap_or("the token store");
    let doing = "looking a token up (the lookup shared by concurrent requests)".to_owned();
    let source = election_core::engine::explain(error).into();
    if error.is_unavailable() {
        StoreError::Unavailable {
            store,
            doing,
            source,
        }
    } else {
        StoreError::Failed {
            store,
            doing,
            source,
        }
    }
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
        let Some(caches) = &self.caches else {
            return self.lookup.find(key);
        };
        // One lookup per token at a time: when a token's entry expires under
        // load (a counting centre's gateway shares one token over hundreds
        // of connections), the requests that miss it wait for the first
        // one's answer instead of each querying PostgreSQL (moka runs one
        // initialiser per key and hands its result to every waiter).
        let found = caches
            .valid
            .try_get_with(*key, || match self.lookup.find(key) {
                Ok(Some(scope)) => Ok(scope),
                Ok(None) => Err(Miss::Unknown),
                Err(error) => Err(Miss::Failed(error)),
            });
        match found {
            Ok(scope) => Ok(Some(scope)),
            Err(miss) => match &*miss {
                Miss::Unknown => {
                    caches.unknown.insert(*key, ());
                    Ok(None)
                }
                Miss::Failed(error) => Err(shared_failure(error)),
            },
        }
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

    /// What the tests' valid tokens allow: election `e`, any box.
    fn scope_of_e() -> Scope {
        Scope {
            election: ElectionId::parse("e").unwrap(),
            ballot_box: None,
        }
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
            Ok((Some(*sha256) == self.valid).then(scope_of_e))
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

    /// A lookup that takes a while, counting its calls, and fails while
    /// `failing` is set.
    struct Slow {
        valid: [u8; 32],
        calls: std::sync::atomic::AtomicU32,
        failing: std::sync::atomic::AtomicBool,
    }

    impl TokenLookup for Slow {
        fn find(&self, sha256: &[u8; 32]) -> Result<Option<Scope>, StoreError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            // Long enough for every thread of the test to arrive while it
            // runs, on a loaded machine too.
            std::thread::sleep(Duration::from_millis(300));
            if self.failing.load(SeqCst) {
                return Err(StoreError::Unavailable {
                    store: "postgresql",
                    doing: "looking a token up".to_owned(),
                    source: "connection refused".into(),
                });
            }
            Ok((*sha256 == self.valid).then(scope_of_e))
        }
    }

    #[test]
    fn concurrent_misses_of_one_token_share_one_lookup() {
        use std::sync::atomic::Ordering::SeqCst;
        let valid = hash(&generate());
        let lookup = Arc::new(Slow {
            valid,
            calls: Default::default(),
            failing: Default::default(),
        });
        let cache = Arc::new(TokenCache::new(lookup.clone(), Duration::from_secs(60)));
        let at_once = |key: [u8; 32]| -> Vec<Result<Option<Scope>, StoreError>> {
            let start = Arc::new(std::sync::Barrier::new(16));
            let threads: Vec<_> = (0..16)
                .map(|_| {
                    let (cache, start) = (Arc::clone(&cache), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        cache.scope(&key)
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        };
        // Sixteen requests with a token nobody has looked up yet: one lookup.
        assert!(at_once(valid).iter().all(|r| matches!(r, Ok(Some(_)))));
        assert_eq!(lookup.calls.load(SeqCst), 1);
        // The same for an unknown token, whose answer is then cached.
        let unknown = hash(&generate());
        assert!(at_once(unknown).iter().all(|r| matches!(r, Ok(None))));
        assert_eq!(lookup.calls.load(SeqCst), 2);
        assert_eq!(cache.cached(&unknown), Some(None));
        // A failed lookup fails every waiter, as unavailable, and is not
        // cached: the next request looks again.
        lookup.failing.store(true, SeqCst);
        let other = hash(&generate());
        let answers = at_once(other);
        assert!(
            answers
                .iter()
                .all(|r| r.as_ref().is_err_and(StoreError::is_unavailable)),
            "{answers:?}"
        );
        assert_eq!(lookup.calls.load(SeqCst), 3);
        lookup.failing.store(false, SeqCst);
        assert_eq!(cache.scope(&other).unwrap(), None);
        assert_eq!(lookup.calls.load(SeqCst), 4);
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
