//! Failed authentications limited per client address, before any database
//! lookup.
//!
//! Why: a token the cache does not know costs a PostgreSQL query, so a
//! client posting made-up tokens as fast as it can would turn each request
//! into a query (and, before the caches were split, evict the valid tokens).
//! Each client address has a bucket of `burst` failures refilling at `rate`
//! per second; while it is empty, a request whose token is not already
//! cached as valid is answered `429 auth_rate_limited` with `Retry-After`,
//! without looking the token up. A cached valid token from the same address
//! still passes: a ballot box behind the same NAT as a misbehaving client
//! keeps reporting.
//!
//! Addresses are IPv4 addresses or IPv6 /64 prefixes (one host usually has a
//! whole /64 to rotate through). The buckets live in a bounded moka cache
//! and go away once idle for a refill time, when they would be full again.
//! The address is the TCP peer's, or, when that peer is one of the proxies
//! the operator trusts (`INGEST_TRUSTED_PROXIES`), the client its
//! `X-Forwarded-For` names (`election_http::client`). Behind a load balancer
//! that is not named there, every client shares the balancer's bucket
//! (cached valid tokens are still unaffected).

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::limit::{Limited, RateLimit};

/// Most client addresses tracked at once; beyond it the least recently used
/// are forgotten (they start again with a full bucket).
pub const MAX_ADDRESSES: u64 = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Failures left, fractional while refilling.
    left: f64,
    /// When `left` was last brought up to date.
    at: Instant,
}

/// Every client address's allowance of failed authentications.
pub struct FailedAuth {
    limit: RateLimit,
    buckets: moka::sync::Cache<IpAddr, Arc<Mutex<Bucket>>>,
}

/// The key of an address: itself (IPv4) or its /64 (IPv6).
fn key(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl FailedAuth {
    /// A limiter giving every address `limit` failures.
    pub fn new(limit: RateLimit) -> FailedAuth {
        let idle = limit.refill_time().max(Duration::from_secs(1));
        FailedAuth {
            limit,
            buckets: moka::sync::Cache::builder()
                .max_capacity(MAX_ADDRESSES)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// The limit.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Whether `address` has no failures left now, and for how long.
    pub fn blocked(&self, address: IpAddr) -> Option<Limited> {
        self.blocked_at(address, Instant::now())
    }

    /// Takes one failure from `address`'s allowance now.
    pub fn failed(&self, address: IpAddr) {
        self.failed_at(address, Instant::now());
    }

    /// [`Self::blocked`] at a given time (tests).
    pub fn blocked_at(&self, address: IpAddr, now: Instant) -> Option<Limited> {
        let bucket = self.buckets.get(&key(address))?;
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut bucket, now);
        (bucket.left < 1.0).then(|| Limited {
            retry_after_secs: (((1.0 - bucket.left) / self.limit.per_second).ceil() as u64).max(1),
        })
    }

    /// [`Self::failed`] at a given time (tests).
    pub fn failed_at(&self, address: IpAddr, now: Instant) {
        let capacity = f64::from(self.limit.burst);
        let bucket = self.buckets.get_with(key(address), || {
            Arc::new(Mutex::new(Bucket {
                left: capacity,
                at: now,
            }))
        });
        let mut bucket = bucket.lock().unwrap_or_else(|p| p.into_inner());
        self.refill(&mut bucket, now);
        bucket.left = (bucket.left - 1.0).max(0.0);
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.left =
            (bucket.left + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        bucket.at = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> FailedAuth {
        FailedAuth::new(RateLimit {
            per_second: 0.5,
            burst: 3,
        })
    }

    #[test]
    fn a_burst_of_failures_then_a_wait() {
        let limiter = limiter();
        let now = Instant::now();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(limiter.blocked_at(client, now), None);
        for _ in 0..3 {
            assert_eq!(limiter.blocked_at(client, now), None);
            limiter.failed_at(client, now);
        }
        assert_eq!(
            limiter.blocked_at(client, now),
            Some(Limited {
                retry_after_secs: 2
            })
        );
        assert_eq!(limiter.blocked_at(other, now), None, "per address");
        // One failure's worth comes back every 2 s.
        let later = now + Duration::from_secs(2);
        assert_eq!(limiter.blocked_at(client, later), None);
        limiter.failed_at(client, later);
        assert!(limiter.blocked_at(client, later).is_some());
    }

    #[test]
    fn an_ipv6_client_is_its_slash_64() {
        let limiter = limiter();
        let now = Instant::now();
        for host in 1..=3 {
            limiter.failed_at(format!("2001:db8:1:2::{host}").parse().unwrap(), now);
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.blocked_at(same_64, now).is_some());
        assert_eq!(limiter.blocked_at(other_64, now), None);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(key(mapped), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
