//! Refusing a Redis that may evict keys: its `maxmemory-policy`.
//!
//! The tally's keys have no TTL, and losing any of them is wrong: an evicted
//! marker lets its revision count twice on its next re-apply, an evicted
//! counter silently loses votes. A server (or, on a Cluster, any master) whose
//! `maxmemory-policy` is an `allkeys-*` policy (`allkeys-lru`,
//! `allkeys-lfu`, `allkeys-random`) may evict any key once `maxmemory` is
//! reached, so the tally writes nothing there. `noeviction` is right; a
//! `volatile-*` policy is accepted too, since it evicts only keys with a TTL
//! and ours have none (a full server then refuses writes with `OOM`, which
//! leaves revisions pending, as an outage does). The policy is refused whatever
//! `maxmemory` is: a limit can be set at any time without a restart.
//!
//! The policy is read from `INFO memory` (`maxmemory_policy:<policy>`), which
//! managed services answer even where `CONFIG GET` is disabled. `Nodes`
//! reads it on every new connection to a node (the first use of a node, and
//! every reconnect after a failure, restart or failover) and keeps the verdict
//! per node, so the hot path adds no round trip; see `nodes`.

/// The `maxmemory_policy` line of an `INFO memory` (or `INFO`) reply, if it
/// has one.
pub fn maxmemory_policy(info: &str) -> Option<&str> {
    info.lines().find_map(|line| {
        let value = line.trim_end().strip_prefix("maxmemory_policy:")?;
        (!value.is_empty()).then_some(value)
    })
}

/// Whether `policy` may evict keys without a TTL: the `allkeys-*` policies.
pub fn is_evicting(policy: &str) -> bool {
    policy.to_ascii_lowercase().starts_with("allkeys-")
}

/// What an operator should do about an evicting `policy`, for error messages.
pub(crate) fn advice(policy: &str) -> String {
    format!(
        "maxmemory-policy {policy}, which may evict any key: an evicted marker would count its \
         revision twice and an evicted counter would lose votes, so nothing is written to Redis; \
         set maxmemory-policy to noeviction (or a volatile-* policy: these keys have no TTL)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1034576\r\nmaxmemory:0\r\n\
                    maxmemory_human:0B\r\nmaxmemory_policy:allkeys-lru\r\n\
                    allocator_frag_ratio:1.00\r\n";
        assert_eq!(maxmemory_policy(info), Some("allkeys-lru"));
        assert_eq!(
            maxmemory_policy("maxmemory_policy:noeviction"),
            Some("noeviction")
        );
        assert_eq!(maxmemory_policy("# Memory\r\nused_memory:1\r\n"), None);
        assert_eq!(maxmemory_policy("maxmemory_policy:\r\n"), None);
        assert_eq!(maxmemory_policy(""), None);
    }

    #[test]
    fn only_allkeys_policies_evict_our_keys() {
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "ALLKEYS-LRU",
        ] {
            assert!(is_evicting(policy), "{policy}");
        }
        for policy in [
            "noeviction",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert!(!is_evicting(policy), "{policy}");
        }
        let advice = advice("allkeys-lru");
        assert!(advice.contains("maxmemory-policy allkeys-lru"), "{advice}");
        assert!(advice.contains("noeviction"), "{advice}");
        assert!(advice.contains("volatile-*"), "{advice}");
    }
}
