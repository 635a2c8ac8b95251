//! Where Redis is ([`RedisTarget`], from `REDIS_URL`) and how patiently to
//! talk to it ([`RedisOptions`]).
//!
//! `REDIS_URL` takes three forms (docs/contract.md §6):
//! - `redis://host:port` (or any single URL the `redis` crate accepts):
//!   standalone Redis;
//! - `redis://h1:p1,redis://h2:p2`: a Redis Cluster, given by some of its
//!   nodes;
//! - `redis+cluster://h1:p1,h2:p2`: the same, written once; credentials given
//!   on the first node (`redis+cluster://:pw@h1:p1,h2:p2`) apply to every
//!   node.
//!
//! TLS: `rediss://` instead of `redis://` (and `rediss+cluster://`); the
//! server's certificate is checked against the system's roots, or those in
//! the file `SSL_CERT_FILE` names (for a private CA). Nodes a Cluster reports
//! are reached the way the seeds are, TLS included.

use std::time::Duration;

use redis::IntoConnectionInfo;

use crate::error::RedisStoreError;

/// The Redis deployment to talk to.
#[derive(Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// One Redis server, by URL.
    Standalone(String),
    /// A Redis Cluster, by the URLs of some of its nodes (the others are
    /// discovered with `CLUSTER SLOTS`).
    Cluster(Vec<String>),
}

impl std::fmt::Debug for RedisTarget {
    // URLs may hold passwords: debug output shows them redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisTarget::Standalone(url) => {
                f.debug_tuple("Standalone").field(&redact(url)).finish()
            }
            RedisTarget::Cluster(urls) => f
                .debug_tuple("Cluster")
                .field(&urls.iter().map(|url| redact(url)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// The scheme that selects a Cluster given as one URL.
const CLUSTER_SCHEME: &str = "redis+cluster://";

/// The same, over TLS.
const TLS_CLUSTER_SCHEME: &str = "rediss+cluster://";

/// Reads `REDIS_URL` (see the module docs for the forms it takes).
pub fn parse_target(redis_url: &str) -> Result<RedisTarget, RedisStoreError> {
    let redis_url = redis_url.trim();
    if redis_url.is_empty() {
        return Err(invalid(redis_url, "it is empty"));
    }
    if let Some(rest) = redis_url.strip_prefix(CLUSTER_SCHEME) {
        return parse_cluster_shorthand(redis_url, rest, "redis");
    }
    if let Some(rest) = redis_url.strip_prefix(TLS_CLUSTER_SCHEME) {
        return parse_cluster_shorthand(redis_url, rest, "rediss");
    }
    if redis_url.contains(',') {
        let urls: Vec<String> = redis_url
            .split(',')
            .map(str::trim)
            .map(str::to_owned)
            .collect();
        for url in &urls {
            if url.is_empty() {
                return Err(invalid(redis_url, "the list has an empty entry"));
            }
            check_url(url)?;
        }
        return Ok(RedisTarget::Cluster(urls));
    }
    check_url(redis_url)?;
    Ok(RedisTarget::Standalone(redis_url.to_owned()))
}

/// `redis+cluster://[user:pw@]h1:p1,h2:p2[/...]` → `redis://[user:pw@]h1:p1`,
/// `redis://[user:pw@]h2:p2` (`scheme` is `redis`, or `rediss` for TLS).
fn parse_cluster_shorthand(
    whole: &str,
    rest: &str,
    scheme: &str,
) -> Result<RedisTarget, RedisStoreError> {
    let mut urls = Vec::new();
    let mut credentials: Option<&str> = None;
    for (index, node) in rest.split(',').map(str::trim).enumerate() {
        if node.is_empty() {
            return Err(invalid(whole, "the node list has an empty entry"));
        }
        // Credentials end at the last `@` (a password may itself hold `@`).
        let (node_credentials, host_port) = match node.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, node),
        };
        if node_credentials.is_some() && index > 0 && node_credentials != credentials {
            return Err(invalid(
                whole,
                "credentials may only be given once, on the first node",
            ));
        }
        if index == 0 {
            credentials = node_credentials;
        }
        if host_port.is_empty() {
            return Err(invalid(whole, "each node must be host:port"));
        }
        let url = match credentials {
            Some(userinfo) => format!("{scheme}://{userinfo}@{host_port}"),
            None => format!("{scheme}://{host_port}"),
        };
        check_url(&url)?;
        urls.push(url);
    }
    Ok(RedisTarget::Cluster(urls))
}

fn check_url(url: &str) -> Result<(), RedisStoreError> {
    url.into_connection_info()
        .map(drop)
        .map_err(|error| invalid(url, &error.to_string()))
}

fn invalid(url: &str, reason: &str) -> RedisStoreError {
    RedisStoreError::InvalidUrl {
        url: redact(url),
        reason: reason.to_owned(),
    }
}

/// `url` with any password replaced by `***`, fit for logs and errors.
pub(crate) fn redact(url: &str) -> String {
    // Every `scheme://userinfo@host` part of a (possibly comma-separated)
    // list is redacted.
    url.split(',')
        .map(|part| {
            let Some((head, host)) = part.rsplit_once('@') else {
                return part.to_owned();
            };
            let (scheme, userinfo) = match head.split_once("://") {
                Some((scheme, userinfo)) => (format!("{scheme}://"), userinfo),
                None => (String::new(), head),
            };
            let user = userinfo.split_once(':').map_or("", |(user, _)| user);
            format!("{scheme}{user}:***@{host}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How long to wait for Redis, and how many idle connections to keep.
///
/// There is deliberately no `Default`: services build it from their
/// configuration, starting from [`RedisOptions::DEFAULT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RedisOptions {
    /// Longest wait to open a connection (TCP connect and handshake). A dead
    /// Redis must give `Unavailable` quickly, so ingest can answer 202 and the
    /// reprocessor can back off.
    pub connect_timeout: Duration,
    /// Longest wait for each reply (and each write). A stalled Redis (paused,
    /// swapping, blocked by a slow command) must not hang a request.
    pub response_timeout: Duration,
    /// Idle connections kept per Redis node. Concurrent callers each take a
    /// connection of their own and open more when none is idle; a connection
    /// returned when this many are idle is closed.
    pub pool_size: usize,
}

impl RedisOptions {
    /// Default for [`RedisOptions::connect_timeout`].
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default for [`RedisOptions::response_timeout`].
    pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);
    /// Default for [`RedisOptions::pool_size`].
    pub const DEFAULT_POOL_SIZE: usize = 8;
    /// Every default together.
    pub const DEFAULT: RedisOptions = RedisOptions {
        connect_timeout: RedisOptions::DEFAULT_CONNECT_TIMEOUT,
        response_timeout: RedisOptions::DEFAULT_RESPONSE_TIMEOUT,
        pool_size: RedisOptions::DEFAULT_POOL_SIZE,
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(url: &str, expected: RedisTarget) {
        assert_eq!(parse_target(url).unwrap(), expected);
    }

    #[track_caller]
    fn check_error(url: &str, expected: &str) {
        let error = parse_target(url).unwrap_err().to_string();
        assert!(
            error.contains(expected),
            "{error:?} should contain {expected:?}"
        );
    }

    fn cluster(urls: &[&str]) -> RedisTarget {
        RedisTarget::Cluster(urls.iter().map(|url| url.to_string()).collect())
    }

    #[test]
    fn a_single_url_is_standalone() {
        check(
            "redis://127.0.0.1:6379",
            RedisTarget::Standalone("redis://127.0.0.1:6379".into()),
        );
        check(
            "  redis://:secret@localhost:6380/2 ",
            RedisTarget::Standalone("redis://:secret@localhost:6380/2".into()),
        );
    }

    #[test]
    fn a_list_of_urls_is_a_cluster() {
        check(
            "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
            cluster(&["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]),
        );
        check(
            "redis://h1:7000, redis://h2:7001 ,redis://h3:7002",
            cluster(&["redis://h1:7000", "redis://h2:7001", "redis://h3:7002"]),
        );
    }

    #[test]
    fn the_cluster_scheme_lists_host_port_pairs() {
        check(
            "redis+cluster://h1:7000,h2:7001",
            cluster(&["redis://h1:7000", "redis://h2:7001"]),
        );
        check("redis+cluster://h1:7000", cluster(&["redis://h1:7000"]));
        check(
            "rediss+cluster://:pw@h1:7000,h2:7001",
            cluster(&["rediss://:pw@h1:7000", "rediss://:pw@h2:7001"]),
        );
        check(
            "rediss://localhost:6380",
            RedisTarget::Standalone("rediss://localhost:6380".into()),
        );
        // The first node's credentials apply to every node.
        check(
            "redis+cluster://:pw@h1:7000,h2:7001",
            cluster(&["redis://:pw@h1:7000", "redis://:pw@h2:7001"]),
        );
        check(
            "redis+cluster://app:p@ss@h1:7000,h2:7001",
            cluster(&["redis://app:p@ss@h1:7000", "redis://app:p@ss@h2:7001"]),
        );
    }

    #[test]
    fn bad_urls_are_refused_with_the_reason() {
        check_error("", "empty");
        check_error("redis://h1:7000,,redis://h2:7001", "empty entry");
        check_error("redis+cluster://h1:7000,", "empty entry");
        check_error("http://h1:7000", "http://h1:7000");
        check_error(
            "redis+cluster://:a@h1:7000,:b@h2:7001",
            "only be given once",
        );
    }

    #[test]
    fn errors_and_debug_output_hide_passwords() {
        let error = parse_target("redis+cluster://:secret@h1:7000,:other@h2:1")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("secret"), "{error}");
        let debug = format!("{:?}", parse_target("redis://app:secret@h1:7000").unwrap());
        assert!(!debug.contains("secret"), "{debug}");
        assert!(debug.contains("app:***@h1:7000"), "{debug}");
    }
}
