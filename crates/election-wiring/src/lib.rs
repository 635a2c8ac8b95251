//! The composition roots' shared parts: what `election-ingest`,
//! `election-query` and `election-reprocessor` do the same way around their
//! own work, written once so the binaries stay their own settings and
//! services (docs/ARCHITECTURE.md, "Code map").
//!
//! - [`service`]: the three services side by side: each one's name, its
//!   environment variables, defaults and help lines for the settings they
//!   all have (PostgreSQL and Redis URLs, pool sizes, Redis's timeout, the
//!   listen address), and every old setting name it still accepts.
//! - [`args`]: those settings as clap arguments ([`Cli`] and the groups a
//!   subcommand flattens), each able to connect what it names.
//! - [`connect`]: a PostgreSQL pool and the Redis tally, with errors that
//!   say where (passwords redacted), and the schema check.
//! - [`ready`]: what `/readyz` checks.
//! - [`start`]: the command line parsed (old names rewritten), logging set
//!   up, the renamed settings' warnings logged; [`block_on`], the runtime.
//! - [`Serving`]: where a service serves and what stops it (SIGTERM or
//!   SIGINT from `serve`, anything a test likes), and [`stop_flag`].
//! - [`registry`]: the metrics registry with `redis_evicting_policy`.
//!
//! Why a crate of its own rather than more of `election-http`: that crate
//! is the HTTP side and depends on no store, while this one needs
//! `store-pg` and `store-redis` (pools, the tally, the schema check, the
//! pings). Apart, the direction stays one way: binaries → `election-wiring`
//! → `store-pg`, `store-redis`, `election-http` → `election-core`.

pub mod args;
pub mod connect;
pub mod ready;
pub mod service;
mod serving;
mod start;

use std::sync::Arc;

use election_http::metrics::Registry;
use store_redis::RedisTally;

pub use args::Cli;
pub use serving::{Serving, Shutdown, stop_flag};
pub use start::{block_on, block_on_with, command, start};

/// The service's metrics registry, with `redis_evicting_policy` computed at
/// scrape time from `redis`'s last checks of its nodes' `maxmemory-policy`
/// when the tally is a Redis (tests may run on the in-memory one).
pub fn registry(redis: Option<&Arc<RedisTally>>) -> Arc<Registry> {
    let metrics = Arc::new(Registry::for_service());
    if let Some(redis) = redis {
        let redis = Arc::clone(redis);
        metrics.gauge_fn(
            store_redis::EVICTING_GAUGE,
            store_redis::EVICTING_GAUGE_HELP,
            move || redis.evicting_gauge(),
        );
    }
    metrics
}
