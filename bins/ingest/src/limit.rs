//! The per-token rate limit: a token bucket per reporting token, in memory.
//!
//! Why: a leaked or misbehaving client (a gateway stuck in a retry loop, a
//! script posting as fast as it can) must not crowd out the other ballot
//! boxes. Every request is checked right after its token is authenticated
//! and before any other work (no database access, no parsing): past its
//! allowance it gets `429 rate_limited` with `Retry-After`, and nothing is
//! recorded.
//!
//! Each token has a bucket of `burst` reports that refills at `rate` reports
//! per second; a report takes one. Buckets are keyed by the token's SHA-256
//! (the identity the token table stores) and exist only for authenticated
//! tokens, so random tokens cannot grow the table. A bucket left alone long
//! enough to be full again is the same as no bucket, so idle buckets are
//! swept away; the table is also capped at [`MAX_BUCKETS`].
//!
//! Off by default (`INGEST_TOKEN_RATE=0`): one election-wide token may serve
//! a whole gateway of ballot boxes, and a limit sized for one box would
//! throttle it. Limits are per process: behind a load balancer with `n`
//! ingest instances a token may get up to `n` times its rate.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The allowance of every token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Reports per second a token may post on average (> 0).
    pub per_second: f64,
    /// Reports a token may post at once after being idle (≥ 1).
    pub burst: u32,
}

impl RateLimit {
    /// The limit configured by `INGEST_TOKEN_RATE` and `INGEST_TOKEN_BURST`:
    /// `None` (no limit) when the rate is 0; a burst of 0 means "the rate,
    /// rounded up" (at least 1).
    ///
    /// # Errors
    /// A negative or non-finite rate.
    pub fn from_config(per_second: f64, burst: u32) -> Result<Option<RateLimit>, String> {
        if !per_second.is_finite() || per_second < 0.0 {
            return Err(format!(
                "the token rate must be a number of reports per second ≥ 0 (0: no limit), not {per_second}"
            ));
        }
        if per_second == 0.0 {
            return Ok(None);
        }
        let burst = if burst == 0 {
            per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32
        } else {
            burst
        };
        Ok(Some(RateLimit { per_second, burst }))
    }

    /// How long an empty bucket takes to fill up.
    pub(crate) fn refill_time(&self) -> Duration {
        // A tiny configured rate would overflow `Duration`: such a bucket
        // never fills up within any time that matters.
        Duration::try_from_secs_f64(f64::from(self.burst) / self.per_second)
            .unwrap_or(Duration::MAX)
    }
}

/// Most buckets kept. Only authenticated tokens that posted within one
/// refill time have one, so this is reached only by more distinct active
/// tokens than any election has ballot boxes reporting at once; then the
/// table is emptied (every token starts again with a full bucket) rather
/// than growing.
pub const MAX_BUCKETS: usize = 200_000;

/// How often idle buckets are swept away, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Reports left, fractional while refilling.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

struct Buckets {
    by_token: HashMap<[u8; 32], Bucket>,
    last_sweep: Instant,
}

/// Every token's bucket.
pub struct RateLimiter {
    limit: RateLimit,
    buckets: Mutex<Buckets>,
}

/// A refusal: how long until the token may post again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds to wait (for `Retry-After`), at least 1.
    pub retry_after_secs: u64,
}

impl RateLimiter {
    /// A limiter giving every token `limit`.
    pub fn new(limit: RateLimit) -> RateLimiter {
        RateLimiter {
            limit,
            buckets: Mutex::new(Buckets {
                by_token: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// The limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes one report from the bucket of the token with hash `token`, now.
    ///
    /// # Errors
    /// [`Limited`] when the bucket is empty (nothing is taken).
    pub fn check(&self, token: &[u8; 32]) -> Result<(), Limited> {
        self.check_n_at(token, 1, Instant::now())
    }

    /// Takes `reports` reports at once (a bulk request's), at most a whole
    /// burst: a batch larger than the burst costs the burst, so it can pass
    /// at all.
    ///
    /// # Errors
    /// [`Limited`] when the bucket holds fewer (nothing is taken).
    pub fn check_n(&self, token: &[u8; 32], reports: u32) -> Result<(), Limited> {
        self.check_n_at(token, reports, Instant::now())
    }

    /// [`Self::check`] at a given time (for tests).
    ///
    /// # Errors
    /// [`Limited`] when the bucket is empty.
    pub fn check_at(&self, token: &[u8; 32], now: Instant) -> Result<(), Limited> {
        self.check_n_at(token, 1, now)
    }

    fn check_n_at(&self, token: &[u8; 32], reports: u32, now: Instant) -> Result<(), Limited> {
        let limit = self.limit;
        let capacity = f64::from(limit.burst);
        let cost = f64::from(reports.clamp(1, limit.burst.max(1)));
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(buckets.last_sweep) >= SWEEP_EVERY {
            buckets.sweep(limit.refill_time(), now);
        }
        if buckets.by_token.len() >= MAX_BUCKETS && !buckets.by_token.contains_key(token) {
            buckets.sweep(limit.refill_time(), now);
            if buckets.by_token.len() >= MAX_BUCKETS {
                buckets.by_token.clear();
            }
        }
        let bucket = buckets.by_token.entry(*token).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.per_second).min(capacity);
        bucket.at = now;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            let wait = (cost - bucket.tokens) / limit.per_second;
            Err(Limited {
                retry_after_secs: (wait.ceil() as u64).max(1),
            })
        }
    }

    /// Buckets held (for the gauge and tests).
    pub fn buckets(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_token
            .len()
    }
}

impl Buckets {
    /// Drops every bucket untouched for a whole refill time: it would be
    /// full again, exactly what a new bucket is.
    fn sweep(&mut self, refill: Duration, now: Instant) {
        self.by_token
            .retain(|_, bucket| now.saturating_duration_since(bucket.at) < refill);
        self.last_sweep = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit::from_config(per_second, burst).unwrap().unwrap())
    }

    #[test]
    fn configuration() {
        assert_eq!(RateLimit::from_config(0.0, 5), Ok(None));
        assert_eq!(
            RateLimit::from_config(2.5, 0),
            Ok(Some(RateLimit {
                per_second: 2.5,
                burst: 3
            }))
        );
        assert_eq!(
            RateLimit::from_config(0.2, 0),
            Ok(Some(RateLimit {
                per_second: 0.2,
                burst: 1
            }))
        );
        assert!(RateLimit::from_config(-1.0, 1).is_err());
        assert!(RateLimit::from_config(f64::NAN, 1).is_err());
    }

    #[test]
    fn a_burst_then_the_rate_and_each_token_on_its_own() {
        let limiter = limiter(2.0, 3);
        let start = Instant::now();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        for _ in 0..3 {
            assert_eq!(limiter.check_at(&a, start), Ok(()));
        }
        assert_eq!(
            limiter.check_at(&a, start),
            Err(Limited {
                retry_after_secs: 1
            })
        );
        // Another token is not affected.
        assert_eq!(limiter.check_at(&b, start), Ok(()));
        // Half a second refills one report at 2/s, and only one.
        let later = start + Duration::from_millis(500);
        assert_eq!(limiter.check_at(&a, later), Ok(()));
        assert!(limiter.check_at(&a, later).is_err());
        // A refusal takes nothing: still one report 500 ms later.
        let later = later + Duration::from_millis(500);
        assert_eq!(limiter.check_at(&a, later), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let limiter = limiter(0.25, 1);
        let start = Instant::now();
        let token = [7u8; 32];
        assert_eq!(limiter.check_at(&token, start), Ok(()));
        assert_eq!(
            limiter.check_at(&token, start + Duration::from_millis(100)),
            Err(Limited {
                retry_after_secs: 4
            })
        );
        assert_eq!(
            limiter.check_at(&token, start + Duration::from_secs(4)),
            Ok(())
        );
    }

    #[test]
    fn idle_buckets_are_swept_and_memory_is_bounded() {
        let limiter = limiter(10.0, 10);
        let start = Instant::now();
        for i in 0..1000u32 {
            let mut token = [0u8; 32];
            token[..4].copy_from_slice(&i.to_be_bytes());
            limiter.check_at(&token, start).unwrap();
        }
        assert_eq!(limiter.buckets(), 1000);
        // After a sweep interval every one of them is full again: swept.
        limiter
            .check_at(&[9u8; 32], start + SWEEP_EVERY + Duration::from_secs(1))
            .unwrap();
        assert_eq!(limiter.buckets(), 1);
        // The cap: a new token beyond it empties the table instead of growing it.
        let limiter = RateLimiter::new(RateLimit {
            per_second: 1.0,
            burst: 1_000_000,
        });
        for i in 0..MAX_BUCKETS as u32 {
            let mut token = [0u8; 32];
            token[..4].copy_from_slice(&i.to_be_bytes());
            limiter.check_at(&token, start).unwrap();
        }
        assert_eq!(limiter.buckets(), MAX_BUCKETS);
        limiter.check_at(&[0xffu8; 32], start).unwrap();
        assert_eq!(limiter.buckets(), 1);
    }

    #[test]
    fn a_tiny_rate_limits_without_overflowing() {
        let limiter = limiter(1e-300, 1);
        let token = [7; 32];
        let start = Instant::now();
        assert!(limiter.check_at(&token, start).is_ok());
        let limited = limiter.check_at(&token, start).unwrap_err();
        assert_eq!(limited.retry_after_secs, u64::MAX);
        // A sweep (every 10 s) keeps the bucket: it never fills up again.
        let later = start + Duration::from_secs(11);
        assert!(limiter.check_at(&token, later).is_err());
        assert_eq!(limiter.buckets(), 1);
    }
}
