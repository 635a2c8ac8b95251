//! Command line and configuration of `election-ingest`.
//!
//! Every flag can also come from the environment, so a systemd unit only
//! needs an `EnvironmentFile=`:
//!
//! | variable | flag | default |
//! | --- | --- | --- |
//! | `DATABASE_URL` | `--database-url` | `postgres://postgres@127.0.0.1:5432/postgres` (libpq's `sslmode` and `sslrootcert` select TLS) |
//! | `REDIS_URL` | `--redis-url` | `redis://127.0.0.1:6379` (`rediss://` for TLS; a comma-separated list, or `redis+cluster://h1:p1,h2:p2`, selects Redis Cluster) |
//! | `INGEST_LISTEN_ADDR` | `--listen` | `127.0.0.1:8080` |
//! | `INGEST_PG_POOL_SIZE` | `--pg-pool-size` | 8 |
//! | `INGEST_REDIS_POOL_SIZE` | `--redis-pool-size` | 8 |
//! | `INGEST_REDIS_TIMEOUT` | `--redis-timeout` | `500ms` |
//! | `BATCH_SIZE` | `--batch-size` | 512 (a bulk request is never split, so a batch may exceed it by less than one request) |
//! | `BATCH_LINGER` | `--batch-linger` | `2ms` |
//! | `MAX_IN_FLIGHT` | `--max-in-flight` | 4 (batches under way at once) |
//! | `MAX_RECORDING` | `--max-recording` | 1 (of them in their PostgreSQL transaction at once; at most `MAX_IN_FLIGHT`) |
//! | `TOKEN_CACHE_TTL` | `--token-cache-ttl` | `5s` |
//! | `DEFINITION_CACHE_TTL` | `--definition-cache-ttl` | `5s` |
//! | `HTTP_HEADER_TIMEOUT` | `--header-timeout` | `10s` (a request's headers must arrive within it, or the connection is closed) |
//! | `INGEST_BODY_TIMEOUT` | `--body-timeout` | `10s` (a report's body must arrive within it, or 408) |
//! | `INGEST_BODIES_IN_FLIGHT_MIB` | `--bodies-in-flight-mib` | 256 (MiB of request bodies held at once over every connection, each request its `Content-Length` until answered; beyond it 503 `overloaded`; at least 4) |
//! | `INGEST_TOKEN_RATE` | `--token-rate` | 0 (reports per second per token; 0: no limit) |
//! | `INGEST_TOKEN_BURST` | `--token-burst` | 0 (reports at once per token; 0: the rate, rounded up) |
//! | `INGEST_AUTH_FAILURE_RATE` | `--auth-failure-rate` | 1 (failed authentications per second per client address, then 429 without a database lookup; 0: no limit) |
//! | `INGEST_AUTH_FAILURE_BURST` | `--auth-failure-burst` | 20 |
//! | `INGEST_TRUSTED_PROXIES` | `--trusted-proxies` | none (networks of the load balancers whose `X-Forwarded-For` names the client address those limits apply to, e.g. `10.0.0.0/8`) |
//! | `INGEST_CORS_ALLOWED_ORIGINS` | `--cors-allowed-origins` | `none` (browsers on other origins may not post; or `*`, or a comma-separated list of origins) |
//! | `LOG_FORMAT` | `--log-format` | `human` (or `json`) |
//! | `RUST_LOG` | | `info` |
//!
//! Durations are written like `500ms`, `30s`, `5m` (see
//! [`election_http::config`]). The old names (`LISTEN_ADDR`,
//! `PG_POOL_SIZE`, `REDIS_POOL_SIZE`, `REDIS_TIMEOUT_MS`, `BATCH_LINGER_MS`,
//! `TOKEN_CACHE_SECS`, `DEFINITION_CACHE_SECS`, `HTTP_HEADER_TIMEOUT_MS`,
//! `INGEST_BODY_TIMEOUT_MS` and their `--…-ms`/`--…-secs` flags) are
//! deprecated but still accepted, with a warning in the log
//! (`election_wiring::service` lists every old name each service reads).
//!
//! The settings every service has (the stores, the pools, the listen
//! address) are `election_wiring::args`, spelled for ingest by
//! `election_wiring::service::Ingest`.
//!
//! Database and Redis URLs may hold passwords: they are never logged whole
//! (see `election_http::redact`).

use std::time::Duration;

use clap::{Args, Subcommand};
use election_http::client::TrustedProxies;
use election_http::config::parse_duration;
use election_wiring::args::Postgres;
use election_wiring::service::Ingest;

/// election-ingest: the reporting API of the election counting system
/// (named and described at start-up, `election_wiring::start`).
pub type Cli = election_wiring::Cli<Command>;

/// The default of `--bodies-in-flight-mib`: 256 MiB, 64 bulk bodies of the
/// largest size or ~4,000 single reports of the largest, while a report
/// is ~200 bytes; what ingest holds for them, parsed, is a few times that.
pub const DEFAULT_BODIES_IN_FLIGHT_MIB: u32 = 256;

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
pub type Database = Postgres<Ingest>;

/// `serve` settings.
#[derive(Args, Debug, Clone)]
pub struct Serve {
    /// PostgreSQL.
    #[command(flatten)]
    pub database: Database,
    /// Redis, the listen address, the pools.
    #[command(flatten)]
    pub shared: election_wiring::args::ServeCommon<Ingest>,
    /// Most reports in one group-commit transaction (a bulk request is
    /// never split, so a batch may exceed it by less than one request).
    /// 512: bulk requests of 100 ran 6–10 % faster than at 256, single
    /// reports at 512 connections the same (docs/benchmarks.md, "Bulk
    /// batches sized in reports").
    #[arg(long, env = "BATCH_SIZE", default_value_t = 512)]
    pub batch_size: usize,
    /// Longest wait for more reports to join a batch.
    #[arg(long, env = "BATCH_LINGER", default_value = "2ms", value_parser = parse_duration)]
    pub batch_linger: Duration,
    /// Most batches under way at once (recorded, counted or marked).
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = 4)]
    pub max_in_flight: usize,
    /// Most of them in their PostgreSQL recording transaction at once (a
    /// larger value counts as `--max-in-flight`). One: each batch then
    /// takes everything waiting, and on a 2-core machine the machine's CPU
    /// per report fell 7–20 % against two with single reports and 2–5 % in
    /// bulk at the same rates, and ~11 % at a steady 2,000 reports/s for
    /// ~1 ms more latency (docs/benchmarks.md, "One recording transaction
    /// at a time").
    #[arg(long, env = "MAX_RECORDING", default_value_t = 1)]
    pub max_recording: usize,
    /// How long token lookups are cached (a revoked token works at most this long).
    #[arg(long, env = "TOKEN_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub token_cache_ttl: Duration,
    /// How often an election's definition version is looked up again (a definition loaded while serving applies to the next report regardless: the log checks the version).
    #[arg(long, env = "DEFINITION_CACHE_TTL", default_value = "5s", value_parser = parse_duration)]
    pub definition_cache_ttl: Duration,
    /// Longest time for a request's headers to arrive (or
    /// for the next request on an idle kept-alive connection); past it the
    /// connection is closed. Bounds slow clients (slowloris).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Longest time for a report's body to arrive once its
    /// headers have; past it the answer is 408 and nothing is recorded.
    #[arg(long, env = "INGEST_BODY_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub body_timeout: Duration,
    /// MiB of request bodies held at once, over every connection: each
    /// request reserves its `Content-Length` (or, sent without one, the
    /// largest body its endpoint takes) until it is answered; a request
    /// beyond it is answered 503 `overloaded` with Retry-After. Bounds the
    /// memory that many connections with large bulk bodies can take; at
    /// least 4 (the largest bulk body).
    #[arg(long, env = "INGEST_BODIES_IN_FLIGHT_MIB", default_value_t = DEFAULT_BODIES_IN_FLIGHT_MIB)]
    pub bodies_in_flight_mib: u32,
    /// Reports per second each token may post on average (fractions allowed);
    /// beyond it, 429 with Retry-After. 0: no limit (the default: one
    /// election-wide token may serve a whole gateway).
    #[arg(long, env = "INGEST_TOKEN_RATE", default_value_t = 0.0)]
    pub token_rate: f64,
    /// Reports each token may post at once after being idle; 0: the rate,
    /// rounded up.
    #[arg(long, env = "INGEST_TOKEN_BURST", default_value_t = 0)]
    pub token_burst: u32,
    /// Failed authentications (unknown or revoked tokens) per second each
    /// client address may make on average; beyond it, requests whose token
    /// is not cached as valid get 429 with Retry-After, without a database
    /// lookup. 0: no limit.
    #[arg(long, env = "INGEST_AUTH_FAILURE_RATE", default_value_t = 1.0)]
    pub auth_failure_rate: f64,
    /// Failed authentications a client address may make at once.
    #[arg(long, env = "INGEST_AUTH_FAILURE_BURST", default_value_t = 20)]
    pub auth_failure_burst: u32,
    /// The load balancers or proxies in front of ingest, as networks or
    /// addresses separated by commas (`10.0.0.0/8,192.0.2.7`): a request
    /// from one of them is limited by the client address its
    /// `X-Forwarded-For` names (read from the right, past every trusted
    /// proxy), not by the proxy's. Empty (the default): the header is
    /// ignored and the TCP peer is the client.
    #[arg(long, env = "INGEST_TRUSTED_PROXIES", default_value = "", value_parser = TrustedProxies::parse)]
    pub trusted_proxies: TrustedProxies,
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

#[cfg(test)]
mod tests {
    use super::*;
    use election_wiring::service::Service;

    #[test]
    fn old_names_are_still_accepted() {
        let old = [
            ("LISTEN_ADDR", "0.0.0.0:9"),
            ("PG_POOL_SIZE", "3"),
            ("REDIS_POOL_SIZE", "2"),
            ("REDIS_TIMEOUT_MS", "300"),
            ("BATCH_LINGER_MS", "7"),
            ("TOKEN_CACHE_SECS", "9"),
            ("DEFINITION_CACHE_SECS", "11"),
            ("HTTP_HEADER_TIMEOUT_MS", "1500"),
            ("INGEST_BODY_TIMEOUT_MS", "2500"),
        ];
        let env = |name: &str| {
            old.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        let renamed = Ingest::PROFILE.renamed();
        let (cli, warnings) =
            election_http::config::parse_from::<Cli>(&renamed, ["election-ingest", "serve"], env)
                .unwrap();
        let Command::Serve(serve) = cli.command else {
            panic!("serve")
        };
        let shared = &serve.shared;
        assert_eq!(shared.listen.address, "0.0.0.0:9");
        assert_eq!(
            (shared.pools.pg_pool_size, shared.pools.redis_pool_size),
            (3, 2)
        );
        assert_eq!(shared.pools.redis_timeout, Duration::from_millis(300));
        assert_eq!(serve.batch_linger, Duration::from_millis(7));
        assert_eq!(serve.token_cache_ttl, Duration::from_secs(9));
        assert_eq!(serve.definition_cache_ttl, Duration::from_secs(11));
        assert_eq!(serve.header_timeout, Duration::from_millis(1500));
        assert_eq!(serve.body_timeout, Duration::from_millis(2500));
        assert_eq!(warnings.len(), old.len());
    }

    #[test]
    fn verify_cli() {
        election_wiring::command::<Ingest, Command>(env!("CARGO_PKG_DESCRIPTION")).debug_assert();
    }
}
