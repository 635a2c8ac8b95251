//! Command line and configuration of `election-query`.
//!
//! Every flag can also come from the environment, so a systemd unit only
//! needs an `EnvironmentFile=`:
//!
//! | variable | flag | default |
//! | --- | --- | --- |
//! | `DATABASE_URL` | `--database-url` | `postgres://postgres@127.0.0.1:5432/postgres` |
//! | `REDIS_URL` | `--redis-url` | `redis://127.0.0.1:6379` (a comma-separated list, or `redis+cluster://h1:p1,h2:p2`, selects Redis Cluster) |
//! | `LISTEN_ADDR` | `--listen` | `127.0.0.1:8081` |
//! | `PG_POOL_SIZE` | `--pg-pool-size` | 4 |
//! | `REDIS_POOL_SIZE` | `--redis-pool-size` | 4 |
//! | `REDIS_TIMEOUT_MS` | `--redis-timeout-ms` | 1000 |
//! | `SNAPSHOT_INTERVAL_MS` | `--snapshot-interval-ms` | 200 |
//! | `IDLE_AFTER_SECS` | `--idle-after-secs` | 300 |
//! | `MAX_ELECTIONS` | `--max-elections` | 64 |
//! | `KEEP_ALIVE_SECS` | `--keep-alive-secs` | 15 |
//! | `STREAM_HISTORY` | `--stream-history` | 300 (stream deltas kept per election: a minute at the default interval; a client further behind gets a snapshot) |
//! | `TIMELINE_CACHE_MS` | `--timeline-cache-ms` | 2000 |
//! | `TIMELINE_FULL_REFRESH_SECS` | `--timeline-full-refresh-secs` | 300 |
//! | `HTTP_HEADER_TIMEOUT_MS` | `--header-timeout-ms` | 10000 (a request's headers must arrive within it, or the connection is closed; streams are not affected) |
//! | `CACHE_MAX_AGE_SECS` | `--cache-max-age-secs` | 1 (`Cache-Control: public, max-age=` of live answers) |
//! | `HISTORY_CACHE_MAX_AGE_SECS` | `--history-cache-max-age-secs` | 10 (the same for history answers and the CSV export) |
//! | `ELECTIONS_REFRESH_SECS` | `--elections-refresh-secs` | 5 (how often the list of known elections is read again) |
//! | `QUERY_CORS_ALLOWED_ORIGINS` | `--cors-allowed-origins` | `*` (any origin; or a comma-separated list of origins, or `none`) |
//! | `LOG_FORMAT` | `--log-format` | `human` (or `json`) |
//! | `RUST_LOG` | | `info` |
//!
//! Database and Redis URLs may hold passwords: they are never logged whole
//! (see [`redact`]).

use clap::{Args, Parser, Subcommand};
use election_http::telemetry::LogFormat;

/// Default PostgreSQL URL.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
/// Default Redis URL.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default listen address (SPEC §6).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
/// Default time between two snapshots of an election's counters.
pub const DEFAULT_SNAPSHOT_INTERVAL_MS: u64 = 200;
/// Default time without readers after which an election's refresh stops.
pub const DEFAULT_IDLE_AFTER_SECS: u64 = 300;
/// Default number of elections refreshed at once.
pub const DEFAULT_MAX_ELECTIONS: usize = 64;
/// Default number of stream deltas kept per election: a minute of changes at
/// the default snapshot interval, so a browser that reconnects (2 s) or a
/// phone that lost its network for a while gets only what it missed.
pub const DEFAULT_STREAM_HISTORY: usize = 300;
/// Default interval of stream keep-alive comments.
pub const DEFAULT_KEEP_ALIVE_SECS: u64 = 15;
/// Default age at which a cached timeline is read again.
pub const DEFAULT_TIMELINE_CACHE_MS: u64 = 2000;
/// Default interval between whole reads of a timeline.
pub const DEFAULT_TIMELINE_FULL_REFRESH_SECS: u64 = 300;
/// Default deadline for a request's headers, in milliseconds.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Default `max-age` of live answers: one refresh or so, so a CDN in front
/// asks the service about once a second per URL, whatever its audience.
pub const DEFAULT_CACHE_MAX_AGE_SECS: u64 = 1;
/// Default `max-age` of history answers, which change slowly.
pub const DEFAULT_HISTORY_CACHE_MAX_AGE_SECS: u64 = 10;
/// Default interval between two reads of the known elections.
pub const DEFAULT_ELECTIONS_REFRESH_SECS: u64 = 5;

/// election-query: live totals, history and the dashboard of the election
/// counting system.
#[derive(Parser, Debug)]
#[command(name = "election-query", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "human",
        global = true
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the read API and the dashboard.
    Serve(Box<Serve>),
}

/// `serve` settings.
#[derive(Args, Debug, Clone)]
pub struct Serve {
    /// PostgreSQL URL (history and audit).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
    /// Redis URL (live totals); a comma-separated list or `redis+cluster://h1:p1,h2:p2` selects Redis Cluster.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// Address to listen on.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// PostgreSQL connections (history queries and exports).
    #[arg(long, env = "PG_POOL_SIZE", default_value_t = 4)]
    pub pg_pool_size: u32,
    /// Redis connections (per node on a Cluster).
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 4)]
    pub redis_pool_size: usize,
    /// Longest wait for a Redis reply.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 1000)]
    pub redis_timeout_ms: u64,
    /// Milliseconds between two snapshots of an election's live totals.
    #[arg(long, env = "SNAPSHOT_INTERVAL_MS", default_value_t = DEFAULT_SNAPSHOT_INTERVAL_MS)]
    pub snapshot_interval_ms: u64,
    /// Seconds without readers or streams after which an election stops being refreshed.
    #[arg(long, env = "IDLE_AFTER_SECS", default_value_t = DEFAULT_IDLE_AFTER_SECS)]
    pub idle_after_secs: u64,
    /// Most elections refreshed at once (more answer 503).
    #[arg(long, env = "MAX_ELECTIONS", default_value_t = DEFAULT_MAX_ELECTIONS)]
    pub max_elections: usize,
    /// Seconds between keep-alive comments on idle streams.
    #[arg(long, env = "KEEP_ALIVE_SECS", default_value_t = DEFAULT_KEEP_ALIVE_SECS)]
    pub keep_alive_secs: u64,
    /// Stream deltas kept per election: a subscriber that reconnects (or
    /// reads too slowly) further behind than this gets a snapshot.
    #[arg(long, env = "STREAM_HISTORY", default_value_t = DEFAULT_STREAM_HISTORY)]
    pub stream_history: usize,
    /// Milliseconds a timeline answer is reused before PostgreSQL is asked again.
    #[arg(long, env = "TIMELINE_CACHE_MS", default_value_t = DEFAULT_TIMELINE_CACHE_MS)]
    pub timeline_cache_ms: u64,
    /// Seconds between whole reads of a timeline (in between, only its last minutes are read again).
    #[arg(long, env = "TIMELINE_FULL_REFRESH_SECS", default_value_t = DEFAULT_TIMELINE_FULL_REFRESH_SECS)]
    pub timeline_full_refresh_secs: u64,
    /// A correction is flagged (GET .../flags) when it moves its ballot
    /// box's total by more than this share of the previous total.
    #[arg(long, env = "FLAG_CORRECTION_SHARE", default_value_t = 0.2)]
    pub flag_correction_share: f64,
    /// Longest time, in milliseconds, for a request's headers to arrive (or
    /// for the next request on an idle kept-alive connection); past it the
    /// connection is closed. Bounds slow clients (slowloris); an open
    /// stream is a response being written and is never cut by it.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_TIMEOUT_MS)]
    pub header_timeout_ms: u64,
    /// Seconds a browser or CDN may reuse a live answer (`Cache-Control: public, max-age=`).
    #[arg(long, env = "CACHE_MAX_AGE_SECS", default_value_t = DEFAULT_CACHE_MAX_AGE_SECS)]
    pub cache_max_age_secs: u64,
    /// Seconds a browser or CDN may reuse a history answer or CSV export.
    #[arg(long, env = "HISTORY_CACHE_MAX_AGE_SECS", default_value_t = DEFAULT_HISTORY_CACHE_MAX_AGE_SECS)]
    pub history_cache_max_age_secs: u64,
    /// Seconds between two reads of the list of known elections (a new
    /// election is also found at its first request).
    #[arg(long, env = "ELECTIONS_REFRESH_SECS", default_value_t = DEFAULT_ELECTIONS_REFRESH_SECS)]
    pub elections_refresh_secs: u64,
    /// Origins browsers may read the API from: `*` (any), `none`, or a
    /// comma-separated list such as `https://news.example,https://tv.example`.
    #[arg(long, env = "QUERY_CORS_ALLOWED_ORIGINS", default_value = "*")]
    pub cors_allowed_origins: String,
}

/// A URL with its password replaced by `***`, for logs (shared by every
/// service).
pub use election_http::redact;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
