//! Command line and configuration of `election-ingest`.
//!
//! Every flag can also come from the environment, so a systemd unit only
//! needs an `EnvironmentFile=`:
//!
//! | variable | flag | default |
//! | --- | --- | --- |
//! | `DATABASE_URL` | `--database-url` | `postgres://postgres@127.0.0.1:5432/postgres` |
//! | `REDIS_URL` | `--redis-url` | `redis://127.0.0.1:6379` (a comma-separated list, or `redis+cluster://h1:p1,h2:p2`, selects Redis Cluster) |
//! | `LISTEN_ADDR` | `--listen` | `127.0.0.1:8080` |
//! | `PG_POOL_SIZE` | `--pg-pool-size` | 8 |
//! | `REDIS_POOL_SIZE` | `--redis-pool-size` | 8 |
//! | `REDIS_TIMEOUT_MS` | `--redis-timeout-ms` | 500 |
//! | `BATCH_SIZE` | `--batch-size` | 256 |
//! | `BATCH_LINGER_MS` | `--batch-linger-ms` | 2 |
//! | `MAX_IN_FLIGHT` | `--max-in-flight` | 4 |
//! | `TOKEN_CACHE_SECS` | `--token-cache-secs` | 5 |
//! | `DEFINITION_CACHE_SECS` | `--definition-cache-secs` | 5 |
//! | `HTTP_HEADER_TIMEOUT_MS` | `--header-timeout-ms` | 10000 (a request's headers must arrive within it, or the connection is closed) |
//! | `INGEST_BODY_TIMEOUT_MS` | `--body-timeout-ms` | 10000 (a report's body must arrive within it, or 408) |
//! | `INGEST_TOKEN_RATE` | `--token-rate` | 0 (reports per second per token; 0: no limit) |
//! | `INGEST_TOKEN_BURST` | `--token-burst` | 0 (reports at once per token; 0: the rate, rounded up) |
//! | `INGEST_CORS_ALLOWED_ORIGINS` | `--cors-allowed-origins` | `none` (browsers on other origins may not post; or `*`, or a comma-separated list of origins) |
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
/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default deadline for a request's headers, in milliseconds.
pub const DEFAULT_HEADER_TIMEOUT_MS: u64 = 10_000;
/// Default deadline for a report's body, in milliseconds.
pub const DEFAULT_BODY_TIMEOUT_MS: u64 = 10_000;

/// election-ingest: the reporting API of the election counting system.
#[derive(Parser, Debug)]
#[command(name = "election-ingest", version, about)]
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
    /// Apply the embedded database migrations.
    Migrate(Database),
    /// Serve the reporting API.
    Serve(Box<Serve>),
    /// Manage reporting-client tokens.
    #[command(subcommand)]
    Token(Token),
    /// Define elections (parties, cities, expected and registered ballot boxes).
    #[command(subcommand)]
    Election(Election),
}

/// `election` subcommands.
#[derive(Subcommand, Debug)]
pub enum Election {
    /// Validate a definition file (TOML) and store it: every problem is
    /// reported with its line and nothing is stored unless the whole file is
    /// valid. Loading an updated file adds parties, cities and ballot boxes
    /// and updates names, colours and expected counts; it may not remove or
    /// move anything already defined.
    Load {
        /// PostgreSQL.
        #[command(flatten)]
        database: Database,
        /// Only validate the file; store nothing.
        #[arg(long)]
        check: bool,
        /// The definition file.
        file: std::path::PathBuf,
    },
    /// Print an election's stored definition.
    Show {
        /// PostgreSQL.
        #[command(flatten)]
        database: Database,
        /// The election.
        election: String,
    },
    /// Certify cities of a defined election: their results are final. Who
    /// and when are recorded in PostgreSQL; from then on every new report or
    /// revision of the city's ballot boxes is refused with 409 `certified`
    /// (an identical replay is still a replay). A city certified already
    /// keeps its first certification.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["city", "all"])))]
    Certify {
        /// PostgreSQL.
        #[command(flatten)]
        database: Database,
        /// The election.
        #[arg(long)]
        election: String,
        /// The city to certify.
        #[arg(long)]
        city: Option<String>,
        /// Certify every city of the definition.
        #[arg(long)]
        all: bool,
        /// Who certifies (recorded with the certification); defaults to the
        /// user running the command.
        #[arg(long, env = "USER")]
        by: Option<String>,
    },
}

/// Where PostgreSQL is.
#[derive(Args, Debug, Clone)]
pub struct Database {
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,
}

/// `serve` settings.
#[derive(Args, Debug, Clone)]
pub struct Serve {
    /// PostgreSQL.
    #[command(flatten)]
    pub database: Database,
    /// Redis URL; a comma-separated list or `redis+cluster://h1:p1,h2:p2` selects Redis Cluster.
    #[arg(long, env = "REDIS_URL", default_value = DEFAULT_REDIS_URL, hide_env_values = true)]
    pub redis_url: String,
    /// Address to listen on.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// PostgreSQL connections.
    #[arg(long, env = "PG_POOL_SIZE", default_value_t = 8)]
    pub pg_pool_size: u32,
    /// Redis connections (per node on a Cluster).
    #[arg(long, env = "REDIS_POOL_SIZE", default_value_t = 8)]
    pub redis_pool_size: usize,
    /// Longest wait for Redis before a report is answered 202 and left to the reprocessor.
    #[arg(long, env = "REDIS_TIMEOUT_MS", default_value_t = 500)]
    pub redis_timeout_ms: u64,
    /// Most reports in one group-commit transaction.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,
    /// Longest wait, in milliseconds, for more reports to join a batch.
    #[arg(long, env = "BATCH_LINGER_MS", default_value_t = 2)]
    pub batch_linger_ms: u64,
    /// Most batches being recorded at once.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 4)]
    pub max_in_flight: usize,
    /// How long token lookups are cached (a revoked token works at most this long).
    #[arg(long, env = "TOKEN_CACHE_SECS", default_value_t = 5)]
    pub token_cache_secs: u64,
    /// How often an election's definition version is looked up again (a definition loaded while serving applies to the next report regardless: the log checks the version).
    #[arg(long, env = "DEFINITION_CACHE_SECS", default_value_t = 5)]
    pub definition_cache_secs: u64,
    /// Longest time, in milliseconds, for a request's headers to arrive (or
    /// for the next request on an idle kept-alive connection); past it the
    /// connection is closed. Bounds slow clients (slowloris).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_MS", default_value_t = DEFAULT_HEADER_TIMEOUT_MS)]
    pub header_timeout_ms: u64,
    /// Longest time, in milliseconds, for a report's body to arrive once its
    /// headers have; past it the answer is 408 and nothing is recorded.
    #[arg(long, env = "INGEST_BODY_TIMEOUT_MS", default_value_t = DEFAULT_BODY_TIMEOUT_MS)]
    pub body_timeout_ms: u64,
    /// Reports per second each token may post on average (fractions allowed);
    /// beyond it, 429 with Retry-After. 0: no limit (the default: one
    /// election-wide token may serve a whole gateway).
    #[arg(long, env = "INGEST_TOKEN_RATE", default_value_t = 0.0)]
    pub token_rate: f64,
    /// Reports each token may post at once after being idle; 0: the rate,
    /// rounded up.
    #[arg(long, env = "INGEST_TOKEN_BURST", default_value_t = 0)]
    pub token_burst: u32,
    /// Origins whose browser pages may post reports: `none` (the default:
    /// ballot boxes are programs, not pages), `*`, or a comma-separated
    /// list such as `https://results.example`.
    #[arg(long, env = "INGEST_CORS_ALLOWED_ORIGINS", default_value = "none")]
    pub cors_allowed_origins: String,
}

/// `token` subcommands.
#[derive(Subcommand, Debug)]
pub enum Token {
    /// Issue a token; it is printed alone on standard output, once.
    Issue {
        /// PostgreSQL.
        #[command(flatten)]
        database: Database,
        /// The election it may report to.
        #[arg(long)]
        election: String,
        /// Bind it to one ballot box (without: any box of the election).
        #[arg(long)]
        ballot_box: Option<String>,
        /// A label for operators (who holds it).
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a token by its id (see `token list`).
    Revoke {
        /// PostgreSQL.
        #[command(flatten)]
        database: Database,
        /// The token's id.
        id: i64,
    },
    /// List tokens (never their secrets).
    List {
        /// PostgreSQL.
        #[command(flatten)]
        database: Database,
        /// Only this election's.
        #[arg(long)]
        election: Option<String>,
    },
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

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact("redis+cluster://:pw@h1:1,:pw@h2:2"),
            "redis+cluster://:***@h1:1,:***@h2:2"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
