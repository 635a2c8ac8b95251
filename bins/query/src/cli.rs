//! Command line and configuration of `election-query`.
//!
//! Every flag can also come from the environment, so a systemd unit only
//! needs an `EnvironmentFile=`:
//!
//! | variable | flag | default |
//! | --- | --- | --- |
//! | `DATABASE_URL` | `--database-url` | `postgres://postgres@127.0.0.1:5432/postgres` (libpq's `sslmode` and `sslrootcert` select TLS) |
//! | `REDIS_URL` | `--redis-url` | `redis://127.0.0.1:6379` (`rediss://` for TLS; a comma-separated list, or `redis+cluster://h1:p1,h2:p2`, selects Redis Cluster) |
//! | `HISTORY_DATABASE_URL` | `--history-database-url` | none (history — analytics, the timeline, the CSV export, the audit answer — is read from this PostgreSQL, e.g. a streaming replica; unset: from `DATABASE_URL`) |
//! | `QUERY_LISTEN_ADDR` | `--listen` | `127.0.0.1:8081` |
//! | `QUERY_PG_POOL_SIZE` | `--pg-pool-size` | 4 |
//! | `QUERY_REDIS_POOL_SIZE` | `--redis-pool-size` | 4 |
//! | `QUERY_REDIS_TIMEOUT` | `--redis-timeout` | `1s` |
//! | `SNAPSHOT_INTERVAL` | `--snapshot-interval` | `200ms` |
//! | `FULL_READ_INTERVAL` | `--full-read-interval` | `30s` (longest time between two reads of every counter of a watched election; between them a refresh reads only the cities Redis's change journal names, so a counter changed by hand, which the journal does not name, shows within it) |
//! | `IDLE_AFTER` | `--idle-after` | `5m` |
//! | `MAX_ELECTIONS` | `--max-elections` | 64 |
//! | `KEEP_ALIVE` | `--keep-alive` | `15s` |
//! | `STREAM_HISTORY` | `--stream-history` | 300 (stream deltas kept per election: a minute at the default interval; a client further behind gets a snapshot) |
//! | `TIMELINE_CACHE_TTL` | `--timeline-cache-ttl` | `2s` |
//! | `TIMELINE_FULL_REFRESH` | `--timeline-full-refresh` | `5m` |
//! | `HTTP_HEADER_TIMEOUT` | `--header-timeout` | `10s` (a request's headers must arrive within it, or the connection is closed; streams are not affected) |
//! | `CACHE_MAX_AGE` | `--cache-max-age` | `1s` (`Cache-Control: public, max-age=` of live answers, in whole seconds) |
//! | `HISTORY_CACHE_MAX_AGE` | `--history-cache-max-age` | `10s` (the same for history answers and the CSV export) |
//! | `ELECTIONS_REFRESH` | `--elections-refresh` | `5s` (how often the list of known elections is read again) |
//! | `QUERY_CORS_ALLOWED_ORIGINS` | `--cors-allowed-origins` | `*` (any origin; or a comma-separated list of origins, or `none`) |
//! | `QUERY_WORKER_THREADS` | `--worker-threads` | half the cores the process may use, at least 1 (the threads answering HTTP and writing streams; see [`default_worker_threads`]) |
//! | `LOG_FORMAT` | `--log-format` | `human` (or `json`) |
//! | `RUST_LOG` | | `info` |
//!
//! Durations are written like `500ms`, `30s`, `5m` (see
//! [`election_http::config`]). The old names (`PG_POOL_SIZE`,
//! `REDIS_POOL_SIZE`, `REDIS_TIMEOUT_MS`, `SNAPSHOT_INTERVAL_MS`,
//! `IDLE_AFTER_SECS`, `KEEP_ALIVE_SECS`, `TIMELINE_CACHE_MS`,
//! `TIMELINE_FULL_REFRESH_SECS`, `HTTP_HEADER_TIMEOUT_MS`,
//! `CACHE_MAX_AGE_SECS`, `HISTORY_CACHE_MAX_AGE_SECS`,
//! `ELECTIONS_REFRESH_SECS` and their `--…-ms`/`--…-secs` flags) are
//! deprecated but still accepted, with a warning in the log
//! (`election_wiring::service` lists every old name each service reads).
//! `LISTEN_ADDR` is not read: it was ingest's in the shared environment
//! file.
//!
//! The settings every service has (the stores, the pools, the listen
//! address) are `election_wiring::args`, spelled for query by
//! `election_wiring::service::Query`.
//!
//! Database and Redis URLs may hold passwords: they are never logged whole
//! (see `election_http::redact`).

use std::num::NonZeroUsize;
use std::time::Duration;

use clap::{Args, Subcommand};
use election_http::config::parse_duration;
use election_wiring::args::{Postgres, ServeCommon};
use election_wiring::service::Query;

/// Default number of elections refreshed at once.
pub const DEFAULT_MAX_ELECTIONS: usize = 64;
/// Default number of stream deltas kept per election: a minute of changes at
/// the default snapshot interval, so a browser that reconnects (2 s) or a
/// phone that lost its network for a while gets only what it missed.
pub const DEFAULT_STREAM_HISTORY: usize = 300;

/// election-query: live totals, history and the dashboard of the election
/// counting system (named and described at start-up,
/// `election_wiring::start`).
pub type Cli = election_wiring::Cli<Command>;

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the read API and the dashboard.
    Serve(Box<Serve>),
}

/// `serve` settings.
#[derive(Args, Debug, Clone)]
pub struct Serve {
    /// PostgreSQL (history and audit).
    #[command(flatten)]
    pub database: Postgres<Query>,
    /// PostgreSQL URL history is read from (analytics, the timeline, the
    /// CSV export, the audit answer), such as a streaming replica's; without it, history comes
    /// from `DATABASE_URL`. The list of elections and their definitions
    /// always come from `DATABASE_URL`.
    #[arg(long, env = "HISTORY_DATABASE_URL", hide_env_values = true)]
    pub history_database_url: Option<String>,
    /// Redis (live totals), the listen address, the pools.
    #[command(flatten)]
    pub shared: ServeCommon<Query>,
    /// Time between two snapshots of an election's live totals.
    #[arg(long, env = "SNAPSHOT_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub snapshot_interval: Duration,
    /// Longest time between two reads of every counter of a watched
    /// election; between them a refresh reads only the cities the change
    /// journal names (a counter changed by hand shows within it).
    #[arg(long, env = "FULL_READ_INTERVAL", default_value = "30s", value_parser = parse_duration)]
    pub full_read_interval: Duration,
    /// Time without readers or streams after which an election stops being refreshed.
    #[arg(long, env = "IDLE_AFTER", default_value = "5m", value_parser = parse_duration)]
    pub idle_after: Duration,
    /// Most elections refreshed at once (more answer 503).
    #[arg(long, env = "MAX_ELECTIONS", default_value_t = DEFAULT_MAX_ELECTIONS)]
    pub max_elections: usize,
    /// Time between keep-alive comments on idle streams.
    #[arg(long, env = "KEEP_ALIVE", default_value = "15s", value_parser = parse_duration)]
    pub keep_alive: Duration,
    /// Stream deltas kept per election: a subscriber that reconnects (or
    /// reads too slowly) further behind than this gets a snapshot.
    #[arg(long, env = "STREAM_HISTORY", default_value_t = DEFAULT_STREAM_HISTORY)]
    pub stream_history: usize,
    /// How long a timeline answer is reused before PostgreSQL is asked again.
    #[arg(long, env = "TIMELINE_CACHE_TTL", default_value = "2s", value_parser = parse_duration)]
    pub timeline_cache_ttl: Duration,
    /// Time between whole reads of a timeline (in between, only its last minutes are read again).
    #[arg(long, env = "TIMELINE_FULL_REFRESH", default_value = "5m", value_parser = parse_duration)]
    pub timeline_full_refresh: Duration,
    /// A correction is flagged (GET .../flags) when it moves its ballot
    /// box's total by more than this share of the previous total.
    #[arg(long, env = "FLAG_CORRECTION_SHARE", default_value_t = 0.2)]
    pub flag_correction_share: f64,
    /// Longest time for a request's headers to arrive (or
    /// for the next request on an idle kept-alive connection); past it the
    /// connection is closed. Bounds slow clients (slowloris); an open
    /// stream is a response being written and is never cut by it.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// How long a browser or CDN may reuse a live answer (`Cache-Control:
    /// public, max-age=`, whole seconds).
    #[arg(long, env = "CACHE_MAX_AGE", default_value = "1s", value_parser = parse_duration)]
    pub cache_max_age: Duration,
    /// How long a browser or CDN may reuse a history answer or CSV export.
    #[arg(long, env = "HISTORY_CACHE_MAX_AGE", default_value = "10s", value_parser = parse_duration)]
    pub history_cache_max_age: Duration,
    /// Time between two reads of the list of known elections (a new
    /// election is also found at its first request).
    #[arg(long, env = "ELECTIONS_REFRESH", default_value = "5s", value_parser = parse_duration)]
    pub elections_refresh: Duration,
    /// Origins browsers may read the API from: `*` (any), `none`, or a
    /// comma-separated list such as `https://news.example,https://tv.example`.
    #[arg(long, env = "QUERY_CORS_ALLOWED_ORIGINS", default_value = "*")]
    pub cors_allowed_origins: String,
    /// Threads answering HTTP and writing streams (the async runtime's
    /// workers); default: half the cores the process may use, at least one.
    #[arg(long, env = "QUERY_WORKER_THREADS")]
    pub worker_threads: Option<NonZeroUsize>,
}

impl Serve {
    /// The runtime's worker threads: `--worker-threads`, else
    /// [`default_worker_threads`] of the cores this process may use
    /// (`available_parallelism` counts a cgroup's CPU quota, systemd's
    /// `CPUQuota=`, and the CPU affinity).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads.map_or_else(
            || default_worker_threads(std::thread::available_parallelism().map_or(1, usize::from)),
            usize::from,
        )
    }
}

/// Query's worker threads on a machine of `cores` cores: half, at least
/// one, rather than tokio's one per core.
///
/// A worker's request is cheap (the body is rendered once per version, see
/// `crate::live`): most of what answering costs is the kernel's socket
/// work, which runs on whichever core the client and the query share. With
/// as many workers as cores, the spare workers wake, look for work to steal
/// and park again, and compete for the cores with the clients' own
/// connections and, on one machine, with ingest, PostgreSQL and Redis.
/// Measured on two cores (docs/benchmarks.md, "One query worker on two
/// cores"): one worker answered as many `GET /totals` (~68,000 requests/s
/// while ingest posted 2,000 reports/s) with ~11 % less CPU, and a p99 of
/// 2.6–2.8 ms against 3.3–4.5 ms with two.
pub fn default_worker_threads(cores: usize) -> usize {
    (cores / 2).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_cli() {
        election_wiring::command::<Query, Command>(env!("CARGO_PKG_DESCRIPTION")).debug_assert();
    }

    #[test]
    fn worker_threads_default_to_half_the_cores_and_at_least_one() {
        let defaults: Vec<usize> = [1, 2, 3, 4, 16].map(default_worker_threads).to_vec();
        assert_eq!(defaults, [1, 1, 1, 2, 8]);
    }
}
