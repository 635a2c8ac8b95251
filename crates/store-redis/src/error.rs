//! The adapter's errors, and how they reach the core.
//!
//! [`RedisStoreError`] says which node and which command failed. It reaches
//! the core as the source of a [`StoreError`], whose variant tells callers
//! what to do: `Unavailable` (retry later: Redis is down, slow, failing over
//! or resharding) or `Failed` (retrying will not help by itself: a wrong
//! password, a key of the wrong type, a bug).

use election_core::StoreError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// What went wrong talking to Redis.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RedisStoreError {
    /// `REDIS_URL` could not be understood (passwords are redacted).
    #[error("invalid redis url {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, password redacted.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// [`crate::RedisOptions`] or the target make no sense.
    #[error("invalid redis options: {reason}")]
    InvalidOptions {
        /// What is wrong.
        reason: String,
    },
    /// A connection to a node could not be opened.
    #[error("cannot connect to redis node {node}")]
    Connect {
        /// `host:port`.
        node: String,
        /// The client's error.
        #[source]
        source: RedisError,
    },
    /// Sending to or reading from a node failed (I/O error, timeout, closed
    /// connection).
    #[error("redis node {node} did not answer {command}")]
    Io {
        /// `host:port`.
        node: String,
        /// The command waiting for its answer (`EVALSHA`, `SADD`, `MGET`...).
        command: String,
        /// The client's error.
        #[source]
        source: RedisError,
    },
    /// A node answered a command with an error.
    #[error("redis node {node} refused {command}")]
    Refused {
        /// `host:port`.
        node: String,
        /// The command refused.
        command: String,
        /// The server's error.
        #[source]
        source: RedisError,
    },
    /// A node answered with a reply of an unexpected shape.
    #[error("unexpected reply from redis node {node} to {command}: {reply}")]
    UnexpectedReply {
        /// `host:port`.
        node: String,
        /// The command.
        command: String,
        /// The reply, abridged.
        reply: String,
    },
    /// No node of the cluster answered `CLUSTER SLOTS` with a usable map.
    #[error("cannot read the redis cluster's slot map from any of {tried}")]
    Topology {
        /// The nodes asked, `host:port` separated by commas.
        tried: String,
        /// The last node's error, if any.
        #[source]
        source: Option<Box<RedisStoreError>>,
    },
    /// The cluster's slot map has no master for a slot (a cluster being
    /// created, or a master lost without a replica to promote).
    #[error("no redis cluster node serves slot {slot}")]
    SlotUncovered {
        /// The slot.
        slot: u16,
    },
    /// A command kept being redirected (MOVED/ASK) or refused with NOSCRIPT
    /// after the slot map was refreshed and the script loaded.
    #[error("{command} for slot {slot} was still redirected after {rounds} attempts")]
    Unsettled {
        /// The command.
        command: String,
        /// Its slot.
        slot: u16,
        /// How many times it was sent.
        rounds: usize,
    },
    /// A node's `maxmemory-policy` may evict keys (an `allkeys-*` policy), so
    /// nothing was written (see `crate::policy`). Retrying does not help
    /// until an operator changes the policy, so it is `Failed`, not
    /// `Unavailable`; the revisions stay pending either way and the
    /// reprocessor keeps trying them.
    #[error("redis node {node} has {}", crate::policy::advice(.policy))]
    EvictingPolicy {
        /// `host:port`.
        node: String,
        /// The policy found, e.g. `allkeys-lru`.
        policy: String,
    },
}

impl RedisStoreError {
    /// True when retrying later may succeed: Redis is unreachable, slow,
    /// loading, failing over or resharding.
    pub fn is_unavailable(&self) -> bool {
        match self {
            RedisStoreError::InvalidUrl { .. }
            | RedisStoreError::InvalidOptions { .. }
            | RedisStoreError::UnexpectedReply { .. }
            | RedisStoreError::EvictingPolicy { .. } => false,
            RedisStoreError::Connect { source, .. }
            | RedisStoreError::Io { source, .. }
            | RedisStoreError::Refused { source, .. } => redis_error_is_unavailable(source),
            RedisStoreError::Topology { .. }
            | RedisStoreError::SlotUncovered { .. }
            | RedisStoreError::Unsettled { .. } => true,
        }
    }

    /// This error as the core sees it, saying what was being done.
    pub fn into_store_error(self, doing: String) -> StoreError {
        if self.is_unavailable() {
            StoreError::Unavailable {
                store: "redis",
                doing,
                source: Box::new(self),
            }
        } else {
            StoreError::Failed {
                store: "redis",
                doing,
                source: Box::new(self),
            }
        }
    }
}

/// Whether a client or server error means "try again later".
pub(crate) fn redis_error_is_unavailable(error: &RedisError) -> bool {
    if error.is_io_error()
        || error.is_timeout()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
    {
        return true;
    }
    matches!(
        error.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::ReadOnly
            )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(kind: ErrorKind) -> RedisStoreError {
        RedisStoreError::Refused {
            node: "127.0.0.1:7000".into(),
            command: "EVALSHA".into(),
            source: RedisError::from((kind, "test")),
        }
    }

    #[test]
    fn cluster_churn_and_io_are_unavailable_other_errors_failed() {
        for kind in [
            ErrorKind::Io,
            ErrorKind::Server(ServerErrorKind::TryAgain),
            ErrorKind::Server(ServerErrorKind::ClusterDown),
            ErrorKind::Server(ServerErrorKind::MasterDown),
            ErrorKind::Server(ServerErrorKind::BusyLoading),
        ] {
            let error = refused(kind).into_store_error("applying".into());
            assert!(error.is_unavailable(), "{kind:?}: {error:?}");
        }
        for kind in [
            ErrorKind::Server(ServerErrorKind::ResponseError),
            ErrorKind::AuthenticationFailed,
            ErrorKind::Server(ServerErrorKind::NoPerm),
        ] {
            let error = refused(kind).into_store_error("applying".into());
            assert!(
                matches!(error, StoreError::Failed { store: "redis", .. }),
                "{kind:?}"
            );
        }
        let timeout = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(redis_error_is_unavailable(&timeout));
        assert!(RedisStoreError::SlotUncovered { slot: 1 }.is_unavailable());
        // An evicting policy needs an operator: Failed, saying what to set.
        let evicting = RedisStoreError::EvictingPolicy {
            node: "127.0.0.1:7000".into(),
            policy: "allkeys-lru".into(),
        };
        let message = evicting.to_string();
        assert!(
            message.contains("127.0.0.1:7000")
                && message.contains("maxmemory-policy allkeys-lru")
                && message.contains("noeviction"),
            "{message}"
        );
        assert!(matches!(
            evicting.into_store_error("applying".into()),
            StoreError::Failed { store: "redis", .. }
        ));
    }
}
